"""The benchmarks' own fairness: what eval/bench_pretrain.py's baseline (c) counts inside its timed window, and that
eval/step_phases.py clocks the trainer's own step."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from bench_pretrain import Baseline, bench_augment, bench_model  # noqa: E402  (eval/ is not a package)
from step_phases import B_PHASES, Clock, phased_step  # noqa: E402

from sslkit.config import OptimConfig  # noqa: E402
from sslkit.models import ProjectionHead, SimCLR  # noqa: E402
from sslkit.optim import build_optimizer  # noqa: E402
from sslkit.step import make_views, simclr_backward, step_if_finite  # noqa: E402

STEP_SECONDS = 0.15


class Stamped(Dataset):
    """Tiny two-view samples; each worker appends the time it made a sample to its own file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        worker = torch.utils.data.get_worker_info()
        with open(self.folder / f"made-{worker.id if worker else 'main'}.txt", "a") as f:
            f.write(f"{time.time()}\n")
        x = torch.rand(3, 8, 8)
        return x, x.flip(-1)


class SlowEncoder(nn.Module):
    """A step that takes STEP_SECONDS (half per view forward), so workers are never the bottleneck."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(STEP_SECONDS / 2)
        return self.linear(x.flatten(1))


def made_times(folder: Path) -> list[float]:
    return sorted(float(t) for f in folder.glob("made-*.txt") for t in f.read_text().split())


def test_baseline_workers_make_the_timed_batches_inside_the_timed_window(tmp_path: Path) -> None:
    batch, steps, workers = 4, 3, 2
    model = SimCLR(SlowEncoder(), ProjectionHead(16, 16, 8))
    base = Baseline(model, False, Stamped(tmp_path), batch, steps, workers, torch.device("cpu"),
                    torch.contiguous_format, None)
    try:
        base.start()  # warm-up: the queue fills
        t0 = time.time()
        for _ in range(steps):
            base.step()
        t1 = time.time()
        base.finish()
        t2 = time.time()
        time.sleep(2 * STEP_SECONDS)
        made = made_times(tmp_path)
        # From the window's start the workers make as many samples as it trains on (in steady state, as in
        # training): the batches dispatched when each timed step takes one from the queue, each made while that
        # step runs (the last may end just after the window on a loaded machine). Before 2026-12-02 they made
        # none there: every batch the window used had been made during the warm-up.
        assert len([t for t in made if t >= t0]) == steps * batch, (made, t0)
        assert len([t for t in made if t0 <= t <= t1]) >= (steps - 1) * batch, (made, t0, t1)
        # Everything the loader dispatched is made by the time finish() returns; no worker runs on into (a)/(b).
        assert len(made) == (base.warm + steps + base.warm) * batch
        assert max(made) <= t2
    finally:
        base.close()


def test_pool_repeats_pools_the_logged_ratios_and_refuses_a_file_without_them(tmp_path: Path, capsys,
                                                                              monkeypatch) -> None:
    import statistics

    import pytest
    from pool_repeats import main, ratios

    one, two = tmp_path / "one.log", tmp_path / "two.log"
    one.write_text("warm-up on cpu\nrepeat 1/2: (a) 0.400 s  (b) 0.500 s\nrepeat 2/2: (a) 0.300 s  (b) 0.300 s\n")
    two.write_text("repeat 1/1: (a) 0.450 s  (b) 0.500 s\n(b)/(a) table lines are not repeats\n")
    assert ratios(one) == [0.8, 1.0]
    monkeypatch.setattr(sys, "argv", ["pool_repeats.py", f"new={one}", f"new={two}"])
    main()
    want = f"new: 3 repeats, per-repeat (b)/(a) median {statistics.median([0.8, 1.0, 0.9]):.3f}"
    assert want in capsys.readouterr().out
    bad = tmp_path / "bad.log"
    bad.write_text("no repeats here\n")
    monkeypatch.setattr(sys, "argv", ["pool_repeats.py", f"x={bad}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and str(bad) in capsys.readouterr().err


def test_the_phased_step_makes_the_trainers_update() -> None:
    """step_phases.py writes the step out to clock its phases: two steps of it (the second through the fused LARS
    update) leave the same weights, bit for bit, as sslkit.step's functions, the way the trainer calls them."""
    fmt = torch.channels_last
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    weights, clock = [], Clock(torch.device("cpu"))
    for phased in (False, True):
        model = bench_model("imagenet", 3).to(memory_format=fmt)  # seeded: the same initial weights
        optimizer = build_optimizer(model, OptimConfig(name="lars", lr=0.3), 6)
        augment = bench_augment(16, 3, (0.5,) * 3, (0.25,) * 3)
        torch.manual_seed(1)  # the views' random stream
        for _ in range(2):
            if phased:
                clock.start()
                phased_step(model, augment, optimizer, scaler, x, fmt, None, clock)
            else:
                views = make_views(augment, x, fmt)
                optimizer.zero_grad(set_to_none=True)
                assert step_if_finite(simclr_backward(model, views, 0.2, None, scaler), model, optimizer, scaler)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
    assert tuple(clock.laps) == B_PHASES and all(len(v) == 2 for v in clock.laps.values())


def test_eval_scripts_refuse_bad_input_in_one_line_before_any_work(tmp_path: Path, capsys, monkeypatch) -> None:
    """A count below its least value, a CUDA --device without CUDA or one torch does not know, a folder that is
    not a run, a run without probe.json: one line naming the bad argument, exit code 2, and nothing computed (the
    second of two runs is checked before the first is read)."""
    import bench_pretrain
    import bn_calibration
    import probe_table
    import pytest
    from machine import run_main

    def exits_2(main, script: str, *argv: str) -> str:
        monkeypatch.setattr(sys, "argv", [script, *argv])
        with pytest.raises(SystemExit) as exit_info:
            run_main(main, script)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and "Traceback" not in err
        return err.splitlines()[-1]

    assert "argument --repeats: must be at least 1, got 0" in exits_2(bench_pretrain.main, "bench_pretrain.py",
                                                                      "--repeats", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda:1: torch sees no CUDA device" in exits_2(
        bench_pretrain.main, "bench_pretrain.py", "--device", "cuda:1", "--quick")
    assert "--device must be cpu, cuda or cuda:N, got 'gpu'" in exits_2(
        bench_pretrain.main, "bench_pretrain.py", "--device", "gpu", "--quick")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text((Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml").read_text())
    not_a_run = tmp_path / "elsewhere"
    not_a_run.mkdir()

    def no_compute(*args, **kwargs):
        raise AssertionError("a checkpoint was read before every run was checked")

    monkeypatch.setattr(bn_calibration, "load_checkpoint", no_compute)
    err = exits_2(bn_calibration.main, "bn_calibration.py", str(run), str(not_a_run))
    assert err.startswith("bn_calibration.py: error: ") and "train.bn_calibration 0 — give --images N" in err
    err = exits_2(bn_calibration.main, "bn_calibration.py", str(run), str(not_a_run), "--images", "64")
    assert "has no exported encoder" in err
    (run / "encoder.json").write_text("{}")
    (run / "encoder.safetensors").write_bytes(b"")
    err = exits_2(bn_calibration.main, "bn_calibration.py", str(run), str(not_a_run), "--images", "64")
    assert f"{run}/checkpoints/last.pt not found" in err
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    err = exits_2(bn_calibration.main, "bn_calibration.py", str(run), str(not_a_run), "--images", "64")
    assert f"{not_a_run / 'recipe.yaml'} not found" in err
    err = exits_2(probe_table.main, "probe_table.py", str(run))
    assert f"{run / 'probe.json'} not found — run `sslkit probe {run}` first" in err


def test_a_rerun_keeps_the_results_file_it_replaces(tmp_path: Path, capsys) -> None:
    """eval/machine.py's write_results puts the new table on top and keeps what the file held below it: the old
    table under a dated heading (its title dropped), then the results that file had kept in turn, newest first."""
    from machine import EARLIER, write_results

    out = tmp_path / "bench.md"
    write_results("# Bench\n\n| a | 1 |\n", out, "unused.md", quick=True)
    assert out.read_text() == "# Bench\n\n| a | 1 |\n"
    out.write_text(out.read_text() + "\nA hand-written note on the first table.\n")
    write_results("# Bench\n\n| a | 2 |\n", out, "unused.md", quick=False)
    write_results("# Bench\n\n| a | 3 |\n", out, "unused.md", quick=False)
    text = out.read_text()
    assert text.startswith("# Bench\n\n| a | 3 |\n\n" + EARLIER) and text.count("# Bench") == 1
    assert text.count(EARLIER) == 1 and text.count("## Replaced on ") == 2
    assert text.index("| a | 2 |") < text.index("| a | 1 |") < text.index("A hand-written note on the first table.")
    assert "the results before kept below the new table" in capsys.readouterr().out
