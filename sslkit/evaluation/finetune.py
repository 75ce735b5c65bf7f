"""``sslkit finetune``: does starting from the SSL encoder beat training from scratch on the same few labels?

Arms, identical in everything but the encoder's starting point (and, optionally, the ssl encoder's lr):

- ``ssl``: the run's exported encoder (``encoder.safetensors``) + a linear head, the whole network fine-tuned,
  the encoder at ``optim.encoder_lr_mult`` × the learning rate;
- ``supervised``: the same architecture from random initialisation (timm's init, as pretraining started);
- ``linear`` (optional): the pretrained encoder frozen (eval mode, no gradients), only the head trained.

Fairness by construction: every arm of a training seed gets the same head initialisation, the same batches in
the same order (a pure function of seed and epoch) and the same augmentation of each batch (drawn under an RNG
forked and seeded from seed and step), the same optimizer, schedule and number of steps.

Data: a labeled subset of the train split (a count or a fraction of the labels, stratified, seeded; by default
only images outside the run's pretraining pool, which :func:`sslkit.trainer.train_images_in_pool` recomputes
from the run's recipe), of which a stratified part is held out for per-epoch validation. The test split is scored once
per arm and seed, by the final (or best-validation) model, after training; nothing is chosen with it. FGSM
robustness (:mod:`sslkit.evaluation.robustness`) is measured then too, on a seeded subset of the test split.

Writes ``OUT/finetune.json``, ``OUT/figures/finetune.png`` (each arm's test accuracy as a point with std error
bars, each seed a dot, and validation accuracy per epoch; of a single seed, its scores alone and the seed named) and,
with FGSM, ``OUT/figures/finetune_fgsm.png``; OUT is the run directory by default. These are written once every arm
and seed has ended; each training that ends is kept before then in ``OUT/finetune-parts/`` (:func:`parts_folder`),
so that the same command, stopped or crashed, continues where it stopped and ends with what an uninterrupted run
writes (on the CPU, bit for bit; a GPU's kernels are not bitwise reproducible, so there as alike as two uninterrupted
runs). The folder goes once ``finetune.json`` is written. While it runs, the trainings share one bar, and each
validation, test scoring and FGSM pass shows one of its own below it (a log gets a line per epoch and per scoring).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import timm.optim
import torch
import torch.nn.functional as F
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
from rich.table import Table
from rich.text import Text
from safetensors.torch import load_file
from torch import nn

from sslkit import __version__
from sslkit.augment import preprocess
from sslkit.checkpoint import atomic_write, clean_temp_files, read_encoder_meta, write_json
from sslkit.config import load_run_recipe
from sslkit.console import PipeSafeConsole, pass_bar
from sslkit.data import ImageSource, image_size_of_run, load_source, scored_splits, split_description, stratified_split
from sslkit.distributed import DistInfo
from sslkit.errors import UserError
from sslkit.evaluation import robustness
from sslkit.evaluation.features import IMAGEFOLDER_CHANGED, pretraining_overlap_note, read_run_meta
from sslkit.evaluation.finetune_config import (
    FinetuneAugment,
    FinetuneOptim,
    FinetuneRecipe,
    load_finetune_recipe,
    run_dir_of,
    test_split_problem,
)
from sslkit.models import build_encoder, feature_dim
from sslkit.optim import build_scheduler, scaled_lr
from sslkit.outputs import check_out_folder
from sslkit.step import MEASURED_ENCODER, activation_bytes, batch_bytes, largest_activation_bytes
from sslkit.trainer import (
    PROGRESS_REFRESH_PER_SECOND,
    STEP_MEMORY_MARGIN,
    NonFiniteLoss,
    device_memory,
    epoch_order,
    imagefolder_changed,
    pool_files_changed,
    resolve_precision,
    select_device,
    train_images_in_pool,
)

ARM_COLOURS = {"ssl": "#1f77b4", "supervised": "#7f7f7f", "linear": "#2ca02c"}
ARM_INIT = {"ssl": "SSL encoder, fine-tuned", "supervised": "random init", "linear": "SSL encoder, frozen"}
_HEAD_SEED = 7_919  # the head is drawn from its own seed, so it is the same whichever encoder an arm starts from
_AUG_SEED = 104_729
PARTS = "finetune-parts"  # OUT/PARTS/<key>/<arm>-seed<S>.json: the trainings that ended, until finetune.json is written

Observer = Callable[..., None]


# --- data ---------------------------------------------------------------------------------------------------


@dataclass
class LabeledData:
    """Everything the arms learn from and are scored on, as uint8 images on the training device."""

    train: ImageSource  # the labeled subset minus its validation part
    val: ImageSource
    test: ImageSource
    attack: ImageSource | None  # the seeded test subset FGSM is measured on
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)


def _labeled_count(size: int | float | None, n_labeled: int, n_candidates: int) -> int:
    if size is None:
        return n_candidates
    return round(size * n_labeled) if isinstance(size, float) else int(size)


def _long_tail(idx: torch.Tensor, labels: torch.Tensor, num_classes: int, ratio: float, seed: int) -> torch.Tensor:
    """Keeps ``ratio^(-c/(K-1))`` of class c's samples (at least one): the long-tailed subsets of Cao et al. 2019."""
    g = torch.Generator().manual_seed(seed)
    kept = []
    for c in range(num_classes):
        members = idx[labels[idx] == c]
        if len(members) == 0:
            continue
        keep = max(1, round(len(members) * ratio ** (-c / max(num_classes - 1, 1))))
        kept.append(members[torch.randperm(len(members), generator=g)[:keep]])
    return torch.cat(kept).sort().values


def _check_imagefolder_pool(root: str | None, meta: dict[str, Any]) -> None:
    """A ``UserError`` where an image-folder run's pool cannot be recomputed for ``labeled.disjoint_from_pool``:
    a run from before the test split was held out of pretraining, or another folder than the run's where the run
    recorded no digest of its pool's files (with one, a moved or copied folder is checked file by file instead:
    :func:`~sslkit.trainer.imagefolder_changed`)."""
    ran_on = meta.get("data_root")
    moved = ran_on is None or root is None or Path(root).expanduser().resolve() != Path(ran_on).expanduser().resolve()
    if moved and "imagefolder_pool_sha256" not in meta:
        raise UserError(f"labeled.disjoint_from_pool: data.root {root!r} is not the folder the run pretrained on "
                        f"({ran_on!r}), so its pool says nothing about these images — use that folder, or set "
                        "labeled.disjoint_from_pool: false")
    if "imagefolder_test_held_out" not in meta:
        raise UserError("labeled.disjoint_from_pool: this run pretrained on the whole image folder (made before "
                        "sslkit held its test split out), so which images its pool held cannot be recomputed — "
                        "pretrain it again, or set labeled.disjoint_from_pool: false")


@image_size_of_run()  # the encoder's size: data too large for memory or disk is not fixed by a recipe key
def prepare_data(r: FinetuneRecipe, meta: dict[str, Any], device: torch.device) -> LabeledData:
    """Loads the data, draws the labeled subset (outside the pretraining pool if asked) and its validation part.

    Raises:
        UserError: data that does not fit the run (channels, data set), or sizes the data cannot provide.
    """
    d, lab = r.data, r.labeled
    dataset = d.dataset or meta["dataset"]
    if d.test_split not in scored_splits(dataset):  # the run's data set: checked here
        raise UserError(test_split_problem(dataset, d.test_split))
    root = d.root if d.root is not None else meta.get("data_root")
    kwargs: dict[str, Any] = dict(root=root, download=d.download, image_size=int(meta["image_size"]))
    if dataset == "imagefolder":
        kwargs["channels"] = int(meta["in_chans"])
    train = load_source(dataset, "train", **kwargs)
    if train.channels != int(meta["in_chans"]):
        raise UserError(f"data.dataset {dataset} has {train.channels}-channel images but the run's encoder takes "
                        f"{meta['in_chans']} — fine-tune on the data set the run was pretrained on")
    labels = train.labels
    labeled_mask = labels >= 0
    n_labeled = int(labeled_mask.sum())
    pool_size = pretraining_split = None
    if lab.disjoint_from_pool:
        run_recipe = load_run_recipe(run_dir_of(r.run))
        if run_recipe.data.dataset != dataset:
            raise UserError(f"data.dataset is {dataset} but the run pretrained on {run_recipe.data.dataset}, so its "
                            "pool says nothing about these images — set labeled.disjoint_from_pool: false")
        if dataset == "imagefolder":
            _check_imagefolder_pool(root, meta)
        pool_idx, pool_size = train_images_in_pool(run_recipe, labels, root)
        changed = pool_files_changed(meta, train, pool_idx)
        if changed:
            raise UserError(f"labeled.disjoint_from_pool: {IMAGEFOLDER_CHANGED}, and which of them it did cannot be "
                            "recomputed — restore the folder, pretrain again, or set labeled.disjoint_from_pool: false")
        pretraining_split = run_recipe.data.split
        in_pool = torch.zeros(len(labels), dtype=torch.bool)
        in_pool[pool_idx] = True
        candidates = torch.nonzero(labeled_mask & ~in_pool).flatten()
    else:
        changed = imagefolder_changed(run_dir_of(r.run), meta, train)
        candidates = torch.nonzero(labeled_mask).flatten()

    test = load_source(dataset, d.test_split, **kwargs)
    test = test.subset(torch.nonzero(test.labels >= 0).flatten())
    test_name = split_description(dataset, d.test_split)
    where = "outside the run's pretraining pool" if lab.disjoint_from_pool else "of the train split"
    n = _labeled_count(lab.size, n_labeled, len(candidates))
    if n < 4 <= len(candidates):
        raise UserError(f"labeled.size {lab.size} gives {n} labeled image(s): a fine-tune needs at least 4 (to train "
                        f"and validate on) — choose 4 to {len(candidates):,}")
    if n < 4 or n > len(candidates):
        raise UserError(f"labeled.size {lab.size} asks for {n} labeled images but {len(candidates):,} labeled train "
                        f"images are {where} — choose 4 to {len(candidates):,}"
                        f"{' or set labeled.disjoint_from_pool: false' if lab.disjoint_from_pool else ''}")
    picked = candidates[stratified_split(labels[candidates], n, lab.seed)[0]]
    num_classes = len(train.classes)
    if lab.imbalance_ratio > 1:
        picked = _long_tail(picked, labels, num_classes, lab.imbalance_ratio, lab.seed + 1)
    n = len(picked)
    n_val = round(lab.val_size * n) if isinstance(lab.val_size, float) else int(lab.val_size)
    if n_val < 1 or n - n_val < 2:
        raise UserError(f"labeled.val_size {lab.val_size} holds out {n_val} of the {n} labeled images, leaving "
                        f"{n - n_val} to train on — choose a validation part between 1 and {n - 2} images")
    val_pos, fit_pos = stratified_split(labels[picked], n_val, lab.seed + 2)
    attack = None
    if r.robustness.epsilons:
        n_attack = min(r.robustness.n_images or len(test), len(test))
        attack = test if n_attack == len(test) else test.subset(stratified_split(test.labels, n_attack, 0)[0])

    def to_dev(s: ImageSource) -> ImageSource:
        return dataclasses.replace(s, images=s.images.to(device), labels=s.labels.to(device))

    fit_idx, val_idx = picked[fit_pos], picked[val_pos]
    counts = torch.bincount(labels[picked], minlength=num_classes)
    info = dict(dataset=dataset, test_split=test_name, n_labeled_train_split=n_labeled, pool=pool_size,
                pretraining_split=pretraining_split, candidates=len(candidates),
                disjoint_from_pool=lab.disjoint_from_pool, imagefolder_changed=changed, labeled=n,
                train=len(fit_idx), val=len(val_idx), test=len(test), attack=len(attack) if attack is not None else 0,
                class_counts=counts.tolist(), labeled_indices=picked.tolist(), val_indices=val_idx.tolist())
    return LabeledData(to_dev(train.subset(fit_idx)), to_dev(train.subset(val_idx)), test, attack, num_classes,
                       tuple(meta["mean"]), tuple(meta["std"]), info)


# --- model, augmentation, optimizer -----------------------------------------------------------------------


class Classifier(nn.Module):
    """Encoder + linear head. ``frozen`` keeps the encoder in eval mode without gradients (the linear arm).

    Shape:
        (B, C, H, W) normalised -> (B, num_classes) logits
    """

    def __init__(self, encoder: nn.Module, head: nn.Linear, frozen: bool = False) -> None:
        super().__init__()
        self.encoder, self.head, self.frozen = encoder, head, frozen
        if frozen:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # batch-norm statistics stay the pretrained ones
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No no_grad() for the frozen encoder: its parameters need no gradient, so training builds no graph
        # through it anyway, while FGSM still gets the gradient with respect to the input.
        return self.head(self.encoder(x))


def build_classifier(arm: str, seed: int, meta: dict[str, Any], weights: Path, num_classes: int) -> Classifier:
    """The arm's network: the same architecture and head initialisation for every arm of a seed.

    The encoder is always built under the seed (so every arm consumes the same random numbers); the ssl and
    linear arms then load the exported weights over it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_encoder(meta["encoder"], meta["stem"], int(meta["in_chans"]))
        torch.manual_seed(seed * 1_000_003 + _HEAD_SEED)
        head = nn.Linear(feature_dim(encoder), num_classes)
    if arm != "supervised":
        missing, unexpected = encoder.load_state_dict(load_file(str(weights)), strict=False)
        if missing or unexpected:
            raise UserError(f"{weights} does not match a {meta['encoder']} ({meta['stem']} stem): {len(missing)} "
                            f"missing and {len(unexpected)} unexpected tensors — re-export the run's encoder")
    return Classifier(encoder, head, frozen=arm == "linear")


class SupervisedAugment(nn.Module):
    """Supervised training augmentation (random crop, flip), batched on the device with per-sample parameters.

    ``crop: pad`` is the CIFAR ResNet recipe (He et al. 2016, §4.2): pad with black, take a random crop of the
    original size. ``crop: resized`` is the Inception-style random resized crop.

    Shape:
        (B, C, H, W) uint8 -> (B, C, H, W) float32, normalised
    """

    def __init__(self, cfg: FinetuneAugment, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        ops: list[nn.Module] = []
        if cfg.crop == "pad":
            ops.append(K.RandomCrop((image_size, image_size), padding=cfg.pad, fill=0.0, padding_mode="constant",
                                    p=1.0))
        elif cfg.crop == "resized":
            ops.append(K.RandomResizedCrop((image_size, image_size), scale=tuple(cfg.crop_scale),
                                           ratio=tuple(cfg.crop_ratio), p=1.0, cropping_mode="resample"))
        if cfg.flip_p > 0:
            ops.append(K.RandomHorizontalFlip(p=cfg.flip_p))
        ops.append(K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std), p=1.0))
        self.ops = nn.Sequential(*ops)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x.float().div_(255))


def build_optimizer(model: Classifier, arm: str, cfg: FinetuneOptim, batch_size: int) -> torch.optim.Optimizer:
    """The recipe's optimizer; biases and norm parameters without weight decay; the ssl encoder's lr scaled."""
    groups = []
    if not model.frozen:
        mult = cfg.encoder_lr_mult if arm == "ssl" else 1.0
        groups += [dict(g, lr_scale=mult) for g in timm.optim.param_groups_weight_decay(model.encoder,
                                                                                        cfg.weight_decay)]
    groups += [dict(g, lr_scale=1.0) for g in timm.optim.param_groups_weight_decay(model.head, cfg.weight_decay)]
    kwargs: dict[str, Any] = {}
    if cfg.name == "lars":
        kwargs = dict(momentum=cfg.momentum, trust_coeff=cfg.trust_coeff)
    elif cfg.name == "sgd":
        kwargs = dict(momentum=cfg.momentum, nesterov=False)
    # timm's schedulers multiply each group's lr by its lr_scale, so the ssl encoder keeps its ratio throughout.
    return timm.optim.create_optimizer_v2(groups, opt=cfg.name if cfg.name != "sgd" else "momentum",
                                          lr=scaled_lr(cfg, batch_size), weight_decay=cfg.weight_decay, foreach=True,
                                          **kwargs)  # foreach: see sslkit.optim


def steps_per_finetune_epoch(n: int, batch: int) -> int:
    """Batches per epoch of ``n`` training images at ``batch`` (``torch.tensor_split`` of the epoch into this many
    nearly equal parts): ⌈n / batch⌉, fewer where that would leave a batch of one image, which batch norm cannot
    train on; then a batch may hold one image more than ``batch`` (n = 9 at batch 2: 3, 2, 2 and 2)."""
    return max(1, min(math.ceil(n / batch), n // 2))


def supervised_step_bytes(images: int, meta: dict[str, Any], precision: str) -> int:
    """A low estimate of the memory of one forward and backward of ``images`` images through the run's network, in
    bytes: the float32 augmented batch and the encoder's activations for it (:func:`sslkit.step.activation_bytes`,
    the constants of the pretraining check; here one view per image, where SimCLR's step has two). The logits and
    cross-entropy (images × classes), weights, optimizer state and the data are left out."""
    size = int(meta["image_size"])
    return (batch_bytes(images, int(meta["in_chans"]), size)
            + activation_bytes(images, size, meta["stem"], meta["encoder"], precision))


def evaluation_batch_bytes(images: int, meta: dict[str, Any]) -> int:
    """A low estimate of the memory of one evaluation batch (:func:`evaluate`: float32, no autograd) of ``images``
    images, in bytes: the float32 batch and the forward's largest activation (:func:`largest_activation_bytes`),
    which are held together while it is made. A forward without autograd keeps nothing for a backward
    (``ACTIVATION_BYTES_PER_PIXEL``, measured on train steps, would overstate it many times): only what the layer
    at work reads and writes. The other activations, the weights and the data are left out."""
    size = int(meta["image_size"])
    return (batch_bytes(images, int(meta["in_chans"]), size)
            + largest_activation_bytes(images, size, meta["stem"], meta["encoder"]))


@dataclass(frozen=True)
class MemoryCheck:
    """One of the batches :func:`check_finetune_memory` weighs against the memory, and how its refusal reads.

    Attributes:
        key: the recipe key that sets its size, named in the refusal with its ``value``.
        value: the key's value in the recipe (the images may be fewer: capped by the images there are).
        images: the most images it takes; 0 when it is not run.
        what: what it is, in the message ("a training step").
        estimate: its bytes for a number of images.
        counted: what the estimate counts besides the images, in the message.
        least: the fewest images it can take; a key that fits fewer is not advised, a device with more memory is.
        other: another way out, after the advice to lower ``key``.
    """

    key: str
    value: int
    images: int
    what: str
    estimate: Callable[[int], int]
    counted: str
    least: int = 1
    other: str = ""


def check_finetune_memory(r: FinetuneRecipe, meta: dict[str, Any], batch: int, attack: int, precision: str,
                          room: int | None, where: str, evaluation: int = 0) -> None:
    """Refuses a fine-tune whose training step, FGSM gradient or evaluation batch cannot fit in the memory it has,
    before any arm is built (otherwise the OS killed the process in the first step, or at the first validation,
    with no message). Refused, as pretraining is (:func:`sslkit.trainer.check_step_memory`), only beyond
    ``STEP_MEMORY_MARGIN`` × the memory.

    Args:
        r: the recipe. meta: the run's ``encoder.json`` (encoder, stem, channels, image size).
        batch: the most images one training step takes (``train.batch_size``, capped by the training images).
        attack: the most images one FGSM gradient takes (``train.eval_batch_size``, capped by the attacked
            images); 0 without FGSM.
        precision: the training steps', as resolved for the device (FGSM runs in float32).
        room, where: the memory this process has and how to say it (:func:`sslkit.trainer.device_memory`); None
            skips the check.
        evaluation: the most images one evaluation batch takes (``train.eval_batch_size``, capped by the larger of
            the validation and test splits; :func:`evaluation_batch_bytes`), with or without FGSM. It needs less
            per image than an FGSM gradient, so it is named only when that fits.

    Raises:
        UserError: naming the estimates, the memory, and the largest values of the keys whose estimates fit in it.
    """
    if room is None:
        return
    limit = STEP_MEMORY_MARGIN * room
    size, channels = int(meta["image_size"]), int(meta["in_chans"])
    resnet = meta["encoder"] == MEASURED_ENCODER
    acts = f" and {MEASURED_ENCODER} activations for them" if resnet else ""
    largest = f" and {MEASURED_ENCODER}'s largest activation for them" if resnet else ""
    checks = [
        MemoryCheck("train.batch_size", r.train.batch_size, batch, "a training step",
                    lambda n: supervised_step_bytes(n, meta, precision), acts,
                    least=2),  # batch norm cannot train on one image (steps_per_finetune_epoch)
        MemoryCheck("train.eval_batch_size", r.train.eval_batch_size, attack, "an FGSM gradient",
                    lambda n: supervised_step_bytes(n, meta, "fp32"), acts,
                    other=" (or set robustness.epsilons: [] to measure no FGSM)"),
        MemoryCheck("train.eval_batch_size", r.train.eval_batch_size, evaluation, "an evaluation batch",
                    lambda n: evaluation_batch_bytes(n, meta), largest)]
    said, fixes, refused = [], [], set()
    for c in checks:
        need = c.estimate(c.images)
        if not c.images or need <= limit or c.key in refused:
            continue
        refused.add(c.key)
        said.append(f"{c.key} {c.value:,}: {c.what} needs about {need / 2**30:,.1f} GiB ({c.images:,} images of "
                    f"{channels}×{size}×{size} pixels{c.counted})")
        fits = room // c.estimate(1)  # within the memory itself, not the margin's
        fixes.append(f"lower {c.key} to at most {fits:,}{c.other}" if fits >= c.least else
                     f"fine-tune on a device with more memory (not even {c.least} of the run's {size}×{size} "
                     f"images fit {c.what})")
    if said:
        raise UserError(f"{'; '.join(said)} — more than the {room / 2**30:,.1f} GiB {where}: {' and '.join(fixes)}")


def epoch_indices(n: int, seed: int, epoch: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The training images of one epoch, in order: a permutation, or n class-balanced draws with replacement."""
    if weights is None:
        return epoch_order(n, seed, epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.multinomial(weights, n, replacement=True, generator=g)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (K · n_c) per class present (sklearn's "balanced"); 1 for absent classes, which never occur."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    present = int((counts > 0).sum())
    w = torch.where(counts > 0, counts.sum() / (present * counts.clamp_min(1)), torch.ones_like(counts))
    return w.float()


# --- training and evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, source: ImageSource, mean: tuple[float, ...], std: tuple[float, ...],
             batch_size: int, device: torch.device, progress: Progress | None = None,
             description: str = "evaluation") -> tuple[float, float, torch.Tensor]:
    """Top-1, mean cross-entropy and predictions of the model in eval mode, float32, no augmentation.

    ``progress``: a live display to show the pass on, as a bar of ``description`` removed when it ends.

    Shape:
        source (N, C, H, W) -> top1, loss, predictions (N,)
    """
    was_training = model.training
    model.eval()
    preds, loss_sum = [], 0.0
    try:
        with pass_bar(progress, description, len(source)) as advance:
            for i in range(0, len(source), batch_size):
                x = preprocess(source.images[i:i + batch_size].to(device), mean, std)
                y = source.labels[i:i + batch_size].to(device)
                logits = model(x).float()
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                preds.append(logits.argmax(1).cpu())
                advance(len(y))
    finally:
        model.train(was_training)
    if not preds:
        return float("nan"), float("nan"), torch.zeros(0, dtype=torch.long)
    p = torch.cat(preds)
    return int((p == source.labels.cpu()).sum()) / len(source), loss_sum / len(source), p


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per-class recall over the classes present."""
    labels = labels.cpu()
    recalls = [int((pred[labels == c] == c).sum()) / int((labels == c).sum()) for c in torch.unique(labels).tolist()]
    return sum(recalls) / len(recalls) if recalls else float("nan")


@dataclass
class ArmResult:
    """One trained arm of one seed."""

    model: Classifier
    curves: dict[str, list[float]]
    selected_epoch: int
    steps: int
    seconds: float


def train_arm(arm: str, seed: int, r: FinetuneRecipe, meta: dict[str, Any], weights: Path, data: LabeledData,
              device: torch.device, precision: str, progress: Progress, task: Any, console: Console,
              observer: Observer | None = None) -> ArmResult:
    """Trains one arm for the recipe's budget; validates after every epoch.

    Args:
        precision: "fp32" or "bf16" (resolved once by the caller).
        observer: called as ``observer(arm=, seed=, step=, x=, y=, model=)`` with each augmented batch before
            its forward (tests use it to check that arms see identical batches and start from the right weights).
    """
    t0 = time.perf_counter()
    model = build_classifier(arm, seed, meta, weights, data.num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    augment = SupervisedAugment(r.augment, data.train.image_size, data.mean, data.std).to(device)
    batch = min(r.train.batch_size, len(data.train))
    steps_per_epoch = steps_per_finetune_epoch(len(data.train), batch)
    optimizer = build_optimizer(model, arm, r.optim, batch)
    scheduler = build_scheduler(optimizer, r.optim, steps_per_epoch, r.train.epochs)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    balance = r.labeled.balance
    weights_per_class = class_weights(data.train.labels, data.num_classes).to(device)
    loss_weight = weights_per_class if balance == "loss_weights" else None
    sample_weights = weights_per_class[data.train.labels].cpu().double() if balance == "sampler" else None
    rng_devices = [device] if device.type == "cuda" else []
    best_state: dict[str, torch.Tensor] | None = None
    best_val, selected = -1.0, r.train.epochs
    curves: dict[str, list[float]] = {k: [] for k in ("epoch", "train_loss", "train_top1", "val_top1", "val_loss",
                                                      "lr")}
    step = 0
    for epoch in range(r.train.epochs):
        model.train()
        order = epoch_indices(len(data.train), seed, epoch, sample_weights)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        # Nearly equal batches that cover the epoch: no image dropped, no batch of one for batch norm.
        for idx in torch.tensor_split(order, steps_per_epoch):
            idx = idx.to(device)
            scheduler.step_update(step + 1)
            with torch.random.fork_rng(devices=rng_devices):  # the same views in every arm, whatever else draws
                torch.manual_seed(seed * 1_000_003 + _AUG_SEED + step)
                x = augment(data.train.images[idx])
            y = data.train.labels[idx]
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            if observer is not None:
                observer(arm=arm, seed=seed, step=step, x=x, y=y, model=model)
            with amp:
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=loss_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
            step += 1
            progress.advance(task)
        train_loss = float(loss_sum) / len(order)
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"{arm} arm, seed {seed}: the training loss became non-finite in epoch {epoch + 1} — "
                                "lower optim.lr (or optim.encoder_lr_mult)")
        val_top1, val_loss, _ = evaluate(model, data.val, data.mean, data.std, r.train.eval_batch_size, device,
                                         progress, f"{arm} · seed {seed} · validation")
        for k, v in zip(curves, (epoch + 1, train_loss, float(correct) / len(order), val_top1, val_loss,
                                 optimizer.param_groups[-1]["lr"]), strict=True):
            curves[k].append(v)
        if r.train.select == "best_val" and val_top1 > best_val:
            best_val, selected = val_top1, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        progress.update(task, description=f"{arm} · seed {seed} · epoch {epoch + 1}/{r.train.epochs}",
                        loss=train_loss, val=val_top1)
        if not console.is_terminal:  # logs get one plain line per epoch; a terminal gets the live bar
            console.print(f"{arm} seed {seed} epoch {epoch + 1}/{r.train.epochs}  loss {train_loss:.4f}  "
                          f"val top-1 {val_top1:.4f}  ({time.perf_counter() - t0:.0f} s)", highlight=False)
    if best_state is not None:
        model.load_state_dict(best_state)
    return ArmResult(model, curves, selected, step, time.perf_counter() - t0)


# --- the command --------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), (float(t.std()) if len(t) > 1 else 0.0)


class _EpochStatsColumn(ProgressColumn):
    """The trainings' bar's loss and validation top-1 of the last epoch, dashes until the first epoch ends (its
    NaN placeholders read as a diverged run); nothing on the bars of the evaluation passes, which have neither."""

    def render(self, task: Task) -> Text:
        loss = task.fields.get("loss")
        if loss is None:
            return Text("")
        if not math.isfinite(loss):
            return Text("loss –  val –")
        return Text(f"loss {loss:.3f}  val {task.fields['val']:.3f}")


def _check_out_dir(out_dir: Path, run: Path) -> None:
    """A ``UserError`` when ``finetune.json`` and ``figures/`` could not be written in ``out_dir`` (a file in the
    way, a read-only folder: :func:`~sslkit.outputs.check_out_folder`), or it is
    another run's directory than ``run``'s (its own fine-tune results would be replaced by this run's)."""
    check_out_folder(out_dir, "give a folder for finetune.json and its figures")
    if (out_dir / "encoder.json").is_file() and out_dir.resolve() != run.resolve():
        raise UserError(f"--out {str(out_dir)!r} is another run's directory: this fine-tune of {str(run)!r} would "
                        "replace that run's finetune.json and figures — give a folder of its own")
    for inside, want_dir, what in (("finetune.json", False, "results file"), ("figures", True, "figures folder"),
                                   (PARTS, True, "folder of the trainings that ended")):
        p = out_dir / inside
        if p.exists() and p.is_dir() != want_dir:
            raise UserError(f"--out {str(out_dir)!r} holds {str(p)!r}, a {'file' if want_dir else 'folder'} where "
                            f"finetune writes its {what} — move it, or choose another --out")


def parts_folder(out_dir: Path, r: FinetuneRecipe, meta: dict[str, Any], data: LabeledData, device: torch.device,
                 precision: str) -> Path:
    """Where this fine-tune keeps the record of each arm × seed training that ended: ``OUT/finetune-parts/<key>``.

    A training is a pure function of its arm, its seed and what the key hashes (its network, head, batches and
    augmentations are drawn from the seed alone, under forked RNGs: :func:`train_arm`), so a record of the same key
    is the one the training would give again. The key hashes the checked recipe but its name and which arms and
    seeds it runs (a record of arm a, seed s is the same whichever others run beside it: a rerun with fewer seeds
    keeps those that ended); the run's ``encoder.json`` with the weights' sha256; every label and image trained,
    validated and scored (the attacked ones are a seeded subset of the scored, drawn by the recipe); the device,
    precision and threads, and the versions of sslkit and torch. Anything else changed, nothing is reused.

    What the paths hold is hashed, not how they are written: not ``run:``, ``data.root`` nor the folder the run
    pretrained on, so the same run and data moved, or reached through a symlink or a relative path, reuse the
    trainings that ended. An image folder's images are hashed as the image cache names them, by their files
    (:attr:`~sslkit.data.ImageSource.files_key` and ``ids``: each file's path in the folder, size, mtime and
    ctime; a copy of the folder has new ctimes, and trains again), not by their pixels, whose hash grows with the
    folder and its image size; other data sets' images by their pixels."""
    recipe = {k: v for k, v in r.to_dict().items() if k not in ("name", "seed", "seeds", "linear_arm", "run")}
    recipe["data"] = {k: v for k, v in recipe["data"].items() if k != "root"}
    h = hashlib.sha256(json.dumps({"recipe": recipe, "meta": {k: v for k, v in meta.items() if k != "data_root"},
                                   "device": str(device), "precision": precision, "threads": torch.get_num_threads(),
                                   "sslkit": __version__, "torch": torch.__version__}, sort_keys=True,
                                  default=str).encode())
    for source in (data.train, data.val, data.test):  # data.attack: a function of data.test and the recipe
        named = source.files_key is not None and source.ids is not None
        for t in (source.labels,) if named else (source.images, source.labels):
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
        if named:
            h.update("\0".join((source.files_key, *source.ids)).encode("utf-8", "surrogateescape") + b"\1")
    return out_dir / PARTS / h.hexdigest()[:16]


def _part_path(parts: Path, arm: str, seed: int) -> Path:
    return parts / f"{arm}-seed{seed}.json"


def _write_part(parts: Path, record: dict[str, Any]) -> None:
    """One training's record, atomically. Plain ``json`` (NaN as ``NaN``), not :func:`write_json` (NaN as null):
    only :func:`_read_part` reads it, and it must give back the very numbers the training gave."""
    parts.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record)
    atomic_write(_part_path(parts, record["arm"], record["seed"]), lambda tmp: tmp.write_text(text))


def _read_part(parts: Path, arm: str, seed: int) -> dict[str, Any] | None:
    """The record of ``arm``, ``seed`` that an earlier run of this fine-tune kept; None where there is none (or it
    cannot be read: the training runs again)."""
    try:
        record = json.loads(_part_path(parts, arm, seed).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("arm") == arm and record.get("seed") == seed else None


def run_finetune(recipe: FinetuneRecipe, out: str | Path | None = None, console: Console | None = None,
                 observer: Observer | None = None, data: LabeledData | None = None) -> dict[str, Any]:
    """Trains every arm for every seed, scores each once on the test split, and writes the report.

    Args:
        recipe: the checked fine-tune recipe.
        out: where ``finetune.json`` and ``figures/`` go; the run directory when None.
        console: where tables and progress go.
        observer: see :func:`train_arm`.
        data: already prepared data (tests); loaded from the recipe when None.

    Returns:
        The report written to ``finetune.json``.

    Raises:
        UserError: bad input, found before any training.
        NonFiniteLoss: when an arm's training loss stops being finite.
    """
    r = recipe
    console = console or PipeSafeConsole()
    t_start = time.perf_counter()
    meta = read_run_meta(r.run)  # checked keys, and a sha256 that is the weights' own
    weights, sha = read_encoder_meta(r.run)[1], meta["sha256"]
    out_dir = Path(out).expanduser() if out is not None else run_dir_of(r.run)
    _check_out_dir(out_dir, run_dir_of(r.run))  # before any training: its results must have somewhere to go
    if (out_dir / "finetune.json").is_file():
        console.print(f"[yellow]note[/]: {out_dir / 'finetune.json'} exists; this fine-tune replaces it when it ends "
                      "— give --out another folder to keep both")
    if r.train.threads:
        torch.set_num_threads(r.train.threads)
    device = select_device(r.train.device)
    precision = resolve_precision(r.train.precision, device, console)  # warns once, not once per arm and seed
    if data is None:
        data = prepare_data(r, meta, device)
    info = data.info
    batch = min(r.train.batch_size, len(data.train))
    steps_per_epoch = steps_per_finetune_epoch(len(data.train), batch)
    attack = min(r.train.eval_batch_size, len(data.attack)) if data.attack is not None else 0
    evaluation = min(r.train.eval_batch_size, max(len(data.val), len(data.test)))
    largest_batch = -(-len(data.train) // steps_per_epoch)
    check_finetune_memory(r, meta, largest_batch, attack, precision,
                          *device_memory(device, DistInfo()), evaluation=evaluation)
    counts = [c for c in info["class_counts"] if c > 0]
    pool = ""
    if info.get("disjoint_from_pool"):
        pool = (f" outside the {info['pool']:,}-image pretraining pool" if info["pool"] is not None else
                f", none of which the run pretrained on (its split: {info['pretraining_split']})")
    named = "" if r.name == "finetune" else f" {r.name}"  # the default recipe's name says nothing new
    epochs = _plural(r.train.epochs, "epoch")
    console.print(f"[bold]sslkit finetune[/]{named}: {meta['encoder']} ({meta['stem']} stem) from {r.run} on "
                  f"{info['dataset']} — {info['labeled']:,} labeled images{pool} ({len(data.train):,} train + "
                  f"{len(data.val):,} validation, {min(counts)}–{max(counts)} per class), {info['test']:,} "
                  f"{info['test_split']} images; arms {', '.join(r.arms)} × seeds {r.seed_list}; {epochs} × "
                  f"{_plural(steps_per_epoch, 'step')} of batch ≤{largest_batch} on {device}",
                  soft_wrap=not console.is_terminal)  # a log keeps the header on one line
    for note in _notes(meta, info):
        console.print(f"[yellow]note[/]: {note}")

    parts = parts_folder(out_dir, r, meta, data, device, precision)
    clean_temp_files(parts)  # a part whose writing was killed
    kept = {(arm, seed): x for seed in r.seed_list for arm in r.arms
            if (x := _read_part(parts, arm, seed)) is not None}
    trainings = len(r.seed_list) * len(r.arms)
    if kept:
        console.print(f"reusing {len(kept)} of {trainings} arm × seed trainings that ended in an earlier run of this "
                      f"fine-tune ({parts}); training the other {trainings - len(kept)}", highlight=False,
                      soft_wrap=not console.is_terminal)  # a log keeps it on one line
    runs: list[dict[str, Any]] = []
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _EpochStatsColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    total = (trainings - len(kept)) * r.train.epochs * steps_per_epoch
    with _interruption_says_what_is_kept(runs, trainings, out_dir, parts), \
            Progress(*columns, console=console, transient=False,
                     refresh_per_second=PROGRESS_REFRESH_PER_SECOND) as progress:
        task = progress.add_task("finetune", total=total, loss=float("nan"), val=float("nan"))
        for seed in r.seed_list:
            for arm in r.arms:
                if (arm, seed) in kept:
                    runs.append(kept[arm, seed])
                    continue
                progress.update(task, description=f"{arm} · seed {seed}")
                res = train_arm(arm, seed, r, meta, weights, data, device, precision, progress, task, console,
                                observer)
                # The test split, touched once per arm and seed, by the model training ended with; each pass its
                # own bar below the trainings' (a log is told what it waits for instead).
                if not console.is_terminal:
                    console.print(f"{arm} seed {seed}: scoring {len(data.test):,} test images"
                                  + (f", then FGSM on {len(data.attack):,}" if data.attack is not None else ""),
                                  highlight=False)
                test_top1, test_loss, pred = evaluate(res.model, data.test, data.mean, data.std,
                                                      r.train.eval_batch_size, device, progress,
                                                      f"{arm} · seed {seed} · test")
                fgsm = {}
                if data.attack is not None:
                    fgsm = robustness.fgsm_accuracy(res.model, data.attack.images, data.attack.labels, data.mean,
                                                    data.std, r.robustness.epsilons, r.train.eval_batch_size, device,
                                                    progress, f"{arm} · seed {seed} · FGSM")
                sel = res.selected_epoch - 1
                record = dict(arm=arm, seed=seed, test_top1=test_top1, test_loss=test_loss,
                              test_balanced_top1=balanced_accuracy(pred, data.test.labels),
                              val_top1=res.curves["val_top1"][sel], selected_epoch=res.selected_epoch,
                              steps=res.steps, seconds=round(res.seconds, 1), fgsm=robustness.to_json(fgsm),
                              curves=res.curves)
                _write_part(parts, record)  # first: an interruption names as kept only what is
                runs.append(record)
                progress.console.print(f"{arm} seed {seed}: test top-1 {test_top1:.4f} (val {record['val_top1']:.4f}"
                                       f", epoch {res.selected_epoch}, {res.seconds:.0f} s)", highlight=False)
                del res

    report = _report(r, meta, sha, data, runs, device, time.perf_counter() - t_start)
    print_table(report, console)
    fgsm_summary = report["robustness"]["summary"]
    robustness.print_robustness_table(fgsm_summary, info["attack"], console)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "finetune.json"
    write_json(json_path, report)
    figures = out_dir / "figures"
    plot_finetune(report, figures / "finetune.png")
    written = [json_path, figures / "finetune.png"]
    if fgsm_summary:
        written.append(robustness.plot_robustness(fgsm_summary, figures / "finetune_fgsm.png", ARM_COLOURS,
                                                  f"{info['dataset']}: FGSM, {info['labeled']:,} labels",
                                                  n_images=info["attack"], seeds=r.seed_list))
    else:  # an earlier fine-tune's chart would sit beside this finetune.json, and sslkit report would show it
        (figures / "finetune_fgsm.png").unlink(missing_ok=True)
    # Every key's parts: those of this fine-tune are in finetune.json now, those of another (an interrupted run of a
    # recipe since changed) can never be reused. One left behind would only be reused by this very fine-tune.
    shutil.rmtree(out_dir / PARTS, ignore_errors=True)
    console.print(f"wrote {', '.join(str(p) for p in written)} ({report['seconds']:.0f} s)")
    return report


@contextlib.contextmanager
def _interruption_says_what_is_kept(runs: list[dict[str, Any]], trainings: int, out_dir: Path,
                                    parts: Path) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) while arms train says what it kept: ``finetune.json`` and its figures are written only
    once every arm and seed has ended, but each training that ended is in ``parts``, and the same command continues
    from them. The command's generic line, "files already written are complete", left a user to guess whether the
    ended seeds had been saved."""
    try:
        yield
    except KeyboardInterrupt:
        ended = ", ".join(f"{x['arm']} seed {x['seed']}" for x in runs)
        done = (f" ({ended}); they are kept in {parts}, and the same command (same recipe, encoder and data) "
                "continues from them" if runs else "; none had ended, so the same command starts again")
        old = out_dir / "finetune.json"
        unchanged = f"; {old} is the earlier fine-tune's, unchanged" if old.is_file() else ""
        raise KeyboardInterrupt(f"interrupted after {len(runs)} of {trainings} arm × seed trainings{done} "
                                f"(finetune.json and its figures are written once all have ended){unchanged}") \
            from None


def _notes(meta: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """What the scores' reader must know: an image-folder run that pretrained on the test split, or whose folder
    no longer holds the files it pretrained on. Printed, and kept in ``finetune.json``."""
    note = pretraining_overlap_note(meta, info["imagefolder_changed"]) if info["dataset"] == "imagefolder" else None
    return [note] if note is not None else []


def _report(r: FinetuneRecipe, meta: dict[str, Any], sha: str, data: LabeledData, runs: list[dict[str, Any]],
            device: torch.device, seconds: float) -> dict[str, Any]:
    info = data.info
    summary: dict[str, dict[str, Any]] = {}
    for arm in r.arms:
        mine = [x for x in runs if x["arm"] == arm]
        test_m, test_s = _mean_std([x["test_top1"] for x in mine])
        val_m, val_s = _mean_std([x["val_top1"] for x in mine])
        summary[arm] = {"test_top1.mean": test_m, "test_top1.std": test_s, "val_top1.mean": val_m,
                        "val_top1.std": val_s, "seeds": len(mine),
                        "seconds.mean": _mean_std([x["seconds"] for x in mine])[0]}
    by = {(x["arm"], x["seed"]): x["test_top1"] for x in runs}
    diffs = [by[("ssl", s)] - by[("supervised", s)] for s in r.seed_list]
    diff_m, diff_s = _mean_std(diffs)
    fgsm_runs = {arm: [{float(k): v for k, v in x["fgsm"].items()} for x in runs if x["arm"] == arm and x["fgsm"]]
                 for arm in r.arms}
    fgsm_summary = robustness.summarise(fgsm_runs)
    for arm, s in fgsm_summary.items():
        for e, m, sd in zip(s["eps"], s["mean"], s["std"], strict=True):
            summary[arm][f"fgsm.eps{e:g}.mean"] = m
            summary[arm][f"fgsm.eps{e:g}.std"] = sd
    return {
        "name": r.name, "run": str(r.run), "dataset": info["dataset"], "split": info["test_split"],
        "notes": _notes(meta, info), "encoder": meta["encoder"], "stem": meta["stem"], "encoder_sha256": sha,
        "image_size": meta["image_size"],
        "sizes": {k: info[k] for k in ("labeled", "train", "val", "test", "attack", "candidates")}
        | {"pool": info["pool"], "pretraining_split": info["pretraining_split"]},
        "labeled": {"size": r.labeled.size, "disjoint_from_pool": r.labeled.disjoint_from_pool,
                    "imbalance_ratio": r.labeled.imbalance_ratio, "balance": r.labeled.balance,
                    "class_counts_min": min(c for c in info["class_counts"] if c > 0),
                    "class_counts_max": max(info["class_counts"]), "seed": r.labeled.seed},
        "summary": summary,
        "difference": {"arms": "ssl - supervised", "test_top1.mean": diff_m, "test_top1.std": diff_s,
                       "ssl_wins": sum(d > 0 for d in diffs), "seeds": len(diffs)},
        "difference_per_seed": [{"seed": s, "ssl - supervised": d} for s, d in zip(r.seed_list, diffs, strict=True)],
        "protocol": {"epochs": r.train.epochs, "batch_size": min(r.train.batch_size, info["train"]),
                     "optimizer": r.optim.name, "lr": r.optim.lr, "encoder_lr_mult": r.optim.encoder_lr_mult,
                     "weight_decay": r.optim.weight_decay, "select": r.train.select, "crop": r.augment.crop,
                     "flip_p": r.augment.flip_p, "device": device.type, "threads": torch.get_num_threads()},
        "robustness": {"epsilons": list(r.robustness.epsilons), "n_images": info["attack"], "attack": "FGSM",
                       "units": "[0, 1] pixels, before normalisation", "summary": fgsm_summary},
        "runs": runs,
        "class_counts": info["class_counts"],
        "recipe": r.to_dict(),
        "seconds": round(seconds, 1),
    }


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _pm(mean: float, std: float, seeds: int, sign: bool = False) -> str:
    """``mean ± std`` over seeds; the mean alone for one seed (its spread is unknown, not 0)."""
    m = f"{mean:+.4f}" if sign else f"{mean:.4f}"
    return m if seeds < 2 else f"{m} ± {std:.4f}"


def print_table(report: dict[str, Any], console: Console) -> None:
    """Arms as rows (mean ± std over seeds, and each seed), then the paired difference ssl − supervised."""
    s, lab = report["sizes"], report["labeled"]
    runs = report["runs"]
    table = Table(title=f"{report['dataset']}: {report['encoder']} fine-tuned on {s['labeled']:,} labeled images "
                        f"({s['train']:,} train + {s['val']:,} validation), scored once on {s['test']:,} "
                        f"{report['split']} images", title_justify="left",
                  caption=f"labeled subset {'outside' if lab['disjoint_from_pool'] else 'drawn regardless of'} the "
                          f"pretraining pool — {lab['class_counts_min']}–{lab['class_counts_max']} images per class, "
                          f"imbalance ratio {lab['imbalance_ratio']:g}, class balance: {lab['balance']}; "
                          f"{_plural(report['protocol']['epochs'], 'epoch')}, select {report['protocol']['select']}",
                  caption_justify="left")
    several = len(_seeds_run(report)) > 1  # one seed: its score alone, no column repeating it
    columns = [("arm", "left"), ("start", "left"), ("test top-1", "right"), ("per seed", "right"),
               ("val top-1", "right"), ("encoder lr ×", "right"), ("balance", "left"), ("s / seed", "right")]
    for col, just in columns if several else [c for c in columns if c[0] != "per seed"]:
        table.add_column(col, justify=just)
    for arm, m in report["summary"].items():
        mine = [x for x in runs if x["arm"] == arm]
        mult = report["protocol"]["encoder_lr_mult"] if arm == "ssl" else (1.0 if arm == "supervised" else 0.0)
        per_seed = [" ".join(f"{x['test_top1']:.4f}" for x in mine)] if several else []
        table.add_row(arm, ARM_INIT[arm], _pm(m["test_top1.mean"], m["test_top1.std"], len(mine)), *per_seed,
                      _pm(m["val_top1.mean"], m["val_top1.std"], len(mine)), f"{mult:g}", lab["balance"],
                      f"{m['seconds.mean']:.0f}")
    d = report["difference"]
    table.add_section()
    how = f"paired; ssl ahead in {d['ssl_wins']}/{d['seeds']} seeds" if several else f"one seed, {runs[0]['seed']}"
    per_seed = [" ".join(f"{x['ssl - supervised']:+.4f}" for x in report["difference_per_seed"])] if several else []
    table.add_row("[bold]ssl − supervised", how,
                  f"[bold]{_pm(d['test_top1.mean'], d['test_top1.std'], d['seeds'], sign=True)}", *per_seed,
                  "", "", "", "")
    console.print(table)


def _seeds_run(report: dict[str, Any]) -> list[int]:
    """The training seeds of a fine-tune's runs, in order."""
    return sorted({x["seed"] for x in report["runs"]})


def plot_finetune(report: dict[str, Any], path: Path) -> Path:
    """Left: test top-1 per arm (mean ± std, each seed a dot). Right: validation top-1 per epoch (mean ± std).
    Of one seed, each arm's score and curve alone, and the seed named: its spread is unknown, not 0.

    The left panel marks each arm's mean with a point, not a bar: its y-axis is zoomed to the runs' range, where a
    bar's length (measured from the axis floor, not from 0) would overstate the gap between arms.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["summary"])
    seeds_run = _seeds_run(report)
    several = len(seeds_run) > 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    means = [report["summary"][a]["test_top1.mean"] for a in arms]
    stds = [report["summary"][a]["test_top1.std"] if several else 0.0 for a in arms]
    colours = [ARM_COLOURS.get(a, "#999999") for a in arms]
    for i, a in enumerate(arms):
        ax1.errorbar([i], [means[i]], yerr=[stds[i]] if several else None, fmt="o", markersize=10, capsize=10,
                     elinewidth=2, color=colours[i], zorder=2)
        if several:
            seeds = [x["test_top1"] for x in report["runs"] if x["arm"] == a]
            offsets = torch.linspace(-0.12, 0.12, len(seeds)).tolist()
            ax1.scatter([i + 0.22 + o for o in offsets], seeds, color="black", s=14, zorder=3,
                        label="one seed" if i == 0 else None)
        ax1.annotate(f"{means[i]:.3f}", (i, means[i]), xytext=(-14, 0), textcoords="offset points", ha="right",
                     va="center", fontsize=9)
    values = [x["test_top1"] for x in report["runs"]] + [v for m, s in zip(means, stds, strict=True)
                                                         for v in (m - s, m + s)]
    pad = max(0.01, 0.25 * (max(values) - min(values)))
    ax1.set_ylim(max(0.0, min(values) - pad), min(1.0, max(values) + pad))
    ax1.set_xlim(-0.6, len(arms) - 0.4)
    ax1.set_xticks(range(len(arms)), arms)
    if several:
        ax1.legend(loc="lower right", fontsize=8)
    ax1.set_ylabel(f"{report['split']} top-1")
    d = report["difference"]
    if several:
        ax1.set_title(f"{report['sizes']['labeled']:,} labels: ssl − supervised = {d['test_top1.mean']:+.3f} ± "
                      f"{d['test_top1.std']:.3f}\n(mean ± std of the per-seed differences, {d['seeds']} seeds)",
                      fontsize=10)
    else:
        ax1.set_title(f"{report['sizes']['labeled']:,} labels: ssl − supervised = {d['test_top1.mean']:+.3f}\n"
                      f"(a single training seed: {seeds_run[0]})", fontsize=10)
    ax1.grid(axis="y", alpha=0.3)
    for a in arms:
        curves = torch.tensor([x["curves"]["val_top1"] for x in report["runs"] if x["arm"] == a], dtype=torch.float64)
        epochs = list(range(1, curves.shape[1] + 1))
        mean = curves.mean(0)
        ax2.plot(epochs, mean, label=a, color=ARM_COLOURS.get(a), marker="." if len(epochs) < 40 else None)
        if several:
            std = curves.std(0)
            ax2.fill_between(epochs, mean - std, mean + std, color=ARM_COLOURS.get(a), alpha=0.2)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(f"validation top-1 (mean ± std over {len(seeds_run)} seeds)" if several else
                   f"validation top-1 (training seed {seeds_run[0]})")
    ax2.set_title(f"validation: {report['sizes']['val']:,} held-out labeled images")
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.grid(alpha=0.3)
    ax2.legend()
    from sslkit.viz import save_figure

    return save_figure(fig, path)


def finetune_from_file(path: str | Path, out: str | Path | None = None, overrides: tuple[str, ...] = (),
                       console: Console | None = None) -> dict[str, Any]:
    """Loads a fine-tune recipe (or takes a run directory with the defaults) and runs :func:`run_finetune`."""
    return run_finetune(load_finetune_recipe(path, overrides), out=out, console=console)
