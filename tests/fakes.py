"""Tiny data sets written in the exact on-disk formats of the real ones, for tests that cannot download.

Each writer follows the format's own description (the data set's page, or the reader its authors published), not
sslkit's reader, so that a reader that gets the layout wrong fails on them; ``tests/test_data_formats.py`` opens
every one with torchvision's own data set classes.
"""

from __future__ import annotations

import errno
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np

STL10_CLASS_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


# --- Fashion-MNIST: IDX files -----------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    """IDX as specified: 0, 0, type, ndim, then each dimension as a big-endian uint32, then the bytes; gzipped when
    ``path`` ends in .gz (as the files are published), plain otherwise (as torchvision leaves them extracted)."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with (gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True, seed: int = 0
                        ) -> dict[str, np.ndarray]:
    """Writes ``train-images-idx3-ubyte[.gz]`` and the other three files into ``folder`` and returns the images
    (N, 28, 28) and labels per split."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        out[split] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        out[f"{split}_labels"] = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", out[split])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", out[f"{split}_labels"])
    return out


# --- CIFAR-10/100: Python 2 pickles -----------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (the STRING opcodes), as the CIFAR files were written by Python 2's cPickle.

    So the keys load as ``b"data"`` with ``encoding="bytes"`` (the CIFAR page's recipe) and as ``"data"`` with
    ``encoding="latin1"`` (torchvision's), exactly as with the original files.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump_py2(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def cifar_row(image: np.ndarray) -> np.ndarray:
    """One CIFAR row of 3072 bytes, built from the format's description rather than a reshape: 1024 red values,
    then green, then blue, each a 32×32 image in row-major order."""
    row = np.empty(3072, np.uint8)
    for c in range(3):
        for y in range(32):
            row[c * 1024 + y * 32: c * 1024 + (y + 1) * 32] = image[c, y]
    return row


def write_cifar(root: Path, kind: str = "cifar10", per_batch: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Writes ``cifar-10-batches-py`` (data_batch_1..5, test_batch, batches.meta) or ``cifar-100-python`` (train,
    test, meta) as the archives hold them: Python 2 pickles of dicts with bytes keys, ``data`` rows of 3072 uint8
    values (channel-major), ``labels`` or ``fine_labels``/``coarse_labels`` lists. Returns the images
    (N, 3, 32, 32) and labels per split."""
    rng = np.random.default_rng(seed)
    n_classes = 10 if kind == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = b"labels" if kind == "cifar10" else b"fine_labels"
    files = ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]) if kind == "cifar10" else (["train"], ["test"])
    out = {}
    for split, names in zip(("train", "test"), files, strict=True):
        xs, ys = [], []
        for name in names:
            x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
            y = rng.integers(0, n_classes, per_batch).tolist()
            entry = {b"batch_label": name.encode(), b"data": np.stack([cifar_row(im) for im in x]), label_key: y,
                     b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
            if kind == "cifar100":
                entry[b"coarse_labels"] = [v // 5 for v in y]
            dump_py2(entry, folder / name)
            xs.append(x)
            ys += y
        out[split] = np.concatenate(xs)
        out[f"{split}_labels"] = np.asarray(ys)
    if kind == "cifar10":
        dump_py2({b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": per_batch,
                  b"num_vis": 3072}, folder / "batches.meta")
    else:
        dump_py2({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                  b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}, folder / "meta")
    return out


# --- STL-10: column-major .bin files ----------------------------------------------------------------------


def stl10_bytes(x: np.ndarray) -> bytes:
    """STL-10's .bin layout: per image, per channel, the 96×96 pixels in column-major order (x outer, y inner)."""
    return np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes()


def write_stl10(root: Path, n_train: int = 20, n_test: int = 20, n_unlabeled: int = 10, seed: int = 0
                ) -> dict[str, np.ndarray]:
    """Writes ``stl10_binary`` as the archive holds it (column-major .bin images, 1-based uint8 labels, 10 classes
    in turn, class_names.txt; not fold_indices.txt, read only for torchvision's ``folds``, which sslkit never
    passes) and returns the images (N, 3, 96, 96) per split."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        out[split] = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(stl10_bytes(out[split]))
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(bytes(1 + i % 10 for i in range(n)))
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASS_NAMES) + "\n")
    return out


# --- SVHN: MATLAB .mat files ------------------------------------------------------------------------------


def write_svhn(root: Path, split: str = "train", n: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Writes ``<split>_32x32.mat`` (MATLAB 5: ``X`` of shape (32, 32, 3, N), rows first, ``y`` of shape (N, 1)
    holding 1..10, 10 for the digit 0) directly in ``root``, as torchvision looks for it, and returns the images
    (N, 3, 32, 32) and digits (0..9)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    digits = np.arange(n) % 10
    savemat(root / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0),
                                          "y": np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]})
    return {"images": images, "labels": digits}


# --- image folders ----------------------------------------------------------------------------------------


def write_noise_folder(root: Path, per_class: int, classes: tuple[str, ...] = ("a", "b"), size: int = 8,
                       seed: int = 0) -> Path:
    """An image folder (``root/<class>/<NN>.png``) of random RGB images, ``per_class`` in each class; returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i:02d}.png")
    return root


class DiskFillsUp:
    """Wraps a file opened for writing as if its disk filled up during the write: the write keeps half its bytes,
    then fails with ENOSPC (a full disk, as tests/test_reliability.py and test_data.py fake one)."""

    def __init__(self, f: object) -> None:
        self.f = f

    def write(self, data: bytes | str) -> int:
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self) -> DiskFillsUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()
