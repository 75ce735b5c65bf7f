"""Image sources and splits: real Fashion-MNIST, the embedded subset, and tiny files in the exact formats
of CIFAR-10/100, STL-10, SVHN and image folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import write_cifar
from PIL import Image

import sslkit.data as data
from sslkit.data import load_source, read_idx, stratified_split
from sslkit.errors import UserError


def test_embedded_mini_subset_is_stratified() -> None:
    train, test = load_source("fashion-mnist-mini", "train"), load_source("fashion-mnist-mini", "test")
    assert train.images.shape == (10_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (2_000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [1000] * 10 and torch.bincount(test.labels).tolist() == [200] * 10
    assert train.classes[0] == "T-shirt/top" and len(train.classes) == 10


@pytest.mark.skipif(not data.FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_full_fashion_mnist_from_the_debian_package() -> None:
    train = load_source("fashion-mnist", "train")
    assert len(train) == 60_000 and len(load_source("fashion-mnist", "test")) == 10_000
    resized = load_source("fashion-mnist", "test", image_size=32)
    assert resized.images.shape == (10_000, 1, 32, 32) and resized.images.dtype == torch.uint8


def write_idx(path: Path, array: np.ndarray, magic: bytes = b"\x00\x00\x08") -> None:
    header = magic + bytes([array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_its_errors(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "ok.gz", a)
    assert np.array_equal(read_idx(tmp_path / "ok.gz"), a)
    write_idx(tmp_path / "bad.gz", a, magic=b"\x00\x00\x0d")
    with pytest.raises(UserError, match=r"bad\.gz is not a uint8 IDX file"):
        read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(UserError, match=r"short\.gz is truncated"):
        read_idx(tmp_path / "short.gz")


def test_fashion_mnist_in_a_user_root_and_missing_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"Fashion-MNIST not found \(looked in .*nowhere\).*apt-get install "
                                        r"dataset-fashion-mnist"):
        load_source("fashion-mnist", "train", root=str(tmp_path))
    raw = tmp_path / "FashionMNIST" / "raw"  # torchvision's layout
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", np.full((3, 28, 28), 7, np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 9], np.uint8))
    src = load_source("fashion-mnist", "test", root=str(tmp_path))
    assert src.images.shape == (3, 1, 28, 28) and src.labels.tolist() == [0, 1, 9]


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_on_disk_format(tmp_path: Path, kind: str) -> None:
    expected = write_cifar(tmp_path, kind, per_batch=6)
    train = load_source(kind, "train", root=str(tmp_path))
    test = load_source(kind, "test", root=str(tmp_path))
    assert torch.equal(train.images, torch.from_numpy(expected["train"]))  # channel-major rows → (N, 3, 32, 32)
    assert train.labels.tolist() == expected["train_labels"].tolist()
    assert torch.equal(test.images, torch.from_numpy(expected["test"]))
    assert len(train.classes) == (10 if kind == "cifar10" else 100)
    with pytest.raises(UserError, match=f"{kind} \\(train\\) not found under .*data.download: true"):
        load_source(kind, "train", root=str(tmp_path / "empty"))


def test_stl10_on_disk_format(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 3, 96, 96), dtype=np.uint8)
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())  # stored column-major
        (folder / f"{split}_y.bin").write_bytes(np.array([1, 2, 10, 3], np.uint8).tobytes())  # 1-based
    (folder / "unlabeled_X.bin").write_bytes(x[:2].transpose(0, 1, 3, 2).tobytes())
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    src = load_source("stl10", "train", root=str(tmp_path))
    assert torch.equal(src.images, torch.from_numpy(x)) and src.labels.tolist() == [0, 1, 9, 2]
    assert src.classes[:2] == ("c0", "c1")
    both = load_source("stl10", "train+unlabeled", root=str(tmp_path))
    assert len(both) == 6 and (both.labels == -1).sum() == 2


def test_svhn_on_disk_format(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)  # H, W, C, N as in the .mat files
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [10], [9]], np.uint8)})
    src = load_source("svhn", "test", root=str(tmp_path))
    assert src.images.shape == (5, 3, 32, 32)
    assert int(src.images[3, 2, 5, 7]) == int(x[5, 7, 2, 3])
    assert src.labels.tolist() == [0, 1, 2, 0, 9]  # label 10 is the digit 0


def test_imagefolder_decodes_once_skips_bad_files_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "imgs"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "cats" / "a.png")
    Image.new("L", (20, 20), 128).save(root / "cats" / "gray.jpg")
    Image.new("RGBA", (16, 16), (0, 0, 255, 0)).save(root / "dogs" / "alpha.png")  # transparent → white
    Image.new("RGB", (50, 50), (0, 255, 0)).save(root / "dogs" / "b.jpg")
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    (root / "dogs" / "text.jpg").write_text("not an image")
    with pytest.warns(UserWarning, match="skipped 2 unreadable image"):
        src = load_source("imagefolder", "train", root=str(root), image_size=8)
    assert src.images.shape == (4, 3, 8, 8) and src.classes == ("cats", "dogs")
    assert src.labels.tolist() == [0, 0, 1, 1]
    assert src.images[0, 0].float().mean() > 250 and src.images[0, 1].float().mean() < 5  # red stays red
    assert src.images[2].float().mean() > 250  # composited on white
    monkeypatch.setattr(Image, "open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = load_source("imagefolder", "train", root=str(root), image_size=8)
    assert torch.equal(again.images, src.images)


def test_imagefolder_empty_class_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    with pytest.raises(UserError, match="class folder\\(s\\) b .* hold no readable image"):
        load_source("imagefolder", "train", root=str(tmp_path), image_size=8)


def test_stratified_split_properties() -> None:
    labels = torch.arange(10).repeat_interleave(torch.tensor([50, 50, 50, 50, 50, 100, 100, 100, 200, 250]))
    labels = torch.cat([labels, torch.full((7,), -1)])
    picked, rest = stratified_split(labels, 100, seed=3)
    assert len(picked) == 100 and len(rest) == len(labels) - 100
    assert set(picked.tolist()).isdisjoint(rest.tolist())
    assert sorted(picked.tolist() + rest.tolist()) == list(range(len(labels)))
    counts = torch.bincount(labels[picked], minlength=10)
    assert counts.tolist() == [5, 5, 5, 5, 5, 10, 10, 10, 20, 25] and (labels[picked] >= 0).all()
    again, _ = stratified_split(labels, 100, seed=3)
    other, _ = stratified_split(labels, 100, seed=4)
    assert torch.equal(picked, again) and not torch.equal(picked, other)
    assert len(stratified_split(labels, 0.1, seed=0)[0]) == 100
    with pytest.raises(UserError, match="cannot pick 2000 labeled samples out of 1000"):
        stratified_split(labels, 2000, seed=0)


def test_unknown_names() -> None:
    with pytest.raises(UserError, match="did you mean 'fashion-mnist'"):
        load_source("fashion-mnst", "train")
    with pytest.raises(UserError, match="has no split 'val'"):
        load_source("cifar10", "val")
