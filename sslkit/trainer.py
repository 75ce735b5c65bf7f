"""SimCLR pretraining: one explicit loop, read top to bottom.

index batch → two Kornia views on the device → encoder + head in one forward → NT-Xent → backward → step.
Everything a resume needs (model, optimizer, scaler, RNG state, step) is in the checkpoint; the data order of
an epoch is a pure function of (seed, epoch), so an interrupted run resumed on the CPU ends bitwise equal to
an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import random
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from sslkit.augment import SimCLRAugment, preprocess
from sslkit.checkpoint import (
    TMP_PREFIX,
    atomic_write,
    clean_temp_files,
    export_encoder,
    load_latest,
    resume_point,
    save_checkpoint,
    unwrap,
    writing,
)
from sslkit.compiled import compiles
from sslkit.config import SEED_STRIDE, Recipe, load_recipe, load_run_recipe, recipe_from_dict, save_recipe
from sslkit.console import PipeSafeConsole
from sslkit.data import (
    IMAGEFOLDER_TEST_FRACTION,
    ImageSource,
    channel_stats,
    files_digest,
    load_source,
    split_labels,
    stratified_split,
)
from sslkit.devices import TRAIN_KINDS, checked_device
from sslkit.distributed import (
    DistInfo,
    any_across,
    barrier,
    checked_alike,
    gather_objects,
    init_distributed,
    launched,
    main_work,
    mean_across,
    shutdown,
    signals_said_by_rank_0,
    stop_together,
)
from sslkit.errors import UserError, WriteError
from sslkit.host_memory import keep_freed_memory, physical_memory_bytes
from sslkit.models import (
    ProjectionHead,
    SimCLR,
    build_encoder,
    feature_dim,
    full_scale_residuals,
    input_size_problem,
    recalibrate_on_images,
)
from sslkit.optim import build_optimizer, build_scheduler
from sslkit.outputs import check_out_folder, is_run
from sslkit.step import MEASURED_ENCODER, make_views, simclr_backward, step_if_finite, step_memory_bytes

EXIT_INTERRUPTED = 130  # stopped by SIGINT or SIGTERM (with a checkpoint, in the loop: `--resume` continues the run)


def resume_command(run: Path) -> str:
    """The command that continues the run in ``run``, in full: the one the user typed may have been a recipe with
    --set overrides, which RUN/recipe.yaml already holds.

    Under ``torchrun`` it is a ``torchrun`` command with as many processes: ``sslkit pretrain RUN --resume`` alone
    continues the run in one process, on one of the devices, with the whole batch in that device's memory.
    """
    command = f"sslkit pretrain {shlex.quote(str(run))} --resume"
    info = launched()
    if not info.active:
        return command
    if info.world == info.local_world:  # one machine
        return f"torchrun --standalone --nproc_per_node {info.world} -m {command}"
    return f"torchrun -m {command} on each machine, with the torchrun options as before"


class Interrupted(Exception):
    """Raised after a checkpoint was saved in answer to SIGINT/SIGTERM."""

    exit_code = EXIT_INTERRUPTED  # the status of the other ranks, which stop with rank 0 (stop_together)

    def __init__(self, signum: int, step: int, run: Path | None = None) -> None:
        command = f": {resume_command(run)}" if run is not None else " --resume"
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved — "
                         f"continue with{command}")
        self.signum, self.step = signum, step


def _say_stopping(signum: int) -> None:
    """What a first SIGINT/SIGTERM in the loop gets at once (:class:`_SignalCatcher`), on stderr with the line that
    ends the run (:class:`Interrupted`); under a live progress bar rich puts it above the bar."""
    print(f"sslkit pretrain: {signal.Signals(signum).name} received — stopping after this step, once its checkpoint is "
          "written (Ctrl-C again stops at once, keeping the last checkpoint written)", file=sys.stderr, flush=True)


class NonFiniteLoss(Exception):
    """Raised when the loss is NaN/Inf and the recipe says stop (or the skip cap is reached)."""

    exit_code = 3  # the CLI's status for it, and the other ranks' (stop_together)


@dataclass
class Data:
    """The pretraining pool and the held-out monitor images, already on the training device."""

    pool: ImageSource
    monitor_bank: ImageSource | None
    monitor_val: ImageSource | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    calibration: torch.Tensor | None = None  # clean pool images for the batch-norm statistics (train.bn_calibration)
    labeled: int = 0  # labeled images in the pretraining split (the monitor needs monitor.val_size + 1)


def select_device(name: str) -> torch.device:
    """``train.device`` as a device this machine has (auto: CUDA where there is one); a ``UserError`` otherwise."""
    return checked_device(name, "train.device", kinds=TRAIN_KINDS)


def device_memory(device: torch.device, info: DistInfo) -> tuple[int | None, str]:
    """The memory one training process has on ``device`` in bytes (None where unknown), and how to say it.

    A GPU: what is free on it now (the data is already there), with what this process's allocator holds unused.
    Otherwise the machine's physical memory, shared by the processes that ``torchrun`` started on it.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        held = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + held, f"free on {device}"
    total = physical_memory_bytes()
    if total is None or info.local_world <= 1:
        return total, "of memory this machine has"
    return total // info.local_world, (f"of memory each of the {info.local_world} processes on this machine has "
                                       f"({total / 2**30:,.1f} GiB in all)")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively here (AVX-512 BF16 or AMX); elsewhere it emulates them, slowly."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, console: Console) -> str:
    """``auto`` → bf16 on CUDA, fp32 on CPU; warns when bf16 is asked of a CPU that would only emulate it."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        console.print("[yellow]train.precision is bf16 but this CPU has no native bf16 (AVX-512 BF16 or AMX): "
                      "the step will be slower than fp32 — set train.precision: fp32")
    return precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def split_train(r: Recipe, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Indices into the pretraining split (``data.split``): (monitor validation, pretraining pool, monitor k-NN bank).

    A pure function of the recipe and the labels, so other commands (fine-tuning on images outside the
    pool, say) can recompute exactly which images a run pretrained on. Validation and bank are None when there
    are too few labeled images to monitor.
    """
    everything = torch.arange(len(labels))
    labeled = int((labels >= 0).sum())
    val_idx = bank_idx = None
    pool_idx = everything
    if r.monitor.val_size + 1 <= labeled:
        val_idx, pool_idx = stratified_split(labels, r.monitor.val_size, r.seed)
        pool_labels = labels[pool_idx]
        bank_size = min(r.monitor.bank_size, int((pool_labels >= 0).sum()))
        bank_idx = pool_idx[stratified_split(pool_labels, bank_size, r.seed + 1)[0]]
    size = r.data.pool_size
    if size is not None:
        if isinstance(size, int) and size > len(pool_idx):
            raise UserError(f"data.pool_size is {size} but only {len(pool_idx)} images of the {r.data.split} split "
                            f"are left after holding out monitor.val_size={r.monitor.val_size} — lower one of them")
        pool_labels = labels[pool_idx]
        if bool((pool_labels >= 0).all()):
            pool_idx = pool_idx[stratified_split(pool_labels, size, r.seed + 2)[0]]
        else:
            n = size if isinstance(size, int) else max(2, round(size * len(pool_idx)))
            pool_idx = pool_idx[torch.randperm(len(pool_idx), generator=torch.Generator().manual_seed(r.seed + 2))[:n]]
    return val_idx, pool_idx, bank_idx


def train_images_in_pool(r: Recipe, train_labels: torch.Tensor, root: str | None) -> tuple[torch.Tensor, int | None]:
    """Which images of the train split the run of recipe ``r`` pretrained on, and how many its pool held in all.

    For fine-tuning on labeled images outside the pool. A pretraining split without the train images (STL-10's
    unlabeled) took none of them; its pool size is then None (known only by loading it). STL-10's
    train+unlabeled is the train images followed by the unlabeled ones, whose count comes from the file's size;
    SVHN's train+extra the train images followed by extra's, whose labels come from its file (split_labels).

    Args:
        r: the run's recipe. train_labels: the labels of the data set's train split. root: where its files are.

    Returns:
        ``(indices into the train split, pool size)``.
    """
    parts = r.data.split.split("+")
    if "train" not in parts:
        return torch.empty(0, dtype=torch.long), None
    labels = torch.cat([train_labels, *(split_labels(r.data.dataset, part, root).to(train_labels.dtype)
                                        for part in parts if part != "train")])
    _, pool_idx, _ = split_train(r, labels)
    return pool_idx[pool_idx < len(train_labels)], len(pool_idx)


def pool_files_changed(meta: dict[str, Any], train: ImageSource, pool_idx: torch.Tensor) -> bool:
    """Whether the files at ``pool_idx`` of ``train`` (an image folder's train split now, and the run's pool
    recomputed in it by :func:`train_images_in_pool`) are not those whose digest the run recorded. Files added,
    removed or renamed since move files between the folder's splits, so its test split may then hold images the
    run pretrained on, and ``labeled.disjoint_from_pool`` cannot tell which. False for other data and for runs
    without a digest."""
    recorded = meta.get("imagefolder_pool_sha256")
    if meta.get("dataset") != "imagefolder" or recorded is None or train.ids is None:
        return False
    return files_digest(train.ids[i] for i in pool_idx.tolist()) != recorded


def imagefolder_changed(run: Path, meta: dict[str, Any], train: ImageSource) -> bool:
    """:func:`pool_files_changed` for the run in ``run``, its pool recomputed from its own recipe."""
    if "imagefolder_pool_sha256" not in meta or not (run / "recipe.yaml").is_file():
        return False
    return pool_files_changed(meta, train, train_images_in_pool(load_run_recipe(run), train.labels, None)[0])


def prepare_data(r: Recipe, device: torch.device) -> Data:
    """Loads the pretraining split, holds out a stratified validation part, and picks the k-NN bank."""
    d = r.data
    source = load_source(d.dataset, d.split, root=d.root, download=d.download, image_size=d.image_size,
                         channels=d.channels)
    val_idx, pool_idx, bank_idx = split_train(r, source.labels)
    pool = source.subset(pool_idx)
    val = source.subset(val_idx) if val_idx is not None else None
    bank = source.subset(bank_idx) if bank_idx is not None else None
    if len(pool) < 2:
        raise UserError(f"data set {d.dataset!r} leaves {len(pool)} image(s) for pretraining — need at least 2")
    mean, std = (d.mean, d.std) if d.mean is not None else channel_stats(pool.images)
    if len(mean) != pool.channels:
        raise UserError(f"data.mean has {len(mean)} values but the images have {pool.channels} channel(s)")

    def to_dev(s: ImageSource | None) -> ImageSource | None:
        return None if s is None else ImageSource(s.images.to(device), s.labels.to(device), s.classes, s.name, s.ids)

    n = min(r.train.bn_calibration, len(pool))
    calibration = None
    if n:
        chosen = torch.randperm(len(pool), generator=torch.Generator().manual_seed(r.seed + 3))[:n]
        calibration = pool.images[chosen.sort().values].to(device)
    return Data(to_dev(pool), to_dev(bank), to_dev(val), tuple(mean), tuple(std), calibration,
                int((source.labels >= 0).sum()))


@torch.no_grad()
def embed(encoder: torch.nn.Module, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
          batch: int = 512, amp: torch.autocast | None = None) -> torch.Tensor:
    """Eval-mode features of uint8 images, (N, D) float32, batch by batch.

    Shape:
        (N, C, H, W) uint8 -> (N, D)
    """
    was_training = encoder.training
    encoder.eval()
    out = []
    for i in range(0, images.shape[0], batch):
        with amp or contextlib.nullcontext():
            out.append(encoder(preprocess(images[i:i + batch], mean, std)).float())
    encoder.train(was_training)
    return torch.cat(out)


def calibrated_encoder(encoder: torch.nn.Module, r: Recipe, images: torch.Tensor, mean: tuple[float, ...],
                       std: tuple[float, ...], full_scale: bool = False) -> torch.nn.Module:
    """A plain copy of the encoder whose batch-norm statistics are measured on clean (unaugmented) images.

    Training leaves running averages of the statistics of augmented views: cropped, flipped, jittered. The
    encoder is evaluated and used on whole, clean images, whose activations have other statistics, so the
    evaluated and exported encoder gets them measured on such images instead ("precise BN", Wu & Johnson 2021,
    "Rethinking 'Batch' in BatchNorm"). Weights are untouched and the training model keeps its own statistics,
    so checkpoints and resumption do not change. The copy is a plain timm module (no DDP or SyncBatchNorm), on
    the images' device. With ``full_scale`` (step 0) its residual branches are switched on: see
    :func:`evaluated_encoder`.
    """
    with torch.random.fork_rng(devices=[]):  # initialising the copies draws no numbers from the training's stream
        plain = build_encoder(r.model.encoder, r.model.stem, images.shape[1]).to(images.device)
        reference = (build_encoder(r.model.encoder, r.model.stem, images.shape[1], zero_init_last=False)
                     if full_scale else None)
    plain.load_state_dict(unwrap(encoder).state_dict())
    if reference is not None:  # see evaluated_encoder
        full_scale_residuals(plain, reference.to(images.device))
    return recalibrate_on_images(plain, images, mean, std)


def evaluated_encoder(encoder: torch.nn.Module, data: Data, r: Recipe, fresh: bool = False) -> torch.nn.Module:
    """The encoder as it is evaluated and exported: with batch-norm statistics of the calibration images
    (``train.bn_calibration``). Without those it is the training encoder itself, except at step 0 (``fresh``).

    At step 0 the monitor measures a random network of the architecture, the baseline every later value is to
    beat, as the probe's ``random_init`` row does. The training's own start would make it look far worse than a
    random network really is, and every later gain larger, for two reasons: its batch-norm statistics are the
    initial ones (mean 0, variance 1), so a copy gets them measured on the monitor's bank; and each residual
    branch starts with its last batch-norm scale at 0 (timm's ``zero_init_last``, which helps training), leaving
    a shallow network (quickstart: k-NN 0.26 against 0.74 with the branches on), so the copy takes those from a
    build without ``zero_init_last`` (:func:`~sslkit.models.full_scale_residuals`: scales of 1). Weights are
    otherwise the training's own."""
    bank = data.monitor_bank.images if fresh and data.monitor_bank is not None else None
    images = data.calibration if data.calibration is not None else bank
    if images is None:
        return encoder
    return calibrated_encoder(encoder, r, images, data.mean, data.std, full_scale=fresh)


def knn_monitor(encoder: torch.nn.Module, data: Data, r: Recipe, amp: torch.autocast | None) -> float | None:
    """Weighted k-NN top-1 of the held-out validation images against the labeled bank (None without them)."""
    if data.monitor_bank is None or data.monitor_val is None:
        return None
    from sslkit.evaluation.knn import knn_top1

    bank = embed(encoder, data.monitor_bank.images, data.mean, data.std, amp=amp).cpu()
    val = embed(encoder, data.monitor_val.images, data.mean, data.std, amp=amp).cpu()
    return knn_top1(bank, data.monitor_bank.labels.cpu(), val, data.monitor_val.labels.cpu(), k=r.monitor.k,
                    temperature=r.monitor.temperature)


def check_input_size(encoder: torch.nn.Module, r: Recipe, image_shape: tuple[int, ...]) -> None:
    """Refuses an encoder that cannot embed the data's images (evaluation) or the training views.

    A model built for one input size (``vit_tiny_patch16_224``: 224×224) would otherwise fail in the step-0
    k-NN; this costs one forward of two images per size.

    Raises:
        UserError: naming ``model.encoder``, the size it does not take, and how to fix the recipe.
    """
    c, h, w = image_shape
    view = r.augment.view_size
    sizes = [((c, h, w), f"the data's {h}×{w} images")]
    if view and (view, view) != (h, w):
        sizes.append(((c, view, view), f"{view}×{view} training views (augment.view_size)"))
    for shape, what in sizes:
        problem = input_size_problem(encoder, shape)
        if problem:
            size = (getattr(encoder, "pretrained_cfg", None) or {}).get("input_size")
            built = f" (it is built for {'×'.join(map(str, size[1:]))})" if size else ""
            raise UserError(f"model.encoder {r.model.encoder!r} does not take {what} ({problem}) — choose an encoder "
                            f"that takes any size (a convolutional one such as resnet18), or set data.image_size "
                            f"and augment.view_size to a size it takes{built}")


STEP_MEMORY_MARGIN = 1.25
"""A step is refused only when its estimate, low by design (:func:`sslkit.step.step_memory_bytes`), is more than this
many times the memory it has: the activation constants were measured on one CPU and are applied unmeasured to GPUs,
so a step within a quarter of the memory is left to try. Every shipped recipe and documented command passes
(tests/test_recipes.py)."""


def check_step_memory(r: Recipe, batch: int, world: int, channels: int, image_size: int, precision: str,
                      room: int | None, where: str) -> None:
    """Refuses a train step that cannot fit in the memory it has, before any compute.

    Otherwise a too large ``augment.view_size`` or ``train.batch_size`` ran the model building and the step-0 k-NN
    (minutes), then the OS killed the process in the first step, with no message.

    Args:
        r: the recipe. batch: images per step in this process (``train.batch_size`` / processes, capped by the
            pool). world: processes. channels, image_size: the data's. precision: as resolved for the device.
        room, where: the memory this process has and how to say it (:func:`device_memory`); None skips the check.

    Raises:
        UserError: naming the estimate, the memory, and the keys to lower.
    """
    view = r.augment.view_size or image_size
    args = (batch, channels, view, r.model.stem, r.model.encoder, precision)
    need = step_memory_bytes(*args, r.train.chunk_size, world)
    if room is None or need <= STEP_MEMORY_MARGIN * room:
        return
    measured = r.model.encoder == MEASURED_ENCODER
    chunking_helps = measured and step_memory_bytes(*args, 2, world) <= STEP_MEMORY_MARGIN * room  # views + loss fit
    size = f"augment.view_size {view}" if r.augment.view_size else \
        f"augment.view_size unset (views of the data's {view}×{view})"
    per = " per process" if world > 1 else ""
    chunk_advice = f"set train.chunk_size{' lower' if r.train.chunk_size else ''} (views back-propagated at once), "
    raise UserError(f"{size} and train.batch_size {r.train.batch_size:,}: one training step needs about "
                    f"{need / 2**30:,.1f} GiB ({2 * batch:,} views{per} of {channels}×{view}×{view} pixels"
                    f"{f' and {MEASURED_ENCODER} activations for them' if measured else ''}), more than the "
                    f"{room / 2**30:,.1f} GiB {where} — lower augment.view_size or train.batch_size, "
                    f"{chunk_advice if chunking_helps else ''}"
                    "or spread the batch over more devices (torchrun)")


PROGRESS_REFRESH_PER_SECOND = 1.0
"""How often a live progress bar redraws in a terminal. At rich's default of 10 a second, the drawing thread took
0.6–0.8 % of a train step on a 2-core CPU (CPU time and the GIL taken from the step; ``eval/bench_progress.py``);
once a second, nothing measurable. The bar's counts move with every step whatever the rate."""


class _StepStatsColumn(ProgressColumn):
    """The bar's loss, learning rate and img/s, as dashes until the first logged step gives them.

    Before it (``train.log_every`` steps, a minute or more on a CPU) the task holds no values, and formatting its
    placeholders showed ``loss nan  lr 0  0 img/s``: a NaN loss, the very sign of a diverged run."""

    def render(self, task: Task) -> Text:
        f = task.fields
        if not math.isfinite(f["loss"]):
            return Text("loss –  lr –  – img/s")
        return Text(f"loss {f['loss']:.4f}  lr {f['lr']:.3g}  {f['ips']:,.0f} img/s")


def progress_bar(console: Console, refresh_per_second: float = PROGRESS_REFRESH_PER_SECOND,
                 disable: bool = False) -> Progress:
    """The pretraining loop's live bar: epoch, steps, loss, learning rate, img/s, elapsed and remaining time.

    Its task takes the fields ``epoch``, ``loss`` (NaN until a step is logged), ``lr`` and ``ips``; ``disable``
    draws nothing (a resumed run with no step left).
    """
    columns = [TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(), _StepStatsColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=False, refresh_per_second=refresh_per_second,
                    disable=disable)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the pool for one epoch: a pure function of (seed, epoch), so resume needs no state."""
    g = torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)
    return torch.randperm(n, generator=g)


class MetricsLog:
    """Appends one JSON object per event to ``RUN/metrics.jsonl``; on resume drops events past the checkpoint.

    A write that fails raises :class:`~sslkit.errors.WriteError`. An append cut short by a full disk leaves at most a
    torn last line, which readers skip and a resume drops.
    """

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        self.knn_steps: set[int] = set()  # steps that have a k-NN event
        if not enabled:
            return
        if resume_step is not None and path.is_file():
            kept = [e for e in map(_event, path.read_text().splitlines()) if e and e["step"] <= resume_step]
            self.knn_steps = {e["step"] for e in kept if "knn/top1" in e}
            atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(e) + "\n" for e in kept)))
        elif resume_step is None:
            with writing(path):
                path.write_text("")

    def write(self, **event: Any) -> None:
        if not self.enabled:
            return
        with writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
        if "knn/top1" in event:
            self.knn_steps.add(event["step"])


def _event(line: str) -> dict[str, Any] | None:
    """One event of ``metrics.jsonl``, or None for a blank line or one torn by a kill mid-write."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "step" in event else None


def _holds_checkpoints(folder: Path) -> bool:
    """True when ``folder`` has a checkpoint file (temporary files of a killed write do not count)."""
    return folder.is_dir() and any(not p.name.startswith(TMP_PREFIX) for p in folder.iterdir())


class _SignalCatcher:
    """Turns a first SIGINT/SIGTERM into a flag checked between steps, so a checkpoint can be written cleanly, and
    calls ``notice(signum)`` at once: the step, or the k-NN evaluation that ends an epoch, may take many seconds.

    A second signal stops at once, wherever the loop is, as outside it (KeyboardInterrupt; under ``torchrun``
    a rank other than 0 exits quietly). That loses no checkpoint: each is written to a temporary file that is
    removed, or renamed into place whole (:mod:`sslkit.checkpoint`); a stop between ``step-N.pt`` and
    ``last.pt`` leaves the first, which ``--resume`` takes. An event of ``metrics.jsonl`` cut short is skipped by
    its readers and dropped on resume.
    """

    def __init__(self, notice: Callable[[int], None] | None = None) -> None:
        self.signum: int | None = None
        self._notice = notice
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalCatcher:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # as outside the loop (a rank other than 0 under torchrun: quietly)
            old = self._old[signum]
            if callable(old):
                old(signum, frame)
            raise KeyboardInterrupt
        self.signum = signum
        if self._notice is not None:
            self._notice(signum)

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def _check_resume_recipe(saved: dict[str, Any], recipe: Recipe) -> None:
    now, default = recipe.to_dict(), Recipe().to_dict()  # a key newer than the run: its default, the old behaviour
    diffs = [f"{sec}.{k}" for sec, vals in now.items() if isinstance(vals, dict) for k, v in vals.items()
             if saved.get(sec, {}).get(k, default[sec][k]) != v and f"{sec}.{k}" != "train.max_steps"]
    diffs += [k for k, v in now.items() if not isinstance(v, dict) and saved.get(k, default[k]) != v]
    if diffs:
        raise UserError(f"resuming: the recipe differs from the run's in {', '.join(diffs)} — resume with the run's "
                        "own recipe, RUN/recipe.yaml (sslkit pretrain RUN --resume reads it), or start a new run with "
                        "another --out (out= from Python)")


def pretrain(recipe: Recipe, out: str | Path, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Runs SimCLR pretraining and leaves a complete run directory.

    Under ``torchrun`` every rank runs this function: each takes its own equal slice of every global batch
    (``train.batch_size`` is the global batch), NT-Xent gathers negatives from all ranks, and only rank 0
    evaluates and writes files.

    Args:
        recipe: the recipe, from :func:`~sslkit.config.load_recipe` or built in code (``Recipe(...)``,
            ``dataclasses.replace``): either way it is checked again here, as a file's would be.
        out: the run directory (created; must not hold another run unless ``resume``).
        resume: continue from the newest loadable checkpoint in ``out``.
        console: where progress goes (a default rich console when None).

    Returns:
        A summary: steps, seconds, images per second, k-NN before and after.

    Raises:
        UserError: bad input (a recipe value out of range, of the wrong type), found before any training step.
        Interrupted: after SIGINT/SIGTERM, once a checkpoint is saved.
        KeyboardInterrupt: SIGINT (or SIGTERM, as the CLI takes it) outside the training loop (loading the data,
            the k-NN at step 0, the final evaluation), or a second one in it: its message says which checkpoint
            the run is safe up to. Under ``torchrun`` on rank 0; the other ranks exit with status 130 and say
            nothing (:func:`~sslkit.distributed.signals_said_by_rank_0`).
        NonFiniteLoss: when the loss or a gradient is not finite and ``train.nonfinite`` says stop.
        WriteError: a file of the run could not be written (a full disk, a folder made read-only): its message
            names the file and the reason, the checkpoint ``--resume`` continues from and its step, and what to do.
            Files written before are whole, and no temporary file is left.
    """
    try:
        with signals_said_by_rank_0(EXIT_INTERRUPTED):
            return _pretrain(recipe, out, resume, console)
    except WriteError as e:  # the one place: every writer raises it, with the file's name and the system's reason
        if not e.advice:  # a file outside the run (the image folder's cache) comes with its own advice
            e.advice = _after_failed_write(Path(out), e.errno)
        raise
    except KeyboardInterrupt as e:
        if not e.args:
            e.args = (_after_interruption(Path(out)),)
        raise


def _after_failed_write(run: Path, code: int | None) -> str:
    """What is safe in ``run`` after a write failed with errno ``code``, and how to go on: read from the disk,
    as ``--resume`` would find it."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the disk of {run}"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {run} writable"
    else:
        fix = "fix that"
    saved = resume_point(run / "checkpoints")
    if saved is None:
        return f"no checkpoint was written yet; {fix}, then start the run again with the same command"
    step, path = saved
    return (f"the run is safe up to step {step:,} ({path} is complete, and no file written before was changed); "
            f"{fix}, then continue with: {resume_command(run)}")


def _after_interruption(run: Path) -> str:
    """What a run stopped at once keeps, and how to go on: read from the disk, as ``--resume`` would find it."""
    saved = resume_point(run / "checkpoints")
    if saved is None:
        return "interrupted before the first checkpoint was written — start the run again with the same command"
    step, path = saved
    return f"interrupted; the run is safe up to step {step:,} ({path}) — continue with: {resume_command(run)}"


def _pretrain(recipe: Recipe, out: str | Path, resume: bool, console: Console | None) -> dict[str, Any]:
    """:func:`pretrain`, whose wrapper adds to a failed write what is safe and how to go on."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"pretrain takes a Recipe, e.g. sslkit.load_recipe('recipes/quickstart.yaml'), not a "
                        f"{type(recipe).__name__}")
    # A Recipe built or edited in code (Recipe(train=TrainConfig(epochs=0)), dataclasses.replace) never passed
    # load_recipe's checks: epochs=0 exported an untrained encoder, a str seed failed deep in the loop. data.root is
    # not looked at again: load_recipe did, a resumed run's recipe (load_run_recipe) is read without that check,
    # and loading the data names a missing folder.
    with checked_alike():  # under torchrun, by every process: one line for the run, rank 0's
        r = recipe_from_dict(recipe.to_dict(), "recipe", check_root=False)
        info, dist_device = init_distributed(r.train.device)
    console = console or PipeSafeConsole()
    if not info.is_main:
        console = Console(quiet=True)
    run = Path(out)
    ckpt_dir = run / "checkpoints"
    check_out_folder(run, "choose another --out for the run directory (out= from Python)")
    state = None
    # A finished run whose checkpoints were deleted (they are most of its size) has an encoder and nothing to resume
    # from: each branch below would otherwise send the user to the other ("drop --resume" / "add --resume").
    has_checkpoints = _holds_checkpoints(ckpt_dir)
    exported_only = (run / "encoder.safetensors").exists() and not has_checkpoints
    if resume:
        found = load_latest(ckpt_dir) if ckpt_dir.is_dir() else None
        if found is None and exported_only:
            raise UserError(f"resuming {str(run)!r}: it holds a finished run's encoder but no checkpoint to continue "
                            "from (checkpoints/ was emptied or removed) — start a new run with another --out (out= "
                            "from Python)")
        if found is None:
            raise UserError(f"resuming {str(run)!r}: it holds no checkpoint — drop --resume (resume=False from "
                            "Python) to start a new run there")
        state, ckpt_path = found
        _check_resume_recipe(state["recipe"], r)
        console.print(f"resuming from {ckpt_path} (step {state['step']})")
    elif exported_only:
        raise UserError(f"{str(run)!r} already holds a finished run (its encoder.safetensors; no checkpoint, so it "
                        "cannot be continued) — choose another --out (out= from Python)")
    elif has_checkpoints:
        raise UserError(f"{str(run)!r} already holds a run — add --resume to continue it, or choose another --out "
                        "(from Python: resume=True, or another out=)")
    elif (run / "recipe.yaml").is_file() and not is_run(run):  # a recipe of the user's, perhaps the one given
        raise UserError(f"{str(run / 'recipe.yaml')!r} is not a run's (no metrics.jsonl or checkpoints/ beside it): "
                        "pretraining would replace it with the run's resolved recipe — choose another --out (out= "
                        "from Python)")
    if r.train.batch_size % info.world:
        raise UserError(f"train.batch_size {r.train.batch_size} does not split evenly over {info.world} processes "
                        f"— use a multiple of {info.world}")
    barrier(info)  # every rank has checked the folder before rank 0 writes into it

    # --- set-up: everything that can fail on bad input fails here, before the first step -----------------
    seed_everything(r.seed)
    if r.train.threads:
        torch.set_num_threads(r.train.threads)
    device = dist_device or select_device(r.train.device)
    if device.type == "cpu":
        keep_freed_memory()  # each step's large tensors reuse the last step's memory: no page faults (glibc only)
    if r.train.sync_bn and device.type != "cuda":  # in one process too: the setting would do nothing
        raise UserError(f"train.sync_bn: PyTorch's SyncBatchNorm runs on CUDA devices only, and this run is on "
                        f"{device.type} — set train.sync_bn: false (each process keeps its own statistics)")
    if r.train.sync_bn and not info.active:
        console.print("[yellow]train.sync_bn: one process, so batch norm already sees the whole batch — the setting "
                      "changes nothing without torchrun")
    precision = resolve_precision(r.train.precision, device, console)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else None
    fmt = torch.channels_last if r.train.channels_last else torch.contiguous_format

    data = prepare_data(r, device)
    # The files the run pretrains on, recorded in encoder.json (see imagefolder_changed) and checked on resume.
    pool_digest = files_digest(data.pool.ids or ()) if r.data.dataset == "imagefolder" else None
    recorded = (state or {}).get("encoder_meta", {}).get("imagefolder_pool_sha256")
    if recorded is not None and pool_digest != recorded:
        raise UserError(f"resuming: the files of the image folder {r.data.root!r} are not those this run pretrained "
                        "on (added, removed or renamed since): the rest of the run would train on another pool, "
                        "and its test split may now hold images it trained on — restore the folder, or start a "
                        "new run with another --out (out= from Python)")
    batch = min(r.train.batch_size, len(data.pool) // info.world * info.world)
    local_batch = batch // info.world
    steps_per_epoch = len(data.pool) // batch
    total_steps = steps_per_epoch * r.train.epochs
    stop_at = min(total_steps, r.train.max_steps or total_steps)
    if state is not None and int(state["step"]) > stop_at:  # the run would be exported and recorded as shorter
        raise UserError(f"resuming: the run's checkpoint is at step {int(state['step']):,}, past the {stop_at:,} steps "
                        f"this recipe runs (train.max_steps={r.train.max_steps}) — a run cannot be shortened; give no "
                        f"train.max_steps, or one of at least {int(state['step']):,}")
    check_step_memory(r, local_batch, info.world, data.pool.channels, data.pool.image_size, precision,
                      *device_memory(device, info))

    augment = SimCLRAugment.from_config(r.augment, data.pool.image_size, data.pool.channels, data.mean,
                                        data.std).to(device)
    encoder = build_encoder(r.model.encoder, r.model.stem, data.pool.channels)
    check_input_size(encoder, r, tuple(data.pool.images.shape[1:]))
    head = ProjectionHead(feature_dim(encoder), r.model.proj_hidden, r.model.proj_out, r.model.proj_layers,
                          r.model.proj_bn)
    model = SimCLR(encoder, head)
    if info.active and r.train.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=fmt)
    optimizer = build_optimizer(model, r.optim, batch)
    scheduler = build_scheduler(optimizer, r.optim, steps_per_epoch, r.train.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if info.active:
        torch.manual_seed(r.seed * SEED_STRIDE + info.rank)  # same weights everywhere, different views per rank
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        rng = state["rng"]  # the first process's
        ranks = state.get("rng_ranks") or []  # every process's, from a distributed run
        if (len(ranks) or 1) != info.world:
            console.print(f"[yellow]the checkpoint was written by {len(ranks) or 1} process(es), not {info.world}: "
                          "the augmentation's random stream does not carry over (the run is not bitwise resumable)")
        if info.active:
            rng = ranks[info.rank] if len(ranks) == info.world else None
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"], device)
    encoder = model.encoder  # (after a SyncBatchNorm conversion) the module that is evaluated and exported
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None) if info.active else model
    forward = torch.compile(ddp) if r.train.compile and compiles(device) else ddp
    # Rank 0 writes every file of the run, each time in a main_work block: the other ranks wait at its end and
    # learn there whether a write failed, to exit with rank 0 (OtherRankFailed) instead of waiting for it.
    with main_work(info, device):
        if info.is_main:  # the folder is made only now: input refused above leaves no trace of the run
            with writing(run):
                run.mkdir(parents=True, exist_ok=True)
            for folder in (run, ckpt_dir):  # what a process killed mid-write left behind
                with writing(folder):
                    clean_temp_files(folder)
        # metrics.jsonl before recipe.yaml: a new run that cannot write the second still leaves a folder a new
        # start takes (recipe.yaml alone would be taken for the user's own recipe, and refused above).
        log = MetricsLog(run / "metrics.jsonl", step if state is not None else None, enabled=info.is_main)
        if info.is_main:
            save_recipe(r, run / "recipe.yaml")
    encoder_meta = dict(encoder=r.model.encoder, stem=r.model.stem, in_chans=data.pool.channels,
                        num_features=feature_dim(encoder), image_size=data.pool.image_size, mean=list(data.mean),
                        std=list(data.std), dataset=r.data.dataset, split=r.data.split,
                        data_root=str(Path(r.data.root).expanduser().resolve()) if r.data.root else None,
                        recipe=r.name)
    if r.data.dataset == "imagefolder":  # runs without it pretrained on the whole folder, its test part included
        encoder_meta["imagefolder_test_held_out"] = IMAGEFOLDER_TEST_FRACTION
        encoder_meta["imagefolder_pool_sha256"] = pool_digest

    def checkpoint() -> None:
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        ranks = gather_objects(rng, info) if info.active else None
        with main_work(info, device):
            if info.is_main:
                save_checkpoint({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                 "scaler": scaler.state_dict(), "step": step, "skipped": skipped, "rng": rng,
                                 "rng_ranks": ranks,
                                 "recipe": r.to_dict(), "knn_start": knn_start, "encoder_meta": encoder_meta},
                                ckpt_dir, step, keep=r.train.keep_last)

    def knn_logged(evaluated: Callable[[], torch.nn.Module], **event: Any) -> float | None:
        """Rank 0's k-NN monitor, logged as ``event`` (None on other ranks and without monitor images)."""
        if not info.is_main or data.monitor_bank is None:  # once, not per rank
            return None
        value = knn_monitor(evaluated(), data, r, amp)
        if value is not None and event["step"] not in log.knn_steps:  # (a resumed run logged its final one)
            log.write(**event, **{"knn/top1": value})
        return value

    def monitor(evaluated: Callable[[], torch.nn.Module], **event: Any) -> float | None:
        with main_work(info, device):
            return knn_logged(evaluated, **event)

    steps = f"{stop_at:,} of {total_steps:,} steps (train.max_steps)" if stop_at < total_steps else \
        f"{total_steps:,} steps"
    split = "" if r.data.split == "train" else f" ({r.data.split})"
    if batch < r.train.batch_size:
        console.print(f"[yellow]train.batch_size {r.train.batch_size:,} is more than the {len(data.pool):,}-image "
                      f"pool holds: batches of {batch:,} (the learning rate is scaled for them) — lower it to "
                      "silence this")
    console.print(f"[bold]sslkit pretrain[/] {r.name}: {r.data.dataset}{split} — {len(data.pool):,} images for "
                  f"pretraining, {r.model.encoder} ({r.model.stem} stem) on {device}"
                  f"{f' × {info.world} processes' if info.active else ''}, {precision}, batch {batch}"
                  f"{f' ({local_batch} per process)' if info.active else ''} × 2 views, "
                  f"{steps}{f', resumed at step {step:,}' if state is not None else ''}",
                  soft_wrap=not console.is_terminal)  # a log keeps the header on one line
    if data.monitor_bank is None:
        console.print(f"[yellow]no k-NN monitor: the {r.data.split} split has no labels — pretrain on one with "
                      "labeled images (STL-10: train+unlabeled) to follow the k-NN accuracy" if not data.labeled else
                      f"[yellow]no k-NN monitor: the {r.data.split} split has {data.labeled:,} labeled image(s), too "
                      f"few to hold out monitor.val_size={r.monitor.val_size} — lower it")
    knn_start = state["knn_start"] if state is not None else None
    if state is None:
        knn_start = monitor(lambda: evaluated_encoder(encoder, data, r, fresh=True), step=0, epoch=0.0)
        if knn_start is not None:
            console.print(f"k-NN top-1 at step 0 (untrained network): {knn_start:.4f}")
    knn_last = knn_start

    # --- the loop ---------------------------------------------------------------------------------------
    model.train()
    skipped = int(state.get("skipped", 0)) if state is not None else 0  # train.max_skips counts over the whole run
    start_step = step
    t_start = time.perf_counter()
    window_t, window_imgs, img_per_s = time.perf_counter(), 0, float("nan")
    if step >= stop_at:
        # A run cut short by train.max_steps is resumed most often to train on: say how.
        more = (f" (train.max_steps={r.train.max_steps} of the recipe's {total_steps:,}: add --set train.max_steps=N, "
                "or null for all, to train further)") if stop_at < total_steps else ""
        done = "the 1 step was" if stop_at == 1 else f"all {stop_at:,} steps were"
        console.print(f"{done} done before: the final evaluation and the export only{more}",
                      soft_wrap=not console.is_terminal)
    with _SignalCatcher(_say_stopping if info.is_main else None) as signals, \
            progress_bar(console, disable=step >= stop_at) as progress:
        # epoch: the one the next step is in, counted from 1 as the updates below count it
        task = progress.add_task("pretrain", total=stop_at, completed=step, epoch=step // max(steps_per_epoch, 1) + 1,
                                 loss=float("nan"), lr=0.0, ips=0.0)
        order_epoch, order = -1, None
        while step < stop_at:
            epoch, i = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(len(data.pool), r.seed, epoch)
            first = i * batch + info.rank * local_batch  # this rank's equal slice of the global batch
            idx = order[first:first + local_batch].to(device)
            scheduler.step_update(step + 1)
            # index_select: 0.01 ms for 256 RGB 32×32 uint8 images on a 2-core CPU, where images[idx] takes 0.2 ms
            views = make_views(augment, data.pool.images.index_select(0, idx), fmt)
            optimizer.zero_grad(set_to_none=True)
            loss = simclr_backward(forward, views, r.loss.temperature, amp, scaler, r.train.chunk_size)
            stepped = step_if_finite(loss, model, optimizer, scaler)  # gradients are all-reduced: ranks agree
            if not stepped:
                skipped += 1
                if r.train.nonfinite == "stop" or skipped > r.train.max_skips:
                    saved = " and the last checkpoint is intact" if _holds_checkpoints(ckpt_dir) else ""
                    # Every rank skipped this step (the gradients are all-reduced): one line for the run, rank 0's.
                    fp32 = ", or use train.precision: fp32" if precision != "fp32" else ""
                    stop_together(NonFiniteLoss(f"non-finite loss ({loss.item()}) or gradients at step {step + 1} "
                                                f"(epoch {epoch + 1}); no update was applied{saved} — lower optim.lr "
                                                f"or raise loss.temperature{fp32}"), info)
                console.print(f"[yellow]step {step + 1}: non-finite loss or gradients, step skipped "
                              f"({skipped}/{r.train.max_skips})")
            step += 1
            window_imgs += batch

            # A skipped step logs no loss (it has none), but the epoch's evaluation, checkpoint and signal check
            # below happen as after any other step.
            end_of_epoch = step % steps_per_epoch == 0
            if stepped and (step % r.train.log_every == 0 or end_of_epoch or step == stop_at):
                loss_value = mean_across(loss, info).item()
                now = time.perf_counter()
                img_per_s = window_imgs / max(now - window_t, 1e-9)
                window_t, window_imgs = now, 0
                lr = optimizer.param_groups[0]["lr"]
                with main_work(info, device):
                    log.write(step=step, epoch=step / steps_per_epoch, loss=loss_value, lr=lr, img_per_s=img_per_s)
                progress.update(task, completed=step, epoch=epoch + 1, loss=loss_value, lr=lr, ips=img_per_s)
                if not console.is_terminal:  # logs and CI get plain lines; a terminal gets the live bar
                    elapsed = now - t_start
                    eta = elapsed / max(step - start_step, 1) * (stop_at - step)
                    console.print(f"step {step}/{stop_at}  epoch {step / steps_per_epoch:.2f}  loss {loss_value:.4f}  "
                                  f"lr {lr:.3g}  {img_per_s:,.0f} img/s  eta {duration(eta)}", highlight=False)
            else:
                progress.update(task, completed=step)
            if end_of_epoch and r.monitor.every and (epoch + 1) % r.monitor.every == 0 and step != stop_at:
                knn_last = monitor(lambda: evaluated_encoder(encoder, data, r), step=step,
                                   epoch=step / steps_per_epoch)
                if knn_last is not None:
                    progress.console.print(f"epoch {epoch + 1}: k-NN top-1 {knn_last:.4f}")
                window_t = time.perf_counter()  # evaluation time is not training throughput
            # The last step is checkpointed here, before the final evaluation: a signal during that evaluation
            # (outside the catcher) loses no training.
            due = bool(r.train.checkpoint_every and step % r.train.checkpoint_every == 0) or end_of_epoch \
                or step == stop_at
            if due:
                checkpoint()
            if any_across(signals.signum is not None, info, device):  # every rank stops at the same step
                if not due:  # (this step's checkpoint is already written)
                    checkpoint()
                stop_together(Interrupted(signals.signum or signal.SIGTERM, step, run), info)  # one line, rank 0's

    # --- the end: final evaluation, encoder export (the last step's checkpoint is written) -------------------
    seconds = time.perf_counter() - t_start
    knn_end = None
    with main_work(info, device):
        if info.is_main:
            final = evaluated_encoder(encoder, data, r)
            knn_end = knn_logged(lambda: final, step=step, epoch=step / steps_per_epoch)
            export_encoder(unwrap(final), run, dict(encoder_meta, bn_calibration=(
                0 if data.calibration is None else int(data.calibration.shape[0]))))
    if knn_end is not None:
        knn_last = knn_end
    summary = dict(steps=step, seconds=seconds, img_per_s=((step - start_step) * batch) / max(seconds, 1e-9),
                   knn_start=knn_start, knn_end=knn_last, run=str(run), world=info.world)
    if knn_start is not None and knn_last is not None:
        console.print(f"k-NN top-1: {knn_start:.4f} → {knn_last:.4f} ({r.monitor.val_size} held-out images, "
                      f"k={r.monitor.k})")
    trained = f": {step - start_step:,} steps trained in {duration(seconds)}" if step > start_step else ""
    console.print(f"run saved in {run}/ (encoder.safetensors, encoder.json, checkpoints/, metrics.jsonl){trained}")
    quoted = shlex.quote(str(run))
    console.print(f"next: sslkit probe {quoted}  (linear probe, k-NN and k-means against raw pixels and a random "
                  f"encoder), then sslkit report {quoted}", highlight=False, soft_wrap=not console.is_terminal)
    return summary


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 03 min``: a run's length as a person reads it (not ``3,785 s``)."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _recipe_and_run(p: Path, out: str | Path | None, overrides: tuple[str, ...], resume: bool
                    ) -> tuple[Recipe, str | Path]:
    """:func:`pretrain_from_file`'s recipe and run directory."""
    if resume and not p.exists():
        raise UserError(f"{str(p)!r} does not exist — --resume takes the run directory of an earlier `sslkit pretrain` "
                        "(or its recipe with --out RUN)")
    if p.is_dir():
        if not (p / "recipe.yaml").is_file():
            raise UserError(f"{str(p)!r} is a folder without recipe.yaml — give a recipe file or a run directory")
        out = out or p
        p = p / "recipe.yaml"
    recipe = load_recipe(p, overrides)
    if out is None:
        name = Path(recipe.name)
        if not recipe.name.strip() or name.is_absolute() or any(part in (".", "..") for part in recipe.name.split("/")):
            raise UserError(f"name {recipe.name!r} would put the run outside a folder of its own in runs/ (the default "
                            "--out is runs/<name>) — give a name such as 'cifar10' or 'cifar/bs256', or give --out")
        out = Path("runs") / recipe.name
    return recipe, out


def pretrain_from_file(path: str | Path, out: str | Path | None = None, overrides: tuple[str, ...] = (),
                       resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Loads a recipe (or a run directory's own, with ``resume``) and runs :func:`pretrain`."""
    with signals_said_by_rank_0(EXIT_INTERRUPTED):  # until every process has left the process group
        with checked_alike():  # under torchrun, by every process: one line for the run, rank 0's
            recipe, out = _recipe_and_run(Path(path), out, overrides, resume)
        try:
            return pretrain(recipe, out, resume=resume, console=console)
        finally:
            shutdown()
