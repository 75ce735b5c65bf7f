"""Image sources: whole data sets as one uint8 tensor in memory, plus seeded stratified splits.

Small data sets (Fashion-MNIST, CIFAR, STL-10, SVHN) are read once into an (N, C, H, W) uint8 tensor, so a
training batch is one index operation: no per-sample Python, no worker processes. Image folders are decoded
and resized once into a uint8 cache on disk and memory-mapped from then on.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sslkit.errors import UserError

DATASETS: tuple[str, ...] = ("fashion-mnist", "fashion-mnist-mini", "cifar10", "cifar100", "stl10", "svhn",
                             "imagefolder")
SPLITS: dict[str, tuple[str, ...]] = {
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    "svhn": ("train", "test", "extra"),
}
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MINI_DIR = Path(__file__).resolve().parent.parent / "assets" / "fashion-mnist-mini"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageSource:
    """Images and labels of one split, held whole.

    Attributes:
        images: uint8 tensor (N, C, H, W), square images.
        labels: int64 tensor (N,); -1 marks an unlabeled image.
        classes: class names, indexed by label.
        name: e.g. ``fashion-mnist/train``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    def subset(self, idx: torch.Tensor) -> ImageSource:
        """The images at ``idx`` (a copy), in that order."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        images = self.images[idx.to(self.images.device)]
        return ImageSource(images, self.labels[idx.to(self.labels.device)], self.classes, f"{self.name}[{len(idx)}]")


# --- splits -----------------------------------------------------------------------------------------------


def stratified_split(labels: torch.Tensor, size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Picks ``size`` labeled samples with the class proportions of the whole, reproducibly.

    Args:
        labels: (N,) int labels; -1 (unlabeled) is never picked.
        size: a count (int ≥ 1) or a fraction of the labeled samples (0 < f < 1).
        seed: the same seed gives the same split on any machine.

    Returns:
        ``(picked, rest)``: sorted int64 index tensors that are disjoint and together cover all N.
    """
    labels = torch.as_tensor(labels).cpu()
    labeled = torch.nonzero(labels >= 0).flatten()
    n_labeled = len(labeled)
    n = round(size * n_labeled) if isinstance(size, float) else int(size)
    if isinstance(size, float) and not 0 < size < 1:
        raise UserError(f"a split fraction must be in (0, 1), got {size:g}")
    if n < 1 or n > n_labeled:
        raise UserError(f"cannot pick {n} labeled samples out of {n_labeled} — choose a size between 1 and "
                        f"{n_labeled}")
    classes, counts = torch.unique(labels[labeled], return_counts=True)
    # Largest-remainder rounding gives each class its share and the exact total.
    share = counts.double() * n / n_labeled
    take = share.floor().long()
    rest_order = torch.argsort(share - take, descending=True, stable=True)
    take[rest_order[: n - int(take.sum())]] += 1
    g = torch.Generator().manual_seed(int(seed))
    picked = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = labeled[labels[labeled] == c]
        picked.append(members[torch.randperm(len(members), generator=g)[:k]])
    chosen = torch.cat(picked).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[chosen] = False
    return chosen, torch.nonzero(mask).flatten()


# --- readers ----------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Reads a (gzipped) IDX file, the format of MNIST and Fashion-MNIST, into a uint8 array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path} is unreadable ({e}) — re-download or reinstall the data") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not a uint8 IDX file (bad magic number) — re-download or reinstall the data")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - offset != expected:
        raise UserError(f"{path} is truncated: {len(raw) - offset} bytes of data for shape {dims} — re-download it")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    for name in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte"):
        images = folder / name
        if images.is_file():
            labels = folder / name.replace("images-idx3", "labels-idx1")
            if labels.is_file():
                return images, labels
    return None


def _fashion_mnist(split: str, root: str | None, download: bool, mini: bool) -> ImageSource:
    if mini:
        folders = [FASHION_MNIST_MINI_DIR]
    else:
        folders = [Path(root).expanduser(), Path(root).expanduser() / "FashionMNIST" / "raw"] if root else []
        folders.append(FASHION_MNIST_SYSTEM_DIR)
    for folder in folders:
        pair = _idx_pair(folder, split)
        if pair:
            x, y = read_idx(pair[0]), read_idx(pair[1])
            if x.shape[0] != y.shape[0]:
                raise UserError(f"{pair[0]} has {x.shape[0]} images but {pair[1]} has {y.shape[0]} labels")
            name = "fashion-mnist-mini" if mini else "fashion-mnist"
            return ImageSource(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)),
                               FASHION_MNIST_CLASSES, f"{name}/{split}")
    if mini:
        raise UserError(f"the embedded fashion-mnist-mini files are missing from {FASHION_MNIST_MINI_DIR} — "
                        "reinstall sslkit from a full clone, or run eval/make_fashion_mnist_mini.py")
    if download:
        from torchvision.datasets import FashionMNIST

        target = Path(root or "data").expanduser()
        FashionMNIST(str(target), train=split == "train", download=True)
        return _fashion_mnist(split, str(target), False, False)
    looked = ", ".join(str(f) for f in folders)
    raise UserError(f"Fashion-MNIST not found (looked in {looked}) — apt-get install dataset-fashion-mnist, or set "
                    "data.root to a folder with the .gz files, or set data.download: true")


def _torchvision(dataset: str, split: str, root: str | None, download: bool) -> ImageSource:
    """CIFAR-10/100, STL-10 and SVHN through torchvision's own readers."""
    from torchvision import datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "stl10": tvd.STL10, "svhn": tvd.SVHN}[dataset]
    base = Path(root or "data").expanduser()

    # torchvision checks every file's md5 against the official release even when reading local files. Without
    # a download, files that exist are read as they are (torchvision's reader still validates their format),
    # so copies in the exact format load, the tests' tiny ones included; downloads keep the md5 checks.
    reader = cls
    if not download:
        attrs: dict[str, object] = {}
        for name in ("train_list", "test_list"):
            if hasattr(cls, name):
                attrs[name] = [[entry[0], None] for entry in getattr(cls, name)]
        if hasattr(cls, "meta"):
            attrs["meta"] = dict(cls.meta, md5=None)
        if hasattr(cls, "split_list"):
            attrs["split_list"] = {k: [v[0], v[1], None] for k, v in cls.split_list.items()}
        reader = type(cls.__name__, (cls,), attrs)

    kwargs = {"train": split == "train"} if dataset.startswith("cifar") else {"split": split}
    try:
        ds = reader(str(base), download=download, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        hint = "set data.download: true or put the files there" if not download else f"download failed: {e}"
        raise UserError(f"{dataset} ({split}) not found under {base} — {hint}") from None
    data = np.asarray(ds.data)
    if data.ndim == 4 and data.shape[-1] == 3:  # CIFAR stores N×H×W×C
        data = data.transpose(0, 3, 1, 2)
    raw_labels = getattr(ds, "targets", None)
    if raw_labels is None:
        raw_labels = ds.labels
    labels = torch.as_tensor(np.asarray(raw_labels, dtype=np.int64))
    classes = tuple(getattr(ds, "classes", None) or [str(i) for i in range(10)])
    return ImageSource(torch.from_numpy(np.ascontiguousarray(data)), labels, classes, f"{dataset}/{split}")


def _imagefolder(root: str | None, image_size: int | None, channels: int | None) -> ImageSource:
    """``root/<class>/<image>``: decoded, EXIF-rotated, resized and centre-cropped once, then cached."""
    from PIL import Image, ImageOps

    if not root or not Path(root).expanduser().is_dir():
        raise UserError(f"imagefolder root {root!r} is not a folder — set data.root to a folder of class subfolders")
    base = Path(root).expanduser()
    size = image_size or 64
    mode = "L" if channels == 1 else "RGB"
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"{base} has no class subfolders — expected {base}/<class>/<image>")
    files = [(ci, p) for ci, d in enumerate(class_dirs) for p in sorted(d.rglob("*"))
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    listing = [(str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns) for _, p in files]
    key = hashlib.sha256(json.dumps([listing, size, mode]).encode()).hexdigest()[:16]
    cache = base / ".sslkit-cache"
    images_path, meta_path = cache / f"{key}.npy", cache / f"{key}.json"
    if images_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        with warnings.catch_warnings():  # read-only memory map on purpose: training only ever reads images
            warnings.simplefilter("ignore", UserWarning)
            images = torch.from_numpy(np.load(images_path, mmap_mode="r"))
        return ImageSource(images, torch.tensor(meta["labels"], dtype=torch.long), tuple(meta["classes"]),
                           f"imagefolder:{base.name}")

    from rich.progress import track

    out = np.empty((len(files), 1 if mode == "L" else 3, size, size), dtype=np.uint8)
    labels, bad = [], []
    n = 0
    for ci, path in track(files, description=f"decoding {base.name}", transient=True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    im = ImageOps.exif_transpose(im)
                    if im.mode in ("RGBA", "LA", "P", "PA"):
                        im = im.convert("RGBA")
                        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                        im = Image.alpha_composite(bg, im)
                    im = ImageOps.fit(im.convert(mode), (size, size), method=Image.Resampling.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
        except Exception:  # noqa: BLE001 — any undecodable file is skipped and reported, never fatal
            bad.append(path)
            continue
        out[n] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        labels.append(ci)
        n += 1
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {base}, e.g. "
                      f"{', '.join(str(p.relative_to(base)) for p in bad[:3])}", stacklevel=3)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_dirs))
    empty = [class_dirs[i].name for i in np.flatnonzero(counts == 0)]
    if empty:
        raise UserError(f"class folder(s) {', '.join(empty)} in {base} hold no readable image — add images or "
                        "remove the folder")
    out = out[:n]
    cache.mkdir(exist_ok=True)
    tmp = cache / f".tmp-{key}.{os.getpid()}.npy"
    np.save(tmp, out)
    os.replace(tmp, images_path)
    meta_path.write_text(json.dumps({"labels": labels, "classes": [d.name for d in class_dirs]}))
    return ImageSource(torch.from_numpy(out), torch.tensor(labels, dtype=torch.long),
                       tuple(d.name for d in class_dirs), f"imagefolder:{base.name}")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 images, in chunks, back to uint8.

    Shape:
        (N, C, H, W) -> (N, C, size, size)
    """
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, images.shape[0], 4096):
        x = images[i:i + 4096].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i:i + 4096] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_source(dataset: str, split: str, root: str | None = None, download: bool = False,
                image_size: int | None = None, channels: int | None = None) -> ImageSource:
    """Loads one split of a registered data set into memory.

    Args:
        dataset: one of ``DATASETS``.
        split: ``train`` or ``test`` (STL-10 also ``unlabeled`` and ``train+unlabeled``; SVHN also ``extra``).
        root: where the files are (searched first for Fashion-MNIST; required for imagefolder).
        download: let torchvision download missing files.
        image_size: resize once to this side; None keeps the native size.
        channels: imagefolder only: 1 (grayscale) or 3 (RGB, the default).

    Raises:
        UserError: an unknown name or split, or missing data (the message says where it looked).
    """
    if dataset not in DATASETS:
        close = difflib.get_close_matches(dataset, DATASETS, n=1)
        hint = f" — did you mean {close[0]!r}?" if close else f" — use one of {', '.join(DATASETS)}"
        raise UserError(f"unknown data set {dataset!r}{hint}")
    valid = SPLITS.get(dataset, ("train",) if dataset == "imagefolder" else ("train", "test"))
    if dataset == "imagefolder":
        valid = ("train", "test")  # an image folder is one pool; both names give it (split it with a seed)
    if split not in valid:
        raise UserError(f"{dataset} has no split {split!r} — use one of {', '.join(valid)}")
    if dataset in ("fashion-mnist", "fashion-mnist-mini"):
        source = _fashion_mnist(split, root, download, mini=dataset == "fashion-mnist-mini")
    elif dataset == "imagefolder":
        return _imagefolder(root, image_size, channels)
    else:
        source = _torchvision(dataset, split, root, download)
    if image_size and image_size != source.image_size:
        source = ImageSource(resize(source.images, image_size), source.labels, source.classes, source.name)
    return source
