"""``sslkit finetune``: fair arms, the real exported start, an untouched test split, FGSM, strict recipes."""

from __future__ import annotations

import io
import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import write_cifar, write_noise_folder, write_stl10
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

import sslkit.evaluation.finetune as ft
from sslkit.checkpoint import export_encoder, load_encoder
from sslkit.cli import LOG_COLUMNS, main
from sslkit.config import DataConfig, MonitorConfig, Recipe, load_recipe, save_recipe
from sslkit.data import ImageSource, load_source
from sslkit.errors import UserError
from sslkit.evaluation.finetune_config import is_finetune_recipe, load_finetune_recipe
from sslkit.evaluation.robustness import fgsm_accuracy
from sslkit.models import build_encoder
from sslkit.trainer import pretrain, split_train, train_images_in_pool

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
FINETUNE_RECIPES = sorted(p for p in RECIPES.glob("*.yaml") if is_finetune_recipe(p))
QUIET = Console(quiet=True)
TINY = ["train.threads=1", "train.batch_size=16", "train.eval_batch_size=256", "robustness.n_images=40"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed uint8 IDX file, the format of the Fashion-MNIST downloads."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 train and 200 test 28×28 images in Fashion-MNIST's files, 10 balanced classes."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 400), ("t10k", 200)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, fmnist_root: Path) -> Path:
    """A run directory as `sslkit pretrain` leaves it (recipe, exported encoder), with seeded non-trivial weights."""
    run = tmp_path_factory.mktemp("run")
    recipe = Recipe(name="tiny", seed=5, data=DataConfig(dataset="fashion-mnist", root=str(fmnist_root), image_size=16,
                                                         pool_size=200), monitor=MonitorConfig(val_size=100))
    save_recipe(recipe, run / "recipe.yaml")
    torch.manual_seed(1234)
    encoder = build_encoder("resnet18", "imagenet", 1)
    with torch.no_grad():  # no zero batch-norm scales: every residual branch of the "pretrained" encoder matters
        for m in encoder.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    export_encoder(encoder, run, dict(encoder="resnet18", stem="imagenet", in_chans=1, num_features=512,
                                      image_size=16, mean=[0.5], std=[0.29], dataset="fashion-mnist",
                                      data_root=str(fmnist_root), recipe="tiny"))
    return run


def _recipe(run: Path, tmp_path: Path, *extra: str):
    path = tmp_path / "ft.yaml"
    path.write_text(f"name: t\nrun: {run}\n")
    return load_finetune_recipe(path, [*TINY, "labeled.size=40", "labeled.val_size=8", *extra])


# --- fairness and the exported start -------------------------------------------------------------------------


def test_arms_get_identical_batches_and_ssl_starts_from_the_export(run_dir: Path, tmp_path: Path) -> None:
    r = _recipe(run_dir, tmp_path, "train.epochs=2", "seeds=2", "linear_arm=true")
    seen: dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    start: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def observer(arm: str, seed: int, step: int, x: torch.Tensor, y: torch.Tensor, model: nn.Module) -> None:
        seen[arm, seed, step] = (x.clone(), y.clone())
        if step == 0:
            start[arm, seed] = {k: v.clone() for k, v in model.state_dict().items()}

    report = ft.run_finetune(r, out=tmp_path / "out", console=QUIET, observer=observer)

    steps = {(s, t) for _, s, t in seen}
    assert len(steps) == 2 * 2 * 2  # 2 seeds × 2 epochs × ceil(32 / 16) steps, in every arm
    for seed, step in steps:
        x, y = seen["ssl", seed, step]
        for arm in ("supervised", "linear"):
            assert torch.equal(seen[arm, seed, step][0], x) and torch.equal(seen[arm, seed, step][1], y)
    assert not torch.equal(seen["ssl", 0, 0][0], seen["ssl", 1, 0][0])  # seeds differ, so the check has teeth
    exported = load_file(str(run_dir / "encoder.safetensors"))
    for seed in (0, 1):
        ssl, sup, lin = (start[a, seed] for a in ("ssl", "supervised", "linear"))
        for k, v in exported.items():
            assert torch.equal(ssl[f"encoder.{k}"], v) and torch.equal(lin[f"encoder.{k}"], v)
        assert not torch.equal(sup["encoder.conv1.weight"], exported["conv1.weight"])
        for k in ("head.weight", "head.bias"):  # the same head initialisation in every arm
            assert torch.equal(ssl[k], sup[k]) and torch.equal(ssl[k], lin[k])
    final = {(x["arm"], x["seed"]): x for x in report["runs"]}
    assert final["ssl", 0]["steps"] == final["supervised", 0]["steps"] == final["linear", 0]["steps"] == 4

    saved = json.loads((tmp_path / "out" / "finetune.json").read_text())
    d = saved["difference"]
    per_seed = [final["ssl", s]["test_top1"] - final["supervised", s]["test_top1"] for s in (0, 1)]
    assert d["test_top1.mean"] == pytest.approx(np.mean(per_seed))
    assert d["test_top1.std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert set(saved["summary"]) == {"ssl", "supervised", "linear"}
    assert saved["sizes"]["labeled"] == 40 and saved["sizes"]["val"] == 8 and saved["sizes"]["attack"] == 40
    assert len(saved["runs"][0]["curves"]["val_top1"]) == 2
    assert saved["runs"][0]["fgsm"]["0"] is not None
    for png in ("finetune.png", "finetune_fgsm.png"):
        assert (tmp_path / "out" / "figures" / png).stat().st_size > 1000
    # In a log (no terminal) the table gets sslkit.cli.LOG_COLUMNS: none of its cells wraps there.
    printed = {}
    for width in (LOG_COLUMNS, 400):
        out = io.StringIO()
        ft.print_table(saved, Console(file=out, width=width))
        printed[width] = out.getvalue().splitlines()
    assert len(printed[LOG_COLUMNS]) == len(printed[400]), "\n".join(printed[LOG_COLUMNS])


def test_the_test_split_is_scored_once_and_chooses_nothing(run_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    r = _recipe(run_dir, tmp_path, "train.epochs=3", "seeds=1", "train.select=best_val", "robustness.epsilons=[]")
    meta = load_encoder(run_dir).sslkit_meta
    data = ft.prepare_data(r, meta, torch.device("cpu"))
    calls: list[str] = []
    real_evaluate = ft.evaluate

    def spy(model: nn.Module, source: ImageSource, *args: object, **kwargs: object):
        calls.append("test" if source.name.startswith("fashion-mnist/test") else "val")
        return real_evaluate(model, source, *args, **kwargs)

    monkeypatch.setattr(ft, "evaluate", spy)
    first = ft.run_finetune(r, out=tmp_path / "a", console=QUIET, data=data)
    # Per arm: three validations (one per epoch), then the test split once.
    assert calls == ["val", "val", "val", "test"] * 2
    # A different test split (labels shuffled) changes the test score only: curves and chosen epochs are the same.
    g = torch.Generator().manual_seed(0)
    shuffled = ImageSource(data.test.images, data.test.labels[torch.randperm(len(data.test), generator=g)],
                           data.test.classes, data.test.name)
    data.test = shuffled
    second = ft.run_finetune(r, out=tmp_path / "b", console=QUIET, data=data)
    for a, b in zip(first["runs"], second["runs"], strict=True):
        assert a["curves"] == b["curves"] and a["selected_epoch"] == b["selected_epoch"]


def test_labeled_subset_is_stratified_seeded_and_outside_the_pool(run_dir: Path, tmp_path: Path) -> None:
    r = _recipe(run_dir, tmp_path)
    meta = load_encoder(run_dir).sslkit_meta
    data = ft.prepare_data(r, meta, torch.device("cpu"))
    train_labels = torch.arange(400) % 10
    _, pool, _ = split_train(load_recipe(run_dir / "recipe.yaml"), train_labels)
    picked = set(data.info["labeled_indices"])
    assert len(picked) == 40 and not picked & set(pool.tolist())
    assert data.info["class_counts"] == [4] * 10 and data.info["candidates"] == 200
    assert torch.bincount(data.val.labels, minlength=10).max() <= 1  # 8 validation images, stratified
    again = ft.prepare_data(r, meta, torch.device("cpu"))
    assert again.info["labeled_indices"] == data.info["labeled_indices"]
    other = ft.prepare_data(_recipe(run_dir, tmp_path, "labeled.seed=1"), meta, torch.device("cpu"))
    assert other.info["labeled_indices"] != data.info["labeled_indices"]
    fraction = ft.prepare_data(_recipe(run_dir, tmp_path, "labeled.size=0.1"), meta, torch.device("cpu"))
    assert fraction.info["labeled"] == 40  # 10% of the 400 labels of the train split
    # A long-tailed subset, and the two ways to balance it.
    skewed = ft.prepare_data(_recipe(run_dir, tmp_path, "labeled.size=100", "labeled.imbalance_ratio=10"), meta,
                             torch.device("cpu"))
    counts = skewed.info["class_counts"]
    assert counts[0] == 10 and counts[-1] == 1 and counts == sorted(counts, reverse=True)
    labels = skewed.train.labels
    w = ft.class_weights(labels, 10)
    total = (w * torch.bincount(labels, minlength=10))[torch.bincount(labels, minlength=10) > 0]
    assert torch.allclose(total, total[0].expand_as(total))  # loss weights: every class weighs the same in all
    draws = [ft.epoch_indices(len(labels), 0, e, w[labels].double()) for e in range(50)]
    assert all(len(d) == len(labels) for d in draws)
    drawn = torch.bincount(labels[torch.cat(draws)], minlength=10).float()
    assert drawn.max() / drawn[drawn > 0].min() < 1.5  # the sampler: classes drawn about equally often


# --- FGSM ----------------------------------------------------------------------------------------------------


def _toy_problem() -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 1×8×8 images: a class-specific pattern at mid grey, plus noise."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.rand(3, 1, 8, 8, generator=g)
    y = torch.arange(300) % 3
    x = 0.5 + 0.15 * (patterns[y] - 0.5) + 0.08 * torch.randn(300, 1, 8, 8, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), y


def test_fgsm_at_zero_is_clean_accuracy_and_never_helps(tmp_path: Path) -> None:
    x, y = _toy_problem()
    mean, std = (0.5,), (0.25,)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    inputs = (x.float() / 255 - 0.5) / 0.25
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(inputs), y).backward()
        opt.step()
    source = ImageSource(x, y, ("a", "b", "c"), "toy")
    clean, _, _ = ft.evaluate(model, source, mean, std, 64, torch.device("cpu"))
    eps = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
    acc = fgsm_accuracy(model, x, y, mean, std, eps, batch_size=64)
    assert clean > 0.9 and acc[0.0] == clean
    values = [acc[e] for e in eps]
    assert all(b <= a for a, b in zip(values, values[1:], strict=False)) and values[-1] < clean - 0.3
    # The same holds for a real classifier with batch norm (eval mode: statistics, not the batch).
    torch.manual_seed(1)
    net = ft.Classifier(build_encoder("resnet18", "imagenet", 1), nn.Linear(512, 3))
    clean, _, _ = ft.evaluate(net, source, mean, std, 64, torch.device("cpu"))
    assert fgsm_accuracy(net, x, y, mean, std, (0.0, 0.05), batch_size=64)[0.0] == clean
    assert net.training  # modes are restored


# --- recipes and the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "sets", "pattern"), [
    ("optim:\n  lrr: 0.1\n", [], r"ft\.yaml:4: unknown key 'optim\.lrr' — did you mean 'optim\.lr'\?"),
    ("", ["labeled.sise=600"], r"--set labeled\.sise=600: unknown key 'labeled\.sise' — did you mean 'labeled\.size'"),
    ("train:\n  epochs: 0\n", [], r"ft\.yaml:4: train\.epochs must be ≥ 1, got 0"),
    ("labeled:\n  balance: weights\n", [], r"labeled\.balance must be one of 'none', 'sampler', 'loss_weights'"),
    ("labeled:\n  size: 1.5\n", [], r"labeled\.size as a fraction must be < 1"),
    ("robustness:\n  epsilons: [0, 2]\n", [], r"robustness\.epsilons must be ≤ 1, got 2"),
    ("data:\n  test_split: extra\n  dataset: cifar100\n", [], r"cifar100 has no split 'extra' \(data\.test_split\)"),
    ("", ["Labeled.size=600"], r"--set Labeled\.size=600: unknown key 'Labeled' — did you mean 'labeled'"),
    ("", ["seed=9223372036854775"], r"--set seed=9223372036854775: seed must be ≤ 9223344361526, got"),
    ("seeds: 5000\n", [], r"ft\.yaml:3: seeds must be ≤ 1000, got 5000"),
    ("data:\n  dataset: stl10\n  test_split: train+unlabeled\n", [],
     r"'train\+unlabeled' of stl10 holds the train images the labeled subset is drawn from — use test"),
    ("data:\n  dataset: stl10\n  test_split: unlabeled\n", [], r"'unlabeled' of stl10 has no labels — use test"),
    ("data:\n  dataset: svhn\n  test_split: trian\n", [],
     r"svhn has no split 'trian' \(data\.test_split\) — use test$"),
    ("data:\n  dataset: svhn\n  test_split: extra\n", [],
     r"data\.test_split 'extra' of svhn is extra training data \(easier images, and a run may have pretrained on "
     r"them\), not an evaluation split — use test$"),
])
def test_bad_recipes_exit_2_naming_the_key(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           text: str, sets: list[str], pattern: str) -> None:
    path = tmp_path / "ft.yaml"
    path.write_text(f"name: bad\nrun: {run_dir}\n{text}")
    assert main(["finetune", str(path), *sum((["--set", s] for s in sets), []), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sslkit finetune: error: ") and len(err.splitlines()) == 1
    import re

    assert re.search(pattern, err), err
    assert not (tmp_path / "o").exists()


def test_missing_or_unfinished_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ft.yaml"
    path.write_text("run: runs/no_such_run\n")
    assert main(["finetune", str(path)]) == 2
    assert "pretrained run 'runs/no_such_run' does not exist — pretrain it first" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["finetune", str(path), "--set", f"run={tmp_path / 'half'}"]) == 2
    assert "has no exported encoder" in capsys.readouterr().err
    path.write_text("seeds: 2\n")
    assert main(["finetune", str(path)]) == 2
    assert "run is not set" in capsys.readouterr().err


def test_too_many_labels_stop_before_training(run_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", str(run_dir), "--set", "labeled.size=5000", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "labeled.size 5000 asks for 5000 labeled images but 200 labeled train images are outside" in err
    assert not (tmp_path / "o").exists()


def test_an_out_that_is_a_file_stops_before_training(run_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("the user's notes")
    assert main(["finetune", str(run_dir), "--out", str(blocker / "ft")]) == 2
    err = capsys.readouterr().err
    assert f"--out {str(blocker / 'ft')!r} lies inside {str(blocker)!r}, which is a file" in err
    assert err.count("\n") == 1 and blocker.read_text() == "the user's notes", "one line, no training, nothing lost"
    (tmp_path / "o" / "finetune.json").mkdir(parents=True)
    assert main(["finetune", str(run_dir), "--out", str(tmp_path / "o")]) == 2
    assert "finetune.json', a folder where finetune writes its results file" in capsys.readouterr().err
    (tmp_path / "p" / ft.PARTS).parent.mkdir()
    (tmp_path / "p" / ft.PARTS).write_text("the user's file")
    assert main(["finetune", str(run_dir), "--out", str(tmp_path / "p")]) == 2
    assert "finetune-parts', a file where finetune writes its folder of the trainings that ended" in \
        capsys.readouterr().err
    other = tmp_path / "other-run"  # another run's directory: its own finetune.json would be replaced
    other.mkdir()
    (other / "encoder.json").write_text("{}")
    (other / "finetune.json").write_text("its results")
    assert main(["finetune", str(run_dir), "--out", str(other)]) == 2
    assert f"--out {str(other)!r} is another run's directory" in capsys.readouterr().err
    assert (other / "finetune.json").read_text() == "its results"


def test_a_pretraining_recipe_given_to_finetune_says_which_command_runs_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", str(RECIPES / "quickstart.yaml")]) == 2
    err = capsys.readouterr().err
    assert "quickstart.yaml is a pretraining recipe (it has loss, model, monitor) — run it with `sslkit pretrain" in err


def test_too_few_labels_say_the_floor(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", str(run_dir), "--set", "labeled.size=3", "--out", str(tmp_path / "o")]) == 2
    assert "labeled.size 3 gives 3 labeled image(s): a fine-tune needs at least 4" in capsys.readouterr().err


def test_fgsm_table_of_one_seed_prints_no_spread() -> None:
    from sslkit.evaluation.robustness import print_robustness_table, summarise

    for curves, spread in (([{0.0: 0.9, 0.1: 0.4}], False), ([{0.0: 0.9, 0.1: 0.4}, {0.0: 0.8, 0.1: 0.5}], True)):
        summary = summarise({"ssl": curves})
        assert summary["ssl"]["seeds"] == len(curves)
        console = Console(record=True, width=200)
        print_robustness_table(summary, 40, console)
        text = console.export_text()
        assert ("±" in text) == spread and ("one seed" in text) != spread, text


def test_one_seed_has_no_spread_to_print() -> None:
    assert ft._pm(0.85, 0.0, 1) == "0.8500" and ft._pm(0.85, 0.01, 3) == "0.8500 ± 0.0100"
    assert ft._pm(0.02, 0.0, 1, sign=True) == "+0.0200" and ft._plural(1, "epoch") == "1 epoch"


def test_the_table_of_one_seed_says_one_seed_and_repeats_no_score() -> None:
    """Of one seed the table said "ssl ahead in 1/1 seeds" and gave a "per seed" column repeating each score."""
    def report(seeds: list[int]) -> dict:
        runs = [{"arm": a, "seed": s, "test_top1": t + 0.01 * s}
                for s in seeds for a, t in (("ssl", 0.8), ("supervised", 0.7))]
        arm = {"test_top1.mean": 0.8, "test_top1.std": 0.01, "val_top1.mean": 0.8, "val_top1.std": 0.01,
               "seconds.mean": 9}
        return {"sizes": {"labeled": 40, "train": 32, "val": 8, "test": 100}, "dataset": "d", "encoder": "e",
                "split": "test", "protocol": {"epochs": 2, "select": "last", "encoder_lr_mult": 0.1},
                "labeled": {"disjoint_from_pool": True, "class_counts_min": 4, "class_counts_max": 4,
                            "imbalance_ratio": 1, "balance": "none"},
                "runs": runs, "summary": {"ssl": arm, "supervised": arm},
                "difference": {"ssl_wins": len(seeds), "seeds": len(seeds), "test_top1.mean": 0.1, "test_top1.std": 0},
                "difference_per_seed": [{"ssl - supervised": 0.1} for _ in seeds]}

    for seeds in ([3], [0, 1]):
        console = Console(record=True, width=300)
        ft.print_table(report(seeds), console)
        text = console.export_text()
        several = len(seeds) > 1
        assert ("per seed" in text) == several and ("ahead in 2/2 seeds" in text) == several, text
        assert ("one seed, 3" in text) != several and "1/1" not in text, text


def test_disjoint_from_pool_needs_the_run_s_own_image_folder_and_its_hold_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for copy in ("imgs", "other"):
        for c in ("a", "b"):
            (tmp_path / copy / c).mkdir(parents=True)
            for i in range(10):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / copy / c / f"{i}.png")
    run = tmp_path / "run"
    run.mkdir()
    recipe = Recipe(name="if", data=DataConfig(dataset="imagefolder", root=str(tmp_path / "imgs"), image_size=8),
                    monitor=MonitorConfig(val_size=4, bank_size=8))
    save_recipe(recipe, run / "recipe.yaml")
    meta = dict(encoder="resnet18", stem="cifar", in_chans=3, num_features=512, image_size=8, mean=[0.5] * 3,
                std=[0.29] * 3, dataset="imagefolder", data_root=str(tmp_path / "imgs"), recipe="if",
                imagefolder_test_held_out=0.2)
    export_encoder(build_encoder("resnet18", "cifar", 3), run, meta)
    assert main(["finetune", str(run), "--set", f"data.root={tmp_path / 'other'}", "--out", str(tmp_path / "o")]) == 2
    assert "is not the folder the run pretrained on" in capsys.readouterr().err
    del meta["imagefolder_test_held_out"]  # a run from before the hold-out
    export_encoder(build_encoder("resnet18", "cifar", 3), run, meta)
    assert main(["finetune", str(run), "--out", str(tmp_path / "o")]) == 2
    assert "this run pretrained on the whole image folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_image_folder_changed_since_pretraining_is_noted_and_disjoint_from_pool_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from sslkit.evaluation.probe import run_probe

    root = write_noise_folder(tmp_path / "imgs", per_class=12)
    monkeypatch.chdir(tmp_path)  # data.root relative to where pretrain ran: the run records where that is
    pre = load_recipe(RECIPES / "quickstart.yaml", [
        "data.dataset=imagefolder", "data.root=imgs", "data.image_size=8", "monitor.val_size=4",
        "monitor.bank_size=8", "train.batch_size=8", "train.max_steps=1", "train.threads=1"])
    pretrain(pre, tmp_path / "run", console=QUIET)
    assert load_encoder(tmp_path / "run").sslkit_meta["data_root"] == str(root.resolve())
    monkeypatch.chdir(tmp_path / "run")
    finetune = ["finetune", str(tmp_path / "run"), "--out", str(tmp_path / "o")]
    for setting in ("train.epochs=1", "seeds=1", "labeled.size=4", "labeled.val_size=1", "train.batch_size=4",
                    "robustness.epsilons=[]"):
        finetune += ["--set", setting]
    quiet = Console(record=True, width=400)
    run_probe(tmp_path / "run", fractions=(1.0,), console=quiet)
    assert "are not those this run pretrained on" not in quiet.export_text()  # the folder as it was: nothing to say

    # One file renamed: the hash-chosen held-out split and the recomputed pool move with it.
    (root / "a" / "05.png").rename(root / "a" / "05b.png")
    run_probe(tmp_path / "run", fractions=(1.0,), console=quiet)
    assert "the image folder's files are not those this run pretrained on" in quiet.export_text()
    assert "are not those this run pretrained on" in json.loads((tmp_path / "run" / "probe.json").read_text())[
        "notes"][0]  # kept beside the scores, where the report shows it
    assert main(finetune) == 2
    assert "labeled.disjoint_from_pool: the image folder's files are not those" in capsys.readouterr().err
    assert main([*finetune, "--set", "labeled.disjoint_from_pool=false", "--out", str(tmp_path / "o3")]) == 0
    assert "are not those" in json.loads((tmp_path / "o3" / "finetune.json").read_text())["notes"][0]
    assert not (tmp_path / "o").exists()
    (root / "a" / "05b.png").rename(root / "a" / "05.png")  # restored: the pool is recomputed exactly again
    assert main(finetune) == 0
    assert (tmp_path / "o" / "finetune.json").is_file() and "exists" not in capsys.readouterr().out
    assert main(finetune) == 0  # again into the same folder: said up front, before any training
    out = " ".join(capsys.readouterr().out.split())
    assert f"{tmp_path / 'o' / 'finetune.json'} exists; this fine-tune replaces it when it ends" in out

    # The folder moved: the run's recipe still names the old place, and the pool is still recomputed.
    root.rename(tmp_path / "moved")
    assert main(["probe", str(tmp_path / "run"), "--fractions", "1", "--data-root", str(tmp_path / "moved")]) == 0
    assert "are not those this run pretrained on" not in capsys.readouterr().out
    assert main([*finetune, "--set", f"data.root={tmp_path / 'moved'}", "--out", str(tmp_path / "o2")]) == 0


def test_a_batch_of_one_never_reaches_batch_norm() -> None:
    assert ft.steps_per_finetune_epoch(9, 2) == 4 and ft.steps_per_finetune_epoch(10, 2) == 5
    assert ft.steps_per_finetune_epoch(600, 128) == 5 and ft.steps_per_finetune_epoch(2, 2) == 1
    for n in range(2, 40):
        for batch in range(2, n + 1):
            steps = ft.steps_per_finetune_epoch(n, batch)
            sizes = [len(part) for part in torch.arange(n).tensor_split(steps)]
            assert min(sizes) >= 2 and max(sizes) <= max(batch, 3), (n, batch, sizes)


def test_shipped_recipes_are_finetune_recipes() -> None:
    names = {p.name for p in FINETUNE_RECIPES}
    assert {"cifar100_seed003.yaml", "fashion_mnist_finetune.yaml"} <= names
    for p in RECIPES.glob("*.yaml"):
        assert is_finetune_recipe(p) == (p in FINETUNE_RECIPES)


def test_cifar100_recipe_end_to_end_on_a_tiny_fixture(tmp_path: Path) -> None:
    """The CIFAR-100 protocol: a real (tiny) pretraining run with a pool, then the shipped fine-tune recipe."""
    write_cifar(tmp_path / "data", "cifar100", per_batch=200)
    pre = load_recipe(RECIPES / "cifar100.yaml", [
        f"data.root={tmp_path / 'data'}", "data.download=false", "data.image_size=8", "data.pool_size=64",
        "monitor.val_size=20", "monitor.bank_size=40", "train.batch_size=16", "train.max_steps=1",
        "train.compile=false", "train.threads=1", "seed=3"])
    pretrain(pre, tmp_path / "run", console=QUIET)
    report = ft.finetune_from_file(RECIPES / "cifar100_seed003.yaml", out=tmp_path / "out", console=QUIET, overrides=(
        f"run={tmp_path / 'run'}", *TINY, "labeled.size=40", "labeled.val_size=10", "train.epochs=1", "seeds=2",
        "robustness.n_images=20"))
    assert report["sizes"]["pool"] == 64 and report["sizes"]["candidates"] == 200 - 64
    assert report["sizes"]["test"] == 200 and len(report["runs"]) == 3 * 2  # ssl, supervised, linear × 2 seeds
    assert (tmp_path / "out" / "finetune.json").is_file()


def test_fashion_mnist_recipe_runs_on_a_tiny_run(run_dir: Path, tmp_path: Path) -> None:
    report = ft.finetune_from_file(RECIPES / "fashion_mnist_finetune.yaml", out=tmp_path / "out", console=QUIET,
                                   overrides=(f"run={run_dir}", *TINY, "labeled.size=30", "labeled.val_size=10",
                                              "train.epochs=1", "seeds=1"))
    assert report["sizes"]["labeled"] == 30 and report["labeled"]["disjoint_from_pool"]


def test_stl10_runs_pretrain_on_their_split_and_the_finetune_leaves_that_pool_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """data.split: train+unlabeled pretrains on both (train first, as torchvision orders them); the fine-tune's
    disjoint labeled subset then avoids exactly the train images of that pool, whose draw depends on the unlabeled
    count (data.pool_size), read from the file's size. A run on unlabeled alone took no train image."""
    root = tmp_path / "data"
    write_stl10(root, n_train=60, n_test=20, n_unlabeled=30)
    log = io.StringIO()
    r = load_recipe(RECIPES / "quickstart.yaml", [
        "data.dataset=stl10", f"data.root={root}", "data.split=train+unlabeled", "data.image_size=32",
        "data.pool_size=50", "monitor.val_size=20", "monitor.bank_size=40", "train.batch_size=16", "train.epochs=1",
        "train.threads=1"])
    summary = pretrain(r, tmp_path / "run", console=Console(file=log, width=200))
    assert "stl10 (train+unlabeled) — 50 images for pretraining" in log.getvalue()
    assert summary["steps"] == 3 and summary["knn_start"] is not None
    both = load_source("stl10", "train+unlabeled", root=str(root))
    _, pool, _ = split_train(r, both.labels)
    assert len(pool) == 50 and 0 < int((pool >= 60).sum()) < 30  # unlabeled images in the pool, and train ones
    in_train, size = train_images_in_pool(r, load_source("stl10", "train", root=str(root)).labels, str(root))
    assert torch.equal(in_train, pool[pool < 60]) and size == 50
    one_fewer = split_train(r, both.labels[:-1])[1]  # the unlabeled count matters
    assert not torch.equal(one_fewer[one_fewer < 60], in_train)

    import sslkit.report as report
    import sslkit.viz as viz

    shown: list[torch.Tensor] = []  # the report's augmentation preview shows images of the run's own pool
    monkeypatch.setattr(viz, "plot_augmentations", lambda x, views, path, title: shown.append(x) or path)
    report.figure_augmentations(tmp_path / "run", load_encoder(tmp_path / "run").sslkit_meta, tmp_path / "a.png")
    both32 = load_source("stl10", "train+unlabeled", root=str(root), image_size=32)
    positions = [next(i for i in pool.tolist() if torch.equal(both32.images[i], x)) for x in shown[0]]
    assert len(positions) == 6 and any(i >= 60 for i in positions)
    assert main(["probe", str(tmp_path / "run"), "--split", "train+unlabeled"]) == 2  # probes fitted on train
    assert "--split 'train+unlabeled' of stl10 holds the train images the probes are fitted on — use test" in \
        capsys.readouterr().err

    ft_path = tmp_path / "ft.yaml"
    ft_path.write_text(f"name: t\nrun: {tmp_path / 'run'}\n")
    extra = [*TINY, "labeled.size=12", "labeled.val_size=4"]
    meta = load_encoder(tmp_path / "run").sslkit_meta
    assert meta["split"] == "train+unlabeled"
    data = ft.prepare_data(load_finetune_recipe(ft_path, extra), meta, torch.device("cpu"))
    assert data.info["pool"] == 50 and data.info["candidates"] == 60 - len(in_train)
    assert not set(data.info["labeled_indices"]) & set(in_train.tolist())

    save_recipe(r.replace(**{"data.split": "unlabeled"}), tmp_path / "run" / "recipe.yaml")
    data = ft.prepare_data(load_finetune_recipe(ft_path, extra), meta, torch.device("cpu"))
    assert data.info["pool"] is None and data.info["candidates"] == 60 and data.info["pretraining_split"] == "unlabeled"

    (root / "stl10_binary" / "unlabeled_X.bin").unlink()  # the count cannot be known: one line, no guess
    save_recipe(r, tmp_path / "run" / "recipe.yaml")
    with pytest.raises(UserError, match=r"unlabeled_X\.bin cannot be read"):
        ft.prepare_data(load_finetune_recipe(ft_path, extra), meta, torch.device("cpu"))


def test_a_split_without_labels_pretrains_without_a_monitor_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_stl10(root, n_train=4, n_test=4, n_unlabeled=20)
    log = io.StringIO()
    r = load_recipe(RECIPES / "quickstart.yaml", [
        "data.dataset=stl10", f"data.root={root}", "data.split=unlabeled", "data.image_size=32", "train.batch_size=8",
        "train.max_steps=1", "train.threads=1"])
    summary = pretrain(r, tmp_path / "run", console=Console(file=log, width=200))
    assert summary["steps"] == 1 and summary["knn_start"] is None
    assert "no k-NN monitor: the unlabeled split has no labels — pretrain on one with labeled images" in log.getvalue()
    log = io.StringIO()
    r = r.replace(**{"data.split": "train+unlabeled", "monitor.val_size": 4})  # 4 labeled: none left to monitor
    pretrain(r, tmp_path / "run2", console=Console(file=log, width=200))
    assert ("no k-NN monitor: the train+unlabeled split has 4 labeled image(s), too few to hold out "
            "monitor.val_size=4 — lower it") in log.getvalue()


# --- a step that cannot fit in memory ------------------------------------------------------------------------


def test_the_memory_check_shares_the_pretraining_constants_and_refuses_only_past_the_margin() -> None:
    """A fine-tuning step is a forward and backward of one view per image: pretraining's estimate of a batch of b
    images (2b views) is exactly the fine-tuning estimate of 2b images plus NT-Xent's matrices. Refused beyond
    STEP_MEMORY_MARGIN × the memory, naming the keys and the largest values that fit."""
    from sslkit.evaluation.finetune_config import FinetuneRecipe, FinetuneTrain
    from sslkit.step import ACTIVATION_BYTES_PER_PIXEL, LOSS_MATRICES, step_memory_bytes
    from sslkit.trainer import STEP_MEMORY_MARGIN

    meta = dict(encoder="resnet18", stem="imagenet", in_chans=3, image_size=224)
    per = ft.supervised_step_bytes(1, meta, "fp32")
    assert per == 3 * 224 * 224 * 4 + 224 * 224 * ACTIVATION_BYTES_PER_PIXEL[("imagenet", 4)]
    assert ft.supervised_step_bytes(1, meta, "bf16") == 3 * 224 * 224 * 4 + 224 * 224 * ACTIVATION_BYTES_PER_PIXEL[
        ("imagenet", 2)]
    assert step_memory_bytes(64, 3, 224, "imagenet") == ft.supervised_step_bytes(128, meta, "fp32") + (
        LOSS_MATRICES * 128 * 128 * 4)
    assert ft.supervised_step_bytes(10, dict(meta, encoder="vit_tiny_patch16_224"), "fp32") == 10 * 3 * 224 * 224 * 4

    r = FinetuneRecipe(run="r", train=FinetuneTrain(batch_size=1024, eval_batch_size=500))
    room = 16 * 2**30
    edge = int(STEP_MEMORY_MARGIN * room // per)
    fits = room // per  # the value the message suggests: its estimate fits without the margin
    ft.check_finetune_memory(r, meta, edge, edge, "fp32", room, "here")  # at the margin's edge: left to try
    ft.check_finetune_memory(r, meta, 10**6, 10**6, "fp32", None, "here")  # memory unknown: no check
    with pytest.raises(UserError) as refused:
        ft.check_finetune_memory(r, meta, edge + 1, 0, "fp32", room, "here")
    assert str(refused.value) == (
        f"train.batch_size 1,024: a training step needs about {(edge + 1) * per / 2**30:,.1f} GiB ({edge + 1:,} images "
        f"of 3×224×224 pixels and resnet18 activations for them) — more than the 16.0 GiB here: lower "
        f"train.batch_size to at most {fits:,}")
    ft.check_finetune_memory(r, meta, edge + 1, 0, "bf16", room, "here")  # 16-bit activations: it fits
    per_bf16 = ft.supervised_step_bytes(1, meta, "bf16")
    with pytest.raises(UserError) as refused:  # FGSM's gradient is float32 whatever the training precision
        ft.check_finetune_memory(r, meta, int(STEP_MEMORY_MARGIN * room // per_bf16) + 1, edge + 1, "bf16", room,
                                 "here")
    assert str(refused.value).endswith(f"— more than the 16.0 GiB here: lower train.batch_size to at most "
                                       f"{room // per_bf16:,} and lower train.eval_batch_size to at most {fits:,} "
                                       "(or set robustness.epsilons: [] to measure no FGSM)")
    assert "; train.eval_batch_size 500: an FGSM gradient needs about" in str(refused.value)
    with pytest.raises(UserError, match=r"GiB here: fine-tune on a device with more memory \(not even 2 of the "
                                        r"run's 224×224 images fit a training step\)$"):
        ft.check_finetune_memory(r, meta, 2, 0, "fp32", per, "here")


def test_a_fine_tune_that_cannot_fit_exits_2_before_any_arm_is_built(run_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """It was killed by the OS in its first step, with no message, after loading the data and building the arm."""
    monkeypatch.setattr(ft, "device_memory", lambda device, info: (2**20, "of memory this machine has"))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("an arm was built")

    monkeypatch.setattr(ft, "build_classifier", never)
    sets = [*TINY, "labeled.size=40", "labeled.val_size=8"]  # 32 training images: 2 steps of 16
    assert main(["finetune", str(run_dir), *sum((["--set", s] for s in sets), []), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    # 16×16 1-channel images (the run's): 1 KiB of input and 16×16×510 bytes of activations each; 7 fit in 1 MiB.
    assert err == ("sslkit finetune: error: train.batch_size 16: a training step needs about 0.0 GiB (16 images of "
                   "1×16×16 pixels and resnet18 activations for them); train.eval_batch_size 256: an FGSM gradient "
                   "needs about 0.0 GiB (40 images of 1×16×16 pixels and resnet18 activations for them) — more than "
                   "the 0.0 GiB of memory this machine has: lower train.batch_size to at most 7 and lower "
                   "train.eval_batch_size to at most 7 (or set robustness.epsilons: [] to measure no FGSM)\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_the_largest_activation_counted_is_resnet18s_own(stem: str) -> None:
    """The evaluation-batch check counts ResNet18's largest single activation from its architecture: for each stem
    and odd and even sizes it is the largest output of any of the built encoder's modules, as a forward makes it."""
    encoder = build_encoder("resnet18", stem, 3).eval()
    made: list[int] = []  # the bytes of every module's output
    for m in encoder.modules():
        if m is not encoder:
            m.register_forward_hook(lambda module, args, out: made.append(out.numel() * 4))
    for size in (16, 28, 33, 40):
        made.clear()
        with torch.no_grad():
            encoder(torch.zeros(2, 3, size, size))
        assert ft.largest_activation_bytes(2, size, stem) == max(made), (size, max(made))
    assert ft.largest_activation_bytes(2, 32, stem, "vit_tiny_patch16_224") == 0  # not counted, as in training


def test_an_evaluation_batch_that_cannot_fit_is_refused_with_fgsm_off_too() -> None:
    """With robustness.epsilons: [] no batch of train.eval_batch_size was checked, though validation and the test
    split run through it: a huge one exhausted the memory after the first epoch. Its estimate is the float32 batch
    and ResNet18's largest activation (a forward without autograd keeps no activations for a backward: the
    training constants would refuse batches that fit); FGSM's larger estimate, when it refuses, is the one named."""
    from sslkit.evaluation.finetune_config import FinetuneRecipe, FinetuneTrain
    from sslkit.trainer import STEP_MEMORY_MARGIN

    meta = dict(encoder="resnet18", stem="cifar", in_chans=3, image_size=96)
    per = ft.evaluation_batch_bytes(1, meta)
    assert per == 3 * 96 * 96 * 4 + 64 * 96 * 96 * 4
    assert ft.evaluation_batch_bytes(10, dict(meta, encoder="vit_tiny_patch16_224")) == 10 * 3 * 96 * 96 * 4
    assert per < ft.supervised_step_bytes(1, meta, "fp32") / 10  # far less than a forward and backward
    r = FinetuneRecipe(run="r", train=FinetuneTrain(batch_size=2, eval_batch_size=100_000))
    room = 16 * 2**30
    edge = int(STEP_MEMORY_MARGIN * room // per)
    ft.check_finetune_memory(r, meta, 2, 0, "fp32", room, "here", evaluation=edge)  # at the margin's edge: tried
    with pytest.raises(UserError) as refused:
        ft.check_finetune_memory(r, meta, 2, 0, "fp32", room, "here", evaluation=edge + 1)
    assert str(refused.value) == (
        f"train.eval_batch_size 100,000: an evaluation batch needs about {(edge + 1) * per / 2**30:,.1f} GiB "
        f"({edge + 1:,} images of 3×96×96 pixels and resnet18's largest activation for them) — more than the 16.0 GiB "
        f"here: lower train.eval_batch_size to at most {room // per:,}")
    fgsm_edge = int(STEP_MEMORY_MARGIN * room // ft.supervised_step_bytes(1, meta, "fp32"))
    with pytest.raises(UserError) as refused:  # FGSM's refusal covers the evaluation batch: one advice per key
        ft.check_finetune_memory(r, meta, 2, fgsm_edge + 1, "fp32", room, "here", evaluation=edge + 1)
    assert str(refused.value).count("train.eval_batch_size") == 2 and "an evaluation batch" not in str(refused.value)
    assert str(refused.value).endswith("(or set robustness.epsilons: [] to measure no FGSM)")


def test_a_fine_tune_whose_evaluation_batch_cannot_fit_exits_2_before_any_arm_is_built(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """FGSM off, training batches that fit, and a train.eval_batch_size whose batch of the 200 test images does
    not: refused before any arm is built, where it used to train an epoch first."""
    monkeypatch.setattr(ft, "device_memory", lambda device, info: (2 * 2**20, "of memory this machine has"))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("an arm was built")

    monkeypatch.setattr(ft, "build_classifier", never)
    sets = [*TINY, "labeled.size=40", "labeled.val_size=8", "robustness.epsilons=[]"]
    assert main(["finetune", str(run_dir), *sum((["--set", s] for s in sets), []), "--out", str(tmp_path / "o")]) == 2
    # 16×16 1-channel images (the run's): 1 KiB of input and 64×8×8 float32 stem outputs each; 120 fit in 2 MiB.
    assert capsys.readouterr().err == (
        "sslkit finetune: error: train.eval_batch_size 256: an evaluation batch needs about 0.0 GiB (200 images of "
        "1×16×16 pixels and resnet18's largest activation for them) — more than the 0.0 GiB of memory this machine "
        "has: lower train.eval_batch_size to at most 120\n")
    assert not (tmp_path / "o").exists()


def _documented_finetune_commands() -> list[tuple[Path, list[str]]]:
    """Every ``sslkit finetune recipes/….yaml`` command in the README and in the fine-tune recipes' headers: (recipe,
    its --set overrides). The README's "$ …" lines show refused input."""
    root = RECIPES.parent
    found = []
    for text in [(root / "README.md").read_text(), *(p.read_text() for p in FINETUNE_RECIPES)]:
        for m in re.finditer(r"^(?!\$).*?sslkit finetune (recipes/\S+\.yaml)(.*)$", text.replace("\\\n", " "), re.M):
            found.append((root / m.group(1), re.findall(r"--set (\S+)", m.group(2))))
    return found


def _run_meta(recipe: Path, run: str) -> dict:
    """The encoder.json of ``run`` as the pretraining command in ``recipe``'s header makes it."""
    m = re.search(rf"sslkit pretrain (recipes/\S+\.yaml) --out {re.escape(run)}(.*)",
                  recipe.read_text().replace("\\\n", " "))
    assert m, (recipe, run)
    r = load_recipe(RECIPES.parent / m.group(1), re.findall(r"--set (\S+)", m.group(2)))
    channels, native = {"fashion-mnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32), "stl10": (3, 96)}[
        r.data.dataset]
    return dict(encoder=r.model.encoder, stem=r.model.stem, in_chans=channels, image_size=r.data.image_size or native)


def test_every_documented_fine_tune_fits_the_memory_check(run_dir: Path) -> None:
    """No fine-tune the project documents is refused, in fp32 (the larger estimate) on this project's 2-core CPU
    machine of 24 GiB (the GPU recipe too): its largest training, FGSM and evaluation batches."""
    commands = _documented_finetune_commands()
    assert {(p.stem, tuple(s)) for p, s in commands} >= {
        ("fashion_mnist_finetune", ()), ("fashion_mnist_finetune", ("labeled.size=600", "train.epochs=30")),
        ("cifar100_seed003", ())}
    room = 24 * 2**30
    for path, sets in commands:
        meta = _run_meta(path, re.search(r"^run: (\S+)", path.read_text(), re.M)[1])  # the run it documents
        r = load_finetune_recipe(path, [*sets, f"run={run_dir}"])
        batch = r.train.batch_size + 1  # steps_per_finetune_epoch's batches hold at most one image more
        attack = min(r.train.eval_batch_size, r.robustness.n_images or 10_000) if r.robustness.epsilons else 0
        evaluation = min(r.train.eval_batch_size, 26_032)  # SVHN's test split, the largest one registered
        ft.check_finetune_memory(r, meta, batch, attack, "fp32", room, "(test)", evaluation=evaluation)
        need = max(ft.supervised_step_bytes(batch, meta, "fp32"), ft.supervised_step_bytes(attack, meta, "fp32"),
                   ft.evaluation_batch_bytes(evaluation, meta))
        assert need <= room, (path.stem, sets, need / 2**30)  # fits without STEP_MEMORY_MARGIN too


def test_a_rerun_without_fgsm_leaves_no_earlier_fgsm_chart(run_dir: Path, tmp_path: Path) -> None:
    """A rerun into the same folder with robustness.epsilons: [] replaces finetune.json; the FGSM chart of the run
    before must go with it (sslkit report shows whatever finetune_fgsm.png it finds beside finetune.json)."""
    out = tmp_path / "out"
    ft.run_finetune(_recipe(run_dir, tmp_path, "train.epochs=1", "seeds=1"), out=out, console=QUIET)
    assert (out / "figures" / "finetune_fgsm.png").is_file()
    report = ft.run_finetune(_recipe(run_dir, tmp_path, "train.epochs=1", "seeds=1", "robustness.epsilons=[]"),
                             out=out, console=QUIET)
    assert report["robustness"]["summary"] == {}
    assert (out / "figures" / "finetune.png").is_file()
    assert not (out / "figures" / "finetune_fgsm.png").exists()


_TRAIN_ARM = ft.train_arm


def _counting_train_arm(monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> list[tuple[str, int]]:
    """Counts the trainings that start (arm, seed); with ``stop_after``, the next one raises KeyboardInterrupt (a
    Ctrl-C once that many have ended)."""
    train_arm, started = _TRAIN_ARM, []

    def counted(arm: str, seed: int, *args: object, **kwargs: object) -> ft.ArmResult:
        if stop_after is not None and len(started) == stop_after:
            raise KeyboardInterrupt
        started.append((arm, seed))
        return train_arm(arm, seed, *args, **kwargs)

    monkeypatch.setattr(ft, "train_arm", counted)
    return started


def _finetune_cli(run_dir: Path, tmp_path: Path, out: Path, *extra: str) -> int:
    path = tmp_path / "ft.yaml"
    path.write_text(f"run: {run_dir}\n")
    sets = [*TINY, "labeled.size=40", "labeled.val_size=8", "train.epochs=1", "seeds=2", *extra]
    return main(["finetune", str(path), *sum((["--set", s] for s in sets), []), "--out", str(out)])


def _untimed(report: dict) -> dict:
    """finetune.json without its timings (seconds), which no two runs share."""
    report = dict(report, seconds=None, runs=[dict(x, seconds=None) for x in report["runs"]])
    report["summary"] = {arm: dict(m, **{"seconds.mean": None}) for arm, m in report["summary"].items()}
    return report


def test_an_interrupted_fine_tune_keeps_its_ended_trainings_and_the_same_command_continues(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after 2 of 4 trainings: exit 130 and one line saying which ended and where they are kept (not the
    generic "files already written are complete"); the earlier finetune.json is unchanged. The same command then
    trains only the other 2 and writes what an uninterrupted run writes, and the kept records go. Before, the ended
    trainings were lost: a 3-seed GPU fine-tune stopped near its end started again from nothing."""
    whole = tmp_path / "whole"
    assert _finetune_cli(run_dir, tmp_path, whole) == 0
    uninterrupted = json.loads((whole / "finetune.json").read_text())
    capsys.readouterr()

    out = tmp_path / "o"
    out.mkdir()
    (out / "finetune.json").write_text('{"earlier": true}\n')
    started = _counting_train_arm(monkeypatch, stop_after=2)
    assert _finetune_cli(run_dir, tmp_path, out) == 130
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    parts = next((out / ft.PARTS).iterdir())
    assert err.startswith(f"sslkit finetune: interrupted after 2 of 4 arm × seed trainings (ssl seed 0, supervised "
                          f"seed 0); they are kept in {parts}, and the same command"), err
    assert f"{out / 'finetune.json'} is the earlier fine-tune's, unchanged" in err
    assert (out / "finetune.json").read_text() == '{"earlier": true}\n' and not (out / "figures").exists()
    assert sorted(p.name for p in parts.iterdir()) == ["ssl-seed0.json", "supervised-seed0.json"]

    started = _counting_train_arm(monkeypatch)
    assert _finetune_cli(run_dir, tmp_path, out) == 0
    assert started == [("ssl", 1), ("supervised", 1)], "only the trainings that had not ended"
    assert "reusing 2 of 4 arm × seed trainings" in capsys.readouterr().out
    assert _untimed(json.loads((out / "finetune.json").read_text())) == _untimed(uninterrupted)
    assert (out / "figures" / "finetune.png").is_file() and not (out / ft.PARTS).exists()


def test_a_changed_recipe_reuses_no_ended_training_and_fewer_seeds_reuse_theirs(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept training is reused only by a fine-tune that would train it alike: a changed value (here the learning
    rate) trains everything again, and the parts of the other recipe go once its finetune.json is written. Which
    seeds run is not part of it: the same fine-tune with fewer seeds reuses those that ended."""
    out = tmp_path / "o"
    _counting_train_arm(monkeypatch, stop_after=2)
    assert _finetune_cli(run_dir, tmp_path, out) == 130
    started = _counting_train_arm(monkeypatch)
    assert _finetune_cli(run_dir, tmp_path, out, "optim.lr=0.02") == 0
    assert len(started) == 4, "nothing reused"
    assert not (out / ft.PARTS).exists(), "the other recipe's parts went with the final file"

    _counting_train_arm(monkeypatch, stop_after=2)
    assert _finetune_cli(run_dir, tmp_path, out) == 130
    started = _counting_train_arm(monkeypatch)
    assert _finetune_cli(run_dir, tmp_path, out, "seeds=1") == 0
    assert started == [], "seed 0's two trainings had ended"
    assert json.loads((out / "finetune.json").read_text())["summary"]["ssl"]["seeds"] == 1


def test_an_interruption_before_any_arm_trains_reads_as_every_command_s(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped while the data loads, the command gives the generic line: a bare KeyboardInterrupt has no message of
    its own to print in its place."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "prepare_data", interrupted)
    assert main(["finetune", str(run_dir), "--out", str(tmp_path / "o")]) == 130
    assert capsys.readouterr().err == "sslkit finetune: interrupted; files already written are complete\n"


# --- progress of the long passes, one seed said as one, the key of the ended trainings ----------------------------


def test_each_test_fgsm_and_validation_pass_shows_a_bar_of_its_own_and_leaves_none_behind(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainings' bar stood still while each arm was scored on the test split and attacked with FGSM (minutes of
    nothing moving at 224 px). Each pass now counts its images on a bar of its own, gone when it ends; a log, where
    no bar is drawn, is told what it waits for."""
    from rich.progress import Progress

    ended: dict[str, tuple[float, float | None]] = {}
    remove_task = Progress.remove_task

    def remove(self: Progress, task_id: object) -> None:
        task = next(t for t in self.tasks if t.id == task_id)
        ended[task.description] = (task.completed, task.total)
        remove_task(self, task_id)

    monkeypatch.setattr(Progress, "remove_task", remove)
    log = io.StringIO()
    ft.run_finetune(_recipe(run_dir, tmp_path, "train.epochs=1", "seeds=1"), out=tmp_path / "o",
                    console=Console(file=log, width=400))
    for arm in ("ssl", "supervised"):
        assert ended[f"{arm} · seed 0 · validation"] == (8, 8)
        assert ended[f"{arm} · seed 0 · test"] == (200, 200)
        assert ended[f"{arm} · seed 0 · FGSM"] == (40, 40)
        assert f"{arm} seed 0: scoring 200 test images, then FGSM on 40\n" in log.getvalue()
    assert len(ended) == 6, ended


def _figure_of(plot: object, *args: object, **kwargs: object):
    """The figure ``plot`` draws, as it would be saved."""
    import sslkit.viz

    drawn = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sslkit.viz, "save_figure", lambda fig, path: drawn.append(fig) or Path(path))
        plot(*args, **kwargs)
    return drawn[0]


def _says_its_seeds(fig: object, seeds: list[int]) -> str:
    """Checks that a figure says which seeds it shows and draws a spread (two arms' error bars) only over several;
    returns its words (titles, labels, legends, notes)."""
    from matplotlib.container import ErrorbarContainer
    from matplotlib.text import Text

    words = " ".join(t.get_text() for t in fig.findobj(Text))
    bars = sum(isinstance(c, ErrorbarContainer) and c.has_yerr for ax in fig.axes for c in ax.containers)
    if len(seeds) == 1:
        assert "±" not in words and "over seeds" not in words and "mean" not in words, words
        assert f"a single training seed: {seeds[0]}" in words and bars == 0, words
    else:
        assert f"mean ± std over {len(seeds)} seeds" in words and bars == 2, words
    return words


def _report_of_seeds(seeds: list[int]) -> dict:
    """A finetune.json of two arms over ``seeds``, as _report writes it."""
    from sslkit.evaluation.robustness import summarise

    runs = [dict(arm=arm, seed=s, test_top1=0.8 + 0.01 * s - 0.05 * (arm == "supervised"), val_top1=0.8,
                 curves={"val_top1": [0.5, 0.7 + 0.01 * s]}, fgsm={0.0: 0.8, 0.1: 0.3 + 0.01 * s})
            for s in seeds for arm in ("ssl", "supervised")]
    summary = {arm: {"test_top1.mean": float(np.mean([x["test_top1"] for x in runs if x["arm"] == arm])),
                     "test_top1.std": float(np.std([x["test_top1"] for x in runs if x["arm"] == arm], ddof=1))
                     if len(seeds) > 1 else 0.0, "seeds": len(seeds)} for arm in ("ssl", "supervised")}
    return {"split": "test", "sizes": {"labeled": 400, "val": 40}, "summary": summary, "runs": runs,
            "difference": {"test_top1.mean": 0.05, "test_top1.std": 0.0, "ssl_wins": len(seeds), "seeds": len(seeds)},
            "fgsm": summarise({arm: [x["fgsm"] for x in runs if x["arm"] == arm] for arm in ("ssl", "supervised")})}


def test_a_fine_tune_of_one_seed_is_drawn_and_shown_as_one_seed(tmp_path: Path) -> None:
    """Of one seed, the figures said "mean ± std over seeds" and drew error bars of 0 (its spread is unknown, not
    0), and the report page labelled its scores ".mean": they now name the seed and draw its scores alone."""
    from sslkit.evaluation.robustness import plot_robustness
    from sslkit.report import _finetune_headline

    for seeds in ([3], [0, 1, 2]):  # several seeds: the checks have teeth
        report = _report_of_seeds(seeds)
        words = _says_its_seeds(_figure_of(ft.plot_finetune, report, tmp_path / "f.png"), seeds)
        assert f"validation top-1 ({'training seed 3' if seeds == [3] else 'mean ± std over 3 seeds'})" in words
        _says_its_seeds(_figure_of(plot_robustness, report["fgsm"], tmp_path / "g.png", n_images=40, seeds=seeds),
                        seeds)
        headline = _finetune_headline(report)
        keys = {k for m in (*headline["summary"].values(), headline["difference"]) for k in m}
        if seeds == [3]:
            assert "test_top1" in keys and not any(k.endswith((".mean", ".std")) for k in keys), keys
        else:
            assert {"test_top1.mean", "test_top1.std"} <= keys


def test_the_same_run_and_data_by_other_paths_reuse_the_ended_trainings(
        run_dir: Path, fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key of the ended trainings hashed run: and data.root as written, so the same run through a symlink, or
    its data by a relative path, trained everything again. What they hold is hashed now."""
    out = tmp_path / "o"
    _counting_train_arm(monkeypatch, stop_after=2)
    assert _finetune_cli(run_dir, tmp_path, out, f"data.root={fmnist_root}") == 130
    (tmp_path / "linked-run").symlink_to(run_dir)
    monkeypatch.chdir(fmnist_root.parent)
    started = _counting_train_arm(monkeypatch)
    assert _finetune_cli(tmp_path / "linked-run", tmp_path, out, f"data.root={fmnist_root.name}") == 0
    assert started == [("ssl", 1), ("supervised", 1)], "seed 0's two trainings had ended"


def _write_bmp_folder(root: Path, per_class: int) -> Path:
    """An image folder of random 8×8 BMPs (uncompressed: an image rewritten keeps its file's size)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i:02d}.bmp")
    return root


def test_an_image_folder_moved_reuses_the_ended_trainings_and_an_image_rewritten_reuses_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image folder's images are named by their files in the key (as its image cache names them), not hashed
    pixel by pixel: the folder moved reuses the trainings that ended; one image rewritten, even with its old size
    and mtime, reuses none."""
    from PIL import Image

    root = _write_bmp_folder(tmp_path / "imgs", per_class=12)
    run = tmp_path / "run"
    export_encoder(build_encoder("resnet18", "cifar", 3), run, dict(
        encoder="resnet18", stem="cifar", in_chans=3, num_features=512, image_size=8, mean=[0.5] * 3, std=[0.29] * 3,
        dataset="imagefolder", data_root=str(root), recipe="if", imagefolder_test_held_out=0.2))
    sets = ["labeled.disjoint_from_pool=false", "labeled.size=8", "labeled.val_size=2", "train.batch_size=4",
            "robustness.epsilons=[]"]
    out = tmp_path / "o"
    _counting_train_arm(monkeypatch, stop_after=2)
    assert _finetune_cli(run, tmp_path, out, *sets, f"data.root={root}") == 130
    moved = root.rename(tmp_path / "moved")
    started = _counting_train_arm(monkeypatch)
    assert _finetune_cli(run, tmp_path, out, *sets, f"data.root={moved}") == 0
    assert started == [("ssl", 1), ("supervised", 1)], "seed 0's two trainings had ended"

    _counting_train_arm(monkeypatch, stop_after=2)
    assert _finetune_cli(run, tmp_path, out, *sets, f"data.root={moved}") == 130
    image = moved / "a" / "03.bmp"
    before = image.stat()
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(image)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert image.stat().st_size == before.st_size
    started = _counting_train_arm(monkeypatch)
    assert _finetune_cli(run, tmp_path, out, *sets, f"data.root={moved}") == 0
    assert len(started) == 4, "nothing reused"
