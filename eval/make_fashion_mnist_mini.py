"""Makes assets/fashion-mnist-mini: a stratified, seeded 10,000 / 2,000 subset of Fashion-MNIST.

Reads the Debian package's files (``apt-get install dataset-fashion-mnist``), picks 1,000 training and 200 test
images per class with ``sslkit.data.stratified_split`` (seed 0, original order kept), and writes them in the
same gzipped IDX format under the same file names, with a fixed gzip header (level 9, mtime 0, no file name)
so that running it again gives identical bytes. It also writes the folder's LICENSE and README.md. Run:

    python eval/make_fashion_mnist_mini.py
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import torch

from sslkit.data import FASHION_MNIST_MINI_DIR, FASHION_MNIST_SYSTEM_DIR, read_idx, stratified_split

PER_CLASS = {"train": 1_000, "test": 200}
SEED = 0
PREFIX = {"train": "train", "test": "t10k"}

LICENSE = """\
fashion-mnist-mini is a subset of Fashion-MNIST (https://github.com/zalandoresearch/fashion-mnist),
which is distributed under the MIT licence:

The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and
to permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of
the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO
THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
DEALINGS IN THE SOFTWARE.
"""


def make_split(split: str, source: Path = FASHION_MNIST_SYSTEM_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The subset of one split: images (n, 28, 28) and labels (n,), uint8, in the source's order."""
    prefix = PREFIX[split]
    images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
    picked, _ = stratified_split(torch.from_numpy(labels.astype(np.int64)), PER_CLASS[split] * 10, SEED)
    idx = picked.numpy()  # sorted, so the source's (already class-mixed) order is kept
    counts = np.bincount(labels[idx], minlength=10)
    if not (counts == PER_CLASS[split]).all():  # only if the source is not the balanced original
        raise SystemExit(f"{source}: expected {PER_CLASS[split]} {split} images per class, got {counts.tolist()}")
    return images[idx], labels[idx]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Writes a uint8 array as gzipped IDX with reproducible bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    out = FASHION_MNIST_MINI_DIR
    out.mkdir(parents=True, exist_ok=True)
    digests = []
    for split in ("train", "test"):
        images, labels = make_split(split)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = out / f"{PREFIX[split]}-{kind}-ubyte.gz"
            write_idx(path, array)
            digests.append(f"- `{path.name}`: {array.shape[0]:,} {kind.split('-')[0]}, "
                           f"{path.stat().st_size:,} bytes, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
        print(f"{split}: {len(labels):,} images, per class {np.bincount(labels).tolist()}")
    (out / "LICENSE").write_text(LICENSE)
    (out / "README.md").write_text(
        "# fashion-mnist-mini\n\n"
        f"A stratified, seeded subset of Fashion-MNIST: {PER_CLASS['train']:,} training and {PER_CLASS['test']:,} "
        "test images per class (10,000 / 2,000), made by `eval/make_fashion_mnist_mini.py` from the Debian "
        "package `dataset-fashion-mnist` (`sslkit.data.stratified_split`, seed 0, original order kept), in the "
        "original gzipped IDX format and file names. `sslkit` loads it as the data set `fashion-mnist-mini`. "
        "Licence: MIT, Zalando SE (see LICENSE).\n\n" + "\n".join(digests) + "\n")


if __name__ == "__main__":
    main()
