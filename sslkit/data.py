"""Image sources: whole data sets as one uint8 tensor, plus seeded stratified splits.

Small data sets (Fashion-MNIST, CIFAR, STL-10, SVHN) are read once into an (N, C, H, W) uint8 tensor, so a
training batch is one index operation: no per-sample Python, no worker processes. Image folders are decoded,
resized and cropped once into a uint8 cache (in ``$SSLKIT_CACHE``) and memory-mapped from then on.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import gzip
import hashlib
import http.client
import json
import os
import pickle
import re
import shutil
import socket
import time
import urllib.error
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sslkit.checkpoint import TMP_PREFIX, atomic_write
from sslkit.errors import SslkitWarning, UserError, WriteError
from sslkit.host_memory import physical_memory_bytes

DATASETS: tuple[str, ...] = ("fashion-mnist", "fashion-mnist-mini", "cifar10", "cifar100", "stl10", "svhn",
                             "imagefolder")
SPLITS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("train", "test"),
    "fashion-mnist-mini": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    # SVHN's extra: 531,131 more digits, "somewhat less difficult" in its authors' words, published as extra
    # training data. A split to pretrain on, alone or after train (train+extra, as STL-10's train+unlabeled), never
    # scored (TRAINING_ONLY).
    "svhn": ("train", "test", "extra", "train+extra"),
    # An image folder is one pool of images, split once: test is a fixed stratified part held out of everything a
    # run trains on (imagefolder_split), train is the rest.
    "imagefolder": ("train", "test"),
}
IMAGEFOLDER_TEST_FRACTION = 0.2  # held out of every run, the same files for every command, seed and recipe
# Labeled splits published as training data, disjoint from train and test: a run may pretrain on them, so no
# probe or fine-tune scores on them (and a score on easier images would not compare with the published ones).
TRAINING_ONLY: dict[str, str] = {"svhn": "extra"}


def scored_splits(dataset: str) -> tuple[str, ...]:
    """The splits of ``dataset`` a model trained on its train split can be scored on: labeled, disjoint from train
    (STL-10's ``train+unlabeled`` and SVHN's ``train+extra`` hold the train images, STL-10's ``unlabeled`` has no
    labels) and not training data (SVHN's ``extra``, which a run may have pretrained on: :data:`TRAINING_ONLY`)."""
    return tuple(s for s in SPLITS[dataset]
                 if "train" not in s.split("+") and s != "unlabeled" and s != TRAINING_ONLY.get(dataset))


def pretraining_splits(dataset: str) -> tuple[str, ...]:
    """The splits of ``dataset`` a run can pretrain on (``data.split``): all but those the probes score on, so no
    score is of images the encoder was trained on."""
    return tuple(s for s in SPLITS[dataset] if s not in scored_splits(dataset))


def split_problem(dataset: str, split: str) -> str:
    """Why ``split`` cannot be the pretraining split of ``dataset`` (``data.split``), and which splits can."""
    usable = ", ".join(pretraining_splits(dataset))
    if split in SPLITS[dataset]:
        return (f"data.split {split!r} of {dataset} is where the probes score the encoder, so pretraining on it "
                f"would inflate every score — use {usable}")
    hint = _did_you_mean(split, SPLITS[dataset], usable=pretraining_splits(dataset))
    return f"{dataset} has no split {split!r} (data.split){hint} — use {usable}"


def scored_split_problem(dataset: str, split: str, option: str, fitted: str) -> str:
    """Why ``split`` of ``dataset``, given as ``option``, cannot score a model fitted on the train split (where it is
    not one of :func:`scored_splits`), and which splits can. ``fitted`` says what was fitted on the train images."""
    usable = ", ".join(scored_splits(dataset))
    if split not in SPLITS[dataset]:
        hint = _did_you_mean(split, SPLITS[dataset], usable=scored_splits(dataset))
        return f"{dataset} has no split {split!r} ({option}){hint} — use {usable}"
    return f"{option} {split!r} of {dataset} {unscored_reason(dataset, split, fitted)} — use {usable}"


def unscored_reason(dataset: str, split: str, fitted: str) -> str:
    """Why ``split``, one of ``dataset``'s splits but not of :func:`scored_splits`, scores no model fitted on the
    train split, as a predicate ("has no labels"); ``fitted`` says what was fitted on the train images."""
    if split == "unlabeled":
        return "has no labels"
    if split == TRAINING_ONLY.get(dataset):
        return "is extra training data (easier images, and a run may have pretrained on them), not an evaluation split"
    return f"holds the train images {fitted}"


# Where data goes when data.root is unset. Absolute, so that `pretrain` and a later `probe` run from another
# working directory find the same files.
DEFAULT_ROOT = Path("~/.cache/sslkit/data").expanduser()
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MINI_DIR = Path(__file__).resolve().parent.parent / "assets" / "fashion-mnist-mini"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
IMAGEFOLDER_DEFAULT_SIZE = 64
# Part of every image-folder cache key: bump it when the decoding below changes, so old caches are not reused.
_CACHE_VERSION = 3  # 2: 16-bit grayscale scaled instead of clipped; 3: the decoded files' names kept
_TOLD: set[str] = set()  # image-folder caches whose skipped files or gray images this process has named
_IDX_UINT8 = 0x08  # the IDX type code of unsigned bytes, the only one MNIST-style files use

# How the user tells sslkit where the data is, for the advice in the errors below: None, the recipe's data.root and
# data.download (`sslkit pretrain`, `sslkit finetune`, the library); else the option of a command that reads a
# finished run (`--data-root` of `sslkit probe`, `neighbors`, `map`, `report`), which reads no data.* key.
_DATA_ROOT_OPTION: ContextVar[str | None] = ContextVar("sslkit_data_root_option", default=None)


@contextlib.contextmanager
def data_root_option(option: str | None) -> Iterator[None]:
    """Inside, data that is missing or damaged is reported with ``option`` (``"--data-root"``) as the way to point
    at another folder, and a download by hand (the URL) as the way to get the files, instead of the recipe keys
    data.root and data.download, which a command that reads a finished run does not read. None: the recipe keys."""
    token = _DATA_ROOT_OPTION.set(option)
    try:
        yield
    finally:
        _DATA_ROOT_OPTION.reset(token)


# Whether the image size is the run's (its encoder's), not data.image_size: true inside `sslkit finetune`'s data
# loading, which reads the recipe keys data.root and data.download (so _DATA_ROOT_OPTION stays None) but has no
# data.image_size to lower. The commands with --data-root read a run too: _check_room counts them without this.
_IMAGE_SIZE_OF_RUN: ContextVar[bool] = ContextVar("sslkit_image_size_of_run", default=False)


@contextlib.contextmanager
def image_size_of_run() -> Iterator[None]:
    """Inside, data too large for memory or for the image cache's disk is reported as the run's image size, with
    room to make as the way out, instead of "lower data.image_size" (a key a fine-tune recipe does not have)."""
    token = _IMAGE_SIZE_OF_RUN.set(True)
    try:
        yield
    finally:
        _IMAGE_SIZE_OF_RUN.reset(token)


def _point_at(folder: str) -> str:
    """The advice to read the data from ``folder`` (a description: "a folder with …"), as the caller sets it."""
    option = _DATA_ROOT_OPTION.get()
    return f"give {option} DIR, {folder}" if option else f"set data.root to {folder}"


def _replace(dataset: str, split: str, damaged: str, intact: str) -> str:
    """The advice for ``damaged`` files ("it", "both"), for which ``intact`` ("an intact copy") is wanted: the
    recipe's download, or, for a command that reads a run, the files by hand or another folder of them."""
    option = _DATA_ROOT_OPTION.get()
    if option is None:
        return f"delete {damaged} and set data.download: true, or put {intact} there"
    url, _ = _download_source(_torchvision_class(dataset), split)
    return f"put {intact} there (from {url}), or give {option} DIR, a folder with intact files"


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field has no single truth value
class ImageSource:
    """Images and labels of one split, held whole.

    Attributes:
        images: uint8 tensor (N, C, H, W) of square images; in memory, or memory-mapped for an image folder.
        labels: int64 tensor (N,); -1 marks an unlabeled image.
        classes: class names, indexed by label.
        name: where the images came from, e.g. ``fashion-mnist/train``.
        ids: a stable name per image where the data set has one (an image folder: each file's path in it).
        files_key: with ``ids``, what names the images without reading them: an image folder's cache key, a hash
            of each of its files' path in it, size, mtime and ctime, and of the decoding. The same wherever the
            folder is reached (moved, through a symlink, by a relative path); any file changed changes it.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    ids: tuple[str, ...] | None = None
    files_key: str | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    def subset(self, idx: torch.Tensor) -> ImageSource:
        """The images and labels at ``idx`` (a copy, in that order), or where a boolean mask of length N is true;
        the name records how many were taken."""
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:  # as a long tensor a mask would pick images 0 and 1, N times over
            if idx.shape != (len(self),):
                raise ValueError(f"a boolean mask must be ({len(self)},), got shape {tuple(idx.shape)}")
            idx = torch.nonzero(idx.cpu()).flatten()
        idx = idx.long()
        ids = tuple(self.ids[i] for i in idx.tolist()) if self.ids is not None else None
        return ImageSource(self.images[idx.to(self.images.device)], self.labels[idx.to(self.labels.device)],
                           self.classes, f"{self.name}[{len(idx)}/{len(self)}]", ids, self.files_key)


# --- splits -----------------------------------------------------------------------------------------------


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in bounded memory."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].to(torch.float64) / 255
        s += x.sum(dim=(0, 2, 3)).cpu()
        s2 += x.square().sum(dim=(0, 2, 3)).cpu()
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


def split_description(dataset: str, split: str) -> str:
    """How a split is named in reports: an image folder's test split says what it is."""
    if dataset == "imagefolder" and split == "test":
        return f"test ({IMAGEFOLDER_TEST_FRACTION:.0%} of the image folder, held out of pretraining)"
    return split


def _file_rank(name: str) -> int:
    """A file's place in the held-out order: a hash of its path in the folder, the same on every machine.
    (A name that is not valid UTF-8 keeps its raw bytes: ``surrogateescape``.)"""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8], "big")


def files_digest(names: Iterable[str]) -> str:
    """The SHA-256 of a set of image-folder paths (``ImageSource.ids``), whatever their order: what a run records
    of its pretraining pool, so that a later command can tell whether the folder still holds those files."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def imagefolder_split(pool: ImageSource) -> tuple[ImageSource, ImageSource]:
    """An image folder's (train, test) splits, the same for every recipe, seed and command, so that pretraining
    never sees the test split and every command (probe, finetune, neighbors, map, report) scores on it.

    Each class holds out round(``IMAGEFOLDER_TEST_FRACTION`` × its size) files, those whose paths hash lowest
    (at least one file in all). The choice follows the files, not their positions: adding or removing a file
    moves at most one other file of its class between the splits, where a seeded shuffle of the whole folder
    would redraw it. ``pool`` is :func:`imagefolder_pool`'s, whose ``ids`` are those paths.

    Raises:
        UserError: a folder of fewer than 2 images (nothing to hold out).
    """
    if len(pool) < 2:
        raise UserError(f"{pool.name} holds {len(pool)} image(s): an image folder needs at least 2, one of them held "
                        "out as its test split — add images")
    assert pool.ids is not None, "imagefolder_pool names every image"
    ranks = [_file_rank(name) for name in pool.ids]
    held: list[int] = []
    for c in torch.unique(pool.labels).tolist():
        members = sorted(torch.nonzero(pool.labels == c).flatten().tolist(), key=ranks.__getitem__)
        held += members[:round(IMAGEFOLDER_TEST_FRACTION * len(members))]
    if not held:
        held = [min(range(len(pool)), key=ranks.__getitem__)]
    test = torch.zeros(len(pool), dtype=torch.bool)
    test[held] = True
    return pool.subset(torch.nonzero(~test).flatten()), pool.subset(torch.nonzero(test).flatten())


def stratified_split(labels: torch.Tensor, size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Picks ``size`` labeled samples with the class proportions of all labeled samples, reproducibly.

    Each class gets its share of ``size``, rounded by largest remainder so the total is exact. Within a class
    the picked samples are uniformly random, drawn from one ``torch.Generator`` seeded with ``seed``.

    Args:
        labels: int labels; -1 (unlabeled) is never picked.
        size: a count (int >= 1) or a fraction of the labeled samples (float, 0 < size < 1).
        seed: the same seed gives the same split on any machine.

    Returns:
        ``(picked, rest)``: sorted int64 index tensors, disjoint, that together cover all N samples.

    Raises:
        UserError: a size outside those ranges or larger than the number of labeled samples.

    Shape:
        labels (N,) -> picked (size,), rest (N - size,)
    """
    labels = torch.as_tensor(labels).cpu().long().flatten()
    labeled = torch.nonzero(labels >= 0).flatten()
    n_labeled = len(labeled)
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise UserError(f"split size must be a count (int >= 1) or a fraction in (0, 1), got {size!r}")
    if isinstance(size, (float, np.floating)):
        if not 0 < size < 1:
            raise UserError(f"split fraction {size:g} is outside (0, 1) — give a fraction like 0.1 or a whole count")
        n = round(float(size) * n_labeled)
    else:
        n = int(size)
    if n < 1 or n > n_labeled:
        raise UserError(f"cannot pick a stratified split of {n} out of {n_labeled} labeled samples — choose a size "
                        f"between 1 and {n_labeled}")

    # Exact integer largest-remainder rounding (no floats, so no machine-dependent ties): class c gets
    # floor(n * count_c / n_labeled), and the leftover units go to the largest remainders, lowest class first.
    classes, counts = torch.unique(labels[labeled], return_counts=True)
    take = counts * n // n_labeled
    remainder = counts * n % n_labeled
    by_remainder = torch.argsort(-remainder, stable=True)
    take[by_remainder[: n - int(take.sum())]] += 1

    # One random permutation of all labeled samples, then a stable sort by class: each class's members end
    # up in random order, so the first take[c] of each class group are a uniform sample of that class.
    g = torch.Generator().manual_seed(int(seed))
    shuffled = labeled[torch.randperm(n_labeled, generator=g)]
    cls = torch.searchsorted(classes, labels[shuffled])  # class position 0..K-1 of each shuffled sample
    order = torch.argsort(cls, stable=True)
    grouped, grouped_cls = shuffled[order], cls[order]
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n_labeled) - group_start[grouped_cls]
    picked = grouped[rank < take[grouped_cls]].sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[picked] = False
    return picked, torch.nonzero(keep).flatten()


# --- Fashion-MNIST ----------------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file of unsigned bytes (the MNIST / Fashion-MNIST format), gzipped when it ends in .gz.

    Raises:
        UserError: the file is unreadable, not a uint8 IDX file, or truncated; the message names it.
    """
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip: BadGzipFile (an OSError), EOFError or zlib.error
        raise UserError(f"{path} is unreadable ({_one_line(e)}) — delete it and re-download or reinstall it") from None
    # Magic number: two zero bytes, the element type, then the number of dimensions.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UINT8 or raw[3] == 0:
        raise UserError(f"{path} is not a uint8 IDX file (bad magic number {raw[:4].hex() or 'none'}) — delete it "
                        "and re-download or reinstall it")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise UserError(f"{path} is truncated inside its header — delete it and re-download or reinstall it")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - offset != expected:
        raise UserError(f"{path} holds {len(raw) - offset} data bytes but its header says {expected} (shape {shape}) "
                        "— delete it and re-download or reinstall it")
    # A bytearray makes the array writable without a second copy (torch warns on read-only numpy memory).
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=offset).reshape(shape)


def _idx_names(split: str) -> tuple[str, str]:
    """The names of a split's images and labels files, without .gz."""
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of a split in ``folder``, each gzipped or not, or None when both are absent.

    Raises:
        UserError: ``folder`` holds one file of the two (half copied or half extracted): reading another copy of
            the data set instead, as for a folder without any, would hide that.
    """
    images, labels = (next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)
                      for name in _idx_names(split))
    if images is not None and labels is not None:
        return images, labels
    if images is not None or labels is not None:
        have = images or labels
        lack = _idx_names(split)[1 if labels is None else 0]
        raise UserError(f"{folder} holds {have.name} but not {lack}.gz — put that file there too, or remove "
                        f"{have.name}")
    return None


def _read_fashion_mnist(pair: tuple[Path, Path], name: str) -> ImageSource:
    x, y = read_idx(pair[0]), read_idx(pair[1])
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise UserError(f"{pair[0]} (shape {x.shape}) and {pair[1]} (shape {y.shape}) do not form one image set — "
                        "delete them and re-download or reinstall the data")
    return ImageSource(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64)), FASHION_MNIST_CLASSES,
                       name)


def _fashion_mnist(split: str, root: str | None, download: bool) -> ImageSource:
    base = Path(root).expanduser() if root else None
    folders = [base, base / "FashionMNIST" / "raw"] if base else []
    folders.append(FASHION_MNIST_SYSTEM_DIR)
    if base is None:
        folders.append(DEFAULT_ROOT / "FashionMNIST" / "raw")  # where an earlier download went
    for folder in folders:
        pair = _idx_pair(folder, split)
        if pair:
            if base is not None and folder == FASHION_MNIST_SYSTEM_DIR:
                given = "data.root" if _DATA_ROOT_OPTION.get() is None else "the data folder"
                warnings.warn(f"{given} {str(base)!r} holds no Fashion-MNIST {split} files: read those of {folder}",
                              SslkitWarning, stacklevel=3)
            return _read_fashion_mnist(pair, f"fashion-mnist/{split}")
    target = base or DEFAULT_ROOT
    if download:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(target), train=split == "train", download=True)
        except Exception as e:  # noqa: BLE001 — offline (URLError), a bad checksum (RuntimeError): all the user's to fix
            raise UserError(f"downloading Fashion-MNIST into {target / 'FashionMNIST' / 'raw'} failed "
                            f"({_one_line(e)}) — check the network, or apt-get install dataset-fashion-mnist") from None
        pair = _idx_pair(target / "FashionMNIST" / "raw", split)
        if pair:
            return _read_fashion_mnist(pair, f"fashion-mnist/{split}")
    looked = ", ".join(str(f) for f in folders)
    images, labels = _idx_names(split)
    download = "" if _DATA_ROOT_OPTION.get() else ", or set data.download: true"
    raise UserError(f"Fashion-MNIST {split} files not found (looked in {looked}) — apt-get install "
                    f"dataset-fashion-mnist, or {_point_at(f'a folder with {images}.gz and {labels}.gz')}{download}")


def _fashion_mnist_mini(split: str) -> ImageSource:
    pair = _idx_pair(FASHION_MNIST_MINI_DIR, split)
    if pair is None:
        raise UserError(f"the embedded fashion-mnist-mini files are missing from {FASHION_MNIST_MINI_DIR} — reinstall "
                        "sslkit from a full clone (pip install -e .), or run eval/make_fashion_mnist_mini.py")
    return _read_fashion_mnist(pair, f"fashion-mnist-mini/{split}")


# --- CIFAR, STL-10, SVHN through torchvision --------------------------------------------------------------


def _data_base(root: str | None) -> Path:
    """Where a torchvision data set's files are looked for: ``data.root``, by default sslkit's own folder."""
    return Path(root).expanduser() if root else DEFAULT_ROOT


def split_length(dataset: str, split: str, root: str | None) -> int:
    """How many images a split holds, from its file's size, without reading them. STL-10's unlabeled split only
    (2.7 GB): a run pretrained on ``train+unlabeled`` needs the count to recompute which train images it took.

    Raises:
        UserError: the file is missing or holds no whole number of images.
    """
    if (dataset, split) != ("stl10", "unlabeled"):
        raise ValueError(f"the length of {dataset}/{split} is only known by loading it")
    base = _data_base(root)
    path = base / _torchvision_class("stl10").base_folder / "unlabeled_X.bin"
    try:
        return _stl10_images(path)
    except OSError as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}: {_one_line(e)}) — put STL-10's unlabeled "
                        f"images there, or {_point_at('the folder that holds stl10_binary/ with them')}") from None


def split_labels(dataset: str, split: str, root: str | None) -> torch.Tensor:
    """The labels of a split (-1 where it has none) without decoding its images: what a run pretrained on train and
    ``split`` (``data.split`` ``train+unlabeled`` or ``train+extra``) needs, after the train labels, to recompute
    which train images it took (:func:`sslkit.trainer.train_images_in_pool`). STL-10's unlabeled: none, one per
    image counted from the file's size (2.7 GB); SVHN's extra: the digits of its .mat file, read without its
    images (1.3 GB), 10 read as 0 as torchvision does.

    Raises:
        UserError: the file is missing or damaged.
    """
    if (dataset, split) != ("svhn", "extra"):
        return torch.full((split_length(dataset, split, root),), -1, dtype=torch.long)
    from scipy.io import loadmat

    cls = _torchvision_class(dataset)
    path = _expected_files(cls, _data_base(root), split)[0]
    if not path.is_file():
        url, action = _download_source(cls, split)
        raise UserError(f"{path} is missing — put SVHN's extra digits there (download {url} and {action} "
                        f"{path.parent}), or {_point_at('the folder that holds extra_32x32.mat')}")
    try:
        y = np.asarray(loadmat(path, variable_names=["y"])["y"], dtype=np.int64).reshape(-1)
    except Exception as e:  # noqa: BLE001 — cut short, garbled or no y: damaged, as torchvision's read would find it
        raise _damaged(dataset, split, path, e) from None
    return torch.from_numpy(np.where(y == 10, 0, y))


_STL10_IMAGE_BYTES = 3 * 96 * 96


def _stl10_images(path: Path) -> int:
    """How many images STL-10's ``path`` (a ``*_X.bin``) holds, from its size. torchvision reshapes the file as it
    is: one cut short at an image boundary would load, with fewer images than labels.

    Raises:
        UserError: a size that is no whole, positive number of images. OSError: the file cannot be read.
    """
    size = path.stat().st_size
    if size == 0 or size % _STL10_IMAGE_BYTES:
        raise UserError(f"{path} holds {size:,} bytes, not a whole number of 96×96 RGB images ({_STL10_IMAGE_BYTES:,} "
                        f"bytes each) — {_replace('stl10', 'train', 'it', 'the intact file')}")
    return size // _STL10_IMAGE_BYTES


def _check_stl10(folder: Path, split: str) -> None:
    """Raises a ``UserError`` naming the STL-10 file of ``split`` in ``folder`` that is cut short or damaged (its
    images not a whole number, its labels not one byte in 1..10 per image), before torchvision reads them: it
    checks neither, and a short label file would otherwise stop sslkit with a traceback. (A file that cannot be
    read at all is left to torchvision's read, whose failure names the folder.)"""
    for part in split.split("+"):
        try:
            n = _stl10_images(folder / f"{part}_X.bin")
            labels = None if part == "unlabeled" else np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8)
        except OSError:
            return
        if labels is None:
            continue
        if len(labels) != n:
            raise UserError(f"{folder / f'{part}_y.bin'} holds {len(labels):,} labels but {part}_X.bin {n:,} images "
                            f"— one of them is cut short: {_replace('stl10', part, 'both', 'the intact files')}")
        bad = np.flatnonzero((labels < 1) | (labels > 10))
        if len(bad):
            raise UserError(f"{folder / f'{part}_y.bin'} holds label {labels[bad[0]]} at image {bad[0]:,}, outside "
                            f"STL-10's 1..10 — {_replace('stl10', part, 'it', 'the intact file')}")


def _torchvision_class(dataset: str) -> type:
    from torchvision import datasets as tvd

    return {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "stl10": tvd.STL10, "svhn": tvd.SVHN}[dataset]


def _expected_files(cls: type, root: Path, split: str) -> list[Path]:
    """The files torchvision's reader ``cls`` opens under ``root`` (for SVHN and STL-10: of this split only)."""
    if hasattr(cls, "split_list"):  # SVHN: one .mat file per split, {split: [url, filename, md5]}
        return [root / cls.split_list[split][1]]
    names = [name for name, _ in cls.train_list + cls.test_list]
    if cls.base_folder == "stl10_binary":  # train_X.bin, train_y.bin, unlabeled_X.bin, ...: train and test need
        names = [n for n in names if n.split("_")[0] in split.split("+")]  # no 2.7 GB unlabeled file
    files = [root / cls.base_folder / name for name in names]
    if hasattr(cls, "meta"):  # CIFAR's pickled class names
        files.append(root / cls.base_folder / cls.meta["filename"])
    return files


def _download_source(cls: type, split: str) -> tuple[str, str]:
    """Where torchvision downloads ``split`` of ``cls`` from, and what to do with that file: SVHN's .mat files are
    read where they are, the CIFAR and STL-10 archives are extracted."""
    if hasattr(cls, "split_list"):
        return cls.split_list[split][0], "put it in"
    return cls.url, "extract it in"


def _check_layout(dataset: str, cls: type, base: Path) -> None:
    """A ``UserError`` when ``base`` (data.root) holds a data set's files but not where torchvision reads them:
    data.root set to the extracted folder itself, or the files put straight in data.root."""
    folder = getattr(cls, "base_folder", None)  # SVHN has none: its .mat files are read from data.root itself
    if folder is None or (base / folder).is_dir():
        return
    if base.name == folder:
        option = _DATA_ROOT_OPTION.get()
        if option:
            raise UserError(f"{base} is the {folder} folder itself — give {option} {base.parent}, the folder that "
                            "holds it")
        raise UserError(f"data.root {base} is the {folder} folder itself — set data.root to the folder that holds "
                        f"it, {base.parent}")
    names = [name for name, _ in cls.train_list + cls.test_list]
    if all((base / name).is_file() for name in names):
        raise UserError(f"{base} holds {names[0]} and the other {dataset} files directly, but torchvision reads them "
                        f"from {base / folder} — move them into that folder")


def _not_found(dataset: str, cls: type, base: Path, split: str, missing: list[Path]) -> str:
    """Why ``split`` of ``dataset`` cannot be read from ``base`` without a download, and how to get its files."""
    what = f"{missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}"
    option = _DATA_ROOT_OPTION.get()
    archive = base / getattr(cls, "filename", "")
    if getattr(cls, "filename", None) and archive.is_file():
        download = "" if option else ", or set data.download: true, which checks it and extracts it"
        return (f"{archive} is not extracted (missing {what}) — extract it there (tar -xzf {archive} -C {base})"
                f"{download}")
    url, action = _download_source(cls, split)
    if option:
        top = missing[0].relative_to(base).parts  # the folder (CIFAR, STL-10) or file (SVHN) data.root holds
        held = f"{top[0]}/" if len(top) > 1 else top[0]
        return (f"{dataset} files not found under {base} (missing {what}) — give {option} DIR, the folder that holds "
                f"{held} now, or download {url} and {action} {base}")
    return (f"{dataset} files not found under {base} (missing {what}) — set data.download: true, or download {url} "
            f"and {action} {base}")


def _damaged(dataset: str, split: str, path: Path, why: Exception) -> UserError:
    return UserError(f"reading {dataset} ({split}) failed: {path} is damaged ({type(why).__name__}: {_one_line(why)}) "
                     f"— {_replace(dataset, split, 'it', 'an intact copy')}")


def _check_cifar_pickles(dataset: str, cls: type, base: Path, split: str) -> None:
    """Reads the CIFAR pickles that torchvision is about to unpickle with :func:`read_array_pickle` first: without
    a download their md5 is not checked (:func:`_local_reader`), and ``pickle.load`` would run any code a file
    carries. A file cut short, garbled or carrying code is named, which torchvision's own error does not do.

    Raises:
        UserError: naming the first such file.
    """
    names = [name for name, _ in (cls.train_list if split == "train" else cls.test_list)] + [cls.meta["filename"]]
    for path in (base / cls.base_folder / name for name in names):
        try:
            read_array_pickle(path)
        except Exception as e:  # noqa: BLE001 — truncated, garbled, refused or unreadable: all the same to the user
            raise _damaged(dataset, split, path, e) from None


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler of plain data and numpy arrays only: any other global a pickle names is refused, so reading
    one runs no code it carries (the Python documentation's "Restricting Globals")."""

    # numpy < 2 and ≥ 2 name their modules apart; protocol 5 rebuilds arrays with _frombuffer; Python 3 writes bytes
    # into a protocol-2 pickle with _codecs.encode (CIFAR's own files, from Python 2, need neither)
    ALLOWED = frozenset({("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                         ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.numeric", "_frombuffer"),
                         ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        return super().find_class(module, name)


def read_array_pickle(path: Path, encoding: str = "latin1") -> Any:
    """The contents of a pickle of plain data and numpy arrays, such as CIFAR's batches (Python 2 pickles: their
    byte strings decoded as ``encoding``, latin1 as torchvision reads them, or ``"bytes"`` to keep them), read
    without running code: a pickle that names any other global is refused with an ``UnpicklingError``."""
    with open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding=encoding).load()


def _read_failure(dataset: str, cls: type, base: Path, split: str, download: bool, e: Exception) -> UserError:
    """What to tell the user when torchvision's ``cls`` failed with ``e``: the network, a damaged file named where it
    can be told, else the folder; the way out each time (a download, or what to fetch from where)."""
    url, action = _download_source(cls, split)
    if download and isinstance(e, (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)):
        return UserError(f"downloading {dataset} into {base} failed ({type(e).__name__}: {_one_line(e)}) — check the "
                         f"network, or download {url} elsewhere and {action} {base}")
    if download:  # a download that failed its checksum (a proxy's page, a cut transfer), a failed extraction
        return UserError(f"downloading or reading {dataset} ({split}) under {base} failed ({type(e).__name__}: "
                         f"{_one_line(e)}) — delete the damaged or partly downloaded files there and run again, or "
                         f"download {url} elsewhere and {action} {base}")
    files = _expected_files(cls, base, split)
    if len(files) == 1:  # SVHN: the split is one file (CIFAR's pickles were read one by one before)
        return _damaged(dataset, split, files[0], e)
    return UserError(f"reading {dataset} ({split}) under {base} failed ({type(e).__name__}: {_one_line(e)}) — "
                     f"{_replace(dataset, split, 'the damaged files', 'intact files')}")


def _local_reader(cls: type) -> type:
    """``cls`` with its integrity check reduced to "the files exist".

    torchvision compares every file's md5 with the official release even when nothing is downloaded, so
    copies in the exact format (the tests' tiny files, a re-packed mirror) would be refused. The reader still
    parses the files, which catches a wrong format; downloads keep torchvision's md5 checks.
    """

    def _check_integrity(self: Any) -> bool:
        return all(p.is_file() for p in _expected_files(cls, Path(self.root), getattr(self, "split", "train")))

    attrs: dict[str, Any] = {"_check_integrity": _check_integrity}
    if hasattr(cls, "meta"):
        attrs["meta"] = {**cls.meta, "md5": None}  # CIFAR checks its meta file separately; md5 None = exists
    return type(f"Local{cls.__name__}", (cls,), attrs)


def _md5_checked_files(cls: type, base: Path, split: str) -> list[Path]:
    """The files whose md5 torchvision's ``cls`` compares with the release's when made with ``download=True``, even
    when nothing is missing: SVHN the split's .mat (extra: 1.3 GB); CIFAR and STL-10 every file of the release,
    whichever the split (STL-10: 3.1 GB, most of it the unlabeled images)."""
    if hasattr(cls, "split_list"):
        return [base / cls.split_list[split][1]]
    files = [base / cls.base_folder / name for name, _ in cls.train_list + cls.test_list]
    if hasattr(cls, "meta"):
        files.append(base / cls.base_folder / cls.meta["filename"])
    return files


def _verified_record(base: Path) -> Path:
    """Where the files of the data folder ``base`` that passed torchvision's md5 check are recorded: in sslkit's
    cache (``$SSLKIT_CACHE/verified/``), not in the data folder, which may be shared or read-only."""
    return _cache_root() / "verified" / f"{_folder_key(base.resolve())}.json"


def _file_state(path: Path) -> list[int]:
    """What changes when a file is rewritten, replaced or cut short: size, mtime and ctime (which tools that restore
    a replaced file's mtime cannot set back)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _md5_verified(cls: type, base: Path, split: str) -> bool:
    """Whether every file torchvision would md5 for ``split`` passed that check before and is unchanged since."""
    try:
        record = json.loads(_verified_record(base).read_text())
        return all(record.get(str(p.relative_to(base))) == _file_state(p) for p in _md5_checked_files(cls, base, split))
    except (OSError, ValueError, AttributeError):  # no record, a file gone, a record that is not a JSON object
        return False


def _remember_md5_verified(cls: type, base: Path, split: str) -> None:
    """Records the files torchvision has just checked (or downloaded and checked) for ``split``, as they are now."""
    path = _verified_record(base)
    try:
        record = json.loads(path.read_text())
        record = record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        record = {}
    try:
        record.update({str(p.relative_to(base)): _file_state(p) for p in _md5_checked_files(cls, base, split)})
        text = json.dumps(record, indent=1)
        atomic_write(path, lambda part: part.write_text(text))
    except OSError:  # a file gone since, or no writable cache (WriteError is an OSError): checked again next time
        pass


def _torchvision(dataset: str, split: str, root: str | None, download: bool) -> ImageSource:
    """CIFAR-10/100, STL-10 and SVHN through torchvision's own readers, as one (N, 3, H, W) uint8 tensor.

    With ``download``, torchvision compares the md5 of every file of the release on each load, even when nothing is
    missing (:func:`_md5_checked_files`; STL-10: 3.1 GB, a few seconds to minutes on every pretrain, resume and
    fine-tune). Files that passed once and are unchanged since (:func:`_md5_verified`) are read as local files
    instead, checked only as those are.
    """
    if dataset == "svhn" and "+" in split:  # torchvision reads SVHN a .mat file at a time: each part, train first
        return _svhn_parts(split, root, download)
    data, labels, classes = _torchvision_arrays(dataset, split, root, download)
    return ImageSource(torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(labels), classes,
                       f"{dataset}/{split}")


def _svhn_parts(split: str, root: str | None, download: bool) -> ImageSource:
    """SVHN's ``train+extra``: each part's images copied from torchvision's array straight into their place in one
    tensor made for all of them. Made contiguous one by one and then concatenated, they were held twice (1.9 GB
    each): at the end only the result and the array of the part being copied are."""
    parts = [_torchvision_arrays("svhn", part, root, download) for part in split.split("+")]
    images = torch.empty((sum(len(data) for data, _, _ in parts), *parts[0][0].shape[1:]), dtype=torch.uint8)
    labels = torch.from_numpy(np.concatenate([part_labels for _, part_labels, _ in parts]))
    classes, start = parts[0][2], 0
    while parts:
        data = parts.pop(0)[0]  # dropped once copied
        images[start:start + len(data)] = torch.from_numpy(data)
        start += len(data)
        del data
    return ImageSource(images, labels, classes, f"svhn/{split}")


def _torchvision_arrays(dataset: str, split: str, root: str | None,
                        download: bool) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """One split as torchvision's reader holds it: images (N, C, H, W) uint8, maybe a strided view of the file's
    own layout (SVHN's .mat is (H, W, C, N)), labels (N,) int64, and the class names (:func:`_torchvision`)."""
    cls = _torchvision_class(dataset)
    base = _data_base(root)
    missing = [p for p in _expected_files(cls, base, split) if not p.is_file()]
    if missing:
        _check_layout(dataset, cls, base)  # before a download too, which would fetch a second copy in the wrong place
        if not download:
            raise UserError(_not_found(dataset, cls, base, split, missing))
    if download and not missing and _md5_verified(cls, base, split):
        download = False  # nothing to fetch, and torchvision would md5 every file again
    if not download:
        if dataset == "stl10":
            _check_stl10(base / cls.base_folder, split)
        elif hasattr(cls, "meta"):
            _check_cifar_pickles(dataset, cls, base, split)
        cls = _local_reader(cls)
    kwargs = {"train": split == "train"} if dataset.startswith("cifar") else {"split": split}
    try:
        ds = cls(str(base), download=download, **kwargs)
    except Exception as e:  # noqa: BLE001 — offline, bad checksum, damaged pickle/.mat/.bin: one line for all
        raise _read_failure(dataset, cls, base, split, download, e) from None
    if download:
        _remember_md5_verified(cls, base, split)
    data = np.asarray(ds.data)
    if dataset.startswith("cifar"):  # torchvision turns CIFAR's channel-major rows into N×H×W×C; undo that
        data = data.transpose(0, 3, 1, 2)
    labels = np.asarray(ds.targets if dataset.startswith("cifar") else ds.labels, dtype=np.int64)
    if dataset == "svhn":
        classes: tuple[str, ...] = tuple(str(d) for d in range(10))  # torchvision already mapped label 10 to 0
    elif dataset == "stl10":
        classes = tuple(getattr(ds, "classes", None) or STL10_CLASSES)  # class_names.txt is optional
    else:
        classes = tuple(ds.classes)
    return data, labels, classes


# --- image folders ----------------------------------------------------------------------------------------


def _list_images(base: Path) -> tuple[list[str], list[tuple[int, Path]]]:
    """Class names (sorted subfolder names) and (class index, path) of every image file below them."""
    class_dirs = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    files = [(ci, p) for ci, d in enumerate(class_dirs) for p in _images_below(d)]
    return [d.name for d in class_dirs], files


def _images_below(folder: Path) -> list[Path]:
    """The image files anywhere below ``folder``, sorted, symlinked folders followed (as torchvision's
    ``ImageFolder`` does), each folder read once however many links lead to it."""
    seen: set[str] = set()
    found = []
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back up the tree, or a second link to one folder
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()  # the first of two links to one folder is the same on every file system
        found += [Path(top, n) for n in names
                  if Path(n).suffix.lower() in IMAGE_SUFFIXES and not n.startswith(".") and Path(top, n).is_file()]
    return sorted(found)


def _decode(path: Path, size: int, mode: str) -> np.ndarray | str:
    """One image as a (C, size, size) uint8 array: EXIF-rotated, shorter side resized to ``size``, centre-cropped.

    Returns:
        The array, or a short reason when the file cannot be used.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            w, h = im.size
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse the whole range here, in the
            # same way from every thread, instead of decoding a possible decompression bomb.
            if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
                return f"{w}x{h} pixels, over PIL.Image.MAX_IMAGE_PIXELS"
            scale = size / min(w, h)
            target = (max(size, round(w * scale)), max(size, round(h * scale)))
            im.draft(None, target)  # JPEG only: decode at a reduced scale still >= target, much faster for photos
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16") or im.mode == "I":
                # 16-bit grayscale (PNG, TIFF): Pillow's convert() clips at 255 instead of scaling, which turns
                # almost every pixel white; map 0..65535 onto 0..255 first.
                im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257).round().clip(0, 255).astype(np.uint8))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # Transparent pixels carry arbitrary colours; show them on white as a viewer would.
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            im = im.convert(mode)
            w, h = im.size
            scale = size / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except Image.DecompressionBombError:
        return "decompression bomb"
    except Exception as e:  # noqa: BLE001 — truncated, corrupt or not an image at all: skipped and reported
        return f"{type(e).__name__}: {_one_line(e)}"
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decoded(files: list[tuple[int, Path]], size: int, mode: str) -> Iterator[np.ndarray | str]:
    """Decodes in order on a few threads (Pillow releases the GIL while decoding and resizing)."""
    chunk = 256  # bounded: never a million pending futures for a big folder
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i in range(0, len(files), chunk):
            yield from pool.map(lambda f: _decode(f[1], size, mode), files[i:i + chunk])


def _decode_all(files: list[tuple[int, Path]], size: int, mode: str, out: np.ndarray, base: Path
                ) -> tuple[list[int], list[tuple[Path, str]]]:
    """Fills ``out`` front to back with the readable images; returns their labels and the skipped files."""
    from PIL import Image
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sslkit.console import PipeSafeConsole

    labels: list[int] = []
    bad: list[tuple[Path, str]] = []
    console = PipeSafeConsole(stderr=True)
    # What becomes of the images, said once, where the bar (transient) leaves nothing behind.
    console.print(f"decoding {len(files):,} images in {base} once, to {size}×{size} "
                  f"{'RGB' if mode == 'RGB' else 'grayscale'} (shorter side resized to {size}, then centre-cropped; "
                  "data.image_size sets the size), cached for later runs", soft_wrap=not console.is_terminal)
    columns = (TextColumn("decoding {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # _decode refuses oversized images itself and the summary reports them; Pillow's own warning would repeat it.
    # Set here, before the worker threads start, because the warning filters are global.
    with warnings.catch_warnings(), Progress(*columns, console=console, transient=True) as progress:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        task = progress.add_task(base.name, total=len(files))
        for (ci, path), result in zip(files, _decoded(files, size, mode), strict=True):
            if isinstance(result, str):
                bad.append((path, result))
            else:
                out[len(labels)] = result
                labels.append(ci)
            progress.advance(task)
    return labels, bad


def _all_gray(images: np.ndarray, chunk: int = 4096) -> bool:
    """Whether every (N, 3, H, W) uint8 image has three equal channels, read in chunks."""
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk]
        if not ((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()):
            return False
    return True


def _cache_write_error(e: OSError, path: Path, cache: Path) -> WriteError:
    """The one-line error of an image cache that could not be written (nothing of it kept), naming ``path`` (the
    cache file: ``e`` names its temporary file, or no file) and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the disk of the image cache {cache}, or set SSLKIT_CACHE to a folder on a disk with room"
    else:
        fix = "set SSLKIT_CACHE to a folder that can be written"
    return WriteError(e.errno, e.strerror or _one_line(e), e.filename if isinstance(e, WriteError) else str(path),
                      f"nothing of the image cache was kept; {fix}, then run the command again")


def imagefolder_pool(root: str | None, image_size: int | None = None, channels: int | None = None) -> ImageSource:
    """Every image of ``root/<class>/<image>``: decoded, EXIF-rotated, resized and centre-cropped once, then cached
    (``load_source`` splits it into train and test)."""
    from numpy.lib.format import open_memmap

    if not root:
        option = _DATA_ROOT_OPTION.get()
        where = f"a folder — give {option} DIR," if option else "data.root — set it to"
        raise UserError(f"data.dataset imagefolder needs {where} a folder of class subfolders (root/<class>/<image>)")
    base = Path(root).expanduser().resolve()
    if not base.is_dir():
        raise UserError(f"imagefolder root {base} is not a folder — {_point_at('a folder of class subfolders')}")
    if channels not in (None, 1, 3):
        raise UserError(f"data.channels is {channels} but an image folder is read as 1 (grayscale) or 3 (RGB) "
                        "channels — set data.channels to 1 or 3")
    size = image_size or IMAGEFOLDER_DEFAULT_SIZE
    mode = "L" if channels == 1 else "RGB"
    classes, files = _list_images(base)
    if not files:
        raise UserError(f"{base} holds no images in class subfolders ({', '.join(sorted(IMAGE_SUFFIXES))}) — "
                        f"expected {base}/<class>/<image>")
    # Refused before the cache is looked up, as torchvision's ImageFolder refuses it: the cache's key covers the
    # listed files, so a folder without one, added after the folder was cached, would not change it. With a file
    # listed in every class, the class names are the first parts of their paths, which the key does cover.
    listed = {ci for ci, _ in files}
    _refuse_empty_classes([c for ci, c in enumerate(classes) if ci not in listed], base,
                          f"no image file ({', '.join(sorted(IMAGE_SUFFIXES))})")

    stats = [p.stat() for _, p in files]
    # ctime too: tools that restore a replaced file's mtime (cp -p, rsync -t, tar) cannot set it back.
    listing = [(p.relative_to(base).as_posix(), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
               for (_, p), st in zip(files, stats, strict=True)]
    key = _listing_key(listing, size, mode)[:20]
    cache = imagefolder_cache(base)
    images_path, meta_path = cache / f"{key}.npy", cache / f"{key}.json"
    name = f"imagefolder/{base.name}"
    if not (images_path.is_file() and meta_path.is_file()):
        _adopt_cache(cache, key, listing, base, size, mode)
    if images_path.is_file() and meta_path.is_file():
        try:
            remind = key not in _TOLD
            _TOLD.add(key)
            return _load_cached(images_path, meta_path, name, remind=remind, suggest_gray=channels is None)
        except FileNotFoundError:  # pruned just now by another process that found the folder changed: decode
            pass

    # Decode straight into the cache file, so a folder larger than memory never has to fit in it.
    tmp = _images_temp(cache, key)  # its writer named: _remove_stale_temp_files
    shape = (len(files), len(mode), size, size)
    _remove_stale_temp_files(cache)  # before the free-space check: what they held is free again
    room = next((p for p in (cache, *cache.parents) if p.exists()), None)
    _check_room(*shape[:3], shutil.disk_usage(room).free if room is not None else None, cache)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        out: np.ndarray = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    except OSError as e:  # no writable cache: still usable, just decoded again next time
        warnings.warn(f"cannot write the image cache in {cache} ({_one_line(e)}); decoding into memory, and again "
                      "on the next run — set SSLKIT_CACHE to a writable folder to cache", SslkitWarning,
                      stacklevel=3)
        out, tmp = np.empty(shape, dtype=np.uint8), None
    kept: list[Path] = []  # cache files put in place, removed again if the cache cannot be completed
    try:
        if tmp is not None and hasattr(os, "posix_fallocate"):
            # Reserve the file's blocks before decoding: open_memmap leaves it sparse, and a disk that fills while
            # the mapping is written kills the process with SIGBUS (no message, the temporary file left behind).
            try:
                with open(tmp, "r+b") as f:
                    os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):  # else: cannot reserve, go on
                    raise _cache_write_error(e, images_path, cache) from e
        if _copy_renamed(cache, classes, files, listing, out, size, mode):
            labels, bad = [ci for ci, _ in files], []
        else:
            labels, bad = _decode_all(files, size, mode, out, base)
        n = len(labels)
        skipped = {p for p, _ in bad}
        names = [p.relative_to(base).as_posix() for _, p in files if p not in skipped]  # the decoded ones, in order
        _TOLD.add(key)  # what the decoding says below is not repeated when this process reads the cache
        if bad:
            shown = "; ".join(f"{p.relative_to(base)} ({why})" for p, why in bad[:3])
            warnings.warn(f"skipped {len(bad)} unreadable image(s) of {len(files)} in {base}: {shown}"
                          f"{' …' if len(bad) > 3 else ''}", SslkitWarning, stacklevel=3)
        all_gray = mode == "RGB" and n > 0 and _all_gray(out[:n])
        if channels is None and all_gray:
            _suggest_one_channel(base, stacklevel=3)
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
        _refuse_empty_classes([classes[i] for i in np.flatnonzero(counts == 0)], base, "no readable image")
        if tmp is None:
            return ImageSource(torch.from_numpy(out[:n]), torch.tensor(labels, dtype=torch.long), tuple(classes), name,
                               tuple(names), key)
        try:
            out.flush()
            del out  # unmapped before the file is cut: a mapping past a file's end faults when touched
            if n < len(files):  # skipped files left empty rows at the end: keep only the decoded ones
                _keep_first_rows(tmp, n)
            os.replace(tmp, images_path)
            kept.append(images_path)
            meta = json.dumps({"classes": classes, "labels": labels, "files": names, "root": str(base),
                               "image_size": size, "mode": mode, "skipped": len(bad), "all_gray": all_gray,
                               "contents": _contents_key(listing, size, mode)})
            atomic_write(meta_path, lambda part: part.write_text(meta))
        except OSError as e:  # WriteError too (the index); the images without their index are never read
            raise _cache_write_error(e, images_path, cache) from e
        kept.clear()
        _drop_stale_caches(cache, key, size, mode)
    finally:
        for p in (*kept, *((tmp,) if tmp is not None else ())):
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)
    return _load_cached(images_path, meta_path, name)


def _refuse_empty_classes(empty: list[str], base: Path, holds: str) -> None:
    """The one-line error of the class folders ``empty`` of ``base``, which hold ``holds``: a class without an image
    is a label that no image has: nothing to train on or score."""
    if empty:
        raise UserError(f"class folder(s) {', '.join(empty)} in {base} hold {holds} — add images or remove the folder")


# The temporary files of an image cache: the images (decoded into it, then renamed), named by the writer's pid and a
# tag of its machine's name; the index's, named by atomic_write with the pid only; and, from older versions, the
# images' with the pid only and their compacted copy.
_TEMP_NAME = re.compile(rf"{re.escape(TMP_PREFIX)}[0-9a-f]{{20}}\.(?:(?P<pid>\d+)\.(?P<host>[0-9a-f]{{8}})\.npy"
                        r"|(?P<old_pid>\d+)(?:\.compact)?\.npy|json\.(?P<index_pid>\d+))")
# A temporary file without its machine's tag is left this long after its last change before its pid is believed:
# the writer may run on another machine that shares the cache folder (a home folder on NFS), where the pid means
# nothing here. Writing an index takes seconds.
_UNTAGGED_STALE_AFTER_S = 3600


def _images_temp(cache: Path, key: str) -> Path:
    """The temporary file this process writes the images of cache ``key`` to, named as :data:`_TEMP_NAME` reads it."""
    return cache / f"{TMP_PREFIX}{key}.{os.getpid()}.{_host_tag()}.npy"


def _host_tag() -> str:
    """A short tag of this machine's name, for temporary files that other machines may see."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` may be running on this machine (believed so whenever that cannot be told)."""
    if os.name != "posix":  # os.kill would end the process on Windows, not probe it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: another user's process
        return True
    return True


def _remove_stale_temp_files(cache: Path) -> None:
    """Removes the temporary files that processes killed while writing the image cache ``cache`` left there (the
    images' is as large as the cache, and nothing else would ever remove it). A file is kept while its writer may
    run: one of this machine whose process is alive, one of another machine, and one without a machine's tag that
    changed within the last hour (:data:`_UNTAGGED_STALE_AFTER_S`)."""
    try:
        entries = list(cache.iterdir())
    except OSError:  # no cache folder yet, or an unreadable one (its write fails and says so)
        return
    for path in entries:
        m = _TEMP_NAME.fullmatch(path.name)
        if m is None:
            continue
        with contextlib.suppress(OSError):  # gone already (its writer finished), or not ours to remove
            if m["host"] is not None:
                stale = m["host"] == _host_tag() and not _alive(int(m["pid"]))
            else:
                age = time.time() - path.stat().st_mtime
                stale = age > _UNTAGGED_STALE_AFTER_S and not _alive(int(m["old_pid"] or m["index_pid"]))
            if stale:
                path.unlink(missing_ok=True)


def _keep_first_rows(path: Path, n: int) -> None:
    """Cuts the .npy file ``path`` (written by ``open_memmap``, no longer mapped) to its first ``n`` rows in place:
    the shape in its header rewritten, the rest of the file truncated. Compacting into a second file would need
    room on the disk for a second copy of the images, which the free-space check before decoding does not count.

    The new header is padded to the old one's length, so the rows stay where they are: it holds a shape of no more
    digits (``n`` is smaller), and numpy pads every header with spaces anyway (a reader ignores them)."""
    from numpy.lib import format as npy

    with open(path, "r+b") as f:
        version = npy.read_magic(f)
        assert version == (1, 0), "open_memmap writes a version 1.0 header for uint8 images"
        header_start = f.tell() + 2  # after the 2-byte length of a version 1.0 header, which stays as it is
        shape, fortran_order, dtype = npy.read_array_header_1_0(f)
        data_start = f.tell()
        header = repr({"descr": npy.dtype_to_descr(dtype), "fortran_order": fortran_order, "shape": (n, *shape[1:])})
        f.seek(header_start)
        f.write(header.ljust(data_start - header_start - 1).encode("latin1") + b"\n")
        f.truncate(data_start + n * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


def _listing_key(listing: list[tuple[Any, ...]], size: int, mode: str) -> str:
    """The SHA-256 of an image folder's listing (each file's path in the folder and facts from its stat) and of
    how it is decoded."""
    return hashlib.sha256(json.dumps([_CACHE_VERSION, listing, size, mode], ensure_ascii=True,
                                     default=str).encode("utf-8", "surrogateescape")).hexdigest()


def _contents_key(listing: list[tuple[Any, ...]], size: int, mode: str) -> str:
    """The ``contents`` of an image cache's index: the key of its folder's listing without ctimes, which a copy
    cannot keep (:func:`_adopt_cache`). Made only when a cache is missed, not on every read of one: 10–30 ms at
    20,000 files."""
    return _listing_key([entry[:3] for entry in listing], size, mode)


def _adopt_cache(cache: Path, key: str, listing: list[tuple[Any, ...]], base: Path, size: int, mode: str) -> None:
    """Makes another path's cache of the same files the cache ``key`` of the image folder ``base`` (in ``cache``),
    so that a folder moved, copied or mounted elsewhere is not decoded again: moved here from a path whose folder is
    gone (the caches of the same files at other such paths removed too), else hard-linked (no second copy on disk;
    each path's index is its own, so a change at one path never drops the other's cache). Does nothing when none is
    found, or it cannot be put here (decoded then).

    The same files: ``contents``, the key of the same ``listing`` without ctimes, recorded in every index, which are
    the same relative paths, sizes and mtimes (to the nanosecond), or the whole key (an index written before
    ``contents``: a folder renamed or mounted elsewhere keeps its ctimes). Not ctimes: a copy (shutil.copytree,
    ``cp -a``, ``rsync -a``, ``mv`` to another disk) keeps the mtimes but cannot keep them. A copy with new mtimes
    (``cp -r``) is decoded again; it has to be: equal names and sizes alone do not tell two folders apart. And a
    few files, spread over the folder, are decoded and compared with the cache first (:func:`_decodes_as_cached`).
    What neither can tell: a few files of a copy replaced, before the copy is first read, with others of their
    sizes whose mtimes were set back to the old ones'; the copy then shows the old images of those.

    Only for a path without a cache of this size and mode: one that does not match says the folder here changed
    since (ctimes tell a file replaced with its old size and mtime), and it is decoded again, as before.
    """
    if any(_index_of(p, size, mode) is not None for p in cache.glob("*.json")):
        return
    contents = _contents_key(listing, size, mode)
    found = []  # (index path, index, whether the folder it was made for is gone)
    for meta_path in sorted(cache.parent.glob("*/*.json")):
        meta = _index_of(meta_path, size, mode) if meta_path.parent != cache else None
        if meta is not None and (meta.get("contents") == contents or meta_path.stem == key):
            found.append((meta_path, meta, meta.get("root") is not None and not Path(meta["root"]).exists()))
    if not found:
        return
    meta_path, meta, moved = min(found, key=lambda f: not f[2])  # the cache of a folder moved here, if any
    images = meta_path.with_suffix(".npy")
    if not _decodes_as_cached(images, meta.get("files"), base, size, mode):
        return
    tmp = _images_temp(cache, key)  # removed if left
    index = json.dumps(dict(meta, root=str(base), contents=contents))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        (os.replace if moved else os.link)(images, tmp)
        os.replace(tmp, cache / f"{key}.npy")
        atomic_write(cache / f"{key}.json", lambda part: part.write_text(index))
    except OSError:  # no hard links on this disk, gone since, or no room for the index: decoded instead
        for p in (tmp, cache / f"{key}.npy"):
            with contextlib.suppress(OSError):
                if moved and p.is_file():
                    os.replace(p, images)  # put back where it was
                p.unlink(missing_ok=True)
        return
    for old, _, gone in found:  # the caches of these files at paths that are gone are not left behind
        if gone:
            with contextlib.suppress(OSError):
                old.with_suffix(".npy").unlink(missing_ok=True)
                old.unlink(missing_ok=True)
                old.parent.rmdir()  # only if it held nothing else


def _copy_renamed(cache: Path, classes: list[str], files: list[tuple[int, Path]], listing: list[tuple[Any, ...]],
                  out: np.ndarray, size: int, mode: str) -> bool:
    """Fills ``out`` with the rows of the folder's cache in ``cache`` (of ``size`` and ``mode``) when all that changed
    since is the names of class folders: their images are those cached, put in the order of the new names, and only
    their labels change. False, and ``out`` to be filled by decoding, when anything else changed, or when it cannot
    be told which folder was renamed to which (:func:`_old_class_names`).

    Checked as a cache is found: the listing under the old names (paths, sizes, mtimes and ctimes, which renaming a
    folder leaves as they were) gives the cache's key. A cache that skipped unreadable files is not reused."""
    for meta_path in cache.glob("*.json"):
        meta = _index_of(meta_path, size, mode)
        was = _old_class_names(meta, classes, listing) if meta is not None and not meta.get("skipped") else None
        if was is None:
            continue
        old_names = [f"{was[folder]}/{rest}" for folder, rest in (entry[0].split("/", 1) for entry in listing)]
        old_index = {c: i for i, c in enumerate(meta["classes"])}
        old_rank = [old_index[was[classes[ci]]] for ci, _ in files]
        old_order = sorted(range(len(listing)), key=old_rank.__getitem__)  # stable: each class's files in order
        if _listing_key([(old_names[i], *listing[i][1:]) for i in old_order], size, mode)[:20] != meta_path.stem:
            continue
        try:
            row = {name: i for i, name in enumerate(meta["files"])}
            rows = [row[name] for name in old_names]
            cached = np.load(meta_path.with_suffix(".npy"), mmap_mode="r")
            if cached.shape != (len(rows), *out.shape[1:]):
                continue
            for i in range(0, len(rows), 4096):
                out[i:i + 4096] = cached[rows[i:i + 4096]]
        except (OSError, ValueError, KeyError):  # removed since by another process, or damaged: decoded instead
            continue
        return True
    return False


def _old_class_names(meta: dict[str, Any], classes: list[str], listing: list[tuple[Any, ...]]) -> dict[str, str] | None:
    """Each class's name in the cache index ``meta`` when only class folders were renamed since: a renamed folder
    is the one gone whose files have the same paths in it. None when classes were added or removed, or a renamed
    folder matches none or several of those gone (folders of files of the same names, all renamed at once)."""
    old, names = meta.get("classes"), meta.get("files")
    if not isinstance(old, list) or not isinstance(names, list):
        return None
    gone = [c for c in old if c not in classes]
    added = [c for c in classes if c not in old]
    if not added or len(added) != len(gone):
        return None
    members: dict[tuple[bool, str], set[str]] = {}  # (old?, class folder): the paths of its files in it
    for is_old, paths in ((True, names), (False, [entry[0] for entry in listing])):
        for path in paths:
            folder, rest = path.split("/", 1)
            members.setdefault((is_old, folder), set()).add(rest)
    was = {c: c for c in classes if c in old}
    for c in added:
        match = [g for g in gone if members.get((True, g)) == members[False, c]]
        if len(match) != 1:
            return None
        was[c] = match[0]
    return was if len(set(was.values())) == len(was) else None


def _decodes_as_cached(images: Path, files: list[str] | None, base: Path, size: int, mode: str,
                       samples: int = 16) -> bool:
    """Whether a few of the files of ``base`` named in a cache's index (``files``, its rows' files), spread over
    it, decode to its rows: the same listing of two different folders (timestamps made equal, as a reproducible
    archive leaves them, or the same second on a disk that keeps no finer time) is told apart for a few decodings."""
    try:
        cached = np.load(images, mmap_mode="r")
        if files is None or len(files) != len(cached) or not files:
            return False
        rows = sorted({round(i) for i in np.linspace(0, len(files) - 1, min(len(files), samples))})
        return all(np.array_equal(_decode(base / files[i], size, mode), cached[i]) for i in rows)
    except (OSError, ValueError):
        return False


def _index_of(meta_path: Path, size: int, mode: str) -> dict[str, Any] | None:
    """The index of an image cache of ``size`` and ``mode``; None for another decoding, or an unreadable one."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("image_size") == size and meta.get("mode") == mode else None


def imagefolder_cache(base: Path) -> Path:
    """Where the decoded images of the image folder ``base`` (a resolved path) are cached: outside it, so that the
    folder stays as the user made it (torchvision's ``ImageFolder`` would take a cache folder in it for a class),
    in ``$SSLKIT_CACHE/imagefolder/<folder name>-<hash of its path>``; ``SSLKIT_CACHE`` defaults to
    ``~/.cache/sslkit``. A folder moved or copied to another path takes its cache along (:func:`_adopt_cache`)."""
    return _cache_root() / "imagefolder" / _folder_key(base)


def _folder_key(folder: Path) -> str:
    """``<name>-<12 hex digits of a hash of the path>``: what sslkit's cache files a folder of data under."""
    return f"{folder.name}-{hashlib.sha256(str(folder).encode('utf-8', 'surrogateescape')).hexdigest()[:12]}"


def _cache_root() -> Path:
    """sslkit's cache folder: ``$SSLKIT_CACHE``, by default ``~/.cache/sslkit``."""
    return Path(os.environ.get("SSLKIT_CACHE") or "~/.cache/sslkit").expanduser()


def _drop_stale_caches(cache: Path, key: str, size: int, mode: str) -> None:
    """Deletes the folder's other caches of the same size and mode: they hold its files as they were before a
    change (or an older decoding), and would otherwise pile up, one full copy per change."""
    for meta_path in cache.glob("*.json"):
        if meta_path.stem != key and _index_of(meta_path, size, mode) is not None:
            meta_path.with_suffix(".npy").unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)


def _suggest_one_channel(base: Path | str, stacklevel: int) -> None:
    warnings.warn(f"every image in {base} is grayscale, read as 3 equal RGB channels — set data.channels: 1 for a "
                  "1-channel encoder (a third of the input)", SslkitWarning, stacklevel=stacklevel + 1)


def _load_cached(images_path: Path, meta_path: Path, name: str, remind: bool = False,
                 suggest_gray: bool = False) -> ImageSource:
    """The cached pool; with ``remind``, once per process and cache, what its decoding said of skipped files and,
    with ``suggest_gray`` (no data.channels given), of a folder of gray images read as RGB."""
    meta = json.loads(meta_path.read_text())
    # Copy-on-write: pages are read from disk on demand and shared; a stray in-place write stays private to
    # this process instead of corrupting the cache (or crashing, as a read-only mapping would).
    images = torch.from_numpy(np.load(images_path, mmap_mode="c"))
    labels = torch.tensor(meta["labels"], dtype=torch.long)
    if images.dim() != 4 or len(labels) != images.shape[0]:
        raise UserError(f"the image cache {images_path} does not match {meta_path} — delete {images_path.parent} "
                        "and load again")
    if remind and meta.get("skipped"):  # said in full when decoded; a reminder on every later read
        warnings.warn(f"{meta['skipped']} unreadable image(s) in {meta.get('root', name)} are left out (as when it "
                      "was decoded) — fix or remove them, and the folder is decoded again", SslkitWarning,
                      stacklevel=4)
    if remind and suggest_gray and meta.get("all_gray"):
        _suggest_one_channel(meta.get("root", name), stacklevel=3)
    files = meta.get("files")
    return ImageSource(images, labels, tuple(meta["classes"]), name, tuple(files) if files is not None else None,
                       images_path.stem)  # the cache's key


# --- loading ----------------------------------------------------------------------------------------------


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 images, rounded back to uint8; done in chunks to bound memory.

    Shape:
        (N, C, H, W) -> (N, C, size, size)
    """
    n, c, h, w = images.shape
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    step = max(1, (64 << 20) // (4 * c * max(h * w, size * size)))  # ~64 MiB of float32 per chunk
    for i in range(0, n, step):
        y = F.interpolate(images[i:i + step].float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        out[i:i + step] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_source(dataset: str, split: str, root: str | None = None, download: bool = False,
                image_size: int | None = None, channels: int | None = None) -> ImageSource:
    """Loads one split of a registered data set whole.

    Args:
        dataset: one of ``DATASETS``.
        split: ``train`` or ``test``; STL-10 also ``unlabeled`` and ``train+unlabeled``, SVHN also ``extra`` (more
            training data: pretraining may use it, the probes do not score on it; :func:`scored_splits`) and
            ``train+extra`` (the train images, then extra's). An
            image folder's test split is a fixed part of it (:func:`imagefolder_split`), its train split the rest;
            :func:`imagefolder_pool` reads the whole folder.
        root: where the files are: searched first for Fashion-MNIST, required for an image folder, the download
            folder for torchvision's data sets (``~/.cache/sslkit/data`` when None).
        download: let torchvision download missing files (with its checksums).
        image_size: side to resize to, once at load; None keeps the native size (64 for an image folder).
        channels: image folder: 1 (grayscale) or 3 (RGB, the default). Other data sets keep their own
            channels; a different value is an error rather than a silent mismatch.

    Returns:
        The split as an :class:`ImageSource`.

    Raises:
        UserError: an unknown data set or split, missing or damaged files (the message says where it looked and
            how to get them), or an image folder with an empty class.
    """
    return load_sources(dataset, (split,), root, download, image_size, channels)[0]


def load_sources(dataset: str, splits: Sequence[str], root: str | None = None, download: bool = False,
                 image_size: int | None = None, channels: int | None = None) -> tuple[ImageSource, ...]:
    """Several splits of one data set (:func:`load_source`, the same arguments), in the order asked, each split
    named twice loaded once.

    An image folder's splits are all cut from one read of the whole folder (:func:`imagefolder_pool`: every file
    listed, stat'ed and hashed, then its decoded cache mapped — 0.4–0.5 s at 20,000 files), which loading them one
    by one would repeat for each. Every split is checked before anything is read.

    Raises:
        UserError: as :func:`load_source`.
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown data set {dataset!r}{_did_you_mean(dataset, DATASETS)} — set data.dataset to "
                        f"one of: {', '.join(DATASETS)}")
    valid = SPLITS[dataset]
    for split in splits:
        if split not in valid:
            raise UserError(f"{dataset} has no split {split!r}{_did_you_mean(split, valid)} — use one of: "
                            f"{', '.join(valid)}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise UserError(f"data.image_size must be a positive whole number of pixels, got {image_size!r}")

    if dataset == "imagefolder" and splits:
        train, test = imagefolder_split(imagefolder_pool(root, image_size, channels))  # resized while decoding
        return tuple(train if split == "train" else test for split in splits)
    loaded = {split: _load_split(dataset, split, root, download, image_size, channels)
              for split in dict.fromkeys(splits)}
    return tuple(loaded[split] for split in splits)


def _load_split(dataset: str, split: str, root: str | None, download: bool, image_size: int | None,
                channels: int | None) -> ImageSource:
    """One split of a data set that is not an image folder, its arguments checked (:func:`load_sources`)."""
    if dataset == "fashion-mnist":
        source = _fashion_mnist(split, root, download)
    elif dataset == "fashion-mnist-mini":
        source = _fashion_mnist_mini(split)
    else:
        source = _torchvision(dataset, split, root, download)
    if channels is not None and channels != source.channels:
        raise UserError(f"data.channels is {channels} but {dataset} images have {source.channels} channel(s) — "
                        "remove data.channels (it only converts image folders)")
    if image_size is not None and image_size != source.image_size:
        _check_room(len(source), source.channels, image_size, physical_memory_bytes())
        source = ImageSource(resize(source.images, image_size), source.labels, source.classes, source.name)
    return source


def _check_room(n: int, channels: int, size: int, room: int | None, cache: Path | None = None) -> None:
    """A ``UserError`` when ``n`` images resized to ``size`` would not fit in ``room`` bytes (before any allocation:
    otherwise an allocator error, or the OOM killer, later): the memory of this machine, or with ``cache`` the free
    space on the disk of that image cache. The way out fits the command: pretraining can lower
    data.image_size; a command that reads a finished run (:func:`data_root_option`) or fine-tunes one
    (:func:`image_size_of_run`) cannot, its encoder fixes the size, so it is told to make room instead."""
    need = n * channels * size * size
    if room is None or need <= room:
        return
    run = _DATA_ROOT_OPTION.get() is not None or _IMAGE_SIZE_OF_RUN.get()
    if cache is None:
        where = "of memory this machine has"
        fix = "run it on a machine with more memory" if run else "lower data.image_size"
    else:
        where = f"free on the disk of the image cache {cache}"
        fix = (f"{'' if run else 'lower data.image_size, '}free space on that disk, or set SSLKIT_CACHE to a folder on "
               "a disk with room")
    named = f"the run's image size {size}" if run else f"data.image_size {size}"
    raise UserError(f"{named}: {n:,} images of {channels}×{size}×{size} pixels need {need / 2**30:,.1f} GiB, more "
                    f"than the {room / 2**30:,.1f} GiB {where} — {fix}")


def _did_you_mean(value: str, valid: tuple[str, ...], usable: tuple[str, ...] | None = None) -> str:
    """A hint naming the closest of ``valid``; none when that one is not ``usable`` here, or is the only usable one
    (which the message names anyway)."""
    close = difflib.get_close_matches(value, valid, n=1)
    if not close or (usable is not None and (close[0] not in usable or len(usable) == 1)):
        return ""
    return f" (did you mean {close[0]!r}?)"


def _one_line(e: BaseException) -> str:
    """An exception's message squeezed onto one line, for UserError messages."""
    return " ".join(str(e).split()) or type(e).__name__
