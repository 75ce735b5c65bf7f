"""Every shipped recipe runs a couple of real training steps (on tiny data where the real data is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import write_cifar, write_stl10
from rich.console import Console

import sslkit.data as data
from sslkit.checkpoint import load_encoder
from sslkit.config import load_recipe
from sslkit.evaluation.finetune_config import is_finetune_recipe
from sslkit.trainer import pretrain

RECIPES = [p for p in sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
           if not is_finetune_recipe(p)]  # pretraining recipes; tests/test_finetune.py runs the others
SMOKE = ["train.max_steps=2", "train.batch_size=8", "monitor.val_size=20", "monitor.bank_size=40",
         "train.compile=false", "train.threads=1"]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_smoke_run(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path)
    extra = []
    if recipe.data.dataset in ("cifar10", "cifar100"):
        write_cifar(tmp_path / "data", recipe.data.dataset, per_batch=20)
        extra = [f"data.root={tmp_path / 'data'}", "data.download=false"]
    elif recipe.data.dataset == "stl10":
        write_stl10(tmp_path / "data", n_train=60, n_test=20, n_unlabeled=40)
        extra = [f"data.root={tmp_path / 'data'}", "data.download=false"]
    elif recipe.data.dataset == "fashion-mnist":
        if not data.FASHION_MNIST_SYSTEM_DIR.is_dir():
            extra = ["data.dataset=fashion-mnist-mini"]  # the recipe's settings, on the embedded data
        extra.append("data.pool_size=64")
    else:
        extra = ["data.pool_size=64"]
    recipe = load_recipe(path, [*SMOKE, *extra])
    summary = pretrain(recipe, tmp_path / "run", console=Console(quiet=True))
    assert summary["steps"] == 2
    encoder = load_encoder(tmp_path / "run")
    assert encoder.sslkit_meta["stem"] == recipe.model.stem
