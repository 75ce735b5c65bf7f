"""Faults survived, bad input refused, nothing lost: the short versions of eval/fault_injection.py and more.

Already covered elsewhere, so not repeated here: bitwise resume at three points and the non-finite stop/skip
(test_trainer.py, test_step.py), corrupt ``last.pt`` fallback and pickled code in ``load_checkpoint``
(test_checkpoint.py), bad keys and values in ``load_recipe`` (test_config.py), and the image-folder basics
(test_data.py). This file drives the real entry points: a ``sslkit pretrain`` subprocess killed with SIGKILL
and SIGTERM, and ``sslkit.cli.main`` with bad recipes, bad checkpoints and bad arguments on an existing run.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import DiskFillsUp, write_noise_folder
from PIL import Image
from rich.console import Console
from safetensors.torch import load_file

from sslkit.checkpoint import TMP_PREFIX, load_checkpoint, load_encoder, step_checkpoints
from sslkit.cli import main
from sslkit.config import load_recipe
from sslkit.data import imagefolder_pool
from sslkit.errors import UserError
from sslkit.trainer import pretrain

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "quickstart.yaml"
# 64 images, batch 8, one epoch: 8 steps with a checkpoint after each, on one thread (deterministic).
SETS = ["data.pool_size=64", "monitor.val_size=40", "monitor.bank_size=80", "train.batch_size=8", "train.epochs=1",
        "train.log_every=1", "train.threads=1", "train.checkpoint_every=1", "optim.warmup_epochs=0.5"]


def quiet() -> Console:
    return Console(quiet=True)


def launch(run: Path, log: Path, resume: bool = False) -> subprocess.Popen:
    sets = [a for s in SETS for a in ("--set", s)]
    args = [str(run), "--resume"] if resume else [str(RECIPE), "--out", str(run), *sets]
    with open(log, "w") as fh:  # the child keeps its own handle
        return subprocess.Popen([sys.executable, "-m", "sslkit", "pretrain", *args], stdout=fh,
                                stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_for(pred, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.002)
    return False


def temp_files(run: Path, pid: int | None = None) -> list[Path]:
    return [p for d in (run, run / "checkpoints") if d.is_dir() for p in d.iterdir()
            if p.name.startswith(TMP_PREFIX) and (pid is None or p.name.endswith(f".{pid}"))]


def wait_for_write(proc: subprocess.Popen, run: Path, nth: int) -> bool:
    """Waits until ``proc`` is writing its ``nth`` checkpoint (its ``nth`` distinct step temp file appeared)."""
    seen: set[str] = set()

    def writing() -> bool:
        seen.update(p.name for p in temp_files(run, proc.pid) if "step-" in p.name)
        return len(seen) >= nth

    return wait_for(writing, proc)


def assert_final_files_load(run: Path) -> int:
    """Every file with a final name loads as sslkit loads it; returns the newest committed step."""
    ck = run / "checkpoints"
    steps = {p: int(load_checkpoint(p)["step"]) for p in [ck / "last.pt", *[p for _, p in step_checkpoints(ck)]]
             if p.is_file()}
    assert steps, "no committed checkpoint"
    for _, p in step_checkpoints(ck):
        assert steps[p] == int(p.stem.split("-")[1])
    if (run / "encoder.safetensors").is_file():
        assert load_file(str(run / "encoder.safetensors"))
    assert load_recipe(run / "recipe.yaml").train.checkpoint_every == 1
    assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    return max(steps.values())


def same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """An uninterrupted run of the recipe the subprocesses run, made in this process."""
    run = tmp_path_factory.mktemp("reference") / "run"
    pretrain(load_recipe(RECIPE, SETS), run, console=quiet())
    return run, load_checkpoint(run / "checkpoints" / "last.pt")


# --- process death and signals ----------------------------------------------------------------------------------


def test_sigkill_during_writes_loses_nothing(tmp_path: Path, reference: tuple[Path, dict]) -> None:
    rng = random.Random(8)
    run = tmp_path / "run"
    left: list[Path] = []
    during_write = 0
    for kill in range(4):
        proc = launch(run, tmp_path / f"{kill}.log", resume=kill > 0)
        # The 1st or 2nd checkpoint this process writes; the first process commits one before it dies (a run
        # killed before its first checkpoint is test_a_killed_first_write_does_not_block_a_fresh_start).
        nth = 2 if kill == 0 else rng.randint(1, 2)
        assert wait_for_write(proc, run, nth), (tmp_path / f"{kill}.log").read_text()[-2000:]
        time.sleep(rng.uniform(0, 0.03))  # somewhere inside the write of a ~90 MB file
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        # This process got far enough to write, so its start-up cleaned what the previous kill left.
        assert not [p for p in left if p.exists()], left
        left = temp_files(run, proc.pid)
        during_write += bool(left)
        assert_final_files_load(run)
    assert during_write >= 1  # at least one kill landed mid-write (each waits for a temp file, so nearly all do)

    # One more process, stopped by SIGTERM: exit 130 within 30 s, with a checkpoint at the step it names.
    proc = launch(run, tmp_path / "term.log", resume=True)
    assert wait_for(lambda: re.search(r"^step \d+/", (tmp_path / "term.log").read_text(), re.M) is not None, proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert time.monotonic() - t0 < 30
    out = (tmp_path / "term.log").read_text()
    step = int(re.search(r"stopped by SIGTERM after step (\d+); checkpoint saved", out).group(1))
    assert assert_final_files_load(run) == step == load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert not [p for p in left if p.exists()] and not temp_files(run)

    # Resumed to the end, the run equals the uninterrupted one exactly.
    pretrain(load_recipe(run / "recipe.yaml"), run, resume=True, console=quiet())
    same_state(load_checkpoint(run / "checkpoints" / "last.pt"), reference[1])
    exported, expected = load_file(str(run / "encoder.safetensors")), load_file(str(reference[0] /
                                                                                   "encoder.safetensors"))
    assert exported.keys() == expected.keys() and all(torch.equal(exported[k], expected[k]) for k in expected)


def test_a_killed_first_write_does_not_block_a_fresh_start(tmp_path: Path) -> None:
    """All that a SIGKILL during the first checkpoint left is a temporary file: the folder holds no run, so a new
    start is not refused (as "already holds a run"), and the file is removed."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / f"{TMP_PREFIX}step-1.pt.4242").write_bytes(b"partial")  # all a SIGKILL left
    pretrain(load_recipe(RECIPE, [*SETS, "train.max_steps=1"]), run, console=quiet())
    assert not temp_files(run)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1


# --- a reader that goes away (sslkit pretrain … | head) ----------------------------------------------------------


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_stdout_closed_by_its_reader_lets_training_finish(tmp_path: Path, reference: tuple[Path, dict]) -> None:
    """``| head -1``: rich ended the process with exit code 1 at the first line printed after the pipe closed, in
    the middle of training (no checkpoint yet). Now the console falls silent and the run ends as it would have."""
    run, err = tmp_path / "run", tmp_path / "stderr.txt"
    sets = [a for s in SETS for a in ("--set", s)]
    with open(err, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "sslkit", "pretrain", str(RECIPE), "--out", str(run), *sets],
                                stdout=subprocess.PIPE, stderr=fh, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.stdout.readline().startswith(b"sslkit pretrain quickstart: ")  # the header; then the reader is gone
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0, err.read_text()[-2000:]
    assert err.read_text() == ""  # no traceback, and no "Exception ignored … BrokenPipeError" at exit
    assert [e["step"] for e in events(run) if "loss" in e] == list(range(1, 9))
    same_state(load_checkpoint(run / "checkpoints" / "last.pt"), reference[1])
    assert (run / "encoder.json").is_file() and not temp_files(run)


def test_stderr_closed_by_its_reader_lets_training_finish(tmp_path: Path) -> None:
    """An image folder's first decoding prints on stderr: with stderr closed, rich pointed stdout (not stderr) at
    /dev/null and ended the process with exit code 1. Now stdout is left alone and the run ends."""
    root = write_noise_folder(tmp_path / "imgs", per_class=12)
    sets = ["data.dataset=imagefolder", f"data.root={root}", "data.image_size=8", "monitor.val_size=4",
            "monitor.bank_size=8", "train.batch_size=8", "train.threads=1", "train.max_steps=2", "train.log_every=1"]
    run, log = tmp_path / "run", tmp_path / "stdout.txt"
    env = dict(os.environ, PYTHONUNBUFFERED="1", SSLKIT_CACHE=str(tmp_path / "cache"))  # decoded in the child
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "sslkit", "pretrain", str(RECIPE), "--out", str(run),
                                 *(a for s in sets for a in ("--set", s))],
                                stdout=fh, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    proc.stderr.close()  # before the child prints anything
    assert proc.wait(timeout=120) == 0, log.read_text()[-2000:]
    assert f"run saved in {run}/" in log.read_text()
    assert [e["step"] for e in events(run) if "loss" in e] == [1, 2]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2 and (run / "encoder.json").is_file()


# --- bad recipes through the command line -------------------------------------------------------------------


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if any data is read or any model built."""
    import sslkit.trainer as trainer

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("computed before refusing the input")

    for name in ("prepare_data", "build_encoder", "load_latest"):
        monkeypatch.setattr(trainer, name, refuse)


BAD_RECIPES = [  # (kind, recipe text or --set override, what the one line must say)
    ("unknown key", "optim:\n  momentun: 0.9\n", r"r\.yaml:2: unknown key 'optim\.momentun' — did you mean "
                                                  r"'optim\.momentum'\?"),
    ("misspelt section", "trian:\n  epochs: 2\n", r"r\.yaml:1: unknown key 'trian' — did you mean 'train'\?"),
    ("wrong type", "model:\n  proj_bn: 3\n", r"r\.yaml:2: model\.proj_bn must be true/false, got 3"),
    ("string for int", "train:\n  epochs: '10'\n", r"r\.yaml:2: train\.epochs must be an integer, got '10' \(str\)"),
    ("negative epochs", "--set train.epochs=-5", r"--set train\.epochs=-5: train\.epochs must be ≥ 1, got -5"),
    ("temperature ≤ 0", "loss:\n  temperature: -0.1\n", r"r\.yaml:2: loss\.temperature must be > 0, got -0\.1"),
    ("batch size < 2", "--set train.batch_size=0", r"train\.batch_size must be ≥ 2, got 0"),
    ("probability > 1", "augment:\n  jitter_p: 80\n", r"r\.yaml:2: augment\.jitter_p must be ≤ 1, got 80"),
    ("missing data root", "data:\n  dataset: imagefolder\n  root: ~/no/such/images\n",
     r"r\.yaml:3: data\.root '~/no/such/images' is not a folder — fix the path"),
    ("unknown data set", "data:\n  dataset: cifar-10\n",
     r"r\.yaml:2: unknown data set 'cifar-10' \(data\.dataset\) — did you mean 'cifar10'\?"),
    ("unknown model", "model:\n  encoder: resnet-18\n",
     r"r\.yaml:2: unknown model 'resnet-18' \(model\.encoder\) — did you mean 'resnet18'\?"),
    ("float for int", "--set train.batch_size=64.5", r"train\.batch_size must be an integer, got 64\.5 \(float\)"),
    ("seed too large", "--set seed=100000000000000",  # seed * 1_000_003 overflowed torch's 64-bit seed in epoch 0
     r"--set seed=100000000000000: seed must be ≤ \d+, got 100000000000000$"),
    ("misspelt section via --set", "--set Train.epochs=2",
     r"--set Train\.epochs=2: unknown key 'Train' — did you mean 'train'\?"),
    ("empty key part via --set", "--set train..epochs=2", r"--set train\.\.epochs=2: unknown key 'train\.'"),
    ("colour strength whose hue Kornia refuses", "--set augment.jitter_strength=3",  # hue 0.2·s > 0.5 failed late
     r"--set augment\.jitter_strength=3: augment\.jitter_strength must be ≤ 2\.5, got 3"),
    ("sync_bn on the CPU", "--set train.sync_bn=true",  # was refused under torchrun only, ignored in one process
     r"train\.sync_bn: PyTorch's SyncBatchNorm runs on CUDA devices only, and this run is on cpu"),
    ("unknown model via --set", "--set model.encoder=not_a_model",
     r"--set model\.encoder=not_a_model: unknown model 'not_a_model' \(model\.encoder\) — see timm\.list_models"),
]


@pytest.mark.parametrize(("text", "pattern"), [b[1:] for b in BAD_RECIPES], ids=[b[0] for b in BAD_RECIPES])
def test_bad_recipe_exits_2_with_one_line_and_computes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                no_compute: None, text: str, pattern: str) -> None:
    if text.startswith("--set"):
        recipe, extra = RECIPE, text.split(" ", 1)
    else:
        recipe, extra = tmp_path / "r.yaml", []
        recipe.write_text(text)
    out = tmp_path / "run"
    code = main(["pretrain", str(recipe), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("sslkit pretrain: error: "), err
    assert re.search(pattern, err), err
    assert not out.exists()


def test_python_tag_in_a_recipe_is_refused_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           no_compute: None) -> None:
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: x\ntrain:\n  epochs: !!python/object/new:subprocess.Popen [[touch, '{marker}']]\n")
    code = main(["pretrain", str(recipe), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(r"evil\.yaml:3: YAML tag .*python/object/new:subprocess\.Popen.* is not allowed", err), err
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("inside", [False, True], ids=["a-file", "inside-a-file"])
def test_out_that_is_a_file_exits_2_and_keeps_the_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       no_compute: None, inside: bool) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    out = notes / "run" if inside else notes
    for resume in ([], ["--resume"]):
        code = main(["pretrain", str(RECIPE), "--out", str(out), *resume])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"--out {str(out)!r}" in err and "is a file, not a folder — choose another --out" in err, err
    assert notes.read_text() == "keep me\n"


def test_encoder_that_cannot_take_the_image_size_exits_2_before_the_run_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import sslkit.trainer as trainer

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluated before refusing the encoder")

    monkeypatch.setattr(trainer, "knn_monitor", refuse)
    out = tmp_path / "run"
    sets = [a for s in [*SETS, "model.encoder=vit_tiny_patch16_224"] for a in ("--set", s)]
    code = main(["pretrain", str(RECIPE), "--out", str(out), *sets])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"model\.encoder 'vit_tiny_patch16_224' does not take the data's 28×28 images .* set data\."
                     r"image_size and augment\.view_size to a size it takes \(it is built for 224×224\)", err), err
    assert not out.exists()  # no recipe.yaml or empty metrics.jsonl left behind


# --- checkpoints from elsewhere, and nothing already written is lost ---------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_checkpoint_with_code_is_refused_through_resume(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        reference: tuple[Path, dict]) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(reference[0] / "recipe.yaml", run / "recipe.yaml")
    torch.save({"model": Evil(), "step": 3}, run / "checkpoints" / "last.pt")
    with open(run / "checkpoints" / "step-3.pt", "wb") as f:
        pickle.dump({"step": Evil()}, f, protocol=2)  # an old-style pickle, not torch's zip format
    before = snapshot(run)
    with pytest.warns(UserWarning) as caught:
        code = main(["pretrain", str(run), "--resume"])
    warned = [str(w.message) for w in caught]
    assert len(warned) == 2 and all("refused to unpickle" in w for w in warned), warned
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "could be loaded" in err, err
    # It said "start a fresh run without --resume", which the folder refuses ("already holds a run — add --resume").
    assert "start a fresh run with another --out" in err and "without --resume" not in err, err
    assert main(["pretrain", str(run)]) == 2 and "already holds a run" in capsys.readouterr().err
    assert not marker.exists()
    assert snapshot(run) == before


def test_bad_arguments_on_an_existing_run_change_no_byte(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        reference: tuple[Path, dict]) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    before = snapshot(run)
    attempts = [
        ["pretrain", str(run), "--resume", "--set", "optim.lrr=1"],  # unknown key
        ["pretrain", str(run), "--resume", "--set", "loss.temperature=0.9"],  # a different recipe
        ["pretrain", str(run), "--resume", "--set", "train.batch_size=1"],  # out of range
        ["pretrain", str(run), "--resume", "--set", "data.root=/no/such/folder"],
        ["pretrain", str(run)],  # forgot --resume
        ["pretrain", str(RECIPE), "--out", str(run), "--set", "train.epochs=1"],  # a new run over an old one
        ["pretrain", str(run / "checkpoints"), "--resume"],  # not a run directory
        ["pretrain", str(run / "metrics.jsonl"), "--resume"],  # not a recipe
    ]
    for argv in attempts:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert snapshot(run) == before, argv


# --- a full disk or a read-only folder mid-run -------------------------------------------------------------------


def fail_writes(monkeypatch: pytest.MonkeyPatch, name: str, nth: int, code: int, run: Path) -> dict:
    """From the ``nth`` time the file ``name`` (or its temporary file) is opened for writing, the write fails as the
    system fails it: ENOSPC part-way through the write (a full disk), EACCES or EROFS at the open (a folder or
    file system made read-only; as root, chmod would not stop the test). sslkit opens the files of a run with
    ``open`` or ``Path.open``. Returns the run's files as they were when the failure struck (``"before"``)."""
    real_open, real_path_open = builtins.open, Path.open
    seen: dict = {"opens": 0}

    def failing(file: object, mode: str, opener, *args: object, **kwargs: object):
        if isinstance(file, (str, Path)) and any(c in mode for c in "wax") and (
                Path(file).name == name or Path(file).name.startswith(f"{TMP_PREFIX}{name}.")):
            seen["opens"] += 1
            if seen["opens"] >= nth:
                seen.setdefault("before", snapshot(run))
                if code != errno.ENOSPC:
                    raise OSError(code, os.strerror(code), str(file))
                return DiskFillsUp(opener(file, mode, *args, **kwargs))
        return opener(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", lambda file, mode="r", *a, **k: failing(file, mode, real_open, *a, **k))
    monkeypatch.setattr(Path, "open", lambda self, mode="r", *a, **k: failing(self, mode, real_path_open, *a, **k))
    return seen


def test_full_disk_at_a_checkpoint_exits_74_with_one_line_and_resumes_to_the_same_run(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        reference: tuple[Path, dict]) -> None:
    """It ended with exit code 1 and a 39-line traceback ending in torch's "unexpected pos 35316288 vs 35316184"
    (measured on a full tmpfs): no file named, no reason, no way on."""
    run = tmp_path / "run"
    seen = fail_writes(monkeypatch, "step-5.pt", 1, errno.ENOSPC, run)
    code = main(["pretrain", str(RECIPE), "--out", str(run), *(a for s in SETS for a in ("--set", s))])
    err = capsys.readouterr().err
    assert code == 74, err
    assert err == (f"sslkit pretrain: error: could not write {run}/checkpoints/step-5.pt: No space left on device — "
                   f"the run is safe up to step 4 ({run}/checkpoints/last.pt is complete, and no file written before "
                   f"was changed); free space on the disk of {run}, then continue with: sslkit pretrain {run} "
                   "--resume\n")
    assert not temp_files(run)  # the half-written step-5.pt is gone
    assert snapshot(run) == seen["before"]  # no byte of the run changed by the failure
    monkeypatch.undo()  # space freed
    assert main(["pretrain", str(run), "--resume"]) == 0
    same_state(load_checkpoint(run / "checkpoints" / "last.pt"), reference[1])
    assert snapshot(run)["encoder.safetensors"] == snapshot(reference[0])["encoder.safetensors"]


@pytest.mark.parametrize("reason", [errno.EACCES, errno.EROFS], ids=["permission-denied", "read-only-file-system"])
def test_read_only_run_folder_mid_run_exits_74_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch, reason: int) -> None:
    """The folder made read-only at step 3's metrics line (events: the step-0 k-NN, then a loss per step)."""
    run = tmp_path / "run"
    seen = fail_writes(monkeypatch, "metrics.jsonl", 5, reason, run)  # the empty file made at the start, then events
    code = main(["pretrain", str(RECIPE), "--out", str(run), *(a for s in SETS for a in ("--set", s))])
    err = capsys.readouterr().err
    assert code == 74, err
    assert err == (f"sslkit pretrain: error: could not write {run}/metrics.jsonl: {os.strerror(reason)} — the run is "
                   f"safe up to step 2 ({run}/checkpoints/last.pt is complete, and no file written before was "
                   f"changed); make {run} writable, then continue with: sslkit pretrain {run} --resume\n")
    assert snapshot(run) == seen["before"] and not temp_files(run)


def test_resume_into_a_read_only_folder_with_a_leftover_temp_file_exits_74(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed write's temporary file is removed when the run starts again: in a folder made read-only since,
    that removal ended the command with a PermissionError traceback (exit 1). Now the one line of every failed
    write, before any step, and the run as it was."""
    run = tmp_path / "run"
    sets = [a for s in SETS for a in ("--set", s)]
    assert main(["pretrain", str(RECIPE), "--out", str(run), *sets, "--set", "train.max_steps=2"]) == 0
    left = run / "checkpoints" / f"{TMP_PREFIX}step-3.pt.123"
    left.write_bytes(b"half a checkpoint")
    before = snapshot(run)
    real_unlink = Path.unlink

    def read_only(self: Path, missing_ok: bool = False) -> None:
        if self.name.startswith(TMP_PREFIX) and self.parent.parent == run:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    capsys.readouterr()
    assert main(["pretrain", str(run), "--resume"]) == 74
    err = capsys.readouterr().err
    assert err == (f"sslkit pretrain: error: could not write {run}/checkpoints: Permission denied — the run is safe "
                   f"up to step 2 ({run}/checkpoints/last.pt is complete, and no file written before was changed); "
                   f"make {run} writable, then continue with: sslkit pretrain {run} --resume\n"), err
    assert snapshot(run) == before and left.exists()


def test_full_disk_at_the_export_keeps_the_earlier_export_whole(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A run extended with --resume exports again. encoder.safetensors was renamed into place before encoder.json
    was written: a full disk between the two left new weights beside the old sha256, and load_encoder refused
    the run ("the weights were changed after the export")."""
    run = tmp_path / "run"
    sets = [a for s in SETS for a in ("--set", s)]
    assert main(["pretrain", str(RECIPE), "--out", str(run), *sets, "--set", "train.max_steps=2"]) == 0
    exported = {k: v for k, v in snapshot(run).items() if k.startswith("encoder.")}
    fail_writes(monkeypatch, "encoder.json", 1, errno.ENOSPC, run)
    code = main(["pretrain", str(RECIPE), "--out", str(run), *sets, "--set", "train.max_steps=3", "--resume"])
    err = capsys.readouterr().err
    assert code == 74 and err.startswith(f"sslkit pretrain: error: could not write {run}/encoder.json: No space "
                                         "left on device — the run is safe up to step 3 ("), err
    assert {k: v for k, v in snapshot(run).items() if k.startswith("encoder.")} == exported
    assert load_encoder(run) is not None and not temp_files(run)
    monkeypatch.undo()
    assert main(["pretrain", str(run), "--resume", "--set", "train.max_steps=3"]) == 0
    now = snapshot(run)["encoder.safetensors"]
    assert json.loads((run / "encoder.json").read_text())["sha256"] == now != exported["encoder.safetensors"]


def test_full_disk_before_the_first_checkpoint_says_to_start_again(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    argv = ["pretrain", str(RECIPE), "--out", str(run), *(a for s in SETS for a in ("--set", s)),
            "--set", "train.max_steps=1"]
    fail_writes(monkeypatch, "metrics.jsonl", 2, errno.ENOSPC, run)  # the step-0 k-NN line
    assert main(argv) == 74
    assert capsys.readouterr().err == (
        f"sslkit pretrain: error: could not write {run}/metrics.jsonl: No space left on device — no checkpoint was "
        f"written yet; free space on the disk of {run}, then start the run again with the same command\n")
    monkeypatch.undo()
    assert main(argv) == 0  # as the line says
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1


def test_full_disk_at_the_image_cache_keeps_its_own_advice(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The image folder's cache lies outside the run: a disk that cannot hold it is the cache's disk, and there is
    no run to resume yet. pretrain() replaced every WriteError's advice with the run's ("free space on the disk of
    RUN … start the run again"); a cache error now keeps its own."""
    root = write_noise_folder(tmp_path / "imgs", per_class=6)
    cache, run = tmp_path / "cache", tmp_path / "run"
    monkeypatch.setenv("SSLKIT_CACHE", str(cache))

    def no_room(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    argv = ["pretrain", str(RECIPE), "--out", str(run), "--set", "data.dataset=imagefolder", "--set",
            f"data.root={root}", "--set", "data.image_size=8", "--set", "train.max_steps=1"]
    assert main(argv) == 74
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{cache}/imagefolder/" in err, err
    assert "free space on the disk of the image cache" in err and str(run) not in err, err
    assert not run.exists()

# --- bad images in an image folder ---------------------------------------------------------------------------


def write_png(path: Path, width: int, height: int, depth: int, color_type: int, rows: bytes) -> None:
    """A PNG written chunk by chunk: 16-bit samples, or a header claiming any size (Pillow writes neither)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_imagefolder_bad_and_unusual_images(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    good, odd = root / "good", root / "odd"
    good.mkdir(parents=True)
    odd.mkdir()
    # Decodable but unusual: each must come out as 3×8×8 with the right colours.
    half = np.zeros((16, 16, 4), np.uint8)
    half[:, :8] = (0, 0, 255, 255)  # left half opaque blue, right half fully transparent red
    half[:, 8:] = (255, 0, 0, 0)
    Image.fromarray(half, "RGBA").save(good / "a_rgba.png")
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (8, 0, 16, 16))  # right half: palette entry 1, declared transparent
    pal.save(good / "b_palette.png", transparency=1)
    write_png(good / "c_gray16.png", 8, 8, 16, 0, b"".join(b"\0" + np.full(8, 40000, ">u2").tobytes()
                                                             for _ in range(8)))
    rgb16 = np.zeros((8, 3), ">u2")
    rgb16[:] = (65535, 0, 32896)
    write_png(good / "d_rgb16.png", 8, 8, 16, 2, b"".join(b"\0" + rgb16.tobytes() for _ in range(8)))
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(good / "e_cmyk.jpg", quality=95)
    tall = np.zeros((16, 32), np.uint8)
    tall[:8] = 255  # stored 32 wide, top half white; EXIF 6 turns it upright: right half white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(tall).save(good / "f_exif.jpg", exif=exif, quality=95)
    Image.new("RGB", (4000, 3000), (0, 200, 0)).save(good / "g_large.jpg", quality=90)  # 12 Mpixel photo size
    Image.new("L", (12, 12), 90).save(good / "h_gray.jpg", quality=95)
    # Unusable: each skipped, named in the warning.
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(buf, "JPEG")
    (odd / "a_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (odd / "b_text.jpg").write_text("this is not a picture\n")
    write_png(odd / "c_bomb.png", 50_000, 50_000, 8, 0, b"\0" * 64)  # 2.5 Gpixel header: Pillow's default limit
    Image.new("RGB", (10, 10), (7, 8, 9)).save(odd / "d_fine.png")

    with pytest.warns(UserWarning) as caught:
        src = imagefolder_pool(str(root), image_size=8)
    msg = " ".join(str(w.message) for w in caught)
    assert re.search(r"skipped 3 unreadable image\(s\) of 12", msg), msg
    for name in ("a_truncated.jpg", "b_text.jpg", "c_bomb.png"):
        assert name in msg, msg
    assert src.images.shape == (9, 3, 8, 8) and src.labels.tolist() == [0] * 8 + [1]
    x = src.images.int()
    rgba, palette, gray16, rgb16_, cmyk, rotated, large, gray, fine = x
    blue = torch.tensor([0, 0, 255]).view(3, 1, 1)
    assert (rgba[:, :, :3] == blue).all() and (rgba[:, :, 5:] == 255).all()  # transparent pixels on white
    assert (palette[:, :, :3] == 0).all() and (palette[:, :, 5:] == 255).all()
    assert (gray16 - 156).abs().max() <= 1  # 40000 / 65535 of white, not clipped to 255
    assert rgb16_[:, 0, 0].tolist() == [255, 0, 128]
    assert (cmyk[0] > 240).all() and (cmyk[1:] < 15).all()  # CMYK red read as RGB red
    assert (rotated[:, :, 5:] > 230).all() and (rotated[:, :, :3] < 25).all()
    assert ((large - torch.tensor([0, 200, 0]).view(3, 1, 1)).abs() <= 3).all()
    assert ((gray - 90).abs() <= 2).all() and fine[:, 0, 0].tolist() == [7, 8, 9]


def test_imagefolder_with_only_bad_images_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "b" / "y.png").write_text("<html>not found</html>")
    with pytest.warns(UserWarning, match=r"skipped 2 .*x\.jpg.*y\.png"), \
            pytest.raises(UserError, match=r"class folder\(s\) a, b in .* hold no readable image") as info:
        imagefolder_pool(str(tmp_path))
    assert "\n" not in str(info.value)
