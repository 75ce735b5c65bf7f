"""The run directory's durable files: atomic checkpoints, safe loading, and the exported encoder.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then renamed over its
final name, so a file with a final name is always complete. ``last.pt`` is the newest checkpoint; ``step-N.pt``
keeps the last ``keep`` ones, and ``--resume`` takes a ``step-N.pt`` newer than ``last.pt`` (a process killed
between the two renames). Loading always uses ``torch.load(weights_only=True)``: a checkpoint carrying pickled
code is refused instead of run.

A write that fails (a full disk, a folder made read-only) raises :class:`~sslkit.errors.WriteError` naming the
file and the system's reason, removes its temporary file, and leaves every file written before as it was.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import re
import textwrap
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from sslkit.devices import checked_device
from sslkit.errors import SslkitWarning, UserError, WriteError

TMP_PREFIX = ".tmp-"
_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turns an OSError raised inside into a :class:`~sslkit.errors.WriteError` naming ``path``: the OSError names
    a temporary file, or (a write that failed part-way, a full disk) no file at all."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(e.errno, e.strerror or str(e), str(path)) from e


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Calls ``write(tmp_path)`` then fsyncs and renames the temporary file to ``path``.

    Raises:
        WriteError: the file could not be written; ``path`` is as it was and no temporary file is left.
    """
    atomic_write_files({Path(path): write})


def atomic_write_files(writes: Mapping[Path, Callable[[Path], Any]]) -> None:
    """Writes several files as one: each to a temporary file beside it, and only once all are written and synced
    are they renamed into place. A file set that must agree (encoder.safetensors and the sha256 of it in
    encoder.json) is then never half new, half old when the disk fills between the two.

    Raises:
        WriteError: a file could not be written; every file is as it was and no temporary file is left.
    """
    umask = os.umask(0)
    os.umask(umask)
    made: list[tuple[Path, Path]] = []  # (temporary, final)
    try:
        for path, write in writes.items():
            path = Path(path)
            tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                made.append((tmp, path))  # before writing: a file the write left half done is removed too
                write(tmp)
                os.chmod(tmp, 0o666 & ~umask)  # as open() makes files: safetensors makes them owner-only
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
        for tmp, path in made:
            with writing(path):
                os.replace(tmp, path)
    finally:
        for tmp, _ in made:
            with contextlib.suppress(OSError):  # (a folder made read-only) the write's own error is the one to tell
                tmp.unlink(missing_ok=True)
    for folder in dict.fromkeys(path.parent for _, path in made):
        _fsync_dir(folder)


def torch_bytes(obj: Any) -> memoryview:
    """``obj`` as ``torch.save`` writes it, in memory. Given a file name, torch's C++ writer raises RuntimeErrors
    without an errno: a full disk gives "unexpected pos 35316288 vs 35316184" (the reason lost), a read-only one
    "open file failed with strerror: Read-only file system". Written from memory by Python, the OSError carries
    the errno and the reason."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Writes ``obj`` as indented, strict JSON, atomically. A NaN or infinite number (a score that could not be
    measured) is written as null: Python's ``json`` would write ``NaN``, which strict readers (jq, JavaScript,
    most JSON libraries) refuse."""
    text = json.dumps(_finite_or_none(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def clean_temp_files(folder: Path) -> list[Path]:
    """Removes temporary files left by a process killed while writing; returns what it removed."""
    removed = []
    if Path(folder).is_dir():
        for p in Path(folder).iterdir():
            if p.name.startswith(TMP_PREFIX):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def step_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The ``step-N.pt`` files of a folder, oldest first."""
    found = []
    if Path(folder).is_dir():
        for p in Path(folder).iterdir():
            m = _STEP_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(state: dict[str, Any], folder: Path, step: int, keep: int = 3) -> Path:
    """Writes ``step-N.pt`` atomically, points ``last.pt`` at it, and prunes to the newest ``keep``.

    Raises:
        WriteError: a file could not be written; ``last.pt`` is then still the checkpoint it was.
    """
    folder = Path(folder)
    path = folder / f"step-{step}.pt"
    data = torch_bytes(state)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))

    def link_last(tmp: Path) -> None:
        try:
            os.link(path, tmp)  # a hard link: no second copy on disk
        except OSError:
            tmp.write_bytes(data)

    atomic_write(folder / "last.pt", link_last)
    for _, old in step_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _shortened(reason: str) -> str:
    """A library's reason for an unreadable file, cut to about 120 characters at a word: torch's run long."""
    return textwrap.shorten(reason, 120, placeholder=" …")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads one checkpoint safely (tensors and plain containers only).

    Raises:
        UserError: when the file is missing, truncated, or carries anything but plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} not found — check the run directory")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 — any failure to unpickle means the file cannot be trusted
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        # A pickled object: torch names its global ("Unsupported global", or "unsupported GLOBAL" for an old-style
        # pickle). "weights_only" is in every message of torch's fallback path, a file of junk bytes included.
        if "unsupported global" in str(e).lower():
            raise UserError(f"checkpoint {str(path)!r} holds objects other than tensors and plain data; refused "
                            "to unpickle it (only load checkpoints you trust, re-saved as plain state dicts)") from None
        reason = _shortened(first)
        raise UserError(f"checkpoint {str(path)!r} is unreadable ({reason}) — it is truncated or corrupt") from None


def load_latest(folder: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint of a run that loads; falls back past corrupt ones with a warning.

    Returns:
        ``(state, path)``, or None when the folder holds no checkpoint at all.

    Raises:
        UserError: when there are checkpoints but none of them loads.
    """
    folder = Path(folder)
    candidates = _newest_first(folder)  # temporary files are never candidates (the trainer removes them)
    if not candidates:
        return None
    for path in candidates:
        try:
            return load_checkpoint(path, map_location), path
        except UserError as e:
            warnings.warn(f"skipping checkpoint {path}: {e}", SslkitWarning, stacklevel=2)
    raise UserError(f"no checkpoint in {str(folder)!r} could be loaded (all {len(candidates)} are corrupt) — "
                    "start a fresh run with another --out (out= from Python): this folder's checkpoints keep it "
                    "from a new run")


def _newest_first(folder: Path, saved_step: Callable[[Path], int | None] | None = None) -> list[Path]:
    """A folder's checkpoints in the order ``--resume`` tries them: newest step first, ``last.pt`` before the
    ``step-N.pt`` of its own step.

    :func:`save_checkpoint` renames ``step-N.pt`` into place before it points ``last.pt`` at it, so a process
    killed between the two leaves a complete ``step-N.pt`` and ``last.pt`` at the checkpoint before; trusting
    ``last.pt`` first repeated the steps between. Its step is that of the ``step-N.pt`` it is a hard link to; a
    copy (a file system without hard links) is read for it, and one that does not load is tried first, so that
    loading it says what is wrong with it.

    ``saved_step`` reads that copy's step (:func:`_saved_step` when None): a caller that reads the candidates'
    steps too passes a memoised one, so that the copy is read once.
    """
    steps = list(reversed(step_checkpoints(folder)))  # newest first
    last = folder / "last.pt"
    if not last.is_file():
        return [p for _, p in steps]
    at = next((n for n, p in steps if _same_file(last, p)), None)
    if at is None:
        at = (saved_step or _saved_step)(last)
    if at is None:
        return [last, *(p for _, p in steps)]
    return [p for n, p in steps if n > at] + [last] + [p for n, p in steps if n <= at]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _saved_step(path: Path) -> int | None:
    """The step a checkpoint was saved at, or None when it does not load; tensors are memory-mapped, not read."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # noqa: BLE001 — as load_latest: a checkpoint that does not load is passed over
        return None


def resume_point(folder: Path) -> tuple[int, Path] | None:
    """The step and file of the checkpoint that ``--resume`` (:func:`load_latest`) would continue from, or None.

    Only reads: no temporary file is removed and nothing is warned, for a message about a run whose folder may
    be full or read-only. Tensors are memory-mapped, not read, and each file is read once: a copied ``last.pt``,
    read by :func:`_newest_first` for its place in the order, is not read again for its step.
    """
    saved_step = functools.cache(_saved_step)
    for path in _newest_first(Path(folder), saved_step):
        step = saved_step(path)
        if step is not None:
            return step, path
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


ENCODER_META_KEYS = ("encoder", "stem", "in_chans", "image_size", "mean", "std")  # what load_encoder needs


def export_encoder(encoder: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
    """Writes ``RUN/encoder.safetensors`` and ``RUN/encoder.json`` (``meta`` plus the weights' sha256).

    Args:
        encoder: the module to export (a DDP or compiled wrapper is unwrapped).
        run_dir: the folder to write to.
        meta: the record :func:`load_encoder` rebuilds the encoder from: at least ``encoder`` (the timm name),
            ``stem``, ``in_chans``, ``image_size``, ``mean`` and ``std``; other keys are kept as they are.

    Raises:
        ValueError: ``meta`` lacks one of those keys, or describes another network than ``encoder`` (another
            number of channels, a classifier head left on): :func:`load_encoder` could not rebuild it, so the
            export is refused here rather than found unloadable later. Nothing is written.
        WriteError: a file could not be written; both files are as they were (an earlier export stays whole).
    """
    from sslkit.models import build_encoder

    missing = [k for k in ENCODER_META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"export_encoder: meta lacks {', '.join(missing)} — load_encoder needs "
                         f"{', '.join(ENCODER_META_KEYS)}")
    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(encoder).state_dict().items()}
    with torch.device("meta"):  # shapes only: no memory, no initialisation (0.02 s for a ResNet-18)
        expected = build_encoder(str(meta["encoder"]), str(meta["stem"]), int(meta["in_chans"])).state_dict()
    mismatch = state_mismatch(expected, state)
    if mismatch:
        raise ValueError(f"export_encoder: the module is not the {_described(meta)} that meta describes, so "
                         f"load_encoder could not rebuild it: {mismatch} — export the encoder without its head, "
                         "with meta naming its timm model, stem and channels")
    # In memory first, as torch_bytes: safetensors' own writer gives no errno. Both files are renamed together.
    weights = safetensors_bytes(state)
    info = json.dumps(dict(meta, sha256=hashlib.sha256(weights).hexdigest()), indent=2) + "\n"
    atomic_write_files({run_dir / "encoder.safetensors": lambda tmp: tmp.write_bytes(weights),
                        run_dir / "encoder.json": lambda tmp: tmp.write_text(info)})


def state_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
    """How the tensors ``state`` fail to fit a module whose own state dict is ``own``, or None when they fit."""
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if not (missing or unexpected or shapes):
        return None
    first = shapes[:1] or unexpected[:1] or missing[:1]
    return (f"{len(missing)} missing, {len(unexpected)} unexpected and {len(shapes)} differently shaped tensors "
            f"(first: {first[0]})")


def _described(meta: dict[str, Any]) -> str:
    return f"{meta['encoder']} ({meta['stem']} stem, {meta['in_chans']} channel(s))"


def read_encoder_meta(run_or_file: str | Path) -> tuple[dict[str, Any], Path]:
    """Finds ``encoder.json`` and ``encoder.safetensors`` for a run directory or either file."""
    p = Path(run_or_file)
    folder = p if p.is_dir() else p.parent
    weights, meta_path = folder / "encoder.safetensors", folder / "encoder.json"
    if not weights.is_file() or not meta_path.is_file():
        if not p.exists():
            raise UserError(f"{str(p)!r} does not exist — give a run directory made by `sslkit pretrain`")
        if p.is_file() and p.name not in ("encoder.safetensors", "encoder.json"):
            raise UserError(f"{str(p)!r} is a file, not a run — give the run directory `sslkit pretrain` wrote "
                            "(its --out), or its encoder.safetensors")
        raise UserError(f"{str(folder)!r} has no exported encoder (encoder.safetensors + encoder.json) — "
                        "finish `sslkit pretrain` for this run, or resume it with --resume (resume=True from Python)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{meta_path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path} holds a JSON {type(meta).__name__}, not the object `sslkit pretrain` writes — "
                        "export the encoder again")
    return meta, weights


def load_encoder(run_or_file: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trained encoder of a run, ready for use in other code.

    Args:
        run_or_file: a run directory, or its ``encoder.safetensors`` / ``encoder.json``.
        device: where to put the module: cpu (the default), cuda, cuda:N, mps, or auto (CUDA when available).

    Returns:
        An eval-mode timm module mapping a normalised batch to features. ``enc.pretrained_cfg`` gives
        ``input_size`` (C, H, W), ``mean`` and ``std`` for preprocessing; ``enc.sslkit_meta`` the whole record.

    Shape:
        (B, C, H, W) -> (B, num_features)
    """
    from sslkit.models import build_encoder

    device = checked_device(device)  # "gpu", "cuda:7" on a machine with fewer: one line, before any file is read
    meta, weights = read_encoder_meta(run_or_file)
    missing = [k for k in ENCODER_META_KEYS if k not in meta]
    if missing:
        raise UserError(f"encoder.json of {str(run_or_file)!r} lacks the key {missing[0]!r}")
    try:
        in_chans, size = int(meta["in_chans"]), int(meta["image_size"])
        mean, std = tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"])
    except (TypeError, ValueError) as e:
        raise UserError(f"encoder.json of {str(run_or_file)!r} has a malformed in_chans, image_size, mean or std "
                        f"({e}) — export the encoder again") from None
    if len(mean) != in_chans or len(std) != in_chans:
        raise UserError(f"encoder.json of {str(run_or_file)!r} gives {len(mean)} mean and {len(std)} std values for "
                        f"{in_chans} channel(s) — export the encoder again")
    encoder = build_encoder(str(meta["encoder"]), str(meta["stem"]), in_chans)
    actual = sha256_file(weights)
    if meta.get("sha256") and meta["sha256"] != actual:
        raise UserError(f"{weights} has sha256 {actual[:16]}… but encoder.json records {meta['sha256'][:16]}… — the "
                        "weights were changed after the export, or the export was interrupted; export them again")
    try:
        state = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 — safetensors raises its own error types for a damaged file
        reason = _shortened(str(e).strip())
        raise UserError(f"{weights} is not a readable safetensors file ({reason}) — export the "
                        "encoder again") from None
    mismatch = state_mismatch(encoder.state_dict(), state)
    if mismatch:
        raise UserError(f"{weights} does not match a {_described(meta)} as encoder.json describes it: {mismatch}")
    encoder.load_state_dict(state)
    # timm's ImageNet entries (hub id, weights url, test size, crop fraction) describe other weights: dropped, so
    # timm's resolve_data_config gives sslkit's own preprocessing (the whole image, this size and statistics).
    cfg = {k: v for k, v in encoder.pretrained_cfg.items()
           if k not in ("hf_hub_id", "url", "test_input_size", "test_crop_pct", "file", "hf_hub_filename")}
    encoder.pretrained_cfg = dict(cfg, input_size=(in_chans, size, size), mean=mean, std=std, num_classes=0,
                                  crop_pct=1.0, crop_mode="center", fixed_input_size=False)
    encoder.default_cfg = encoder.pretrained_cfg
    encoder.sslkit_meta = meta
    return encoder.to(device).eval()
