"""Tiny data sets written in the exact on-disk formats of the real ones, for tests that cannot download."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_cifar(root: Path, kind: str = "cifar10", per_batch: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Writes ``cifar-10-batches-py`` or ``cifar-100-python`` as torchvision reads them (pickled dicts, rows of
    3072 uint8 values, channel-major) and returns the images (N, 3, 32, 32) and labels per split."""
    rng = np.random.default_rng(seed)
    n_classes = 10 if kind == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if kind == "cifar10" else "fine_labels"
    files = ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]) if kind == "cifar10" else (["train"], ["test"])
    out = {}
    for split, names in zip(("train", "test"), files, strict=True):
        xs, ys = [], []
        for name in names:
            x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
            y = rng.integers(0, n_classes, per_batch).tolist()
            entry = {"batch_label": name, "data": x.reshape(per_batch, 3072), label_key: y,
                     "filenames": [f"{i}.png" for i in range(per_batch)]}
            if kind == "cifar100":
                entry["coarse_labels"] = [v // 5 for v in y]
            with open(folder / name, "wb") as f:
                pickle.dump(entry, f, protocol=2)
            xs.append(x)
            ys += y
        out[split] = np.concatenate(xs)
        out[f"{split}_labels"] = np.asarray(ys)
    if kind == "cifar10":
        meta_name = "batches.meta"
        meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}
    else:
        meta_name, meta = "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                                   "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    with open(folder / meta_name, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return out


def stl10_bytes(x: np.ndarray) -> bytes:
    """STL-10's .bin layout: per image, per channel, the 96×96 pixels in column-major order (x outer, y inner)."""
    return np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes()


def write_stl10(root: Path, n_train: int = 20, n_test: int = 20, n_unlabeled: int = 10, seed: int = 0
                ) -> dict[str, np.ndarray]:
    """Writes ``stl10_binary`` as torchvision reads it (column-major .bin images, 1-based uint8 labels, 10 classes
    in turn) and returns the images (N, 3, 96, 96) per split."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        out[split] = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(stl10_bytes(out[split]))
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(bytes(1 + i % 10 for i in range(n)))
    return out


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
