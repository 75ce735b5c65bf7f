"""Image sources and splits: the embedded and the real Fashion-MNIST, and tiny files written byte for byte in the
on-disk formats of IDX, CIFAR-10/100, STL-10, SVHN and image folders."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import pickle
import pickletools
import re
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import DiskFillsUp, stl10_bytes, write_cifar, write_fashion_mnist, write_idx, write_stl10, write_svhn
from PIL import Image

import sslkit.data as data
from sslkit.data import (
    DATASETS,
    ImageSource,
    imagefolder_cache,
    imagefolder_pool,
    imagefolder_split,
    load_source,
    load_sources,
    read_array_pickle,
    read_idx,
    resize,
    stratified_split,
)
from sslkit.errors import UserError

REPO = Path(__file__).resolve().parent.parent
needs_debian_fashion_mnist = pytest.mark.skipif(not data.FASHION_MNIST_SYSTEM_DIR.is_dir(),
                                                reason="apt-get install dataset-fashion-mnist")


# --- Fashion-MNIST ----------------------------------------------------------------------------------------


def test_embedded_mini_subset_is_stratified() -> None:
    train, test = load_source("fashion-mnist-mini", "train"), load_source("fashion-mnist-mini", "test")
    assert train.images.shape == (10_000, 1, 28, 28) and test.images.shape == (2_000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.is_contiguous() and train.name == "fashion-mnist-mini/train"
    assert torch.bincount(train.labels).tolist() == [1000] * 10
    assert torch.bincount(test.labels).tolist() == [200] * 10
    assert train.classes == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                             "Bag", "Ankle boot")
    assert (train.channels, train.image_size, len(train)) == (1, 28, 10_000)
    assert 40 < train.images.float().mean() < 100  # real clothing on black, not zeros or noise
    assert (REPO / "assets" / "fashion-mnist-mini" / "LICENSE").read_text().count("Zalando SE") == 1


@needs_debian_fashion_mnist
def test_full_fashion_mnist_and_the_mini_subset_of_it() -> None:
    train, test = load_source("fashion-mnist", "train"), load_source("fashion-mnist", "test")
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10 and train.name == "fashion-mnist/train"
    # The shipped assets are exactly what the script makes from these files.
    spec = importlib.util.spec_from_file_location("make_mini", REPO / "eval" / "make_fashion_mnist_mini.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    images, labels = script.make_split("test")
    mini = load_source("fashion-mnist-mini", "test")
    assert np.array_equal(mini.images[:, 0].numpy(), images) and np.array_equal(mini.labels.numpy(), labels)


def test_idx_reader_and_its_errors(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 300, dtype=np.int64).reshape(2, 3, 300).astype(np.uint8)  # a dimension > 255
    write_idx(tmp_path / "ok-idx3-ubyte.gz", a)
    assert np.array_equal(read_idx(tmp_path / "ok-idx3-ubyte.gz"), a)
    (tmp_path / "plain-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x07\x08\x09")
    assert read_idx(tmp_path / "plain-idx1-ubyte").tolist() == [7, 8, 9]  # ungzipped files work too

    write_idx(tmp_path / "float.gz", a, type_code=0x0D)
    with pytest.raises(UserError, match=r"float\.gz is not a uint8 IDX file \(bad magic number 00000d03\)"):
        read_idx(tmp_path / "float.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x01\x02")
    with pytest.raises(UserError, match=r"short\.gz holds 2 data bytes but its header says 10"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "notgzip.gz").write_bytes(b"plain text")
    with pytest.raises(UserError, match=r"notgzip\.gz is unreadable"):
        read_idx(tmp_path / "notgzip.gz")
    big = (np.random.default_rng(0).integers(0, 16, (40, 28, 28)) * 16).astype(np.uint8)  # compressible, as images
    write_idx(tmp_path / "damaged.gz", big)
    raw = bytearray((tmp_path / "damaged.gz").read_bytes())
    raw[200:600] = bytes(b ^ 0xFF for b in raw[200:600])  # bad deflate data, intact gzip header: zlib.error
    (tmp_path / "damaged.gz").write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"damaged\.gz is unreadable \(.*\) — delete it and re-download"):
        read_idx(tmp_path / "damaged.gz")


@needs_debian_fashion_mnist
def test_a_data_root_without_fashion_mnist_says_where_it_was_read_instead(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=rf"data.root '{tmp_path}' holds no Fashion-MNIST test files: read those of "
                                         rf"{data.FASHION_MNIST_SYSTEM_DIR}"):
        assert len(load_source("fashion-mnist", "test", root=str(tmp_path))) == 10_000


def test_fashion_mnist_search_order_and_missing_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as err:
        load_source("fashion-mnist", "train", root=str(empty))
    message = str(err.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
    assert all(str(p) in message for p in (empty, empty / "FashionMNIST" / "raw", tmp_path / "nowhere"))
    assert "data.root" in message and "data.download: true" in message

    raw = tmp_path / "user" / "FashionMNIST" / "raw"  # torchvision's layout under data.root
    raw.mkdir(parents=True)
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", x)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 9]))
    src = load_source("fashion-mnist", "test", root=str(tmp_path / "user"))
    assert torch.equal(src.images[:, 0], torch.from_numpy(x)) and src.labels.tolist() == [0, 1, 9]

    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.array([0, 1]))  # one label short
    with pytest.raises(UserError, match="do not form one image set"):
        load_source("fashion-mnist", "test", root=str(tmp_path / "user"))


def test_a_half_copied_fashion_mnist_folder_is_named_not_passed_over(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """data.root holding the images file of a split but not its labels (a copy or gunzip stopped part way) was
    passed over with 'holds no Fashion-MNIST train files', and the installed copy read instead; one file gunzipped
    and the other not was passed over too."""
    expected = write_fashion_mnist(tmp_path, n_train=4, n_test=2)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(gzip.decompress(labels.read_bytes()))
    labels.unlink()  # images .gz, labels extracted
    train = load_source("fashion-mnist", "train", root=str(tmp_path))
    assert torch.equal(train.images[:, 0], torch.from_numpy(expected["train"]))
    assert train.labels.tolist() == expected["train_labels"].tolist()

    (tmp_path / "train-labels-idx1-ubyte").unlink()
    from sslkit.cli import main

    code = main(["pretrain", str(REPO / "recipes" / "fashion_mnist.yaml"), "--out", str(tmp_path / "run"), "--set",
                 f"data.root={tmp_path}"])
    assert code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err == (f"sslkit pretrain: error: {tmp_path} holds train-images-idx3-ubyte.gz but not "
                                       "train-labels-idx1-ubyte.gz — put that file there too, or remove "
                                       "train-images-idx3-ubyte.gz\n")


def test_fashion_mnist_not_found_names_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"set data\.root to a folder with t10k-images-idx3-ubyte\.gz and "
                                        r"t10k-labels-idx1-ubyte\.gz, or set data\.download: true$"):
        load_source("fashion-mnist", "test", root=str(tmp_path))


def test_missing_embedded_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_MINI_DIR", tmp_path)
    with pytest.raises(UserError, match=r"fashion-mnist-mini files are missing from .*make_fashion_mnist_mini\.py"):
        load_source("fashion-mnist-mini", "train")


def test_resize_once_at_load_is_antialiased() -> None:
    src = load_source("fashion-mnist-mini", "test", image_size=14)
    assert src.images.shape == (2_000, 1, 14, 14) and src.images.dtype == torch.uint8
    assert abs(src.images.float().mean() - load_source("fashion-mnist-mini", "test").images.float().mean()) < 1
    flat = torch.full((2, 3, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(resize(flat, 7), torch.full((2, 3, 7, 7), 77, dtype=torch.uint8))
    # Columns 255, 0, 0, 0, ...: shrunk 4× an antialiased filter averages each group (~64); plain bilinear
    # would sample between the two black columns and return 0.
    stripes = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    stripes[..., ::4] = 255
    small = resize(stripes, 8).float()
    assert 55 < small[..., 1:-1].mean() < 75 and small.std() < 15


# --- torchvision's data sets, on tiny files in the exact formats --------------------------------------------


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_on_disk_format(tmp_path: Path, kind: str) -> None:
    expected = write_cifar(tmp_path, kind, per_batch=3)
    first = tmp_path / ("cifar-10-batches-py/data_batch_1" if kind == "cifar10" else "cifar-100-python/train")
    # Read the pickle's opcodes without running them: the batch holds the "data" key torchvision looks up.
    assert {"data", b"data"} & {arg for _, arg, _ in pickletools.genops(first.read_bytes()) if arg is not None}
    train = load_source(kind, "train", root=str(tmp_path))
    test = load_source(kind, "test", root=str(tmp_path))
    assert train.images.shape == (15 if kind == "cifar10" else 3, 3, 32, 32) and train.images.is_contiguous()
    assert torch.equal(train.images, torch.from_numpy(expected["train"]))  # pixel (n, c, y, x) where it belongs
    assert torch.equal(test.images, torch.from_numpy(expected["test"]))
    assert train.labels.tolist() == expected["train_labels"].tolist() and train.labels.dtype == torch.int64
    assert test.labels.tolist() == expected["test_labels"].tolist()
    names = [f"class{i}" for i in range(10)] if kind == "cifar10" else [f"fine{i}" for i in range(100)]
    assert list(train.classes) == names and train.name == f"{kind}/train"

    with pytest.raises(UserError) as err:
        load_source(kind, "train", root=str(tmp_path / "empty"))
    assert f"{kind} files not found under {tmp_path / 'empty'}" in str(err.value)
    assert f"set data.download: true, or download https://www.cs.toronto.edu/~kriz/{kind.replace('cifar', 'cifar-')}" \
           f"-python.tar.gz and extract it in {tmp_path / 'empty'}" in str(err.value)
    first.write_bytes(b"\x80\x02 damaged")
    with pytest.raises(UserError, match=f"reading {kind} \\(train\\) failed: {first} is damaged"):
        load_source(kind, "train", root=str(tmp_path))


def test_a_data_pickle_carrying_code_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    """Local CIFAR files (no download, so no md5 check) are read first by an unpickler of plain data and arrays
    only: torchvision's pickle.load would have run the command a file carries."""
    write_cifar(tmp_path, "cifar10", per_batch=2)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    assert read_array_pickle(batch)["data"].shape == (2, 3072)  # a real batch reads, its keys as torchvision's
    copy = tmp_path / "repacked"
    for protocol in (2, 5):  # a copy re-pickled by Python 3 (bytes via _codecs.encode at 2, _frombuffer at 5) too
        rows = np.arange(12, dtype=np.uint8).reshape(2, 6)
        copy.write_bytes(pickle.dumps({b"data": rows, b"labels": [1, 2]}, protocol=protocol))
        assert np.array_equal(read_array_pickle(copy, encoding="bytes")[b"data"], rows)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    batch.write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"global posix\.system is not allowed in a data file"):
        read_array_pickle(batch)
    with pytest.raises(UserError, match=f"reading cifar10 \\(train\\) failed: {batch} is damaged \\(UnpicklingError: "
                                        "global posix.system is not allowed in a data file\\)"):
        load_source("cifar10", "train", root=str(tmp_path))
    assert not marker.exists()


def test_a_file_cut_short_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A half-extracted CIFAR folder or a half-copied SVHN .mat: the message said 'reading cifar10 (train) under R
    failed (UnpicklingError: pickle data was truncated) — delete the damaged files', without naming one."""
    write_cifar(tmp_path, "cifar10", per_batch=2)
    third = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    third.write_bytes(third.read_bytes()[:3000])
    from sslkit.cli import main

    code = main(["pretrain", str(REPO / "recipes" / "cifar10.yaml"), "--out", str(tmp_path / "run"), "--set",
                 f"data.root={tmp_path}", "--set", "data.download=false"])
    assert code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err == (f"sslkit pretrain: error: reading cifar10 (train) failed: {third} is damaged "
                                       "(UnpicklingError: pickle data was truncated) — delete it and set "
                                       "data.download: true, or put an intact copy there\n")
    write_svhn(tmp_path, "test", n=3)
    mat = tmp_path / "test_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:-100])
    with pytest.raises(UserError) as err:
        load_source("svhn", "test", root=str(tmp_path))
    assert str(err.value).startswith(f"reading svhn (test) failed: {mat} is damaged (")
    assert str(err.value).endswith(") — delete it and set data.download: true, or put an intact copy there")


def test_missing_files_say_where_torchvision_reads_them_and_how_to_get_them(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """data.root set to the extracted folder itself, the files put straight in it, an archive not extracted: each
    one line saying what to change, before any download (which would fetch a second copy into the wrong place)."""
    write_cifar(tmp_path, "cifar10", per_batch=1)
    inner = tmp_path / "cifar-10-batches-py"
    for download in (False, True):
        with pytest.raises(UserError) as err:
            load_source("cifar10", "test", root=str(inner), download=download)
        assert str(err.value) == (f"data.root {inner} is the cifar-10-batches-py folder itself — set data.root to the "
                                  f"folder that holds it, {tmp_path}")
    flat = tmp_path / "mine"
    inner.rename(flat)
    with pytest.raises(UserError) as err:
        load_source("cifar10", "train", root=str(flat), download=True)
    assert str(err.value) == (f"{flat} holds data_batch_1 and the other cifar10 files directly, but torchvision reads "
                              f"them from {flat / 'cifar-10-batches-py'} — move them into that folder")
    other = tmp_path / "other"
    other.mkdir()
    (other / "train").write_text("a file of something else")  # CIFAR-100's first file name, alone: not its files
    with pytest.raises(UserError, match=r"^cifar100 files not found under"):
        load_source("cifar100", "train", root=str(other))

    stl = tmp_path / "stl"
    write_stl10(stl, n_train=1, n_test=1, n_unlabeled=1)
    (stl / "stl10_binary" / "test_y.bin").unlink()  # extraction stopped part way
    (stl / "stl10_binary.tar.gz").write_bytes(b"")
    with pytest.raises(UserError) as err:
        load_source("stl10", "test", root=str(stl))
    assert str(err.value) == (f"{stl / 'stl10_binary.tar.gz'} is not extracted (missing "
                              f"{stl / 'stl10_binary' / 'test_y.bin'}) — extract it there (tar -xzf "
                              f"{stl / 'stl10_binary.tar.gz'} -C {stl}), or set data.download: true, which checks it "
                              "and extracts it")

    from sslkit.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["pretrain", str(REPO / "recipes" / "stl10.yaml"), "--out", str(tmp_path / "run"), "--set",
                 f"data.root={empty}", "--set", "data.download=false"])
    assert code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err == (
        f"sslkit pretrain: error: stl10 files not found under {empty} (missing "
        f"{empty / 'stl10_binary' / 'train_X.bin'} and 2 more) — set data.download: true, or download "
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz "
        f"and extract it in {empty}\n")
    with pytest.raises(UserError, match=r"svhn files not found under .* — set data\.download: true, or download "
                                        r"http://ufldl\.stanford\.edu/housenumbers/extra_32x32\.mat and put it in "):
        load_source("svhn", "extra", root=str(empty))


@pytest.mark.parametrize("dataset", ["cifar100", "svhn"])
def test_a_download_without_network_says_so_and_where_to_fetch_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], dataset: str) -> None:
    """The recipes set data.download: true; offline it said '... failed (URLError ...) — delete the damaged files and
    set data.download: true', though nothing was damaged and the download was on."""
    import urllib.error
    import urllib.request

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # what torchvision's download_url calls
    fetch = {"cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz elsewhere and extract it in",
             "svhn": "http://ufldl.stanford.edu/housenumbers/train_32x32.mat elsewhere and put it in"}[dataset]
    from sslkit.cli import main

    code = main(["pretrain", str(REPO / "recipes" / "cifar100.yaml"), "--out", str(tmp_path / "run"), "--set",
                 f"data.root={tmp_path}", "--set", f"data.dataset={dataset}"])
    assert code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err == (
        f"sslkit pretrain: error: downloading {dataset} into {tmp_path} failed (URLError: <urlopen error [Errno -2] "
        f"Name or service not known>) — check the network, or download {fetch} {tmp_path}\n")


def test_a_download_that_fails_its_checksum_is_not_told_to_turn_the_download_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A captive portal's page instead of the file: torchvision's checksum refuses it. The message said to 'set
    data.download: true', which was already set."""
    import io
    import urllib.request

    class Page(io.BytesIO):
        def __init__(self, request: urllib.request.Request) -> None:
            super().__init__(b"<html>sign in to use this network</html>")
            self.url, self.length = request.full_url, 41

    monkeypatch.setattr(urllib.request, "urlopen", Page)
    with pytest.raises(UserError) as err:
        load_source("svhn", "train", root=str(tmp_path), download=True)
    assert str(err.value) == (f"downloading or reading svhn (train) under {tmp_path} failed (RuntimeError: File not "
                              "found or corrupted.) — delete the damaged or partly downloaded files there and run "
                              "again, or download http://ufldl.stanford.edu/housenumbers/train_32x32.mat elsewhere and "
                              f"put it in {tmp_path}")
    assert (tmp_path / "train_32x32.mat").read_bytes().startswith(b"<html>")  # the file the message means


def test_stl10_on_disk_format(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    x[1, 2, 5, 70] = 0
    x[1, 2, 70, 5] = 255  # the transposed position holds something else, so a missed transpose shows
    unlabeled = rng.integers(0, 256, (2, 3, 96, 96), dtype=np.uint8)
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(stl10_bytes(x))
        (folder / f"{split}_y.bin").write_bytes(bytes([1, 10, 3]))  # 1-based on disk
    (folder / "unlabeled_X.bin").write_bytes(stl10_bytes(unlabeled))
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")

    train = load_source("stl10", "train", root=str(tmp_path))
    assert train.images.shape == (3, 3, 96, 96) and train.images.is_contiguous()
    assert int(train.images[1, 2, 5, 70]) == 0 and int(train.images[1, 2, 70, 5]) == 255
    assert torch.equal(train.images, torch.from_numpy(x))
    assert train.labels.tolist() == [0, 9, 2] and train.classes == tuple(f"c{i}" for i in range(10))
    assert load_source("stl10", "unlabeled", root=str(tmp_path)).labels.tolist() == [-1, -1]
    both = load_source("stl10", "train+unlabeled", root=str(tmp_path))
    assert both.labels.tolist() == [0, 9, 2, -1, -1] and torch.equal(both.images[3:], torch.from_numpy(unlabeled))
    assert stratified_split(both.labels, 3, seed=0)[0].tolist() == [0, 1, 2]  # the unlabeled are never picked
    (folder / "class_names.txt").unlink()  # optional in the format: the standard names are used
    assert load_source("stl10", "test", image_size=32, root=str(tmp_path)).classes[0] == "airplane"


def test_stl10_unlabeled_count_comes_from_the_file_size(tmp_path: Path) -> None:
    write_stl10(tmp_path, n_unlabeled=7)
    assert data.split_length("stl10", "unlabeled", str(tmp_path)) == 7
    assert len(load_source("stl10", "unlabeled", root=str(tmp_path))) == 7
    path = tmp_path / "stl10_binary" / "unlabeled_X.bin"
    path.write_bytes(bytes(27649))
    with pytest.raises(UserError, match=r"unlabeled_X\.bin holds 27,649 bytes, not a whole number of 96×96 RGB "
                                        r"images \(27,648 bytes each\) — delete it"):
        data.split_length("stl10", "unlabeled", str(tmp_path))
    path.unlink()
    assert len(load_source("stl10", "train", root=str(tmp_path))) == 20  # train and test need no unlabeled file
    with pytest.raises(UserError, match=r"missing \S*unlabeled_X\.bin\) — set data\.download"):
        load_source("stl10", "train+unlabeled", root=str(tmp_path))
    with pytest.raises(UserError, match=r"unlabeled_X\.bin cannot be read \(FileNotFoundError: .*\) — put STL-10's "
                                        "unlabeled images there"):
        data.split_length("stl10", "unlabeled", str(tmp_path))


def test_stl10_files_cut_short_are_named_before_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A half-extracted stl10_binary: torchvision reshapes a .bin file as it is, so an images file cut at an image
    boundary, or any short labels file, gave images and labels of different lengths (a ValueError traceback)."""
    write_stl10(tmp_path, n_train=4, n_test=3, n_unlabeled=2)
    folder = tmp_path / "stl10_binary"
    intact = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / "train_X.bin").write_bytes(intact["train_X.bin"][:3 * 27648])
    with pytest.raises(UserError) as err:
        load_source("stl10", "train", root=str(tmp_path))
    assert str(err.value) == (f"{folder / 'train_y.bin'} holds 4 labels but train_X.bin 3 images — one of them is cut "
                              "short: delete both and set data.download: true, or put the intact files there")
    (folder / "train_X.bin").write_bytes(intact["train_X.bin"])
    (folder / "test_y.bin").write_bytes(intact["test_y.bin"][:2])
    with pytest.raises(UserError, match=r"test_y\.bin holds 2 labels but test_X\.bin 3 images — one of them is cut"):
        load_source("stl10", "test", root=str(tmp_path))
    (folder / "test_y.bin").write_bytes(b"\x01\x00\x03")  # 0 would become label 255 (uint8 minus 1)
    with pytest.raises(UserError, match=r"test_y\.bin holds label 0 at image 1, outside STL-10's 1\.\.10 — delete it"):
        load_source("stl10", "test", root=str(tmp_path))
    (folder / "unlabeled_X.bin").write_bytes(intact["unlabeled_X.bin"][:-5])
    with pytest.raises(UserError, match=r"unlabeled_X\.bin holds 55,291 bytes, not a whole number of 96×96 RGB"):
        load_source("stl10", "train+unlabeled", root=str(tmp_path))

    from sslkit.cli import main

    (folder / "train_y.bin").write_bytes(intact["train_y.bin"][:1])
    code = main(["pretrain", str(REPO / "recipes" / "stl10.yaml"), "--out", str(tmp_path / "run"), "--set",
                 f"data.root={tmp_path}", "--set", "data.download=false", "--set", "data.split=train"])
    assert code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err == (f"sslkit pretrain: error: {folder / 'train_y.bin'} holds 1 labels but "
                                       "train_X.bin 4 images — one of them is cut short: delete both and set "
                                       "data.download: true, or put the intact files there\n")


def test_files_torchvision_verified_once_are_not_md5_checked_again_on_every_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With data.download: true, torchvision's STL10 compares the md5 of all five files of the release (3.1 GB with
    the unlabeled images) each time it is made, whichever the split and though nothing is missing: every pretrain,
    resume and fine-tune (which loads train and test) read and hashed them all again."""
    from torchvision.datasets import stl10 as tv_stl10
    from torchvision.datasets import svhn as tv_svhn
    from torchvision.datasets import utils as tv_utils

    checked: list[str] = []

    def check_integrity(fpath: str, md5: str | None = None) -> bool:  # the fakes cannot match the release's md5
        checked.append(Path(fpath).name)
        return os.path.isfile(fpath)

    for module in (tv_stl10, tv_svhn, tv_utils):  # utils: SVHN's download_url checks the file it has
        monkeypatch.setattr(module, "check_integrity", check_integrity)
    monkeypatch.setattr(tv_stl10, "download_and_extract_archive", lambda *a, **k: pytest.fail("downloaded"))
    expected = write_stl10(tmp_path, n_train=4, n_test=3, n_unlabeled=2)
    test = load_source("stl10", "test", root=str(tmp_path), download=True)
    assert sorted(checked) == ["test_X.bin", "test_y.bin", "train_X.bin", "train_y.bin", "unlabeled_X.bin"]
    assert torch.equal(test.images, torch.from_numpy(expected["test"]))
    checked.clear()
    train = load_source("stl10", "train", root=str(tmp_path), download=True)  # another split, the same files
    assert load_source("stl10", "test", root=str(tmp_path), download=True).labels.tolist() == test.labels.tolist()
    assert checked == [] and torch.equal(train.images, torch.from_numpy(expected["train"]))

    labels = tmp_path / "stl10_binary" / "train_y.bin"
    labels.write_bytes(labels.read_bytes())  # rewritten (a new copy): checked again, once
    load_source("stl10", "train", root=str(tmp_path), download=True)
    load_source("stl10", "train", root=str(tmp_path), download=True)
    assert len(checked) == 5
    checked.clear()

    write_svhn(tmp_path, "extra", n=5)  # SVHN checked the .mat twice per load (its download, then its constructor)
    for _ in range(3):
        load_source("svhn", "extra", root=str(tmp_path), download=True)
    assert checked == ["extra_32x32.mat"] * 2


def test_svhn_on_disk_format(tmp_path: Path) -> None:
    from scipy.io import savemat

    x = np.random.default_rng(1).integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)  # H, W, C, N as in the .mat
    x[4, 20, 1, 3], x[20, 4, 1, 3] = 11, 222
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [10], [9]], np.uint8)})
    src = load_source("svhn", "train", root=str(tmp_path))
    assert src.images.shape == (5, 3, 32, 32) and src.images.is_contiguous()
    assert int(src.images[3, 1, 4, 20]) == 11 and int(src.images[3, 1, 20, 4]) == 222
    assert torch.equal(src.images, torch.from_numpy(x).permute(3, 2, 0, 1))
    assert src.labels.tolist() == [0, 1, 2, 0, 9]  # label 10 is the digit 0
    assert src.classes == tuple("0123456789")
    with pytest.raises(UserError, match="svhn files not found .*test_32x32.mat"):
        load_source("svhn", "test", root=str(tmp_path))


# --- the way out, in the terms of the command that failed ----------------------------------------------------

STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def random_run(run: Path, dataset: str, image_size: int, data_root: Path) -> Path:
    """A run directory holding a random encoder said to be pretrained on ``dataset`` in ``data_root``."""
    from sslkit.checkpoint import export_encoder
    from sslkit.models import build_encoder

    torch.manual_seed(0)
    export_encoder(build_encoder("resnet18", "cifar", 3), run,
                   dict(encoder="resnet18", stem="cifar", in_chans=3, num_features=512, image_size=image_size,
                        mean=[0.5] * 3, std=[0.25] * 3, dataset=dataset, data_root=str(data_root), recipe="tiny"))
    return run


def test_commands_that_read_a_run_say_data_root_where_pretrain_says_the_recipe_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`sslkit probe`, `neighbors`, `map` and `report` read no recipe: their way to another folder is --data-root.
    Missing or damaged data told them to 'set data.download: true' or 'set data.root', keys only pretraining reads."""
    from sslkit.cli import main

    def refused(*argv: str) -> str:
        code = main(list(argv))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, (code, err)
        assert "data.download" not in err and "data.root" not in err, err
        assert not (Path(argv[1]) / "probe.json").exists() and not (Path(argv[1]) / "features").exists()
        return err

    moved = tmp_path / "moved"  # where the run pretrained: nothing there any more
    moved.mkdir()
    stl_run = random_run(tmp_path / "stl-run", "stl10", 96, moved)
    assert refused("probe", str(stl_run)) == (
        f"sslkit probe: error: stl10 files not found under {moved} (missing {moved / 'stl10_binary' / 'train_X.bin'} "
        f"and 1 more) — give --data-root DIR, the folder that holds stl10_binary/ now, or download {STL10_URL} and "
        f"extract it in {moved}\n")

    stl = tmp_path / "stl"
    write_stl10(stl, n_train=4, n_test=3, n_unlabeled=2)
    labels = stl / "stl10_binary" / "test_y.bin"
    labels.write_bytes(labels.read_bytes()[:2])
    assert refused("neighbors", str(stl_run), "--query", "0", "--data-root", str(stl)) == (
        f"sslkit neighbors: error: {labels} holds 2 labels but test_X.bin 3 images — one of them is cut short: put "
        f"the intact files there (from {STL10_URL}), or give --data-root DIR, a folder with intact files\n")

    cifar = tmp_path / "cifar"
    write_cifar(cifar, "cifar10", per_batch=2)
    batch = cifar / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:3000])
    cifar_run = random_run(tmp_path / "cifar-run", "cifar10", 32, moved)
    assert refused("map", str(cifar_run), "--data-root", str(cifar)) == (
        f"sslkit map: error: reading cifar10 (test) failed: {batch} is damaged (UnpicklingError: pickle data was "
        f"truncated) — put an intact copy there (from {CIFAR10_URL}), or give --data-root DIR, a folder with intact "
        "files\n")
    inner = tmp_path / "inner" / "cifar-10-batches-py"
    inner.mkdir(parents=True)
    assert refused("report", str(cifar_run), "--data-root", str(inner)) == (
        f"sslkit report: error: {inner} is the cifar-10-batches-py folder itself — give --data-root {inner.parent}, "
        "the folder that holds it\n")

    # pretrain (and finetune, whose recipe has data.root and data.download too) keeps the recipe's keys
    first = cifar / "cifar-10-batches-py" / "data_batch_1"
    first.write_bytes(first.read_bytes()[:3000])
    code = main(["pretrain", str(REPO / "recipes" / "cifar10.yaml"), "--out", str(tmp_path / "run"), "--set",
                 f"data.root={cifar}", "--set", "data.download=false"])
    assert code == 2 and capsys.readouterr().err.endswith("— delete it and set data.download: true, or put an "
                                                          "intact copy there\n")


def test_data_root_option_changes_the_advice_of_every_data_error_inside_it_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    stl = tmp_path / "stl"
    write_stl10(stl, n_train=2, n_test=2, n_unlabeled=1)
    (stl / "stl10_binary" / "unlabeled_X.bin").write_bytes(bytes(27649))
    (tmp_path / "stl10_binary.tar.gz").write_bytes(b"")

    def messages() -> list[str]:
        out = []
        for call in (lambda: load_source("fashion-mnist", "test", root=str(tmp_path)),
                     lambda: load_source("stl10", "unlabeled", root=str(stl)),
                     lambda: load_source("stl10", "test", root=str(tmp_path)),
                     lambda: data.split_length("stl10", "unlabeled", str(tmp_path)),
                     lambda: imagefolder_pool(str(tmp_path / "missing")),
                     lambda: imagefolder_pool(None)):
            with pytest.raises(UserError) as err:
                call()
            out.append(str(err.value))
        return out

    with data.data_root_option("--data-root"):
        given = messages()
    recipe = messages()
    for message in given:
        assert "data.root" not in message and "data.download" not in message, message
    assert given[0].endswith("— apt-get install dataset-fashion-mnist, or give --data-root DIR, a folder with "
                             "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    assert given[1].endswith(f"(27,648 bytes each) — put the intact file there (from {STL10_URL}), or give "
                             "--data-root DIR, a folder with intact files")
    assert given[2].endswith(f"— extract it there (tar -xzf {tmp_path / 'stl10_binary.tar.gz'} -C {tmp_path})")
    assert given[3].endswith("— put STL-10's unlabeled images there, or give --data-root DIR, the folder that holds "
                             "stl10_binary/ with them")
    assert given[4].endswith("is not a folder — give --data-root DIR, a folder of class subfolders")
    assert given[5] == ("data.dataset imagefolder needs a folder — give --data-root DIR, a folder of class subfolders "
                        "(root/<class>/<image>)")
    assert all("data.root" in m or "data.download" in m for m in recipe), recipe  # as before, outside it
    assert recipe[5] == ("data.dataset imagefolder needs data.root — set it to a folder of class subfolders "
                         "(root/<class>/<image>)")

    write_fashion_mnist(tmp_path / "system", n_train=2, n_test=2)  # read from there when the given folder has none
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    with data.data_root_option("--data-root"), pytest.warns(UserWarning, match=rf"^the data folder '{stl}' holds no "
                                                                              "Fashion-MNIST test files: read those"):
        load_source("fashion-mnist", "test", root=str(stl))


# --- splits that are training data ----------------------------------------------------------------------------


def test_svhn_extra_is_training_data_to_pretrain_on_and_never_a_scored_split(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SVHN's extra (531,131 digits its authors publish as somewhat less difficult extra training data) was a
    split the probes scored on, and so one no run could pretrain on: the other way round."""
    from sslkit.cli import main
    from sslkit.config import load_recipe
    from sslkit.evaluation.finetune_config import test_split_problem

    assert data.scored_splits("svhn") == ("test",)
    assert data.pretraining_splits("svhn") == ("train", "extra", "train+extra")
    assert load_recipe(REPO / "recipes" / "quickstart.yaml", ["data.dataset=svhn", "data.split=extra"]).data.split \
        == "extra"
    run = random_run(tmp_path / "run", "svhn", 32, tmp_path)  # no data there: refused before any is read
    assert main(["probe", str(run), "--split", "extra"]) == 2
    assert capsys.readouterr().err == ("sslkit probe: error: --split 'extra' of svhn is extra training data (easier "
                                       "images, and a run may have pretrained on them), not an evaluation split — "
                                       "use test (or val, a held-out part of train for comparing runs)\n")
    assert not (run / "probe.json").exists()
    assert test_split_problem("svhn", "extra") == ("data.test_split 'extra' of svhn is extra training data (easier "
                                                   "images, and a run may have pretrained on them), not an "
                                                   "evaluation split — use test")


def test_svhn_train_plus_extra_pretrains_on_both_and_the_finetune_leaves_that_pool_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """data.split: train+extra (the usual SVHN training set), as STL-10's train+unlabeled: the train digits, then
    extra's. Never scored; the fine-tune's disjoint labeled subset avoids exactly the train images of the pool,
    whose draw depends on extra's labels (stratified), read from its file without its images."""
    from rich.console import Console

    import sslkit.evaluation.finetune as ft
    from sslkit.checkpoint import load_encoder
    from sslkit.cli import main
    from sslkit.config import load_recipe
    from sslkit.evaluation.finetune_config import load_finetune_recipe, test_split_problem
    from sslkit.trainer import pretrain, split_train, train_images_in_pool

    root = tmp_path / "data"
    train = write_svhn(root, "train", n=40, seed=1)
    extra = write_svhn(root, "extra", n=30, seed=2)
    write_svhn(root, "test", n=20, seed=3)
    both = load_source("svhn", "train+extra", root=str(root))
    assert both.name == "svhn/train+extra" and both.classes == tuple("0123456789")
    assert torch.equal(both.images, torch.from_numpy(np.concatenate([train["images"], extra["images"]])))
    assert both.labels.tolist() == [*train["labels"].tolist(), *extra["labels"].tolist()]
    assert torch.equal(data.split_labels("svhn", "extra", str(root)), torch.from_numpy(extra["labels"]))

    r = load_recipe(REPO / "recipes" / "quickstart.yaml", [
        "data.dataset=svhn", f"data.root={root}", "data.split=train+extra", "data.pool_size=50",
        "monitor.val_size=10", "monitor.bank_size=40", "train.batch_size=16", "train.epochs=1", "train.threads=1"])
    log = io.StringIO()
    pretrain(r, tmp_path / "run", console=Console(file=log, width=200))
    assert "svhn (train+extra) — 50 images for pretraining" in log.getvalue()
    _, pool, _ = split_train(r, both.labels)
    assert 0 < int((pool >= 40).sum()) < 30  # extra digits in the pool, and train ones
    in_train, size = train_images_in_pool(r, load_source("svhn", "train", root=str(root)).labels, str(root))
    assert torch.equal(in_train, pool[pool < 40]) and size == 50
    unlabeled_extra = torch.cat([both.labels[:40], torch.full((30,), -1)])  # extra's labels matter to the draw
    assert not torch.equal(split_train(r, unlabeled_extra)[1], pool)

    ft_path = tmp_path / "ft.yaml"
    ft_path.write_text(f"name: t\nrun: {tmp_path / 'run'}\n")
    meta = load_encoder(tmp_path / "run").sslkit_meta
    assert meta["split"] == "train+extra"
    labeled = ft.prepare_data(load_finetune_recipe(ft_path, ["labeled.size=12", "labeled.val_size=4"]), meta,
                              torch.device("cpu"))
    assert labeled.info["pool"] == 50 and labeled.info["candidates"] == 40 - len(in_train)
    assert not set(labeled.info["labeled_indices"]) & set(in_train.tolist())

    assert main(["probe", str(tmp_path / "run"), "--split", "train+extra"]) == 2  # probes fitted on train
    assert "--split 'train+extra' of svhn holds the train images the probes are fitted on — use test" in \
        capsys.readouterr().err
    assert not (tmp_path / "run" / "probe.json").exists()
    assert test_split_problem("svhn", "train+extra").startswith("data.test_split 'train+extra' of svhn holds the "
                                                                "train images")
    (root / "extra_32x32.mat").unlink()
    with data.data_root_option("--data-root"), pytest.raises(UserError, match=r"extra_32x32\.mat is missing — put "
                                                                               r"SVHN's extra digits there .* give "
                                                                               r"--data-root DIR, the folder"):
        data.split_labels("svhn", "extra", str(root))


# --- image folders ----------------------------------------------------------------------------------------


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(Image, "open", refuse)


def test_imagefolder_decodes_once_skips_bad_files_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "imgs"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "cats" / "a_red.png")
    Image.new("L", (20, 20), 128).save(root / "cats" / "b_gray.jpg")
    Image.new("RGBA", (16, 16), (0, 0, 255, 0)).save(root / "dogs" / "a_clear.png")  # fully transparent
    Image.new("RGB", (50, 50), (0, 255, 0)).save(root / "dogs" / "b_green.jpg")
    (root / "dogs" / "c_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (root / "dogs" / "d_empty.jpg").write_bytes(b"")
    (root / "dogs" / "notes.txt").write_text("not an image, not counted")

    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\) of 6 .*c_corrupt\.png.*d_empty\.jpg"):
        src = imagefolder_pool(root=str(root), image_size=8)
    assert src.images.shape == (4, 3, 8, 8) and src.images.dtype == torch.uint8
    assert src.classes == ("cats", "dogs") and src.labels.tolist() == [0, 0, 1, 1]
    red, gray, clear, green = src.images.float()
    assert red[0].min() > 250 and red[1:].max() < 5
    assert (gray - 128).abs().max() <= 2 and (green[1] > 245).all() and green[[0, 2]].max() < 10
    assert clear.min() > 250  # transparent pixels are shown on white
    cache = imagefolder_cache(root.resolve())
    assert cache.parent.parent == tmp_path.parent / "sslkit-cache"  # $SSLKIT_CACHE (tests/conftest.py)
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]  # no temporary files left
    # Nothing written into the user's folder (torchvision's ImageFolder would take a folder there for a class).
    assert sorted(p.name for p in root.iterdir()) == ["cats", "dogs"]

    forbid_decoding(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same process said it when decoding: not again
        imagefolder_pool(root=str(root), image_size=8)
    monkeypatch.setattr(data, "_TOLD", set())  # as in a later process: a one-line reminder
    with pytest.warns(UserWarning, match=r"2 unreadable image\(s\) in .*imgs are left out \(as when it was decoded\)"):
        again = imagefolder_pool(root=str(root), image_size=8)
    assert torch.equal(again.images, src.images) and torch.equal(again.labels, src.labels)
    assert again.classes == src.classes and again.name == "imagefolder/imgs"
    again.images[0] = 0  # copy-on-write: a stray write changes neither the cache nor the next load
    assert torch.equal(imagefolder_pool(root=str(root), image_size=8).images, src.images)
    monkeypatch.undo()

    Image.new("RGB", (9, 9), (0, 0, 0)).save(root / "cats" / "c_black.png")  # a new file: a new cache key
    with pytest.warns(UserWarning, match="skipped 2"):
        grown = imagefolder_pool(root=str(root), image_size=8, channels=1)
    assert grown.images.shape == (5, 1, 8, 8) and grown.labels.tolist() == [0, 0, 0, 1, 1]
    assert int(grown.images[2].max()) == 0
    before = set(cache.glob("*.npy"))
    assert len(before) == 2  # RGB (the folder as it was) and gray (as it is)
    with pytest.warns(UserWarning, match="skipped 2"):
        imagefolder_pool(root=str(root), image_size=8)  # RGB as it is: replaces the RGB cache of the old folder
    after = set(cache.glob("*.npy"))
    assert len(after) == 2 and len(after & before) == 1


def test_an_all_gray_folder_read_as_rgb_suggests_one_channel(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("L", (12, 8), 40 * i + 10).save(tmp_path / c / f"{i}.png")
    with pytest.warns(UserWarning, match=r"every image in .* is grayscale, read as 3 equal RGB channels — set "
                                         r"data\.channels: 1") as said_first:
        imagefolder_pool(root=str(tmp_path), image_size=8)
        imagefolder_pool(root=str(tmp_path), image_size=8)  # the same process reads its cache: not said twice
    assert len([w for w in said_first if "grayscale" in str(w.message)]) == 1
    said = " ".join(capsys.readouterr().err.split())
    assert "to 8×8 RGB (shorter side resized to 8, then centre-cropped; data.image_size sets the size)" in said
    monkeypatch.setattr(data, "_TOLD", set())  # a later process, which reads the cache: said again, once
    with pytest.warns(UserWarning, match=r"every image in .* is grayscale") as said_again:
        imagefolder_pool(root=str(tmp_path), image_size=8)
        imagefolder_pool(root=str(tmp_path), image_size=8)
    assert len([w for w in said_again if "grayscale" in str(w.message)]) == 1
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "a" / "red.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one colour image: nothing to suggest
        imagefolder_pool(root=str(tmp_path), image_size=8)
        imagefolder_pool(root=str(tmp_path), image_size=8, channels=1)


def test_a_cache_pruned_by_another_process_between_check_and_read_is_decoded_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / c / "0.png")
    first = imagefolder_pool(root=str(tmp_path), image_size=8)

    real, calls = data._load_cached, []

    def pruned(*args: object, **kwargs: object) -> ImageSource:  # the first read finds the files gone
        calls.append(1)
        if len(calls) == 1:
            raise FileNotFoundError("gone")
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "_load_cached", pruned)
    again = imagefolder_pool(root=str(tmp_path), image_size=8)  # decoded, not a traceback
    assert torch.equal(again.images, first.images) and len(calls) == 2
    # The index written then records the folder's contents, though no read of a cache hashes them: a copy (new
    # ctimes, so only the contents match) takes the cache along.
    decoded = count_decodings(monkeypatch)
    copy = shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}-copy")
    assert torch.equal(imagefolder_pool(root=str(copy), image_size=8).images, first.images) and decoded == []


def test_a_cached_image_folder_is_read_with_one_hash_of_its_listing(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read of a cached folder hashed its listing twice: for the cache's key, and without ctimes for the
    ``contents`` its index records, which only a missed cache needs (to find a moved or copied folder's cache, or
    to write the index): 10–30 ms more per read at 20,000 files. Now a read hashes it once."""
    root = small_folder(tmp_path / "imgs")
    imagefolder_pool(str(root), image_size=8)
    real, hashed = data._listing_key, []

    def counted(*args: object) -> str:
        hashed.append(args)
        return real(*args)

    monkeypatch.setattr(data, "_listing_key", counted)
    imagefolder_pool(str(root), image_size=8)
    assert len(hashed) == 1


def test_a_cache_index_write_that_fails_leaves_no_temporary_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache's index (its .json) is written as every durable file is (checkpoint.atomic_write): a write that
    fails part-way (a full disk) leaves neither a torn index nor its temporary file in the cache, and the next
    load decodes again and completes it."""
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / c / "0.png")
    real = Path.write_text

    def disk_full(self: Path, text: str, *args: object, **kwargs: object) -> int:
        if self.name.startswith(".tmp-") and ".json." in self.name:
            real(self, text[:10])  # torn
            raise OSError(28, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        imagefolder_pool(root=str(tmp_path), image_size=8)
    cache = imagefolder_cache(tmp_path.resolve())
    assert list(cache.iterdir()) == []  # no index, no temporary file, and no images without their index
    monkeypatch.undo()
    again = imagefolder_pool(root=str(tmp_path), image_size=8)
    assert again.images.shape == (2, 3, 8, 8) and sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]


def test_imagefolder_cache_sees_a_file_replaced_with_its_old_mtime(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / c / f"{i}.bmp")  # BMP: same size, same bytes
    assert imagefolder_pool(root=str(tmp_path), image_size=8).images[0, 0].min() == 200
    # Replaced by a file of the same size whose mtime is set back, as cp -p, rsync -t and tar leave it.
    path = tmp_path / "a" / "0.bmp"
    st = path.stat()
    Image.new("RGB", (8, 8), (0, 0, 200)).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    blue = imagefolder_pool(root=str(tmp_path), image_size=8).images[0]
    assert blue[2].min() == 200 and blue[0].max() == 0


def test_imagefolder_follows_linked_folders_once_and_odd_names(tmp_path: Path) -> None:
    root, extra = tmp_path / "imgs", tmp_path / "more"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    extra.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(extra / f"{i}.png")
    Image.new("RGB", (8, 8)).save(root / "a" / "own.png")
    Image.new("RGB", (8, 8)).save(root / "b" / os.fsdecode(b"caf\xe9.png"))  # not UTF-8 (a Latin-1 name)
    (root / "a" / "batch2").symlink_to(extra, target_is_directory=True)
    (root / "a" / "batch2-again").symlink_to(extra, target_is_directory=True)  # the same folder twice: read once
    (extra / "loop").symlink_to(root / "a", target_is_directory=True)  # a link back up: not followed forever
    pool = imagefolder_pool(root=str(root), image_size=8)
    assert pool.labels.tolist() == [0, 0, 0, 0, 1]
    assert pool.ids[:4] == ("a/batch2/0.png", "a/batch2/1.png", "a/batch2/2.png", "a/own.png")
    train, test = imagefolder_split(pool)
    assert len(train) + len(test) == 5


def test_imagefolder_orientation_and_centre_crop(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # 30 wide, 10 high, thirds red | green | blue: the shorter side is 10 already, the centre crop is green.
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, :10, 0], wide[:, 10:20, 1], wide[:, 20:, 2] = 255, 255, 255
    Image.fromarray(wide).save(tmp_path / "a" / "wide.png")
    # Stored 20 wide and 10 high, top half white; EXIF orientation 6 says "rotate 90° clockwise to view",
    # which puts the white half on the right of a 10 wide, 20 high picture.
    tall = np.zeros((10, 20), np.uint8)
    tall[:5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(tall).save(tmp_path / "b" / "rotated.png", exif=exif)
    src = imagefolder_pool(root=str(tmp_path), image_size=10)
    crop = src.images[0].float()
    assert crop[1].min() > 250 and crop[[0, 2]].max() < 5
    viewed = src.images[1, 0].float()
    assert viewed.shape == (10, 10) and viewed[:, 6:].min() > 250 and viewed[:, :4].max() < 5


def test_imagefolder_skips_decompression_bombs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a" / "small.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "a" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40×40 is over it; Pillow would only warn up to 2000
    with pytest.warns(UserWarning, match=r"skipped 1 .*huge\.png \(40x40 pixels"):
        src = imagefolder_pool(root=str(tmp_path), image_size=8)
    assert len(src) == 1 and src.images[0, :, 0, 0].tolist() == [1, 2, 3]


def test_imagefolder_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="imagefolder needs data.root"):
        imagefolder_pool(None)
    with pytest.raises(UserError, match="is not a folder"):
        imagefolder_pool(root=str(tmp_path / "missing"))
    with pytest.raises(UserError, match="holds no images in class subfolders"):
        imagefolder_pool(root=str(tmp_path))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    (tmp_path / "b" / "broken.jpg").write_bytes(b"nope")
    with pytest.warns(UserWarning, match="skipped 1"), pytest.raises(UserError, match=r"class folder\(s\) b in .* "
                                                                      "hold no readable image"):
        imagefolder_pool(root=str(tmp_path), image_size=8)
    with pytest.raises(UserError, match="data.channels is 2"):
        imagefolder_pool(root=str(tmp_path), channels=2)
    with pytest.raises(UserError, match="imagefolder has no split 'val' — use one of: train, test"):
        load_source("imagefolder", "val", root=str(tmp_path))


def test_imagefolder_test_split_is_a_fixed_stratified_part_held_out_of_train(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c, n in (("a", 10), ("b", 20)):
        (tmp_path / c).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    pool = imagefolder_pool(str(tmp_path), image_size=8)
    train = load_source("imagefolder", "train", root=str(tmp_path), image_size=8)
    test = load_source("imagefolder", "test", root=str(tmp_path), image_size=8)
    assert (len(train), len(test)) == (24, 6) and test.labels.tolist().count(0) == 2, "20 %, stratified: 2 a + 4 b"
    rows = {bytes(x.numpy()) for x in pool.images}
    assert len(rows) == 30 and {bytes(x.numpy()) for x in train.images} | {bytes(x.numpy()) for x in test.images} \
        == rows, "together the whole folder"
    assert not {bytes(x.numpy()) for x in train.images} & {bytes(x.numpy()) for x in test.images}, "disjoint"
    again = load_source("imagefolder", "test", root=str(tmp_path), image_size=8)
    assert torch.equal(again.images, test.images), "the same part every time, whatever the command's seed"
    assert test.ids is not None and train.ids is not None and not set(test.ids) & set(train.ids)
    grown_root = tmp_path / "grown"  # the folder after one more file: the held-out part barely moves
    shutil.copytree(tmp_path / "a", grown_root / "a")
    shutil.copytree(tmp_path / "b", grown_root / "b")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(grown_root / "b" / "new.png")
    grown = load_source("imagefolder", "test", root=str(grown_root), image_size=8)
    entered = set(grown.ids) - set(test.ids) - {"b/new.png"}
    assert len(entered) <= 1, "at most one earlier train file enters the test split (a seeded reshuffle: most)"
    one = tmp_path / "one"
    (one / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "a" / "x.png")
    with pytest.raises(UserError, match=r"holds 1 image\(s\): an image folder needs at least 2"):
        load_source("imagefolder", "train", root=str(one))


# --- splits and names -------------------------------------------------------------------------------------


def test_several_splits_of_an_image_folder_come_from_one_read_of_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """load_source reads the whole folder (every file listed, stat'ed and hashed, the decoded cache mapped) for each
    split; load_sources cuts every split asked for from one read, the same images as one by one, and checks every
    split name before reading anything. Other data sets load a split named twice once."""
    from fakes import write_noise_folder

    root = str(write_noise_folder(tmp_path / "imgs", per_class=10))
    apart = {split: load_source("imagefolder", split, root=root, image_size=8) for split in ("train", "test")}
    reads = []
    real = data.imagefolder_pool
    monkeypatch.setattr(data, "imagefolder_pool", lambda *a, **k: reads.append(a) or real(*a, **k))
    test, train, again = load_sources("imagefolder", ("test", "train", "test"), root=root, image_size=8)
    assert len(reads) == 1
    assert (train.ids, test.ids) == (apart["train"].ids, apart["test"].ids) and again is test
    assert torch.equal(train.images, apart["train"].images) and torch.equal(test.images, apart["test"].images)
    with pytest.raises(UserError, match="imagefolder has no split 'val' — use one of: train, test"):
        load_sources("imagefolder", ("train", "val"), root=root)
    assert len(reads) == 1, "a bad split name is refused before the folder is read"
    first, second = load_sources("fashion-mnist-mini", ("test", "test"))
    assert first is second and len(first) == len(load_source("fashion-mnist-mini", "test"))


def test_stratified_split_properties() -> None:
    counts = [50, 50, 50, 50, 50, 100, 100, 100, 200, 250]
    labels = torch.arange(10).repeat_interleave(torch.tensor(counts))
    labels = torch.cat([labels, torch.full((7,), -1)])[torch.randperm(1007, generator=torch.Generator().manual_seed(0))]
    picked, rest = stratified_split(labels, 100, seed=3)
    assert picked.dtype == rest.dtype == torch.int64
    assert len(picked) == 100 and len(rest) == 907
    assert torch.equal(picked, picked.sort().values) and torch.equal(rest, rest.sort().values)
    assert torch.equal(torch.cat([picked, rest]).sort().values, torch.arange(1007))  # disjoint and covering
    assert torch.bincount(labels[picked], minlength=10).tolist() == [c // 10 for c in counts]
    assert (labels[picked] >= 0).all()

    again, _ = stratified_split(labels, 100, seed=3)
    other, _ = stratified_split(labels, 100, seed=4)
    assert torch.equal(picked, again) and not torch.equal(picked, other)
    assert torch.equal(stratified_split(labels, 0.1, seed=3)[0], picked)  # 10% of 1000 labeled
    assert len(stratified_split(labels, 1000, seed=0)[1]) == 7  # everything labeled; the rest is unlabeled


def test_stratified_split_rounds_to_the_exact_total() -> None:
    labels = torch.tensor([0] * 3 + [1] * 3 + [2] * 3 + [3] * 1)
    for size in range(1, 11):
        picked, _ = stratified_split(labels, size, seed=size)
        share = torch.bincount(labels[picked], minlength=4).float()
        assert len(picked) == size
        assert ((share - size * torch.tensor([0.3, 0.3, 0.3, 0.1])).abs() < 1).all()  # each within 1 of its share
    seen = torch.zeros(10, dtype=torch.bool)
    for seed in range(40):  # within a class, every member can be picked
        seen[stratified_split(labels, 4, seed)[0]] = True
    assert seen[:9].all()


def test_stratified_split_errors() -> None:
    labels = torch.tensor([0, 0, 1, 1, -1])
    with pytest.raises(UserError, match="cannot pick a stratified split of 5 out of 4 labeled samples"):
        stratified_split(labels, 5, seed=0)
    for bad in (0, 1.0, 1.5, -0.2, True):
        with pytest.raises(UserError):
            stratified_split(labels, bad, seed=0)


def test_image_source_subset() -> None:
    src = ImageSource(torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous(),
                      torch.tensor([0, 1, 0, -1]), ("a", "b"), "toy/train")
    part = src.subset(torch.tensor([3, 1]))
    assert part.images[:, 0, 0, 0].tolist() == [3, 1] and part.labels.tolist() == [-1, 1]
    assert part.name == "toy/train[2/4]" and part.classes == ("a", "b") and (part.channels, part.image_size) == (1, 2)
    # A boolean mask selects where it is true (as a long tensor it picked images 0 and 1, four times over).
    for mask in (src.labels == 0, (src.labels == 0).numpy()):
        masked = src.subset(mask)
        assert masked.images[:, 0, 0, 0].tolist() == [0, 2] and masked.labels.tolist() == [0, 0]
    with pytest.raises(ValueError, match=r"a boolean mask must be \(4,\), got shape \(3,\)"):
        src.subset(torch.tensor([True, False, True]))


def test_unknown_names() -> None:
    with pytest.raises(UserError) as err:
        load_source("fashion-mnst", "train")
    assert "did you mean 'fashion-mnist'?" in str(err.value) and all(d in str(err.value) for d in DATASETS)
    with pytest.raises(UserError, match=r"stl10 has no split 'unlabelled' \(did you mean 'unlabeled'\?\) — use one "
                                        "of: train, test, unlabeled, train\\+unlabeled"):
        load_source("stl10", "unlabelled")
    with pytest.raises(UserError, match="data.channels is 3 but fashion-mnist-mini images have 1 channel"):
        load_source("fashion-mnist-mini", "test", channels=3)
    assert load_source("fashion-mnist-mini", "test", channels=1).channels == 1  # the native value is fine


def test_an_image_size_larger_than_the_machine_holds_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """data.image_size=100000 (a typo) is refused before any allocation, naming the key: the resize died in the
    allocator ("you tried to allocate 100000000000000 bytes"), and an image folder would decode into a cache larger
    than its disk."""
    with pytest.raises(UserError, match=r"^data\.image_size 100000: [\d,]+ images of 1×100000×100000 pixels need "
                                        r"[\d,.]+ GiB, more than the [\d,.]+ GiB of memory this machine has — lower "
                                        r"data\.image_size$"):
        load_source("fashion-mnist-mini", "train", image_size=100_000)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / c / "0.png")
    with pytest.raises(UserError, match=r"^data\.image_size 100000000: 2 images of 3×100000000×100000000 pixels need "
                                        r"[\d,.]+ GiB, more than the [\d,.]+ GiB free on the disk of the image cache"):
        imagefolder_pool(root=str(tmp_path), image_size=100_000_000)
    cache = imagefolder_cache(tmp_path.resolve())
    assert not cache.exists() or not any(cache.iterdir())  # refused before the cache file was made


def test_a_command_that_reads_a_run_is_told_to_make_room_not_to_lower_data_image_size(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`sslkit probe`, `neighbors`, `map` and `report` take the image size from the run's encoder and read no recipe:
    "lower data.image_size" was advice they cannot follow. Pretraining keeps it, and is told of SSLKIT_CACHE too."""
    from sslkit.cli import main

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "imgs" / c / "0.png")
    cache = imagefolder_cache((tmp_path / "imgs").resolve())
    run = random_run(tmp_path / "run", "imagefolder", 100_000_000, tmp_path / "imgs")
    assert main(["probe", str(run)]) == 2
    err = capsys.readouterr().err
    assert_told_to_make_room(err, "probe", 2, cache)
    with data.data_root_option("--data-root"), pytest.raises(UserError) as in_memory:
        load_source("fashion-mnist-mini", "test", image_size=100_000)
    assert str(in_memory.value).startswith("the run's image size 100000: 2,000 images of 1×100000×100000 pixels")
    assert str(in_memory.value).endswith("GiB of memory this machine has — run it on a machine with more memory")
    with pytest.raises(UserError, match=r"^data\.image_size 100000000: .* — lower data\.image_size, free space on that "
                                        r"disk, or set SSLKIT_CACHE to a folder on a disk with room$"):
        imagefolder_pool(root=str(tmp_path / "imgs"), image_size=100_000_000)


def test_skipped_files_are_cut_from_the_image_cache_in_place_without_a_second_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding fills the cache file front to back; the rows of files that could not be decoded were then dropped by
    writing the decoded ones to a second file (.compact.npy): for a moment two copies of the images on the disk,
    where the free-space check counted one. Now the file is cut in place: its header's shape rewritten, its end
    truncated."""
    import builtins

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 12, 3), 40 * i + (c == "b"), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "9_bad.png").write_bytes(b"not a png")
    (tmp_path / "b" / "9_bad.png").write_bytes(b"")
    cache = imagefolder_cache(tmp_path.resolve())
    written: list[str] = []  # the files of the cache folder opened for writing
    real_open, real_path_open = builtins.open, Path.open

    def noted(opener: object, file: object, mode: str, *args: object, **kwargs: object) -> object:
        if any(c in mode for c in "wax") and Path(file).parent == cache:
            written.append(Path(file).name)
        return opener(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", lambda file, mode="r", *a, **k: noted(real_open, file, mode, *a, **k))
    monkeypatch.setattr(Path, "open", lambda self, mode="r", *a, **k: noted(real_path_open, self, mode, *a, **k))
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\) of 8"):
        pool = imagefolder_pool(root=str(tmp_path), image_size=8)
    monkeypatch.undo()
    images = [p.name for p in cache.glob("*.npy")]
    assert len(images) == 1
    key = images[0].removesuffix(".npy")
    assert [name for name in written if ".json." not in name] == [f".tmp-{key}.{os.getpid()}.{data._host_tag()}.npy"]
    assert pool.images.shape == (6, 3, 8, 8) and pool.images[:, 0, 0, 0].tolist() == [0, 40, 80, 1, 41, 81]
    on_disk = np.load(cache / images[0])
    assert on_disk.shape == (6, 3, 8, 8) and np.array_equal(on_disk, pool.images.numpy())
    with open(cache / images[0], "rb") as f:  # the rows start where they did, and nothing follows the sixth
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        assert f.tell() % 64 == 0 and (cache / images[0]).stat().st_size == f.tell() + 6 * 3 * 8 * 8


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_decoding_leaves_a_temporary_file_the_next_write_of_the_cache_removes(tmp_path: Path) -> None:
    """A process killed while decoding (the OOM killer, SIGKILL, a node's time limit) left its temporary images
    file, as large as the cache, in $SSLKIT_CACHE/imagefolder/... for good. The next write of that cache removes it,
    before its free-space check."""
    import signal
    import subprocess
    import sys

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "imgs" / c / f"{i}.png")
    kill_while_decoding = (  # a real decoding, killed once its temporary file is made and filled in part
        "import os, signal, sslkit.data as d\n"
        "def killed(files, size, mode, out, base):\n"
        "    out[0] = 7\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "d._decode_all = killed\n"
        f"d.imagefolder_pool({str(tmp_path / 'imgs')!r}, 8)\n")
    done = subprocess.Popen([sys.executable, "-c", kill_while_decoding], stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.wait() == -signal.SIGKILL, done.communicate()[1]
    cache = imagefolder_cache((tmp_path / "imgs").resolve())
    left = [p.name for p in cache.iterdir()]
    assert len(left) == 1 and left[0].startswith(".tmp-") and f".{done.pid}." in left[0]
    assert (cache / left[0]).stat().st_size > 6 * 3 * 8 * 8

    pool = imagefolder_pool(str(tmp_path / "imgs"), 8)
    assert pool.images.shape == (6, 3, 8, 8)
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]


def test_stale_temporary_files_of_the_image_cache_are_removed_those_of_live_writers_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only files whose writer has surely ended go: this machine's, of a pid no longer running; one of another
    machine (a cache folder shared over NFS) is kept; one without a machine's tag (the index's, named by
    atomic_write, or an older version's) only once it is an hour old and its pid is not running here."""
    import shutil

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "imgs" / c / "0.png")
    cache = imagefolder_cache((tmp_path / "imgs").resolve())
    cache.mkdir(parents=True)
    dead, alive, here = _dead_pid(), os.getpid(), data._host_tag()
    elsewhere = "0" * 8 if here != "0" * 8 else "1" * 8
    names = {  # name: (removed?, hours since its last change)
        f".tmp-{'a' * 20}.{dead}.{here}.npy": (True, 0),
        f".tmp-{'b' * 20}.{alive}.{here}.npy": (False, 5),  # a live process decoding the folder at another size
        f".tmp-{'c' * 20}.{dead}.{elsewhere}.npy": (False, 5),  # the pid of another machine says nothing here
        f".tmp-{'d' * 20}.{dead}.npy": (True, 2),
        f".tmp-{'d' * 20}.{dead}.compact.npy": (True, 2),
        f".tmp-{'e' * 20}.{dead}.npy": (False, 0),
        f".tmp-{'f' * 20}.json.{dead}": (True, 2),
        f".tmp-{'f' * 20}.json.{alive}": (False, 2),
        ".tmp-notes.txt": (False, 5),  # not a name the cache makes
    }
    for name, (_, hours) in names.items():
        (cache / name).write_bytes(bytes(1000))
        os.utime(cache / name, (os.path.getatime(cache / name) - hours * 3600,) * 2)
    stale = cache / f".tmp-{'a' * 20}.{dead}.{here}.npy"
    seen_by_the_check: list[bool] = []
    real_usage = shutil.disk_usage

    def usage(path: object) -> object:
        seen_by_the_check.append(stale.exists())
        return real_usage(path)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    imagefolder_pool(str(tmp_path / "imgs"), 8)
    assert seen_by_the_check == [False]  # removed before the free-space check
    kept = {p.name for p in cache.iterdir() if p.name.startswith(".tmp-")}
    assert kept == {name for name, (removed, _) in names.items() if not removed}


# --- an image cache the disk fills up under ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["reserve", "index"])
def test_a_disk_that_fills_up_under_the_image_cache_is_one_line_and_leaves_no_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The disk fills after the free-space check (another process, or an estimate that was off): when the cache
    file's blocks are reserved, or at the index (compacting the images after a skipped file takes no space: it is
    done in place, test_skipped_files_are_cut_from_the_image_cache_in_place_without_a_second_copy). It was a
    traceback, or (the mapping written on a full disk) SIGBUS, exit 135, with no message; now a WriteError (exit 74)
    naming the file, the reason and what to do, and nothing of the cache is left: no temporary file, no images
    without their index, nothing a later run reads."""
    import builtins
    import errno

    from sslkit.errors import WriteError

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 12, 3), 40 * i + (c == "b"), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "b" / "9_bad.png").write_bytes(b"not a png")  # skipped: the decoded rows are compacted
    if where == "reserve":
        def no_room(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "posix_fallocate", no_room)
    else:
        marker = ".json."  # the index's temporary file (atomic_write)
        real_open, real_path_open = builtins.open, Path.open

        def failing(opener: object, file: object, mode: str, *args: object, **kwargs: object) -> object:
            f = opener(file, mode, *args, **kwargs)
            return DiskFillsUp(f) if any(c in mode for c in "wax") and marker in Path(file).name else f

        monkeypatch.setattr(builtins, "open", lambda file, mode="r", *a, **k: failing(real_open, file, mode, *a, **k))
        monkeypatch.setattr(Path, "open", lambda self, mode="r", *a, **k: failing(real_path_open, self, mode, *a, **k))
    cache = imagefolder_cache(tmp_path.resolve())
    with warnings.catch_warnings(), pytest.raises(WriteError) as failed:
        warnings.simplefilter("ignore")  # the skipped file
        imagefolder_pool(root=str(tmp_path), image_size=8)
    named = r"[0-9a-f]{20}\.json" if where == "index" else r"[0-9a-f]{20}\.npy"
    assert re.fullmatch(rf"could not write {re.escape(str(cache))}/{named}: No space left on device — nothing of the "
                        rf"image cache was kept; free space on the disk of the image cache {re.escape(str(cache))}, "
                        r"or set SSLKIT_CACHE to a folder on a disk with room, then run the command again",
                        str(failed.value)), str(failed.value)
    assert failed.value.exit_code == 74 and failed.value.errno == errno.ENOSPC
    assert list(cache.iterdir()) == []
    monkeypatch.undo()  # space freed: decoded again, and cached
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image"):
        again = imagefolder_pool(root=str(tmp_path), image_size=8)
    assert again.images.shape == (6, 3, 8, 8) and again.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert again.images[:, 0, 0, 0].tolist() == [0, 40, 80, 1, 41, 81]
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]


def test_finetune_is_told_to_make_room_not_to_lower_data_image_size_and_keeps_its_recipe_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fine-tune's image size is its run's encoder's, and its recipe has no data.image_size: an image folder whose
    cache cannot fit on disk told `sslkit finetune` to "lower data.image_size". Now it is told to make room, as the
    commands with --data-root are, while its other advice still names its recipe keys data.root and data.download."""
    from sslkit.cli import main

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (200, 0, i)).save(tmp_path / "imgs" / c / f"{i}.png")
    cache = imagefolder_cache((tmp_path / "imgs").resolve())
    run = random_run(tmp_path / "run", "imagefolder", 100_000_000, tmp_path / "imgs")
    assert main(["finetune", str(run), "--set", "labeled.disjoint_from_pool=false"]) == 2
    err = capsys.readouterr().err
    assert_told_to_make_room(err, "finetune", 6, cache)
    with data.image_size_of_run(), pytest.raises(UserError) as in_memory:
        load_source("fashion-mnist-mini", "test", image_size=100_000)
    assert str(in_memory.value).startswith("the run's image size 100000: 2,000 images of 1×100000×100000 pixels")
    assert str(in_memory.value).endswith("GiB of memory this machine has — run it on a machine with more memory")
    with data.image_size_of_run(), pytest.raises(UserError, match=r"set data\.download: true"):
        load_source("cifar10", "train", root=str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"^data\.image_size 100000: .* — lower data\.image_size$"):
        load_source("fashion-mnist-mini", "test", image_size=100_000)  # outside it: pretraining's advice


def assert_told_to_make_room(err: str, command: str, images: int, cache: Path) -> None:
    """``sslkit COMMAND`` refused an image folder of the run's image size (100000000) whose cache cannot fit on its
    disk, in one line telling to make room, and kept nothing of the cache."""
    assert re.fullmatch(rf"sslkit {command}: error: the run's image size 100000000: {images} images of "
                        r"3×100000000×100000000 pixels need [\d,.]+ GiB, more than the [\d,.]+ GiB free on the disk of "
                        rf"the image cache {re.escape(str(cache))} — free space on that disk, or set SSLKIT_CACHE to a "
                        r"folder on a disk with room\n", err), err
    assert not cache.exists() or not any(cache.iterdir())


def count_decodings(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders decoded from now on, one entry per decoding (data._decode_all is what every decoding calls)."""
    real, decoded = data._decode_all, []

    def counted(files: list[tuple[int, Path]], size: int, mode: str, out: np.ndarray, base: Path
                ) -> tuple[list[int], list[tuple[Path, str]]]:
        decoded.append(base)
        return real(files, size, mode, out, base)

    monkeypatch.setattr(data, "_decode_all", counted)
    return decoded


def small_folder(root: Path, shade: int = 0) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i + shade, 100 if c == "b" else 0, 0)).save(root / c / f"{i}.bmp")
    return root


def test_a_moved_or_copied_image_folder_takes_its_cache_along_and_a_change_in_it_is_decoded_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is found by the folder's path: a folder moved (os.rename, shutil.move) or copied (shutil.copytree)
    to another path was decoded again from scratch, and a moved one's old cache stayed on disk. Now the same files
    (relative paths, sizes, mtimes) at a new path take the cache along: moved with a moved folder, hard-linked for a
    copy; and a file changed at the new path is decoded again, leaving the copy's cache as it was."""
    decoded = count_decodings(monkeypatch)
    first = small_folder(tmp_path / "imgs")
    src = imagefolder_pool(str(first), image_size=8)
    old_cache = imagefolder_cache(first.resolve())
    (index,) = old_cache.glob("*.json")  # written before indexes recorded "contents": found by its whole key
    index.write_text(json.dumps({k: v for k, v in json.loads(index.read_text()).items() if k != "contents"}))

    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    os.rename(first, moved)
    at_moved = imagefolder_pool(str(moved), image_size=8)
    shutil.move(moved, tmp_path / "imgs2")  # the same disk: a rename as well
    moved = tmp_path / "imgs2"
    again = imagefolder_pool(str(moved), image_size=8)
    copy = Path(shutil.copytree(moved, tmp_path / "copy"))  # new ctimes, the same mtimes (copy2)
    at_copy = imagefolder_pool(str(copy), image_size=8)
    left = imagefolder_cache(moved.resolve())
    moved = Path(shutil.move(moved, tmp_path / "imgs3"))  # the copy's cache matches too: the moved one is taken
    again_after_copy = imagefolder_pool(str(moved), image_size=8)
    assert decoded == [first.resolve()]  # decoded once, for the first path only
    for other in (at_moved, again, at_copy, again_after_copy):
        assert torch.equal(other.images, src.images) and torch.equal(other.labels, src.labels)
        assert other.ids == src.ids and other.classes == src.classes
    for was in (old_cache, imagefolder_cache((tmp_path / "elsewhere" / "renamed").resolve()), left):
        assert not was.exists()  # the moved folder's cache went along: none left where it was
    (moved_npy,) = imagefolder_cache(moved.resolve()).glob("*.npy")
    (copy_npy,) = imagefolder_cache(copy.resolve()).glob("*.npy")
    assert os.path.samefile(moved_npy, copy_npy)  # one copy on disk for the two folders
    assert json.loads(moved_npy.with_suffix(".json").read_text())["root"] == str(moved.resolve())

    Image.new("RGB", (8, 8), (0, 0, 255)).save(moved / "a" / "0.bmp")  # the same size, a new mtime
    changed = imagefolder_pool(str(moved), image_size=8)
    assert decoded == [first.resolve(), moved.resolve()]
    assert changed.images[0, 2].min() == 255 and torch.equal(changed.images[1:], src.images[1:])
    assert not moved_npy.exists()  # its stale cache dropped, as for any changed folder; the copy's kept
    assert torch.equal(imagefolder_pool(str(copy), image_size=8).images, src.images)
    (moved / "b" / "2.bmp").unlink()
    assert imagefolder_pool(str(moved), image_size=8).labels.tolist() == [0, 0, 0, 1, 1]
    assert len(decoded) == 3


def test_folders_with_the_same_names_and_sizes_never_share_a_cache(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a copy that kept the mtimes takes another folder's cache: the same names and sizes are not enough (BMP
    files of one size are all the same size), and a folder whose own cache no longer matches its files (a file
    replaced with its old size and mtime: a new ctime) is decoded again even when a copy of its old files has a
    cache."""
    decoded = count_decodings(monkeypatch)
    one = imagefolder_pool(str(small_folder(tmp_path / "one")), image_size=8)
    two = imagefolder_pool(str(small_folder(tmp_path / "two", shade=7)), image_size=8)  # other pixels and mtimes
    cp_r = shutil.copytree(tmp_path / "one", tmp_path / "cp-r", copy_function=shutil.copy)  # new mtimes, as cp -r
    assert torch.equal(imagefolder_pool(str(cp_r), image_size=8).images, one.images)
    assert len(decoded) == 3 and not torch.equal(one.images, two.images)
    same_times = small_folder(tmp_path / "three", shade=9)  # as a reproducible archive or a 1-second disk leaves them
    for path in sorted(same_times.rglob("*.bmp")):
        st = (tmp_path / "one" / path.relative_to(same_times)).stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    three = imagefolder_pool(str(same_times), image_size=8)
    assert len(decoded) == 4 and three.images[:, 0, 0, 0].tolist() == [9, 49, 89] * 2

    shutil.copytree(tmp_path / "one", tmp_path / "copy")
    assert torch.equal(imagefolder_pool(str(tmp_path / "copy"), image_size=8).images, one.images)
    assert len(decoded) == 4  # a copy that kept the mtimes: its cache taken along
    path = tmp_path / "one" / "a" / "0.bmp"
    st = path.stat()
    Image.new("RGB", (8, 8), (0, 0, 200)).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p, rsync -t and tar leave it
    assert imagefolder_pool(str(tmp_path / "one"), image_size=8).images[0, 2].min() == 200
    assert len(decoded) == 5


def test_a_class_folder_without_images_is_refused_before_decoding_whether_or_not_the_folder_is_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache's key covers the image files, not the class folders: a folder without images (``aa``, made for a
    class still to come, or ``notes`` of text files) added after the folder was cached changed no key, so the cache
    was read as it was, with 2 classes, where the same folder uncached was refused (as torchvision's ``ImageFolder``
    refuses it) — and only after every image was decoded. Now it is refused from the listing, cached or not, and
    the key, with every class holding a listed file, covers the class names (the first part of each file's path):
    a class folder renamed so that the classes sort differently is read with its new labels."""
    decoded = count_decodings(monkeypatch)
    root = small_folder(tmp_path / "train")
    src = imagefolder_pool(str(root), image_size=8)
    copy = Path(shutil.copytree(root, tmp_path / "copy"))  # the same mtimes: it would take the cache along
    (root / "aa").mkdir()
    (copy / "notes").mkdir()
    (copy / "notes" / "readme.txt").write_text("not an image")
    (copy / "notes" / ".hidden.png").write_bytes(b"")  # hidden files are not read
    for folder, empty in ((root, "aa"), (copy, "notes")):
        with pytest.raises(UserError, match=rf"^class folder\(s\) {empty} in {re.escape(str(folder.resolve()))} hold "
                                            r"no image file \(\.bmp, .*\) — add images or remove the folder$"):
            imagefolder_pool(str(folder), image_size=8)
    assert decoded == [root.resolve()]  # refused without decoding
    (root / "aa").rmdir()
    assert torch.equal(imagefolder_pool(str(root), image_size=8).labels, src.labels)
    assert decoded == [root.resolve()]  # the cache read again as it was

    os.rename(root / "b", root / "0")  # its files keep their mtimes; the classes now sort 0, a
    renamed = imagefolder_pool(str(root), image_size=8)
    assert renamed.classes == ("0", "a") and renamed.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(renamed.images, src.images[[3, 4, 5, 0, 1, 2]]) and len(decoded) == 1  # its images reused


def test_a_renamed_class_folder_keeps_its_cached_images_under_its_new_label(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Renaming a class folder changes the paths of all its files, so the whole folder was decoded again. Now, when
    only class folders were renamed (every file's size and times as cached), the cached images are reused, in the
    order of the new names and with their labels: what decoding the renamed folder gives. Renamed folders that
    cannot be told apart (files of the same names, all renamed at once), or a file changed too, are decoded."""
    decoded = count_decodings(monkeypatch)
    root = small_folder(tmp_path / "imgs")  # a/0-2.bmp, b/0-2.bmp
    (root / "c").mkdir()
    Image.new("RGB", (8, 8), (0, 0, 250)).save(root / "c" / "x.bmp")
    src = imagefolder_pool(str(root), image_size=8)

    def decoded_afresh() -> ImageSource:  # the folder as it is now, decoded into a cache of its own
        with monkeypatch.context() as patch:
            patch.setenv("SSLKIT_CACHE", str(tmp_path / f"fresh-{len(decoded)}"))
            return imagefolder_pool(str(root), image_size=8)

    os.rename(root / "b", root / "0")  # sorts first now: 0, a, c
    renamed = imagefolder_pool(str(root), image_size=8)
    assert len(decoded) == 1
    assert torch.equal(renamed.images, src.images[[3, 4, 5, 0, 1, 2, 6]])
    assert renamed.labels.tolist() == [0, 0, 0, 1, 1, 1, 2]
    fresh = decoded_afresh()
    assert renamed.classes == fresh.classes == ("0", "a", "c") and renamed.ids == fresh.ids
    assert torch.equal(renamed.labels, fresh.labels) and torch.equal(renamed.images, fresh.images)
    assert len(list(imagefolder_cache(root.resolve()).glob("*.npy"))) == 1  # the cache of the old names dropped
    decoded.clear()
    os.rename(root / "0", root / "b")  # two at once, told apart by their files: 0 was b (0-2.bmp), c is z (x.bmp)
    os.rename(root / "c", root / "z")
    again = imagefolder_pool(str(root), image_size=8)
    assert decoded == [] and torch.equal(again.images, src.images) and again.classes == ("a", "b", "z")

    os.rename(root / "a", root / "p")  # p and q: which was a, which b? The same file names in both: decoded
    os.rename(root / "b", root / "q")
    both = imagefolder_pool(str(root), image_size=8)
    assert decoded == [root.resolve()] and torch.equal(both.images, src.images)
    decoded.clear()
    os.rename(root / "p", root / "a")
    Image.new("RGB", (8, 8), (0, 250, 0)).save(root / "a" / "0.bmp")  # a file changed as well: decoded
    changed = imagefolder_pool(str(root), image_size=8)
    assert decoded == [root.resolve()] and changed.images[0, 1].unique().tolist() == [250]
