"""Makes assets/fashion-mnist-mini: a stratified, seeded 10,000 / 2,000 subset of Fashion-MNIST.

Reads the Debian package's files (apt-get install dataset-fashion-mnist) and writes the same gzipped IDX
format under the same file names, with fixed gzip headers so the bytes are reproducible. Run:

    python eval/make_fashion_mnist_mini.py
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from sslkit.data import FASHION_MNIST_MINI_DIR, load_source, stratified_split

SIZES = {"train": 10_000, "test": 2_000}
SEED = 0


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    FASHION_MNIST_MINI_DIR.mkdir(parents=True, exist_ok=True)
    for split, n in SIZES.items():
        full = load_source("fashion-mnist", split)
        idx, _ = stratified_split(full.labels, n, SEED)
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(SEED))]  # mix the classes
        prefix = "train" if split == "train" else "t10k"
        write_idx(FASHION_MNIST_MINI_DIR / f"{prefix}-images-idx3-ubyte.gz", full.images[idx, 0].numpy())
        write_idx(FASHION_MNIST_MINI_DIR / f"{prefix}-labels-idx1-ubyte.gz", full.labels[idx].numpy().astype(np.uint8))
        print(f"{split}: {n} images, per class {torch.bincount(full.labels[idx]).tolist()}")


if __name__ == "__main__":
    main()
