"""The tests' fake data sets against the formats' descriptions, and sslkit's loaders against torchvision's own data
set classes on the same files: image for image, pixel for pixel, label for label."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import STL10_CLASS_NAMES, write_cifar, write_fashion_mnist, write_stl10, write_svhn
from torch.utils.data import ConcatDataset
from torchvision import datasets as tvd
from torchvision.datasets import cifar as tv_cifar
from torchvision.datasets import stl10 as tv_stl10
from torchvision.datasets import svhn as tv_svhn

import sslkit.data as data
from sslkit.data import ImageSource, load_source, read_array_pickle


def _exists(fpath: str, md5: str | None = None) -> bool:
    return os.path.isfile(fpath)


@pytest.fixture
def torchvision_without_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's classes as they are, except that a file need only exist: tiny fakes cannot match the md5 sums
    of the official files."""
    for module in (tv_cifar, tv_stl10, tv_svhn):
        monkeypatch.setattr(module, "check_integrity", _exists)


def same_as_torchvision(source: ImageSource, ds: object) -> None:
    """``source`` holds the images of torchvision's ``ds`` as its ``__getitem__`` hands them out (PIL images,
    rows first), in the same order, with the same labels."""
    items = [ds[i] for i in range(len(ds))]
    pil = np.stack([np.asarray(img) for img, _ in items])
    pil = pil[:, None] if pil.ndim == 3 else pil.transpose(0, 3, 1, 2)  # (N, H, W[, C]) -> (N, C, H, W)
    assert source.images.shape == pil.shape
    assert np.array_equal(source.images.numpy(), pil)
    assert source.labels.tolist() == [-1 if t is None else int(t) for _, t in items]


# --- the fakes follow the formats as their authors describe them --------------------------------------------


def test_fake_cifar_pickles_are_python2_dicts_of_channel_major_rows(tmp_path: Path) -> None:
    for kind, first, meta, meta_key in (("cifar10", "data_batch_1", "batches.meta", b"label_names"),
                                        ("cifar100", "train", "meta", b"fine_label_names")):
        expected = write_cifar(tmp_path, kind, per_batch=2)
        folder = tmp_path / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
        # The CIFAR page's reader unpickles with encoding='bytes': keys b'data', b'labels' (b'fine_labels').
        entry = read_array_pickle(folder / first, encoding="bytes")
        labels = b"labels" if kind == "cifar10" else b"fine_labels"
        assert {b"data", labels, b"batch_label", b"filenames"} <= set(entry)
        assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (2, 3072)
        image = expected["train"][1]
        assert entry[b"data"][1, 1024 + 5 * 32 + 30] == image[1, 5, 30]  # green, row 5, column 30
        assert entry[labels] == expected["train_labels"][:2].tolist()
        assert meta_key in read_array_pickle(folder / meta, encoding="bytes")


def test_fake_stl10_bins_are_column_major_with_one_based_labels(tmp_path: Path) -> None:
    expected = write_stl10(tmp_path, n_train=12, n_test=3, n_unlabeled=2)
    folder = tmp_path / "stl10_binary"
    raw = (folder / "train_X.bin").read_bytes()
    n, c, y, x = 4, 2, 5, 70
    assert len(raw) == 12 * 3 * 96 * 96
    assert raw[n * 27648 + c * 9216 + x * 96 + y] == expected["train"][n, c, y, x]  # column-major: x outer
    assert list((folder / "train_y.bin").read_bytes()) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2]
    assert (folder / "class_names.txt").read_text().splitlines() == list(STL10_CLASS_NAMES)


def test_fake_svhn_mat_holds_rows_columns_channels_images_and_10_for_zero(tmp_path: Path) -> None:
    from scipy.io import loadmat

    expected = write_svhn(tmp_path, "test", n=12)
    mat = loadmat(tmp_path / "test_32x32.mat")
    assert mat["X"].shape == (32, 32, 3, 12) and mat["X"].dtype == np.uint8 and mat["y"].shape == (12, 1)
    assert mat["X"][5, 20, 2, 7] == expected["images"][7, 2, 5, 20]  # X(row, column, channel, image)
    assert mat["y"][:, 0].tolist() == [10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1]


def test_fake_idx_files_have_the_big_endian_header(tmp_path: Path) -> None:
    expected = write_fashion_mnist(tmp_path, n_train=3, n_test=2)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz") as f:
        raw = f.read()
    assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28])
    assert raw[16 + 2 * 784 + 10 * 28 + 3] == expected["train"][2, 10, 3]


# --- sslkit reads them as torchvision does ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_as_torchvision_reads_it(tmp_path: Path, kind: str, torchvision_without_md5: None) -> None:
    write_cifar(tmp_path, kind, per_batch=3)
    cls = tvd.CIFAR10 if kind == "cifar10" else tvd.CIFAR100
    for split in ("train", "test"):
        ds = cls(str(tmp_path), train=split == "train", download=False)
        source = load_source(kind, split, root=str(tmp_path))
        same_as_torchvision(source, ds)
        assert source.classes == tuple(ds.classes)


@pytest.mark.parametrize("split", ["train", "test", "unlabeled", "train+unlabeled"])
def test_stl10_as_torchvision_reads_it(tmp_path: Path, split: str, torchvision_without_md5: None) -> None:
    write_stl10(tmp_path, n_train=4, n_test=3, n_unlabeled=2)
    ds = tvd.STL10(str(tmp_path), split=split, download=False)
    source = load_source("stl10", split, root=str(tmp_path))
    same_as_torchvision(source, ds)
    assert source.classes == tuple(ds.classes) == STL10_CLASS_NAMES


def test_svhn_as_torchvision_reads_it(tmp_path: Path, torchvision_without_md5: None) -> None:
    expected = write_svhn(tmp_path, "extra", n=12)
    source = load_source("svhn", "extra", root=str(tmp_path))
    same_as_torchvision(source, tvd.SVHN(str(tmp_path), split="extra", download=False))
    assert source.labels.tolist() == expected["labels"].tolist() and source.labels[0] == 0  # 10 on disk
    assert torch.equal(source.images, torch.from_numpy(expected["images"]))


def test_svhn_train_plus_extra_as_torchvision_reads_its_two_files(tmp_path: Path,
                                                                  torchvision_without_md5: None) -> None:
    """torchvision's SVHN reads one .mat file a split; sslkit's train+extra is its train split, then its extra."""
    write_svhn(tmp_path, "train", n=7, seed=1)
    write_svhn(tmp_path, "extra", n=12, seed=2)
    train, extra = (tvd.SVHN(str(tmp_path), split=split, download=False) for split in ("train", "extra"))
    same_as_torchvision(load_source("svhn", "train+extra", root=str(tmp_path)), ConcatDataset([train, extra]))
    assert torch.equal(data.split_labels("svhn", "extra", str(tmp_path)), torch.from_numpy(extra.labels))


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "extracted"])
def test_fashion_mnist_as_torchvision_reads_it(tmp_path: Path, gz: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    raw = tmp_path / "FashionMNIST" / "raw"  # where torchvision's download puts them (.gz and extracted)
    write_fashion_mnist(raw, n_train=6, n_test=4, gz=gz)
    if gz:  # torchvision reads the extracted files only; sslkit reads the .gz ones first
        for f in raw.glob("*.gz"):
            (raw / f.stem).write_bytes(gzip.decompress(f.read_bytes()))
    for split in ("train", "test"):
        ds = tvd.FashionMNIST(str(tmp_path), train=split == "train", download=False)
        source = load_source("fashion-mnist", split, root=str(tmp_path))
        same_as_torchvision(source, ds)
        assert source.classes == tuple(ds.classes)


@pytest.mark.skipif(not data.FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_the_installed_fashion_mnist_as_torchvision_reads_it(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in data.FASHION_MNIST_SYSTEM_DIR.glob("*-ubyte.gz"):
        with gzip.open(f) as src, open(raw / f.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    for split, n in (("train", 60_000), ("test", 10_000)):
        ds = tvd.FashionMNIST(str(tmp_path), train=split == "train", download=False)
        source = load_source("fashion-mnist", split)
        assert source.images.shape == (n, 1, 28, 28) and len(ds) == n
        assert torch.equal(source.images[:, 0], ds.data) and torch.equal(source.labels, ds.targets)
        assert torch.bincount(source.labels).tolist() == [n // 10] * 10 and source.classes == tuple(ds.classes)
        img, target = ds[n - 1]
        assert np.array_equal(np.asarray(img), source.images[n - 1, 0].numpy()) and target == source.labels[-1]


def test_recipes_name_the_folder_torchvision_reads() -> None:
    """A recipe's 'Data:' comment is where users look for what to put in data.root; cifar10.yaml said
    'cifar-*-python', which is CIFAR-100's folder, not CIFAR-10's cifar-10-batches-py."""
    import yaml

    recipes = Path(__file__).resolve().parent.parent / "recipes"
    checked = 0
    for path in sorted(recipes.glob("*.yaml")):
        text = path.read_text()
        dataset = (yaml.safe_load(text).get("data") or {}).get("dataset")
        if dataset in ("cifar10", "cifar100", "stl10", "svhn"):
            data_line = next(line for line in text.splitlines() if line.startswith("# Data:"))
            folder = getattr(data._torchvision_class(dataset), "base_folder", None)
            assert folder is not None and f" {folder}/ " in data_line, (path.name, data_line)
            checked += 1
    assert checked == 3
