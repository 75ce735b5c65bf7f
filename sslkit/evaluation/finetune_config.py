"""Fine-tune recipes: frozen dataclasses loaded as strictly as pretraining recipes (:mod:`sslkit.config`).

A fine-tune recipe names the pretrained run it starts from (``run:``) and everything both arms share: the
data, the labeled subset, the augmentation, the optimizer and schedule, the budget and the seeds. Unknown
keys (with the closest valid key), wrong types, out-of-range values and a missing run each raise a one-line
``UserError`` with ``file:line`` (or the ``--set`` that caused it), before any data is read.

A fine-tune recipe is told apart from a pretraining recipe by its top-level ``run:`` key
(:func:`is_finetune_recipe`).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sslkit.config import (
    MAX_THREADS,
    SEED_MAX,
    _build_section,
    _f,
    _key_lines,
    _loc,
    _plain,
    _set_dotted,
    parse_override,
    safe_load,
)
from sslkit.errors import UserError


@dataclass(frozen=True)
class FinetuneData:
    """Which images; by default the run's own data set, folder and image size."""

    dataset: str | None = None  # None: the run's data set (encoder.json)
    root: str | None = None  # None: the run's data.root
    download: bool = False
    test_split: str = "test"  # scored once per arm and seed, after training; never used for any choice


@dataclass(frozen=True)
class LabeledConfig:
    """The labeled subset both arms learn from, and its validation part."""

    size: int | float | None = _f(None, gt=0)  # a count, or a fraction of the labeled train split; None: all candidates
    disjoint_from_pool: bool = True  # draw only from train images outside the run's pretraining pool
    val_size: int | float = _f(0.1, gt=0)  # held out of the labeled subset: per-epoch validation curves
    seed: int = _f(0, ge=-SEED_MAX, le=SEED_MAX)  # seeds the subset and its validation part (every arm, every seed)
    imbalance_ratio: float = _f(1.0, ge=1)  # > 1: long-tailed subset, class c keeps ratio^(-c/(K-1)) of its share
    balance: Literal["none", "sampler", "loss_weights"] = "none"  # class-balanced sampling or loss weights


@dataclass(frozen=True)
class FinetuneAugment:
    """Standard supervised augmentation, batched with Kornia on the device; every probability explicit."""

    crop: Literal["pad", "resized", "none"] = "pad"  # pad: pad then random crop back; resized: random resized crop
    pad: int = _f(4, ge=0)  # pixels of black padding (crop: pad)
    crop_scale: tuple[float, float] = _f((0.08, 1.0), gt=0, le=1)  # area range (crop: resized)
    crop_ratio: tuple[float, float] = _f((0.75, 4 / 3), gt=0)  # aspect-ratio range (crop: resized)
    flip_p: float = _f(0.5, ge=0, le=1)  # horizontal flip


@dataclass(frozen=True)
class FinetuneOptim:
    """Optimizer and warmup-cosine schedule, the same for every arm (built with :mod:`sslkit.optim`)."""

    name: Literal["sgd", "adamw", "lars"] = "sgd"
    lr: float = _f(0.05, gt=0)
    lr_scaling: Literal["linear", "sqrt", "none"] = "none"  # scaling of lr with the batch size (reference 256)
    momentum: float = _f(0.9, ge=0, lt=1)
    weight_decay: float = _f(5e-4, ge=0)
    trust_coeff: float = _f(0.001, gt=0)  # LARS only
    warmup_epochs: float = _f(0.0, ge=0)
    min_lr_ratio: float = _f(0.0, ge=0, le=1)
    encoder_lr_mult: float = _f(1.0, gt=0)  # ssl arm only: the pretrained encoder's lr is this × lr


@dataclass(frozen=True)
class FinetuneTrain:
    """Budget, selection and device."""

    epochs: int = _f(30, ge=1)
    batch_size: int = _f(128, ge=2)
    select: Literal["last", "best_val"] = "last"  # which epoch is scored on the test split
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    threads: int | None = _f(None, ge=1, le=MAX_THREADS)
    eval_batch_size: int = _f(500, ge=1)


@dataclass(frozen=True)
class RobustnessConfig:
    """FGSM (Goodfellow et al. 2015) on a seeded, stratified subset of the test split."""

    epsilons: tuple[float, ...] = _f((0.0, 0.01, 0.02, 0.05, 0.1), ge=0, le=1)  # [0, 1] pixel units; [] = off
    n_images: int | None = _f(2000, ge=1)  # None: the whole test split


@dataclass(frozen=True)
class FinetuneRecipe:
    """A whole fine-tune comparison: the ``ssl`` and ``supervised`` arms (and optionally ``linear``)."""

    name: str = "finetune"
    run: str | None = None  # the pretrained run directory (or its encoder.safetensors)
    # first training seed; seeds are seed, seed+1, … (bounded so that every seed derived from them fits int64)
    seed: int = _f(0, ge=-SEED_MAX, le=SEED_MAX - 1000)
    seeds: int = _f(3, ge=1, le=1000)  # how many training seeds per arm
    linear_arm: bool = False  # also train a linear head on the frozen pretrained encoder
    data: FinetuneData = field(default_factory=FinetuneData)
    labeled: LabeledConfig = field(default_factory=LabeledConfig)
    augment: FinetuneAugment = field(default_factory=FinetuneAugment)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    train: FinetuneTrain = field(default_factory=FinetuneTrain)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    @property
    def arms(self) -> tuple[str, ...]:
        return ("ssl", "supervised", "linear") if self.linear_arm else ("ssl", "supervised")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def is_finetune_recipe(path: str | Path) -> bool:
    """True for a YAML file whose top level has ``run:`` (fine-tune recipes name the run they start from)."""
    try:
        raw = safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "run" in raw


def run_dir_of(run: str | Path) -> Path:
    """The run directory of ``run:`` (a run directory, or a file inside it)."""
    p = Path(run).expanduser()
    return p if p.is_dir() else p.parent


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int | str]]:
    if not path.is_file():
        raise UserError(f"fine-tune recipe {str(path)!r} not found — check the path (recipes live in recipes/), or "
                        "give a run directory")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file — give a fine-tune recipe (YAML) or a run directory") from None
    try:
        raw = safe_load(text)
    except yaml.constructor.ConstructorError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise UserError(f"{path}:{line}: YAML tags are not allowed — recipes are plain data") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UserError(f"{path}:{mark.line + 1 if mark else '?'}: not valid YAML "
                        f"({getattr(e, 'problem', None) or e})") from None
    if raw is not None and not isinstance(raw, dict):
        raise UserError(f"{path}: a fine-tune recipe must be a mapping (run:, labeled:, optim:, …), got "
                        f"{type(raw).__name__}")
    return raw or {}, _key_lines(text)


def test_split_problem(dataset: str, split: str) -> str:
    """Why ``split`` of ``dataset`` cannot be the fine-tune's test split (where it is not one of
    :func:`sslkit.data.scored_splits`), and which splits can."""
    from sslkit.data import scored_split_problem

    return scored_split_problem(dataset, split, "data.test_split", "the labeled subset is drawn from")


def _check_semantics(r: FinetuneRecipe, where: str, lines: dict[str, int | str]) -> None:
    """Checks that need no data: the run exists and is complete, names are known, fractions are fractions, this
    machine has train.device."""
    from sslkit.data import DATASETS, scored_splits
    from sslkit.devices import TRAIN_KINDS, checked_device

    def loc(key: str) -> str:
        return _loc(where, lines, key)

    if not r.run:
        raise UserError(f"{loc('run')}: run is not set — set run: to a run directory made by `sslkit pretrain` "
                        "(e.g. run: runs/fashion_mnist)")
    run = Path(r.run).expanduser()
    folder = run_dir_of(run)
    if not run.exists():
        raise UserError(f"{loc('run')}: pretrained run {r.run!r} does not exist — pretrain it first "
                        f"(sslkit pretrain RECIPE --out {r.run}), or set run: to an existing run directory")
    if not (folder / "encoder.safetensors").is_file() or not (folder / "encoder.json").is_file():
        raise UserError(f"{loc('run')}: run {r.run!r} has no exported encoder (encoder.safetensors + encoder.json) "
                        "— let `sslkit pretrain` finish, or continue it with --resume")
    if r.labeled.disjoint_from_pool and not (folder / "recipe.yaml").is_file():
        raise UserError(f"{loc('labeled.disjoint_from_pool')}: {folder / 'recipe.yaml'} is missing, so the "
                        "pretraining pool is unknown — restore it, or set labeled.disjoint_from_pool: false")
    d = r.data
    if d.dataset is not None and d.dataset not in DATASETS:
        close = difflib.get_close_matches(d.dataset, DATASETS, n=1)
        hint = f" — did you mean {close[0]!r}?" if close else f" — use one of {', '.join(DATASETS)}"
        raise UserError(f"{loc('data.dataset')}: unknown data set {d.dataset!r} (data.dataset){hint}")
    if d.root and not d.download and not Path(d.root).expanduser().is_dir():
        raise UserError(f"{loc('data.root')}: data.root {d.root!r} is not a folder — fix the path or set "
                        "data.download: true")
    if d.dataset is not None and d.test_split not in scored_splits(d.dataset):
        raise UserError(f"{loc('data.test_split')}: {test_split_problem(d.dataset, d.test_split)}")
    if d.test_split == "train":
        raise UserError(f"{loc('data.test_split')}: data.test_split cannot be 'train' — the labeled subset comes "
                        "from train; use test")
    lab = r.labeled
    for key in ("size", "val_size"):
        value = getattr(lab, key)
        if isinstance(value, float) and value >= 1:
            raise UserError(f"{loc(f'labeled.{key}')}: labeled.{key} as a fraction must be < 1, got {value:g} — "
                            "give a count (an integer) or a fraction in (0, 1)")
    a = r.augment
    for key in ("crop_scale", "crop_ratio"):
        lo, hi = getattr(a, key)
        if lo > hi:
            raise UserError(f"{loc(f'augment.{key}')}: augment.{key} must be [low, high] with low ≤ high, got "
                            f"[{lo:g}, {hi:g}]")
    checked_device(r.train.device, "train.device", loc("train.device"), TRAIN_KINDS)
    if len(set(r.robustness.epsilons)) != len(r.robustness.epsilons):
        raise UserError(f"{loc('robustness.epsilons')}: robustness.epsilons lists a value twice — list each ε once")


def finetune_recipe_from_dict(raw: Any, where: str = "recipe",
                              lines: dict[str, int | str] | None = None) -> FinetuneRecipe:
    """Builds and checks a :class:`FinetuneRecipe` from a nested dict (as parsed from YAML)."""
    lines = lines or {}
    recipe = _build_section(FinetuneRecipe, raw or {}, "", where, lines)
    _check_semantics(recipe, where, lines)
    return recipe


def load_finetune_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneRecipe:
    """Reads a fine-tune recipe (or takes a run directory with every default), applies ``--set``, checks all.

    Args:
        path: a fine-tune recipe YAML file, or a run directory (``run:`` = that directory, defaults elsewhere).
        overrides: ``key.path=value`` strings applied after the file, e.g. ``labeled.size=600``.

    Raises:
        UserError: a missing file or run, YAML that is not plain data, or any bad key or value (one line).
    """
    p = Path(path)
    if p.is_dir():
        raw: dict[str, Any] = {"run": str(p)}
        lines: dict[str, int | str] = {"run": f"run directory {str(p)!r}"}
        where = str(p)
    else:
        raw, lines = _read_yaml(p)
        where = str(p)
        pretraining = sorted({"model", "loss", "monitor"} & raw.keys())
        if "run" not in raw and pretraining:
            raise UserError(f"{p} is a pretraining recipe (it has {', '.join(pretraining)}) — run it with `sslkit "
                            f"pretrain {p}`, then fine-tune the run it makes: `sslkit finetune RUN`")
    for text in overrides:
        key, value = parse_override(text)
        # Errors about this key, or about a section only it made (a misspelt 'Labeled'), name the override.
        for dotted in (*_set_dotted(raw, key, value, f"--set {text}"), key):
            lines[dotted] = f"--set {text}"
    return finetune_recipe_from_dict(raw, where, lines)
