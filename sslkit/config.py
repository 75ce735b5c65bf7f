"""Recipes: one frozen dataclass per section, loaded strictly from YAML.

Every check runs here, before any data is read or any model built: unknown keys (with the closest valid key),
wrong types, out-of-range values, missing data roots. Each failure is a ``UserError`` whose one-line message
names the file, the line where known, the dotted key and a fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sslkit.errors import UserError


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping names a key twice (YAML says keys are unique; PyYAML would keep the last silently)."""


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only) that also reads ``1e-4`` as a number and refuses duplicate keys.

    PyYAML follows YAML 1.1, whose floats need a dot (``1.0e-4``), so an unquoted ``1e-4`` would load as the
    string ``'1e-4'``; YAML 1.2 and every recipe writer mean a number. Quoted values stay strings. A key given
    twice in one mapping (two ``optim:`` sections) would silently drop the first: it is an error instead.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.ScalarNode] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` merges; keys after it may override
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):  # lists as keys: PyYAML refuses them itself
                continue
            if key in seen:
                raise DuplicateKeyError(None, None, _duplicate_key(seen[key], key_node), key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _duplicate_key(first: yaml.ScalarNode, again: yaml.ScalarNode) -> str:
    """The message for two keys of one mapping that load as one, named as written: two spellings (``0.1`` and
    ``.1``, ``1`` and ``true``, ``~`` and ``null``) are both named, as the loaded value would match neither."""
    lines = first.start_mark.line + 1, again.start_mark.line + 1
    if first.value == again.value:
        return f"key {first.value!r} appears twice in one mapping (lines {lines[0]} and {lines[1]}) — keep one"
    return (f"keys {first.value!r} (line {lines[0]}) and {again.value!r} (line {lines[1]}) of one mapping load as the "
            "same key — keep one")


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 exponent floats: one document through :class:`RecipeLoader`.

    The loader is a ``yaml.SafeLoader`` (its constructor builds plain data only and refuses ``!!python/…``
    tags); it is driven directly, as ``yaml.safe_load`` drives ``SafeLoader``, never through ``yaml.load``.
    """
    loader = RecipeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


MAX_THREADS = 1024  # train.threads: far above any CPU's cores, far below where OpenMP fails (16,384 threads: an error)


def _f(default: Any, **checks: Any) -> Any:
    """A dataclass field with range/choice checks in its metadata (gt, ge, le, lt)."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=checks)
    return field(default=default, metadata=checks)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are held out for monitoring."""

    dataset: str = "fashion-mnist-mini"
    split: str = "train"  # the split pretrained on (data.pretraining_splits): train; STL-10 also unlabeled or
    # train+unlabeled, SVHN also extra or train+extra
    root: str | None = None  # searched first; required for imagefolder
    download: bool = False  # let torchvision download when the files are missing
    image_size: int | None = _f(None, ge=8)  # resize once at load; None keeps the native size
    channels: int | None = _f(None, ge=1, le=3)  # imagefolder only: 1 or 3
    pool_size: int | float | None = _f(None, gt=0)  # pretraining images: a count or a fraction; None: all
    mean: tuple[float, ...] | None = None  # None: measured on the pretraining pool
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class AugmentConfig:
    """SimCLR view generation (Chen et al. 2020, appendix A); every probability explicit."""

    crop_scale: tuple[float, float] = _f((0.08, 1.0), gt=0, le=1)
    crop_ratio: tuple[float, float] = _f((0.75, 4 / 3), gt=0)
    flip_p: float = _f(0.5, ge=0, le=1)
    jitter_p: float = _f(0.8, ge=0, le=1)
    jitter_strength: float = _f(1.0, ge=0, le=2.5)  # hue 0.2·s: Kornia takes hue shifts up to half a turn
    grayscale_p: float = _f(0.2, ge=0, le=1)
    blur_p: float = _f(0.0, ge=0, le=1)
    blur_sigma: tuple[float, float] = _f((0.1, 2.0), gt=0)
    blur_kernel_frac: float = _f(0.1, gt=0, le=1)
    # Side of the training views; null = the data's image size. Smaller views cost less per step, and since the
    # crop enlarges objects, evaluating at full size then sees them nearer their training size (FixRes, Touvron
    # et al. 2019). The encoder is still evaluated at data.image_size.
    view_size: int | None = _f(None, ge=8)
    # Fuse each colour jitter step with torch.compile (a few seconds to compile once; on the CPU it needs a C++
    # compiler and falls back to eager kernels with a warning without one). On a CPU it no longer pays since the
    # eager steps work in place (9.0 against 8.3 ms for 512 RGB 32×32 views): eval/results/bench_pretrain_cpu.md.
    compile: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Encoder and projection head."""

    encoder: str = "resnet18"
    stem: Literal["imagenet", "cifar"] = "imagenet"
    proj_hidden: int = _f(512, ge=1)
    proj_out: int = _f(128, ge=1)
    proj_layers: int = _f(2, ge=1)
    proj_bn: bool = True


@dataclass(frozen=True)
class LossConfig:
    """NT-Xent."""

    temperature: float = _f(0.5, gt=0)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule; ``lr`` is the base rate at batch 256, scaled by ``lr_scaling``."""

    name: Literal["lars", "sgd", "adamw"] = "lars"
    lr: float = _f(0.3, gt=0)
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    momentum: float = _f(0.9, ge=0, lt=1)
    weight_decay: float = _f(1e-6, ge=0)
    trust_coeff: float = _f(0.001, gt=0)  # LARS only
    warmup_epochs: float = _f(1.0, ge=0)
    min_lr_ratio: float = _f(0.0, ge=0, le=1)  # final lr as a fraction of the peak
    # LARS only: fuse the update with torch.compile (10–20 s to compile once; on the CPU it needs a C++ compiler and
    # falls back to the uncompiled update with a warning without one). On a CPU it does not pay: the default update
    # is one pass of torch's fused SGD kernel per parameter (9.2 against 12.3 ms, eval/profile_step.py).
    compile: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, device, precision, logging and checkpoints."""

    epochs: int = _f(1, ge=1)
    batch_size: int = _f(256, ge=2)  # images per step (2× as many views)
    max_steps: int | None = _f(None, ge=1)  # stop early (smoke runs); the schedule still spans all epochs
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    channels_last: bool = True
    compile: bool = False
    # torch intra-op threads; None keeps torch's default. Bounded: torch.set_num_threads(32768) crashes the process
    # (a segmentation fault, exit 139, no message)
    threads: int | None = _f(None, ge=1, le=MAX_THREADS)
    chunk_size: int | None = _f(None, ge=2)  # views per chunk (gradient cache): exact large batches in bounded memory
    sync_bn: bool = False  # SyncBatchNorm across ranks under torchrun (CUDA only: PyTorch has no CPU SyncBatchNorm)
    log_every: int = _f(10, ge=1)  # steps between metrics.jsonl lines
    checkpoint_every: int | None = _f(None, ge=1)  # steps; None: at each epoch end only
    keep_last: int = _f(3, ge=1)
    nonfinite: Literal["stop", "skip"] = "stop"  # on a NaN/Inf loss: stop, or skip the step
    max_skips: int = _f(10, ge=0)
    # Pool images (clean, unaugmented) on which the evaluated and exported encoder's batch-norm statistics are
    # measured; 0 keeps the running averages of the augmented training views. On Fashion-MNIST 10,000 moved k-NN
    # by −0.3 to +0.5 and linear by −0.5 to +0.2 over five runs (eval/results/fashion_mnist_sweep.md): off by default.
    bn_calibration: int = _f(0, ge=0)


@dataclass(frozen=True)
class MonitorConfig:
    """The online k-NN monitor: a held-out part of the pretraining split, classified against a labeled bank."""

    every: int = _f(1, ge=0)  # epochs between evaluations; 0 = only at the start and the end
    val_size: int = _f(1000, ge=1)  # held out of pretraining (stratified)
    bank_size: int = _f(5000, ge=1)  # labeled pool images used as the k-NN bank
    k: int = _f(20, ge=1)
    temperature: float = _f(0.07, gt=0)


SEED_STRIDE = 1_000_003  # trainer.py seeds epoch e's data order with seed * SEED_STRIDE + e, rank k's views with … + k
# The largest |seed|: every seed derived from it (seed + 3, seed * SEED_STRIDE + an epoch or rank below 2**32) stays in
# the signed 64-bit range that torch and numpy seeds take.
SEED_MAX = (2**63 - 1 - 2**32) // SEED_STRIDE


@dataclass(frozen=True)
class Recipe:
    """A whole pretraining recipe."""

    name: str = "run"
    seed: int = _f(0, ge=-SEED_MAX, le=SEED_MAX)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), as written to ``RUN/recipe.yaml``."""
        return _plain(dataclasses.asdict(self))

    def replace(self, **overrides: Any) -> Recipe:
        """A copy with dotted-key overrides applied and checked, e.g. ``replace(**{"train.epochs": 2})``; a section
        may be given as a mapping (``replace(train={"epochs": 2})``: its other keys are kept) or as a whole
        config (``replace(train=TrainConfig(epochs=2))``)."""
        raw = self.to_dict()
        for key, value in overrides.items():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = _plain(dataclasses.asdict(value))
            _set_dotted(raw, key, value, "override")
        return recipe_from_dict(raw, "override")


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> list[str]:
    """Sets ``raw[a][b]… = value`` for ``key`` ``a.b…``; returns the dotted sections it had to create.

    A mapping given for a section sets the keys it names and keeps the section's others: replaced whole, the
    section's other keys fell back to their defaults, not the recipe's (``train={epochs: 1}`` reset batch_size).
    """
    if isinstance(value, dict):
        section = raw
        for part in key.split("."):
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict):
            return [made for k, v in value.items() for made in _set_dotted(raw, f"{key}.{k}", v, where)]
    node = raw
    parts = key.split(".")
    created = []
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            created.append(".".join(parts[:i + 1]))
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{where}: cannot set {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value
    return created


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return "a list of numbers" if args[-1] is Ellipsis else f"a list of {len(args)} numbers"
    return {int: "an integer", float: "a finite number", bool: "true/false", str: "a string", type(None): "null"}.get(
        tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Returns (ok, converted) for a YAML value against a field type; no silent string→number parsing."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, None
    if origin is Literal:
        return (value in typing.get_args(tp)), value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False, None
        if args[-1] is not Ellipsis and len(value) != len(args):
            return False, None
        out = []
        for v in value:
            ok, c = _coerce(v, float)
            if not ok:
                return False, None
            out.append(c)
        return True, tuple(out)
    if tp is type(None):
        return value is None, None
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else None
    if tp is str:
        return isinstance(value, str), value
    return False, None


def _check_range(value: Any, checks: dict[str, float]) -> str | None:
    if value is None or not checks:
        return None
    values = value if isinstance(value, tuple) else (value,)
    bounds = {"gt": (">", lambda v, b: v > b), "ge": ("≥", lambda v, b: v >= b),
              "lt": ("<", lambda v, b: v < b), "le": ("≤", lambda v, b: v <= b)}

    def show(x: float) -> str:  # integers in full: a seed bound must not print as 9.22334e+12
        return str(x) if isinstance(x, int) else f"{x:g}"

    for name, bound in checks.items():
        sym, ok = bounds[name]
        for v in values:
            if not ok(v, bound):
                return f"must be {sym} {show(bound)}, got {show(v)}"
    return None


def _build_section(cls: type, raw: Any, path: str, where: str, lines: dict[str, int | str]) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"{_loc(where, lines, path)}: section {path!r} must be a mapping of keys to values, "
                        f"got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            valid = [f"{path}.{k}" if path else k for k in fields]
            close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.6)
            hint = f" — did you mean {close[0]!r}?" if close else f" — valid keys: {', '.join(valid)}"
            raise UserError(f"{_loc(where, lines, dotted)}: unknown key {dotted!r}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build_section(tp, value, dotted, where, lines)
            continue
        ok, converted = _coerce(value, tp)
        if not ok:
            raise UserError(f"{_loc(where, lines, dotted)}: {dotted} must be {_type_name(tp)}, got {value!r} "
                            f"({type(value).__name__})")
        problem = _check_range(converted, dict(fields[key].metadata))
        if problem:
            raise UserError(f"{_loc(where, lines, dotted)}: {dotted} {problem}")
        kwargs[key] = converted
    return cls(**kwargs)


def _loc(where: str, lines: dict[str, int | str], dotted: str) -> str:
    """``file:line`` of a key, or the ``--set`` that gave it its value."""
    line = lines.get(dotted) or lines.get(dotted.rsplit(".", 1)[0])
    if isinstance(line, str):
        return line
    return f"{where}:{line}" if line else where


def _key_lines(text: str) -> dict[str, int | str]:
    """Maps each dotted key of a YAML mapping to its 1-based line, for error messages."""
    try:
        root = yaml.compose(text, Loader=RecipeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, int | str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                dotted = f"{prefix}.{k.value}" if prefix else str(k.value)
                out[dotted] = k.start_mark.line + 1
                walk(v, dotted)

    walk(root, "")
    return out


def _check_semantics(r: Recipe, where: str, lines: dict[str, int | str], check_root: bool = True) -> None:
    """Cross-field checks that need no data: names that must exist, and, with ``check_root``, what running the
    recipe here needs: ``data.root`` is a folder, this machine has ``train.device``."""
    from sslkit.data import DATASETS, pretraining_splits, split_problem  # the registry's names; nothing is loaded
    from sslkit.devices import TRAIN_KINDS, checked_device

    d = r.data
    if d.dataset not in DATASETS:
        close = difflib.get_close_matches(d.dataset, DATASETS, n=1)
        hint = f" — did you mean {close[0]!r}?" if close else f" — use one of {', '.join(DATASETS)}"
        raise UserError(f"{_loc(where, lines, 'data.dataset')}: unknown data set {d.dataset!r} (data.dataset){hint}")
    if d.split not in pretraining_splits(d.dataset):
        raise UserError(f"{_loc(where, lines, 'data.split')}: {split_problem(d.dataset, d.split)}")
    if d.dataset == "imagefolder" and not d.root:
        raise UserError(f"{_loc(where, lines, 'data.dataset')}: data.dataset 'imagefolder' needs data.root, the "
                        "folder of class subfolders")
    if check_root and d.root and not d.download and not Path(d.root).expanduser().is_dir():
        raise UserError(f"{_loc(where, lines, 'data.root')}: data.root {d.root!r} is not a folder — fix the path "
                        "or set data.download: true")
    if isinstance(d.pool_size, float) and d.pool_size >= 1:
        raise UserError(f"{_loc(where, lines, 'data.pool_size')}: data.pool_size as a fraction must be < 1, got "
                        f"{d.pool_size:g} — give a count (an integer) or a fraction in (0, 1)")
    if (d.mean is None) != (d.std is None) or (d.mean is not None and (len(d.mean) != len(d.std) or not d.mean)):
        raise UserError(f"{_loc(where, lines, 'data.mean')}: data.mean and data.std must both be set, with one "
                        "value per channel, or both be null")
    if d.std is not None and min(d.std) <= 0:
        raise UserError(f"{_loc(where, lines, 'data.std')}: data.std values must be > 0")
    a = r.augment
    for key in ("crop_scale", "crop_ratio", "blur_sigma"):
        lo, hi = getattr(a, key)
        if lo > hi:
            raise UserError(f"{_loc(where, lines, f'augment.{key}')}: augment.{key} must be [low, high] with "
                            f"low ≤ high, got [{lo:g}, {hi:g}]")
    import timm

    if not timm.is_model(r.model.encoder):
        close = difflib.get_close_matches(r.model.encoder, timm.list_models(), n=1)
        hint = f" — did you mean {close[0]!r}?" if close else " — see timm.list_models()"
        raise UserError(f"{_loc(where, lines, 'model.encoder')}: unknown model {r.model.encoder!r} "
                        f"(model.encoder){hint}")
    if r.optim.compile and r.optim.name != "lars":
        raise UserError(f"{_loc(where, lines, 'optim.compile')}: optim.compile fuses the LARS update only; "
                        f"set optim.name: lars or remove optim.compile (optim.name is {r.optim.name!r})")
    checked_device(r.train.device, "train.device", _loc(where, lines, "train.device"), TRAIN_KINDS, here=check_root)


def recipe_from_dict(raw: Any, where: str = "recipe", lines: dict[str, int | str] | None = None,
                     check_root: bool = True) -> Recipe:
    """Builds and checks a ``Recipe`` from a nested dict (as parsed from YAML)."""
    lines = lines or {}
    if raw is None:
        raw = {}
    recipe = _build_section(Recipe, raw, "", where, lines)
    _check_semantics(recipe, where, lines, check_root)
    return recipe


def parse_override(text: str) -> tuple[str, Any]:
    """Parses one ``--set key.path=value`` (the value as YAML: ``0.1``, ``true``, ``[0.2, 1.0]``, ``null``)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=0.1")
    key, value = text.split("=", 1)
    try:
        parsed = safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise UserError(f"--set {text!r}: the value is not valid YAML ({e.__class__.__name__})") from None
    return key.strip(), parsed


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_root: bool = True) -> Recipe:
    """Reads a recipe file with ``yaml.safe_load``, applies ``--set`` overrides, and checks everything.

    Args:
        path: the YAML file.
        overrides: ``key.path=value`` strings, applied in order after the file.
        check_root: check what running the recipe here needs: that ``data.root`` is a folder and that this
            machine has ``train.device`` (a CUDA device of that number); off for :func:`load_run_recipe`.

    Raises:
        UserError: a missing file, YAML that is not plain data, or any bad key or value (one line each).
        TypeError: ``overrides`` is one string or a dict instead of a list of strings.
    """
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of KEY=VALUE strings, e.g. [{overrides!r}], not one string")
    if isinstance(overrides, dict):  # iterated, its keys were refused as "--set 'train.epochs': expected KEY=VALUE"
        as_list = [f"{k}={v}" for k, v in overrides.items()]
        raise TypeError(f"overrides must be a list of KEY=VALUE strings, e.g. {as_list!r}, not a dict — or load the "
                        f"recipe, then .replace(**{overrides!r})")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file {str(path)!r} not found — check the path (recipes live in recipes/)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file — give a recipe (YAML) or a run directory") from None
    try:
        raw = safe_load(text)
    except yaml.constructor.ConstructorError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        found = re.search(r"tag '([^']*)'", e.problem or "")
        tag = found.group(1) if found else (e.problem or "?")
        raise UserError(f"{path}:{line}: YAML tag {tag!r} is not allowed — recipes are plain data (numbers, "
                        "strings, lists, mappings)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else "?"
        raise UserError(f"{path}:{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if raw is not None and not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a mapping of sections (data:, model:, …), got "
                        f"{type(raw).__name__}")
    if not raw:
        raise UserError(f"{path} is empty — a recipe names at least its data (data: dataset: …); start from "
                        "recipes/quickstart.yaml")
    if "run" in raw and "labeled" in raw:
        raise UserError(f"{path} is a fine-tune recipe (it names a run and a labeled subset) — run it with "
                        f"`sslkit finetune {path}`")
    lines = _key_lines(text)
    for text_override in overrides:
        key, value = parse_override(text_override)
        # Errors about this key, or about a section only it made (a misspelt 'Train'), name the override, not the file.
        for dotted in (*_set_dotted(raw, key, value, f"--set {text_override}"), key):
            lines[dotted] = f"--set {text_override}"
    return recipe_from_dict(raw, str(path), lines, check_root)


def load_run_recipe(run: str | Path) -> Recipe:
    """The ``recipe.yaml`` a run was pretrained with, to recompute what it did (its pool, its augmentation): its
    ``data.root`` and ``train.device`` need not be there any more (data moved since, or a run made on another
    machine)."""
    return load_recipe(Path(run) / "recipe.yaml", check_root=False)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Writes the resolved recipe (every default spelled out) as YAML, atomically.

    A resumed run rewrites its ``recipe.yaml``; a process killed mid-write must not leave it empty or torn.

    Raises:
        WriteError: the file could not be written (a full disk, a read-only folder); no temporary file is left.
    """
    from sslkit.checkpoint import atomic_write  # (imports torch, which loading a recipe does not need)

    text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
