"""Two gloo processes on the CPU give the single-process loss and gradients; torchrun pretraining works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslkit.checkpoint import load_checkpoint, load_encoder
from sslkit.losses import nt_xent
from sslkit.models import ProjectionHead, SimCLR, build_encoder
from sslkit.step import simclr_backward

ROOT = Path(__file__).resolve().parent.parent
B, WORLD = 6, 2


def _model() -> SimCLR:
    torch.manual_seed(0)
    # eval-mode batch norm (frozen statistics): per-sample forward, so 2 ranks and 1 process are comparable
    return SimCLR(build_encoder("resnet18", "imagenet", 1), ProjectionHead(512, 64, 16)).eval()


def _views() -> torch.Tensor:
    return torch.randn(2 * B, 1, 28, 28, generator=torch.Generator().manual_seed(5))


def _rank_main(rank: int, init_file: str, out: str, chunk_size: int | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    v = _views()
    b = B // WORLD
    mine = slice(rank * b, (rank + 1) * b)  # this rank's images: its slice of both view blocks
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = simclr_backward(model, torch.cat([v[:B][mine], v[B:][mine]]), 0.2, None, scaler, chunk_size)
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        torch.save({"loss": total / WORLD, "grads": {n: p.grad for n, p in model.module.named_parameters()}}, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("chunk_size", [None, 4])  # 4: the gradient cache, two chunks of 3 views per rank
def test_two_ranks_equal_one_process(tmp_path: Path, chunk_size: int | None) -> None:
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_rank_main, args=(str(tmp_path / "pg"), out, chunk_size), nprocs=WORLD, join=True)
    got = torch.load(out, weights_only=True)
    model = _model()
    v = _views()
    z1, z2 = model(v[:B], v[B:])
    loss = nt_xent(z1, z2, 0.2, gather=False)
    loss.backward()
    assert got["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
    n = 0
    for name, p in model.named_parameters():
        torch.testing.assert_close(got["grads"][name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
        n += 1
    assert n > 50


def _torchrun(out: Path, *extra: str, program: tuple[str, ...] = ("-m", "sslkit"),
              timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *program, "pretrain", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out),
           "--set", "data.pool_size=64", "--set", "monitor.val_size=40", "--set", "monitor.bank_size=80",
           "--set", "train.batch_size=16", "--set", "train.epochs=2", "--set", "train.log_every=1",
           "--set", "train.threads=1", *extra]
    # torchrun leaves a torchelastic_* folder in the temporary directory at every launch: keep them in pytest's.
    scratch = out.parent / "tmp"
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(scratch))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_torchrun_pretrain_and_resume(tmp_path: Path) -> None:
    full = _torchrun(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    events = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in events if "loss" in e]
    assert steps == list(range(1, 9))  # written once, by rank 0 only: 64 images / 16 per step × 2 epochs
    assert load_encoder(tmp_path / "full").sslkit_meta["dataset"] == "fashion-mnist-mini"
    part = _torchrun(tmp_path / "part", "--set", "train.max_steps=3")
    assert part.returncode == 0, part.stderr[-2000:]
    resumed = _torchrun(tmp_path / "part", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 8 and len(b["rng_ranks"]) == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=0, rtol=0, msg=k)


def test_torchrun_calibrated_export_and_sync_bn_refused_on_cpu(tmp_path: Path) -> None:
    # Rank 0 alone measures the calibration statistics and evaluates; the other rank waits at the barrier.
    run = _torchrun(tmp_path / "cal", "--set", "train.bn_calibration=64", "--set", "train.max_steps=5",
                    "--set", "monitor.every=1")
    assert run.returncode == 0, run.stderr[-2000:]
    events = [json.loads(x) for x in (tmp_path / "cal" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if "knn/top1" in e] == [0, 4, 5]  # step 0, epoch 1, the end
    assert load_encoder(tmp_path / "cal").sslkit_meta["bn_calibration"] == 64
    refused = _torchrun(tmp_path / "sync", "--set", "train.sync_bn=true")
    assert refused.returncode != 0 and "exitcode  : 2" in refused.stderr  # each rank: a UserError, exit 2
    assert "error: train.sync_bn: PyTorch's SyncBatchNorm runs on CUDA devices only" in refused.stderr
    assert not (tmp_path / "sync" / "checkpoints").exists()


# The end of the launcher scripts below: runs `sslkit` and leaves the status the process ended with (or the exception
# it ended in) in RANK.status beside the run. (Doubled braces: the scripts go through str.format.)
_RUN_AND_RECORD_STATUS = """
status = "none"
try:
    status = main(sys.argv[1:])
except SystemExit as e:
    status = e.code
    raise
except BaseException as e:
    status = type(e).__name__
    raise
finally:
    (run.parent / f"{{rank}}.status").write_text(str(status))
sys.exit(status)
"""


def _launch(tmp_path: Path, script: str, *extra: str, **fields: object
            ) -> tuple[subprocess.CompletedProcess, list[str], list[str]]:
    """Runs the launcher ``script`` (one ending in _RUN_AND_RECORD_STATUS, formatted with ``run`` and ``fields``) under
    torchrun on the run ``tmp_path/run``; returns what torchrun gave, each rank's status and sslkit's stderr lines."""
    run = tmp_path / "run"
    launcher = tmp_path / "launcher.py"
    launcher.write_text(script.format(run=str(run), **fields))
    done = _torchrun(run, *extra, program=(str(launcher),), timeout=120)
    statuses = [(tmp_path / f"{rank}.status").read_text() if (tmp_path / f"{rank}.status").is_file() else "none"
                for rank in (0, 1)]
    return done, statuses, [x for x in done.stderr.splitlines() if x.startswith("sslkit pretrain:")]


# `sslkit` with rank 0's disk full: test_reliability's fault, from the nth write of one file of the run on.
_FULL_DISK_ON_RANK_0 = """
import errno, os, sys
from pathlib import Path

sys.path.insert(0, {tests!r})
run, rank = Path({run!r}), os.environ["RANK"]
if rank == "0":
    import pytest
    from test_reliability import fail_writes

    fail_writes(pytest.MonkeyPatch(), {name!r}, {nth}, errno.ENOSPC, run)
from sslkit.cli import main

""" + _RUN_AND_RECORD_STATUS


@pytest.mark.parametrize(("name", "nth"), [("step-2.pt", 1), ("metrics.jsonl", 5)],
                         ids=["checkpoint", "metrics-line"])  # metrics.jsonl: made, the step-0 k-NN, steps 1, 2, 3
def test_a_write_failed_on_rank_0_ends_every_rank_with_its_status_and_one_line(tmp_path: Path, name: str,
                                                                            nth: int) -> None:
    """Rank 0 alone writes. When a write failed, rank 0 exited 74 with its line and the other rank went on to the
    next collective: on gloo it died there in a traceback ("Connection closed by peer"), and torchrun reported it
    as the first failure or killed it (SIGTERM); on NCCL it waited for the process group's timeout (minutes)."""
    run = tmp_path / "run"
    t0 = time.monotonic()
    failed, statuses, lines = _launch(tmp_path, _FULL_DISK_ON_RANK_0, "--set", "train.checkpoint_every=1",
                                      tests=str(ROOT / "tests"), name=name, nth=nth)
    assert time.monotonic() - t0 < 100 and failed.returncode != 0, failed.stderr[-2000:]
    assert statuses == ["74", "74"], failed.stderr[-3000:]
    assert lines == [f"sslkit pretrain: error: could not write {run}/{'checkpoints/' * (nth == 1)}{name}: No space "
                     f"left on device — the run is safe up to step {1 if nth == 1 else 2} ({run}/checkpoints/"
                     f"last.pt is complete, and no file written before was changed); free space on the disk of "
                     f"{run}, then continue with: torchrun --standalone --nproc_per_node 2 -m sslkit pretrain {run} "
                     "--resume"], failed.stderr[-3000:]
    assert "[rank" not in failed.stderr and "Connection closed" not in failed.stderr, failed.stderr[-3000:]


def test_torchrun_asking_for_cuda_without_it_is_refused_not_run_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from sslkit.distributed import init_distributed
    from sslkit.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"train\.device is 'cuda' but no CUDA device is available"):
        init_distributed("cuda")
    assert not dist.is_initialized()


def test_across_machines_each_rank_says_its_own_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Machines may differ in what the checks read (a data.root one of them lacks): a rank on the second machine
    that refuses says so itself, as it is, and does not wait in a meeting that ranks whose checks passed never
    come to."""
    from sslkit.distributed import checked_alike
    from sslkit.errors import UserError

    for name, value in {"WORLD_SIZE": 16, "RANK": 9, "LOCAL_RANK": 1, "LOCAL_WORLD_SIZE": 8}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined a meeting"))
    with pytest.raises(UserError, match="data.root"), checked_alike():
        raise UserError("data.root '/data' is not a folder")


@pytest.mark.parametrize(("world", "local_world", "command"), [
    (2, 2, "torchrun --standalone --nproc_per_node 2 -m sslkit pretrain 'my run' --resume"),
    (16, 8, "torchrun -m sslkit pretrain 'my run' --resume on each machine, with the torchrun options as before")])
def test_under_torchrun_the_command_that_continues_a_run_is_a_torchrun_one(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path, world: int,
                                                                          local_world: int, command: str) -> None:
    """After Ctrl-C or a failed write under torchrun, the line said `sslkit pretrain RUN --resume`: followed, it
    continued the run in one process, on one device, with the whole global batch in its memory."""
    import signal

    from sslkit.checkpoint import save_checkpoint
    from sslkit.trainer import Interrupted, _after_failed_write

    monkeypatch.chdir(tmp_path)
    for name, value in {"WORLD_SIZE": world, "RANK": 0, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": local_world}.items():
        monkeypatch.setenv(name, str(value))
    assert str(Interrupted(signal.SIGINT, 3, Path("my run"))) == ("stopped by SIGINT after step 3; checkpoint saved "
                                                                  f"— continue with: {command}")
    save_checkpoint({"step": 3}, Path("my run") / "checkpoints", 3)
    assert _after_failed_write(Path("my run"), None).endswith(f"fix that, then continue with: {command}")


# `sslkit` whose torchrun gets Ctrl-C at step 2 (rank 1 sends it, then waits until torchrun has passed it on).
_CTRL_C_TO_TORCHRUN = """
import os, signal, sys, time
from pathlib import Path

import sslkit.trainer as trainer
from sslkit.cli import main

run, rank = Path({run!r}), os.environ["RANK"]
if rank == "1":
    real, calls = trainer.step_if_finite, []

    def ctrl_c_at_step_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getppid(), signal.SIGINT)  # torchrun, which sends SIGINT on to every process
            deadline = time.monotonic() + 60
            while signal.getsignal(signal.SIGINT).__self__.signum is None and time.monotonic() < deadline:
                time.sleep(0.01)
        return real(*args, **kwargs)

    trainer.step_if_finite = ctrl_c_at_step_2
""" + _RUN_AND_RECORD_STATUS


def test_ctrl_c_to_torchrun_saves_a_checkpoint_and_says_one_line_then_the_run_continues(tmp_path: Path) -> None:
    """Every process stopped after the same step and said it: the line, and the command, twice (once per rank). The
    signal is answered at once, by rank 0 alone."""
    run = tmp_path / "run"
    stopped, statuses, lines = _launch(tmp_path, _CTRL_C_TO_TORCHRUN)
    assert statuses == ["130", "130"], stopped.stderr[-3000:]
    assert lines == ["sslkit pretrain: SIGINT received — stopping after this step, once its checkpoint is written "
                     "(Ctrl-C again stops at once, keeping the last checkpoint written)",
                     "sslkit pretrain: stopped by SIGINT after step 2; checkpoint saved — continue with: torchrun "
                     f"--standalone --nproc_per_node 2 -m sslkit pretrain {run} --resume"], stopped.stderr[-3000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    # train.batch_size is the global batch: the header says so ("batch 16 × 2 views" read as each process's)
    assert "cpu × 2 processes, fp32, batch 16 (8 per process) × 2 views, 8 steps" in stopped.stdout, stopped.stdout
    resumed = _torchrun(run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8


# `sslkit` whose every rank finds step 2's gradients non-finite (as all do when one does: they are all-reduced).
_NONFINITE_AT_STEP_2 = """
import os, sys
from pathlib import Path

import sslkit.trainer as trainer
from sslkit.cli import main

run, rank = Path({run!r}), os.environ["RANK"]
real, calls = trainer.step_if_finite, []


def nonfinite_at_step_2(*args, **kwargs):
    calls.append(1)
    return False if len(calls) == 2 else real(*args, **kwargs)


trainer.step_if_finite = nonfinite_at_step_2
""" + _RUN_AND_RECORD_STATUS


def test_a_nonfinite_stop_under_torchrun_is_one_line_and_status_3_on_every_rank(tmp_path: Path) -> None:
    """Every rank stopped at the same step, and each said so: the same 'stopped: non-finite loss' line once per
    process."""
    stopped, statuses, lines = _launch(tmp_path, _NONFINITE_AT_STEP_2)
    assert statuses == ["3", "3"], stopped.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("sslkit pretrain: stopped: non-finite loss ("), lines
    assert "or gradients at step 2 (epoch 1); no update was applied" in lines[0], lines


# `sslkit` as torchrun starts it, nothing changed.
_PLAIN = """
import os, sys
from pathlib import Path

from sslkit.cli import main

run, rank = Path({run!r}), os.environ["RANK"]
""" + _RUN_AND_RECORD_STATUS


def test_a_bad_recipe_under_torchrun_is_one_line_and_status_2_on_every_rank(tmp_path: Path) -> None:
    """Each process checks the recipe before the process group exists, and each said what was wrong: the same line
    once per process."""
    refused, statuses, lines = _launch(tmp_path, _PLAIN, "--set", "train.epochs=0")
    assert statuses == ["2", "2"], refused.stderr[-3000:]
    assert lines == ["sslkit pretrain: error: --set train.epochs=0: train.epochs must be ≥ 1, got 0"], \
        refused.stderr[-3000:]
    assert not (tmp_path / "run").exists()


# `sslkit` whose torchrun gets Ctrl-C while rank 0 measures the k-NN at step 0 (the other rank waits for it there).
_CTRL_C_TO_TORCHRUN_IN_THE_STEP_0_KNN = """
import os, signal, sys, time
from pathlib import Path

import sslkit.trainer as trainer
from sslkit.cli import main

run, rank = Path({run!r}), os.environ["RANK"]
if rank == "0":
    real = trainer.knn_monitor

    def ctrl_c_in_the_knn(*args, **kwargs):
        os.kill(os.getppid(), signal.SIGINT)  # torchrun, which sends SIGINT on to every process
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # measuring, until the signal ends it
            time.sleep(0.01)
        return real(*args, **kwargs)

    trainer.knn_monitor = ctrl_c_in_the_knn
""" + _RUN_AND_RECORD_STATUS


def test_ctrl_c_to_torchrun_before_the_first_step_is_one_line_and_status_130_on_every_rank(tmp_path: Path) -> None:
    """Outside the training loop (loading the data, the k-NN at step 0) a signal ends each process where it is,
    and each said so: 'interrupted' once per process."""
    stopped, statuses, lines = _launch(tmp_path, _CTRL_C_TO_TORCHRUN_IN_THE_STEP_0_KNN)
    assert statuses == ["130", "130"], stopped.stderr[-3000:]
    assert lines == ["sslkit pretrain: interrupted before the first checkpoint was written — start the run again "
                     "with the same command"], stopped.stderr[-3000:]
    assert not list((tmp_path / "run").rglob("*.pt"))
