"""Every shipped recipe runs a couple of real training steps (on tiny data where the real data is absent)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fakes import write_cifar, write_stl10
from rich.console import Console

import sslkit.data as data
from sslkit.checkpoint import load_encoder
from sslkit.config import load_recipe
from sslkit.evaluation.finetune_config import is_finetune_recipe
from sslkit.step import step_memory_bytes
from sslkit.trainer import check_step_memory, pretrain

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


# The shipped recipes meant for GPUs (their headers say GPU-scale or the GPU version): they need to pass the step
# memory check on one H100's 80 GiB. Every other recipe, and every README command on one, must pass on this
# project's 2-core CPU machine of 24 GiB.
GPU_RECIPES = {"cifar10", "cifar100", "stl10", "fashion_mnist_long"}
NATIVE = {"fashion-mnist": (1, 28), "fashion-mnist-mini": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32),
          "stl10": (3, 96)}  # channels, side of the data sets' images


def _documented_pretrain_commands() -> list[tuple[Path, list[str], int]]:
    """Every ``sslkit pretrain recipes/….yaml`` command in the README and in the recipes' headers: (recipe, its
    --set overrides, processes per machine under torchrun). The README's "$ …" lines show refused input."""
    root = Path(__file__).resolve().parent.parent
    texts = [(root / "README.md").read_text(), *(p.read_text() for p in RECIPES)]
    found = []
    for text in texts:
        for m in re.finditer(r"^(?!\$)(.*?)sslkit pretrain (recipes/\S+\.yaml)(.*)$", text.replace("\\\n", " "), re.M):
            nproc = re.search(r"--nproc_per_node (\d+)", m.group(1))
            found.append((root / m.group(2), re.findall(r"--set (\S+)", m.group(3)), int(nproc[1]) if nproc else 1))
    return found


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_and_documented_command_fits_the_step_memory_check(path: Path) -> None:
    """No run the project ships or documents is refused by trainer.check_step_memory, even in fp32 (the largest
    estimate): CPU recipes on 24 GiB shared by the processes of a CPU torchrun, GPU recipes on 80 GiB a GPU."""
    commands = [(sets, n) for p, sets, n in _documented_pretrain_commands() if p == path] or [([], 1)]
    for sets, processes in commands:
        r = load_recipe(path, sets)
        channels, native = NATIVE[r.data.dataset]
        gpu = path.stem in GPU_RECIPES
        room = 80 * 2**30 if gpu else 24 * 2**30 // processes
        # (The README's two-machine command runs 16 processes, checked as 8: a larger batch per process.)
        check_step_memory(r, r.train.batch_size // processes, processes, channels, r.data.image_size or native,
                          "fp32", room, "(test)")
        need = step_memory_bytes(r.train.batch_size // processes, channels, r.data.image_size or native,
                                 r.model.stem, r.model.encoder, "fp32", r.train.chunk_size, processes)
        assert need <= room, (path.stem, sets, processes, need / 2**30)  # fits without STEP_MEMORY_MARGIN too


def test_the_documented_commands_are_found() -> None:
    found = {(p.stem, n) for p, _, n in _documented_pretrain_commands()}
    assert {("quickstart", 1), ("quickstart", 2), ("cifar10", 4), ("cifar10", 8), ("fashion_mnist", 1),
            ("cifar100", 1), ("stl10", 1), ("fashion_mnist_long", 1)} <= found
    assert GPU_RECIPES <= {p.stem for p in RECIPES}
