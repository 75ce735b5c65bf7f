"""The pretraining loop end to end on tiny data: run directory, exact resume, refusals, non-finite loss."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import write_noise_folder
from rich.console import Console

from sslkit.checkpoint import load_checkpoint, load_encoder
from sslkit.cli import main
from sslkit.config import SEED_MAX, SEED_STRIDE, Recipe, load_recipe
from sslkit.errors import UserError
from sslkit.models import build_encoder
from sslkit.trainer import (
    NonFiniteLoss,
    check_input_size,
    epoch_order,
    prepare_data,
    pretrain,
    seed_everything,
    split_train,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.pool_size=64", "monitor.val_size=40", "monitor.bank_size=80", "monitor.every=1", "train.batch_size=16",
        "train.epochs=2", "train.log_every=1", "optim.warmup_epochs=0.5", "train.threads=1", "train.keep_last=1"]


STOPPING = ("sslkit pretrain: SIGINT received — stopping after this step, once its checkpoint is written (Ctrl-C "
            "again stops at once, keeping the last checkpoint written)")  # said at once, before the step ends


def quiet() -> Console:
    return Console(quiet=True)


def tiny_recipe(*extra: str):
    return load_recipe(ROOT / "recipes" / "quickstart.yaml", [*TINY, *extra])


def losses(run: Path) -> list[tuple[int, float]]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in events if "loss" in e]


def assert_same_training(full: Path, part: Path, steps: int) -> None:
    """The two runs' last checkpoints hold the same step, weights and optimizer state, bit for bit, and their logs
    the same losses."""
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(part / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == steps
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert losses(full) == losses(part)


def test_run_directory_contract(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = pretrain(tiny_recipe(), out, console=quiet())
    for name in ("recipe.yaml", "metrics.jsonl", "checkpoints/last.pt", "encoder.safetensors", "encoder.json"):
        assert (out / name).is_file(), name
    assert summary["steps"] == 8 and 0 <= summary["knn_start"] <= 1 and 0 <= summary["knn_end"] <= 1
    assert [s for s, _ in losses(out)] == list(range(1, 9))
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # epochs done, a float in every event (the k-NN at step 0 and at the end of an epoch wrote an int)
    assert all(type(e["epoch"]) is float for e in events), events
    assert [(e["step"], e["epoch"]) for e in events if "knn/top1" in e] == [(0, 0.0), (4, 1.0), (8, 2.0)]
    assert load_recipe(out / "recipe.yaml") == tiny_recipe()
    enc = load_encoder(out)
    assert enc.pretrained_cfg["input_size"] == (1, 28, 28)
    assert enc.sslkit_meta["bn_calibration"] == 0  # the default: the trained encoder as it is
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, state["model"][f"encoder.{k}"], rtol=0, atol=0)


def test_bn_calibration_changes_only_the_evaluated_copy(tmp_path: Path) -> None:
    steps = ["train.max_steps=5"]  # crosses the epoch-1 monitor (step 4), whose calibrated copy must not touch RNG
    pretrain(tiny_recipe(*steps, "train.bn_calibration=100"), tmp_path / "calibrated", console=quiet())
    pretrain(tiny_recipe(*steps), tmp_path / "plain", console=quiet())
    calibrated = load_checkpoint(tmp_path / "calibrated" / "checkpoints" / "last.pt")["model"]
    plain = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    for k, v in plain.items():  # training is bitwise the same, training statistics included
        torch.testing.assert_close(calibrated[k], v, rtol=0, atol=0)

    enc = load_encoder(tmp_path / "calibrated")
    assert enc.sslkit_meta["bn_calibration"] == 64  # 100 asked, capped at the 64-image pool
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for k, v in enc.state_dict().items():  # the trained weights, exported unchanged
        if not k.endswith(stats):
            torch.testing.assert_close(v, plain[f"encoder.{k}"], rtol=0, atol=0)
    # Batch-norm statistics: those of the clean pool images (one batch of 64), not the training views' averages.
    pool = prepare_data(tiny_recipe(), torch.device("cpu")).pool
    m, s = enc.pretrained_cfg["mean"], enc.pretrained_cfg["std"]
    with torch.no_grad():
        a = enc.conv1((pool.images.float() / 255 - m[0]) / s[0])  # what the first batch norm sees
    torch.testing.assert_close(enc.bn1.running_mean, a.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(enc.bn1.running_var, a.var(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(enc.bn1.running_mean, plain["encoder.bn1.running_mean"])


@pytest.mark.parametrize("stop", [3, 4, 6], ids=["mid-epoch", "epoch-boundary", "after-checkpoint"])
def test_resume_is_bitwise_exact(tmp_path: Path, stop: int) -> None:
    extra = ["train.checkpoint_every=3"] if stop == 6 else []
    full = tmp_path / "full"
    pretrain(tiny_recipe(*extra), full, console=quiet())
    part = tmp_path / "part"
    pretrain(tiny_recipe(*extra, f"train.max_steps={stop}"), part, console=quiet())
    with open(part / "metrics.jsonl", "a") as f:  # what a SIGKILL can leave: a torn event and a temp file
        f.write('{"step": 99, "lo')
    (part / ".tmp-encoder.safetensors.4242").write_bytes(b"partial")
    pretrain(tiny_recipe(*extra), part, resume=True, console=quiet())
    assert not (part / ".tmp-encoder.safetensors.4242").exists()
    assert_same_training(full, part, 8)


def test_a_kill_between_the_step_file_and_last_pt_resumes_from_the_step_file(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """save_checkpoint renames step-N.pt into place, then points last.pt at it. A process killed between the two
    left last.pt at the checkpoint before, and --resume took it: the steps between were trained twice."""
    import sslkit.checkpoint as checkpoint

    extra = "train.checkpoint_every=3"  # checkpoints at steps 3, 4 (the epoch's end), 6 and 8
    full, part = tmp_path / "full", tmp_path / "part"
    pretrain(tiny_recipe(extra), full, console=quiet())

    class Killed(BaseException):
        pass

    real = checkpoint.atomic_write

    def killed_at_step_6(path: Path, write) -> None:
        if path.name == "last.pt" and (path.parent / "step-6.pt").is_file():
            raise Killed
        real(path, write)

    monkeypatch.setattr(checkpoint, "atomic_write", killed_at_step_6)
    with pytest.raises(Killed):
        pretrain(tiny_recipe(extra), part, console=quiet())
    monkeypatch.undo()
    ck = part / "checkpoints"
    assert load_checkpoint(ck / "last.pt")["step"] == 4 and load_checkpoint(ck / "step-6.pt")["step"] == 6
    console = Console(record=True, width=300)
    assert pretrain(tiny_recipe(extra), part, resume=True, console=console)["steps"] == 8
    text = console.export_text()
    assert f"resuming from {ck / 'step-6.pt'} (step 6)" in text and "resumed at step 6" in text, text
    assert_same_training(full, part, 8)
    assert (full / "encoder.safetensors").read_bytes() == (part / "encoder.safetensors").read_bytes()


def test_existing_run_is_not_overwritten_and_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    pretrain(tiny_recipe("train.max_steps=1"), out, console=quiet())
    before = (out / "encoder.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a run — add --resume"):
        pretrain(tiny_recipe(), out, console=quiet())
    assert (out / "encoder.safetensors").read_bytes() == before
    with pytest.raises(UserError, match="holds no checkpoint"):
        pretrain(tiny_recipe(), tmp_path / "empty", resume=True, console=quiet())
    with pytest.raises(UserError, match=r"differs from the run's in loss\.temperature"):
        pretrain(tiny_recipe("loss.temperature=0.9"), out, resume=True, console=quiet())
    for ckpt in (out / "checkpoints").glob("*.pt"):  # a run from before data.split: no such key in its recipe
        state = load_checkpoint(ckpt)
        state["recipe"]["data"].pop("split", None)  # (step-N.pt and last.pt may be one file)
        torch.save(state, ckpt)
    assert "split" not in load_checkpoint(out / "checkpoints" / "last.pt")["recipe"]["data"]
    assert pretrain(tiny_recipe("train.max_steps=2"), out, resume=True, console=quiet())["steps"] == 2


def test_a_recipe_of_the_users_in_the_out_folder_is_not_replaced(tmp_path: Path, capsys) -> None:
    """`sslkit pretrain recipe.yaml --out . --set optim.lr=5` in a project folder replaced the user's recipe.yaml
    (comments and all) with the run's resolved one, lr 5 included. A folder an interrupted run left (recipe.yaml and
    metrics.jsonl, no checkpoint yet) is still started again."""
    project = tmp_path / "project"
    project.mkdir()
    mine = "# my recipe\n" + (ROOT / "recipes" / "quickstart.yaml").read_text()
    (project / "recipe.yaml").write_text(mine)
    argv = ["pretrain", str(project / "recipe.yaml"), "--out", str(project), *(f"--set={s}" for s in TINY),
            "--set", "optim.lr=5"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"{str(project / 'recipe.yaml')!r} is not a run's" in err and len(err.splitlines()) == 1, err
    assert (project / "recipe.yaml").read_text() == mine
    assert sorted(p.name for p in project.iterdir()) == ["recipe.yaml"]
    (project / "metrics.jsonl").write_text("")  # what a Ctrl-C before the first step leaves
    pretrain(tiny_recipe("train.max_steps=1"), project, console=quiet())
    assert (project / "encoder.json").is_file()


def test_step_0_measures_a_random_network_with_its_residual_branches_on(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import sslkit.trainer as trainer

    seen = []
    real = trainer.knn_monitor

    def watch(encoder, *args, **kwargs):
        seen.append([float(b.bn2.weight.abs().sum()) for b in encoder.modules() if hasattr(b, "zero_init_last")])
        return real(encoder, *args, **kwargs)

    monkeypatch.setattr(trainer, "knn_monitor", watch)
    pretrain(tiny_recipe("train.max_steps=1"), tmp_path / "run", console=quiet())
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert seen[0] == [64.0, 64.0, 128.0, 128.0, 256.0, 256.0, 512.0, 512.0]  # every last scale 1 at step 0
    assert float(state["model"]["encoder.layer1.0.bn2.weight"].abs().max()) < 0.05  # training started from 0


def test_step_0_of_an_encoder_without_zero_init_last(tmp_path: Path) -> None:
    summary = pretrain(tiny_recipe("model.encoder=mobilenetv3_small_050", "train.max_steps=1"), tmp_path / "r",
                       console=quiet())
    assert 0 <= summary["knn_start"] <= 1


def test_nonfinite_loss_stops_before_the_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sslkit.step as step

    calls = {"n": 0}
    real = step.nt_xent

    def flaky(z1, z2, t):
        calls["n"] += 1
        return real(z1, z2, t) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(step, "nt_xent", flaky)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match="at step 3.*raise loss.temperature$"):  # fp32 already: no advice for it
        pretrain(tiny_recipe("train.checkpoint_every=2"), out, console=quiet())
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2
    calls["n"] = 0
    summary = pretrain(tiny_recipe("train.nonfinite=skip"), tmp_path / "skip", console=quiet())
    assert summary["steps"] == 8 and 3 not in [s for s, _ in losses(tmp_path / "skip")]
    # A skipped last step of an epoch (step 4 of 4) still ends the epoch: its checkpoint and k-NN are written.
    calls["n"] = -1
    skip4 = tmp_path / "skip4"
    pretrain(tiny_recipe("train.nonfinite=skip", "train.keep_last=3"), skip4, console=quiet())
    events = [json.loads(line) for line in (skip4 / "metrics.jsonl").read_text().splitlines()]
    assert 4 not in [s for s, _ in losses(skip4)]
    assert [e["step"] for e in events if "knn/top1" in e] == [0, 4, 8]
    assert sorted(p.name for p in (skip4 / "checkpoints").glob("step-*.pt")) == ["step-4.pt", "step-8.pt"]


@pytest.mark.parametrize("name", ["", "..", "../elsewhere", "/tmp/x", "a/./b"])
def test_a_name_that_would_leave_runs_is_refused_for_the_default_out(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", str(ROOT / "recipes" / "quickstart.yaml"), "--set", f"name={name}"]) == 2
    assert f"name {name!r} would put the run outside a folder of its own in runs/" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_max_skips_counts_over_a_resumed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sslkit.step as step

    calls = {"n": 0}
    real = step.nt_xent

    def flaky(z1, z2, t):  # steps 2 and 6 are non-finite
        calls["n"] += 1
        return real(z1, z2, t) * (float("nan") if calls["n"] in (2, 6) else 1.0)

    monkeypatch.setattr(step, "nt_xent", flaky)
    skip = ("train.nonfinite=skip", "train.max_skips=1")
    with pytest.raises(NonFiniteLoss, match="at step 6"):
        pretrain(tiny_recipe(*skip), tmp_path / "whole", console=quiet())
    calls["n"] = 0
    pretrain(tiny_recipe(*skip, "train.max_steps=4"), tmp_path / "parts", console=quiet())
    assert load_checkpoint(tmp_path / "parts" / "checkpoints" / "last.pt")["skipped"] == 1
    with pytest.raises(NonFiniteLoss, match="at step 6"):  # the skip before the stop still counts
        pretrain(tiny_recipe(*skip), tmp_path / "parts", resume=True, console=quiet())


def test_train_compile_without_a_compiler_warns_once_and_trains_eagerly(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sslkit.compiled import compiles

    def no_compiler(fn, **options):
        def call(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")
        return call

    monkeypatch.setattr(torch, "compile", no_compiler)
    compiles.cache_clear()
    try:
        with pytest.warns(UserWarning, match=r"train\.compile: torch\.compile cannot build on this cpu "
                                             r"\(RuntimeError: InvalidCxxCompiler: No working C\+\+ compiler found\); "
                                             "training uncompiled$"):
            summary = pretrain(tiny_recipe("train.compile=true", "train.max_steps=2"), tmp_path / "r", console=quiet())
    finally:
        compiles.cache_clear()
    assert summary["steps"] == 2


def test_resuming_another_number_of_processes_says_the_stream_does_not_carry_over(tmp_path: Path) -> None:
    from sslkit.checkpoint import save_checkpoint

    out = tmp_path / "run"
    pretrain(tiny_recipe("train.max_steps=2"), out, console=quiet())
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    console = Console(record=True, width=300)
    pretrain(tiny_recipe("train.max_steps=3"), out, resume=True, console=console)
    assert "process(es)" not in console.export_text()  # one process, then one: nothing to say
    (out / "checkpoints" / "step-3.pt").unlink()  # --resume would take it: newer than the step-2 one below
    save_checkpoint(dict(state, rng_ranks=[state["rng"], state["rng"]]), out / "checkpoints", 2)  # as from 2
    pretrain(tiny_recipe("train.max_steps=3"), out, resume=True, console=console)
    assert ("the checkpoint was written by 2 process(es), not 1: the augmentation's random stream does not carry "
            "over") in console.export_text()


def test_a_signal_during_the_final_evaluation_loses_no_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last step (5, mid-epoch) is checkpointed before the final k-NN; Ctrl-C there keeps it, and a resume
    only evaluates and exports."""
    import sslkit.trainer as trainer

    calls = {"n": 0}
    real = trainer.knn_monitor

    def interrupted_at_the_end(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # step 0, end of epoch 1, then the final evaluation
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "knn_monitor", interrupted_at_the_end)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_recipe("train.max_steps=5"), out, console=quiet())
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 5
    assert not (out / "encoder.safetensors").exists()
    console = Console(record=True, width=200)
    summary = pretrain(tiny_recipe("train.max_steps=5"), out, resume=True, console=console)
    assert summary["steps"] == 5 and (out / "encoder.safetensors").is_file()
    text = console.export_text()
    assert "all 5 steps were done before" in text and "loss nan" not in text  # no empty progress bar

    def final_events() -> int:
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return sum(1 for e in events if e["step"] == 5 and "knn/top1" in e)

    assert final_events() == 1, "the evaluation the interruption cut short is logged by the resumed run"
    pretrain(tiny_recipe("train.max_steps=5"), out, resume=True, console=quiet())  # a finished run, resumed
    assert final_events() == 1, "and not again"


def test_a_batch_larger_than_the_pool_is_said(tmp_path: Path) -> None:
    console = Console(record=True, width=300)
    pretrain(tiny_recipe("train.batch_size=100", "train.max_steps=1", "monitor.every=0"), tmp_path / "run",
             console=console)
    assert "train.batch_size 100 is more than the 64-image pool holds: batches of 64" in console.export_text()


def test_cli_bad_override_exits_2_and_computes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main(["pretrain", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out), "--set", "optim.lrr=1"])
    err = capsys.readouterr().err
    assert code == 2 and "optim.lrr" in err and "did you mean 'optim.lr'" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def _no_compute(monkeypatch: pytest.MonkeyPatch, memory_gib: float) -> None:
    """This machine has ``memory_gib`` GiB, and building a model or running the k-NN monitor fails the test."""
    from sslkit import trainer

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("computed before refusing")

    monkeypatch.setattr(trainer, "physical_memory_bytes", lambda: int(memory_gib * 2**30))
    monkeypatch.setattr(trainer, "build_encoder", refuse)
    monkeypatch.setattr(trainer, "knn_monitor", refuse)


def test_cli_views_too_large_for_memory_exit_2_before_any_compute(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's command: 4096-px views of 28-px images ran the step-0 k-NN for minutes, then the OS killed
    the run in its first step with no message. Now one line before any model is built, naming the keys to lower."""
    _no_compute(monkeypatch, 24)
    out = tmp_path / "run"
    code = main(["pretrain", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out), "--set",
                 "augment.view_size=4096"])
    err = capsys.readouterr().err
    # 512 views × 4096² pixels × (4 bytes of view + 510 of ResNet18 activations) + 3 × 512² × 4 bytes of loss
    assert err == ("sslkit pretrain: error: augment.view_size 4096 and train.batch_size 256: one training step needs "
                   "about 4,112.0 GiB (512 views of 1×4096×4096 pixels and resnet18 activations for them), more than "
                   "the 24.0 GiB of memory this machine has — lower augment.view_size or train.batch_size, or spread "
                   "the batch over more devices (torchrun)\n")
    assert code == 2 and not out.exists()


def test_a_batch_too_large_for_memory_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_compute(monkeypatch, 4)
    r = load_recipe(ROOT / "recipes" / "quickstart.yaml", ["train.batch_size=9000"])  # the whole 9,000-image pool
    with pytest.raises(UserError, match=r"^augment\.view_size unset \(views of the data's 28×28\) and "
                                        r"train\.batch_size 9,000: one training step needs about 10\.4 GiB \(18,000 "
                                        r"views of 1×28×28 pixels and resnet18 activations for them\), more than the "
                                        r"4\.0 GiB of memory this machine has — lower augment\.view_size or "
                                        r"train\.batch_size, set train\.chunk_size \(views back-propagated "
                                        r"at once\), or spread the batch over more devices \(torchrun\)$"):
        pretrain(r, tmp_path / "run", console=quiet())
    assert not (tmp_path / "run").exists()


def test_step_memory_check_margin_and_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused only beyond STEP_MEMORY_MARGIN × the memory; under torchrun each process counts its own share of
    the batch and of the machine's memory."""
    from sslkit import trainer
    from sslkit.distributed import DistInfo
    from sslkit.step import step_memory_bytes

    r = load_recipe(ROOT / "recipes" / "quickstart.yaml", ["augment.view_size=512"])
    need = step_memory_bytes(256, 1, 512, "imagenet")
    edge = math.ceil(need / trainer.STEP_MEMORY_MARGIN)
    trainer.check_step_memory(r, 256, 1, 1, 28, "fp32", edge, "here")  # passes
    with pytest.raises(UserError, match=r"about 64\.3 GiB \(512 views of 1×512×512 pixels .* than the 50\.4 GiB here"):
        trainer.check_step_memory(r, 256, 1, 1, 28, "fp32", edge - 2**30, "here")
    monkeypatch.setattr(trainer, "physical_memory_bytes", lambda: 24 * 2**30)
    room, where = trainer.device_memory(torch.device("cpu"), DistInfo(rank=1, world=4, local_rank=1, local_world=2))
    assert room == 12 * 2**30 and where == "of memory each of the 2 processes on this machine has (24.0 GiB in all)"
    with pytest.raises(UserError, match=r"about 32\.1 GiB \(256 views per process of 1×512×512 pixels .* more than the "
                                        r"12\.0 GiB of memory each of the 2 processes on this machine has \(24\.0 GiB "
                                        r"in all\)"):
        trainer.check_step_memory(r, 128, 4, 1, 28, "fp32", room, where)
    # A GPU: what is free on it, and what this process's allocator holds but does not use.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (30 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * 2**30)
    assert trainer.device_memory(torch.device("cuda", 1), DistInfo()) == (32 * 2**30, "free on cuda:1")


def test_precision_auto_and_bf16_warning_on_cpus_without_native_bf16(monkeypatch) -> None:
    from sslkit import trainer
    console = Console(record=True, width=200)
    assert trainer.resolve_precision("auto", torch.device("cpu"), console) == "fp32"
    assert trainer.resolve_precision("auto", torch.device("cuda", 0), console) == "bf16"
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    assert trainer.resolve_precision("bf16", torch.device("cpu"), console) == "bf16"
    assert console.export_text() == ""
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert trainer.resolve_precision("bf16", torch.device("cpu"), console) == "bf16"
    text = console.export_text()
    assert "no native bf16" in text and "train.precision: fp32" in text


def test_view_size_trains_on_smaller_views_but_exports_the_data_size(tmp_path: Path, monkeypatch) -> None:
    import sslkit.trainer as trainer

    seen: list[tuple[int, ...]] = []

    class Recording(trainer.SimCLRAugment):
        def forward(self, x):  # type: ignore[override]
            out = super().forward(x)
            seen.append(tuple(out.shape[1:]))
            return out

    monkeypatch.setattr(trainer, "SimCLRAugment", Recording)
    out = tmp_path / "run"
    pretrain(tiny_recipe("augment.view_size=16", "train.max_steps=2"), out, console=quiet())
    assert seen and set(seen) == {(1, 16, 16)}
    assert load_encoder(out).pretrained_cfg["input_size"] == (1, 28, 28)  # evaluated at the data's size


def test_compiled_lars_and_jitter_run_resumes_bitwise(tmp_path: Path) -> None:
    """optim.compile and augment.compile end to end: the checkpoint holds timm's optimizer state, a resumed run
    recompiles, and the compiled kernels draw no random numbers of their own."""
    full, part = tmp_path / "full", tmp_path / "part"
    compiled = ("optim.compile=true", "augment.compile=true")
    pretrain(tiny_recipe(*compiled, "train.max_steps=4"), full, console=quiet())
    pretrain(tiny_recipe(*compiled, "train.max_steps=2"), part, console=quiet())
    pretrain(tiny_recipe(*compiled, "train.max_steps=4"), part, resume=True, console=quiet())
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(part / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.parametrize("seed", [SEED_MAX, -SEED_MAX], ids=["max", "min"])
def test_every_seed_derived_from_the_extreme_recipe_seeds_fits(seed: int) -> None:
    r = tiny_recipe(f"seed={seed}")
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything(r.seed)
        torch.manual_seed(r.seed * SEED_STRIDE + 2**32 - 1)  # the per-rank seed under torchrun
        assert sorted(epoch_order(5, r.seed, 2**32 - 1).tolist()) == list(range(5))
    random.setstate(states[0])
    np.random.set_state(states[1])
    labels = torch.arange(200) % 10
    labels[::7] = -1  # unlabeled images: the pool subset is then drawn with its own generator
    val, pool, bank = split_train(r, labels)
    assert len(val) == 40 and len(pool) == 64 and len(bank) == 80


def test_encoder_input_size_check_names_the_size_and_changes_nothing() -> None:
    r = Recipe().replace(**{"model.encoder": "vit_tiny_patch16_224"})
    vit = build_encoder(r.model.encoder, in_chans=1)
    with pytest.raises(UserError, match=r"^model\.encoder 'vit_tiny_patch16_224' does not take the data's 28×28 "
                                        r"images \(.*224.*\) — choose an encoder .* \(it is built for 224×224\)$"):
        check_input_size(vit, r, (1, 28, 28))
    with pytest.raises(UserError, match=r"does not take 16×16 training views \(augment\.view_size\)"):
        check_input_size(vit, r.replace(**{"augment.view_size": 16}), (1, 224, 224))
    resnet = build_encoder("resnet18", in_chans=1)
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    rng = torch.get_rng_state()
    check_input_size(resnet, Recipe().replace(**{"augment.view_size": 16}), (1, 28, 28))  # takes both sizes
    assert resnet.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in resnet.state_dict().items())


def test_resume_refuses_an_image_folder_changed_since_the_run_started(tmp_path: Path) -> None:
    """The rest of the run would train on another pool, and encoder.json would record the new pool's digest, so
    probe and finetune could no longer tell that the test split may hold images of the first part's pool."""
    root = write_noise_folder(tmp_path / "imgs", per_class=12)
    sets = ["data.dataset=imagefolder", f"data.root={root}", "data.image_size=8", "monitor.val_size=4",
            "monitor.bank_size=8", "train.batch_size=8", "train.threads=1"]
    out = tmp_path / "run"
    pretrain(load_recipe(ROOT / "recipes" / "quickstart.yaml", [*sets, "train.max_steps=1"]), out, console=quiet())
    before = load_checkpoint(out / "checkpoints" / "last.pt")["encoder_meta"]["imagefolder_pool_sha256"]
    (root / "a" / "05.png").rename(root / "a" / "05b.png")
    with pytest.raises(UserError, match="are not those this run pretrained on"):
        pretrain(load_recipe(ROOT / "recipes" / "quickstart.yaml", [*sets, "train.max_steps=2"]), out, resume=True,
                 console=quiet())
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 1
    assert json.loads((out / "encoder.json").read_text())["imagefolder_pool_sha256"] == before
    (root / "a" / "05b.png").rename(root / "a" / "05.png")  # restored: the run goes on
    summary = pretrain(load_recipe(ROOT / "recipes" / "quickstart.yaml", [*sets, "train.max_steps=2"]), out,
                       resume=True, console=quiet())
    assert summary["steps"] == 2


def test_resume_with_max_steps_below_the_checkpoint_is_refused(tmp_path: Path) -> None:
    """It said 'all 2 steps were done before', exported the step-4 encoder and wrote train.max_steps: 2 into the
    run's recipe.yaml: a run recorded as shorter than the one its files hold."""
    out = tmp_path / "run"
    pretrain(tiny_recipe("train.max_steps=4"), out, console=quiet())
    recipe, encoder = (out / "recipe.yaml").read_bytes(), (out / "encoder.safetensors").read_bytes()
    with pytest.raises(UserError, match=r"checkpoint is at step 4, past the 2 steps .* give no train.max_steps, or "
                                        r"one of at least 4"):
        pretrain(tiny_recipe("train.max_steps=2"), out, resume=True, console=quiet())
    assert (out / "recipe.yaml").read_bytes() == recipe and (out / "encoder.safetensors").read_bytes() == encoder
    assert pretrain(tiny_recipe("train.max_steps=4"), out, resume=True, console=quiet())["steps"] == 4


def test_the_live_bar_shows_dashes_not_nan_before_the_first_logged_step(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Until train.log_every steps are done the bar has no loss to show: dashes, not ``loss nan`` (a diverged run's
    sign), and the epoch being trained (1), not 0."""
    import io

    import sslkit.trainer as trainer

    drawn: list[str] = []
    real = trainer.progress_bar

    def drawing(*args, **kwargs):  # the loop's own bar, drawn after each of its updates
        bar = real(*args, **kwargs)
        update = bar.update

        def update_and_draw(*a, **k):
            update(*a, **k)
            out = Console(file=io.StringIO(), width=200, record=True)
            out.print(bar.get_renderable())
            drawn.append(out.export_text())

        bar.update = update_and_draw
        return bar

    monkeypatch.setattr(trainer, "progress_bar", drawing)
    pretrain(tiny_recipe("train.log_every=3", "train.max_steps=3"), tmp_path / "run", console=quiet())
    assert len(drawn) == 3
    for text in drawn[:2]:  # steps 1 and 2: nothing logged yet
        assert "nan" not in text and "loss –  lr –  – img/s" in text and "epoch 1 " in text, text
    assert re.search(r"loss \d+\.\d{4}  lr ", drawn[2]), drawn[2]  # step 3 logs the loss


def test_a_finished_run_without_its_checkpoints_is_not_sent_back_and_forth(tmp_path: Path) -> None:
    """A run whose checkpoints/ was deleted to save space keeps its encoder: --resume said 'drop --resume to start a
    new run there', and without it 'already holds a run — add --resume'. Both now say it cannot be continued."""
    out = tmp_path / "run"
    pretrain(tiny_recipe("train.max_steps=1"), out, console=quiet())
    for ckpt in (out / "checkpoints").iterdir():
        ckpt.unlink()
    for resume in (True, False):
        with pytest.raises(UserError) as refused:
            pretrain(tiny_recipe("train.max_steps=2"), out, resume=resume, console=quiet())
        message = str(refused.value)
        assert "no checkpoint" in message and "another --out" in message, message
        assert "drop --resume" not in message and "add --resume" not in message, message
    assert (out / "encoder.safetensors").is_file()


def test_the_summary_says_how_long_it_trained_and_what_to_run_next(tmp_path: Path) -> None:
    """The last lines name the run, the steps this command trained and their time, and the commands that evaluate
    the encoder, with the run's path quoted to paste."""
    out = tmp_path / "my run"
    console = Console(record=True, width=400)
    pretrain(tiny_recipe("train.max_steps=2"), out, console=console)
    text = console.export_text()
    assert re.search(r"run saved in .*: 2 steps trained in \d+ s\n", text), text
    assert f"next: sslkit probe '{out}'" in text and f"then sslkit report '{out}'" in text, text
    console = Console(record=True, width=400)
    pretrain(tiny_recipe("train.max_steps=2"), out, resume=True, console=console)  # nothing left to train
    text = console.export_text()
    assert "steps trained" not in text and "next: sslkit probe" in text, text


@pytest.mark.parametrize(("seconds", "said"), [(0.4, "0 s"), (59.4, "59 s"), (65, "1 min 05 s"),
                                               (3599.6, "1 h 00 min"), (3785, "1 h 03 min")])
def test_durations_read_as_a_person_reads_them(seconds: float, said: str) -> None:
    from sslkit.trainer import duration

    assert duration(seconds) == said


def test_an_interrupted_run_names_the_command_that_continues_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C ends with one line giving `sslkit pretrain RUN --resume` in full (it said "continue with --resume":
    added to a recipe's command line it works only with the same --out and --set), and that command continues."""
    import os
    import signal

    import sslkit.trainer as trainer

    real = trainer.step_if_finite
    calls = {"n": 0}

    def ctrl_c_at_step_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "step_if_finite", ctrl_c_at_step_2)
    run = tmp_path / "my run"
    argv = ["pretrain", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(run),
            *(f"--set={s}" for s in [*TINY, "train.max_steps=3"])]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"{STOPPING}\nsslkit pretrain: stopped by SIGINT after step 2; checkpoint saved — continue with: "
                   f"sslkit pretrain '{run}' --resume"), err
    monkeypatch.setattr(trainer, "step_if_finite", real)
    assert main(["pretrain", str(run), "--resume"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C said nothing until the step (or the epoch's k-NN) ended, and a second one was taken as the first: the
    run went on to its checkpoint. Now the first is answered at once, and the second, half-way through writing step
    2's checkpoint, stops there: step 1's is kept whole, no temporary file is left, and the run continues."""
    import os
    import signal

    import sslkit.trainer as trainer
    from sslkit.checkpoint import TMP_PREFIX

    real_step, calls = trainer.step_if_finite, {"n": 0}

    def ctrl_c_at_step_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args, **kwargs)

    real_write = Path.write_bytes

    def ctrl_c_half_way(self: Path, data) -> int:
        if self.name.startswith(f"{TMP_PREFIX}step-2.pt"):
            real_write(self, bytes(data[:len(data) // 2]))
            os.kill(os.getpid(), signal.SIGINT)
        return real_write(self, data)

    monkeypatch.setattr(trainer, "step_if_finite", ctrl_c_at_step_2)
    monkeypatch.setattr(Path, "write_bytes", ctrl_c_half_way)
    run = tmp_path / "run"
    argv = ["pretrain", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(run),
            *(f"--set={s}" for s in [*TINY, "train.max_steps=3", "train.checkpoint_every=1"])]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"{STOPPING}\nsslkit pretrain: interrupted; the run is safe up to step 1 ({run}/checkpoints/"
                   f"last.pt) — continue with: sslkit pretrain {run} --resume"), err
    assert sorted(p.name for p in run.rglob("*") if p.is_file()) == ["last.pt", "metrics.jsonl", "recipe.yaml",
                                                                     "step-1.pt"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1
    monkeypatch.undo()
    assert main(["pretrain", str(run), "--resume"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3


def test_resuming_a_run_that_max_steps_ended_says_how_to_train_further(tmp_path: Path) -> None:
    """`sslkit pretrain RUN --resume` on a run cut short by train.max_steps only exported again, saying nothing of
    the override that trains on; a run at the end of its schedule has nothing to add."""
    out = tmp_path / "run"
    pretrain(tiny_recipe("train.max_steps=1"), out, console=quiet())
    console = Console(record=True, width=400)
    pretrain(tiny_recipe("train.max_steps=1"), out, resume=True, console=console)
    assert ("the 1 step was done before: the final evaluation and the export only (train.max_steps=1 of the "
            "recipe's 8: add --set train.max_steps=N, or null for all, to train further)") in console.export_text()
    assert pretrain(tiny_recipe("train.max_steps=null"), out, resume=True, console=quiet())["steps"] == 8
    console = Console(record=True, width=400)
    pretrain(tiny_recipe(), out, resume=True, console=console)
    text = console.export_text()
    assert "all 8 steps were done before: the final evaluation and the export only\n" in text, text


def test_a_logs_eta_reads_in_minutes_and_hours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain progress lines of a log (no terminal) gave the time left in seconds: 'eta 2,640 s' for the
    Fashion-MNIST recipe's 44 minutes. Each step here seems to take 100 s (a clock that moves 100 s a reading)."""
    import sslkit.trainer as trainer

    class SlowClock:
        now = 0.0

        def perf_counter(self) -> float:
            self.now += 100.0
            return self.now

    monkeypatch.setattr(trainer, "time", SlowClock())
    console = Console(record=True, width=300)  # not a terminal: plain lines
    pretrain(tiny_recipe("train.max_steps=4"), tmp_path / "run", console=console)
    etas = re.findall(r"  eta (.*)\n", console.export_text())
    assert len(etas) == 4 and etas[-1] == "0 s", etas
    assert all(re.fullmatch(r"\d+ min \d\d s", e) for e in etas[:-1]), etas
