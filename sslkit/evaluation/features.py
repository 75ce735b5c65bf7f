"""Frozen-encoder features of a whole split, computed once and cached in the run directory.

Features are (N, D) float32 from the encoder in eval mode, with deterministic preprocessing only (uint8 →
[0, 1] → normalised with the run's mean/std; no augmentation), in float32 on whichever device is available.

Cache files are ``RUN/features/<model>-<split>-<size>px-<prep>-<data>.npy`` (plus ``….labels.npy``), where
``<model>`` names the weights (the first 16 hex digits of the encoder's sha256, or the random-init recipe),
``<prep>`` hashes the preprocessing and ``<data>`` fingerprints the images and labels, so a second probe reuses
them and a different encoder, preprocessing or data never does. Files are written to a temporary name, fsynced
and renamed (:func:`~sslkit.checkpoint.atomic_write`), so an interrupted probe leaves no half-written cache behind.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from sslkit.augment import image_tensor, preprocess
from sslkit.checkpoint import atomic_write, read_encoder_meta, sha256_file
from sslkit.console import PipeSafeConsole
from sslkit.data import ImageSource
from sslkit.devices import checked_device
from sslkit.errors import SslkitWarning, UserError
from sslkit.models import build_encoder, feature_dim, recalibrate_on_images

RUN_META_KEYS = ("encoder", "stem", "in_chans", "image_size", "mean", "std", "dataset")
PREPROCESSING = "uint8/255-normalise"  # bump when preprocess() changes, so old caches stop matching


def read_run_meta(run: str | Path, data_root: str | Path | None = None) -> dict[str, Any]:
    """A run's ``encoder.json``, checked against the weights, with their sha256 filled in when it lacks it.

    The sha256 keys every feature cache, so a record that does not describe the weights beside it (an export
    killed between its two files) would serve another encoder's features: it is refused instead.

    Args:
        run: the run directory.
        data_root: where the run's data is now (the commands' ``--data-root``), in place of the ``data.root`` it
            was pretrained with: for data moved since, or a run made on another machine.

    Raises:
        UserError: no exported encoder in the run, a record missing keys, a sha256 that is not the weights', or a
            ``data_root`` that is not a folder.
    """
    meta, weights = read_encoder_meta(run)
    missing = [k for k in RUN_META_KEYS if k not in meta]
    if missing:
        raise UserError(f"{Path(run) / 'encoder.json'} lacks {', '.join(missing)} — re-export the encoder with a "
                        "current sslkit")
    actual = sha256_file(weights)
    recorded = meta.get("sha256")
    if recorded and recorded != actual:
        raise UserError(f"{Path(run) / 'encoder.json'} records sha256 {recorded[:16]}… but {weights.name} has "
                        f"{actual[:16]}… (an interrupted export?) — export again with `sslkit pretrain "
                        f"{Path(run) / 'recipe.yaml'} --out {run} --resume`")
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise UserError(f"--data-root {data_root} is not a folder — give the folder the run's data is in now")
        meta = dict(meta, data_root=str(root.resolve()))
    return dict(meta, sha256=actual)


IMAGEFOLDER_CHANGED = ("the image folder's files are not those this run pretrained on (added, removed or renamed "
                       "since, or another folder), so its test split may hold images the run pretrained on")


def pretraining_overlap_note(meta: dict[str, Any], changed: bool = False) -> str | None:
    """A warning for a run whose pretraining may have seen the images its scores are measured on, or None.

    Image-folder runs made before sslkit held the folder's test split out of pretraining (their ``encoder.json``
    lacks ``imagefolder_test_held_out``) pretrained on the whole folder; and ``changed`` says the folder no longer
    holds the files the run pretrained on (:func:`~sslkit.trainer.imagefolder_changed`).
    """
    if meta.get("dataset") == "imagefolder" and "imagefolder_test_held_out" not in meta:
        return ("this run pretrained on the whole image folder, its test split included (made before sslkit held "
                "that part out), so its test scores are optimistic — pretrain it again for honest ones")
    if changed:
        return f"{IMAGEFOLDER_CHANGED} — pretrain again for honest scores"
    return None


def default_device() -> torch.device:
    """CUDA where torch sees it, else the CPU: where the evaluation commands run."""
    return checked_device("auto")


def check_finite(x: torch.Tensor, what: str) -> None:
    """One clear error instead of metrics computed on NaN/Inf features.

    Raises:
        UserError: naming ``what`` and how many rows are affected.
    """
    finite = torch.isfinite(torch.as_tensor(x))
    if not finite.all():
        bad = int((~finite).reshape(finite.shape[0], -1).any(dim=1).sum())
        raise UserError(f"{what}: {bad} of {finite.shape[0]} feature rows contain NaN or Inf — the encoder "
                        "diverged; probe an earlier checkpoint or retrain with a lower optim.lr")


def progress_bar(console: Console | None = None, transient: bool = True) -> Progress:
    """The rich progress display shared by the evaluation steps (one bar per running step).

    A transient bar is off where nothing can be redrawn (a log file, a pipe): it would show nothing there but
    leave a blank line behind.
    """
    console = console or PipeSafeConsole()
    off = transient and not (console.is_terminal or console.is_jupyter)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=transient, disable=off)


def _checked_images(encoder: nn.Module, images: Any, mean: Sequence[float], std: Sequence[float],
                    from_cfg: bool = False) -> torch.Tensor:
    """``images`` as a uint8 (N, C, H, W) tensor that fits ``encoder``, ``mean`` and ``std``, or one clear error;
    ``from_cfg`` says that mean and std are the encoder's ``pretrained_cfg``'s, not the caller's."""
    x = images.images if isinstance(images, ImageSource) else images
    if isinstance(x, np.ndarray):
        x = image_tensor(x)
    if not isinstance(x, torch.Tensor):
        raise UserError(f"extract_features takes images as a uint8 tensor or array (N, C, H, W), or an ImageSource, "
                        f"not a {type(images).__name__}")
    if x.dtype == torch.uint8 and x.ndim == 3:
        raise UserError(f"extract_features takes a batch of images (N, C, H, W), got one of shape {tuple(x.shape)} — "
                        "pass x[None] for a single image")
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise UserError(f"extract_features takes uint8 images (N, C, H, W) in 0..255, got {x.dtype} of shape "
                        f"{tuple(x.shape)} — convert floats in [0, 1] with (x * 255).round().to(torch.uint8), and "
                        "put channels first")
    c = x.shape[1]
    conv = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None and conv.in_channels != c:
        hint = (" — they look channels-last (N, H, W, C): pass x.permute(0, 3, 1, 2) (numpy: x.transpose(0, 3, 1, 2))"
                if x.shape[-1] == conv.in_channels else "")
        raise UserError(f"the images, of shape {tuple(x.shape)} read as (N, C, H, W), have {c} channel(s) but the "
                        f"encoder takes {conv.in_channels}{hint}")
    if len(mean) != c or len(std) != c:
        if from_cfg:  # build_encoder's or timm's own module: timm's ImageNet statistics, 3 values whatever in_chans
            raise UserError(f"the images have {c} channel(s) but the encoder's pretrained_cfg gives {len(mean)} mean "
                            f"and {len(std)} std values (timm's defaults: load_encoder sets a run's own) — pass "
                            "mean= and std=, one value per channel")
        raise UserError(f"the images have {c} channel(s) but mean and std have {len(mean)} and {len(std)} values")
    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        # a std of 0 made every feature NaN, reported as "the encoder diverged" and blamed on optim.lr
        raise UserError(f"mean and std must be finite and std > 0, got mean {tuple(mean)} and std {tuple(std)}")
    return x


@torch.no_grad()
def extract_features(encoder: nn.Module, images: ImageSource | torch.Tensor, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, batch_size: int = 500,
                     device: torch.device | str | None = None, progress: Progress | None = None,
                     description: str = "features") -> torch.Tensor:
    """Embeds every image with the encoder in eval mode; the encoder's train/eval mode is restored after.

    Args:
        encoder: maps a normalised (B, C, H, W) batch to (B, D), e.g. from :func:`sslkit.load_encoder`.
        images: an :class:`~sslkit.data.ImageSource` or a uint8 tensor.
        mean, std: per-channel normalisation; by default ``encoder.pretrained_cfg``'s (set by ``load_encoder``).
        batch_size: images per forward.
        device: where to run: auto (CUDA when available, the default), cpu, cuda, cuda:N or mps. The encoder is
            moved there.
        progress: a live progress display to add a bar to; a transient one of its own when None.
        description: the bar's label.

    Returns:
        Features on the CPU.

    Raises:
        UserError: a device this machine does not have (or no device: "gpu"), before any work; images that are not
            uint8 (N, C, H, W) (a numpy array is taken as it is), whose channels differ from the encoder's or from
            mean and std; features with NaN or Inf.

    Shape:
        (N, C, H, W) uint8 -> (N, D) float32
    """
    device = checked_device(device)  # before any work: "gpu" or "cuda:7" is one line, not torch's error at the end
    from_cfg = mean is None or std is None
    if from_cfg:
        cfg = getattr(encoder, "pretrained_cfg", None) or {}
        if "mean" not in cfg or "std" not in cfg:
            raise ValueError("pass mean and std: the encoder's pretrained_cfg does not give them")
        mean, std = cfg["mean"], cfg["std"]
    x_all = _checked_images(encoder, images, mean, std, from_cfg)
    size = (getattr(encoder, "sslkit_meta", None) or {}).get("image_size")  # a run's encoder (load_encoder)
    if size and tuple(x_all.shape[2:]) != (size, size):
        # A CNN takes any size, so nothing fails: the features are those of objects at another scale than the
        # encoder learned and the probes measured, and scored well below the run's numbers.
        warnings.warn(f"the images are {x_all.shape[2]}×{x_all.shape[3]} but the encoder was pretrained and evaluated "
                      f"on {size}×{size} images — resize them first, e.g. sslkit.data.resize(images, {size})",
                      SslkitWarning, stacklevel=3)  # the caller's line: torch.no_grad's wrapper is one frame
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    was_training = encoder.training
    encoder = encoder.to(device).eval()
    out = []
    own = progress is None
    bar = progress_bar() if own else progress
    try:
        if own:
            bar.start()
        task = bar.add_task(description, total=len(x_all))
        for i in range(0, len(x_all), batch_size):
            h = encoder(preprocess(x_all[i:i + batch_size].to(device), mean, std))
            out.append(h.float().cpu())
            bar.advance(task, len(out[-1]))
        if not own:
            bar.remove_task(task)
    finally:
        if own:
            bar.stop()
        encoder.train(was_training)
    if not out:
        dim = feature_dim(encoder) if hasattr(encoder, "num_features") else 0
        return torch.zeros(0, dim)
    feats = torch.cat(out)
    check_finite(feats, description)
    return feats


def raw_pixels(images: ImageSource | torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The preprocessed images, flattened: the baseline every encoder has to beat.

    Shape:
        (N, C, H, W) uint8 -> (N, C·H·W) float32
    """
    x = images.images if isinstance(images, ImageSource) else images
    if len(x) == 0:
        return torch.zeros(0, int(np.prod(x.shape[1:])))
    return torch.cat([preprocess(x[i:i + 4096], mean, std).flatten(1) for i in range(0, len(x), 4096)])


def random_encoder(meta: dict[str, Any], calibration: ImageSource | torch.Tensor, seed: int = 0,
                   device: torch.device | str | None = None, n_images: int = 5120, batch_size: int = 256) -> nn.Module:
    """A randomly initialised encoder of the run's architecture, with honest batch-norm statistics.

    A fresh network's running statistics are mean 0 and variance 1, nowhere near its real activations, so in
    eval mode every layer would be mis-normalised and the "random features" would mostly measure that. Here
    the statistics are replaced by their exact average over ``n_images`` seeded training images (train mode,
    ``momentum=None``, no gradients), which is what a random network's features honestly are. Residual
    branches start at full scale (``zero_init_last=False``), so the random network is not a shallow one.

    Args:
        meta: the run's ``encoder.json`` (``encoder``, ``stem``, ``in_chans``, ``mean``, ``std``).
        calibration: training images for the statistics.
        seed: seeds the weights and the calibration sample; the global RNG is left untouched.
        device: where to build it (as :func:`extract_features` takes it).
        n_images: calibration images.
        batch_size: images per calibration forward.

    Returns:
        The encoder, in eval mode.
    """
    device = checked_device(device)
    x_all = calibration.images if isinstance(calibration, ImageSource) else calibration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_encoder(meta["encoder"], meta["stem"], int(meta["in_chans"]), zero_init_last=False)
        order = torch.randperm(len(x_all))[:n_images].sort().values
    encoder = encoder.to(device)
    images = x_all[order]
    return recalibrate_on_images(encoder, images, meta["mean"], meta["std"], batch_size)


def data_fingerprint(source: ImageSource, max_bytes: int = 64 << 20) -> str:
    """A short hash of the labels and the images, and the shape. An image folder's images are named by their files
    (``files_key``: each file's path, size, mtime and ctime and the decoding, with the file of each image); other
    images are hashed, a fixed stride of them beyond ``max_bytes``.

    Strided sampling keeps this fast for a memory-mapped data set of millions of images while still telling
    apart any two real data sets; the data sets sslkit downloads do not change. An image folder's can: one image
    edited in place, between the stride's, would have kept the cached features of the image it replaced.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((tuple(source.images.shape), str(source.images.dtype))).encode())
    h.update(np.ascontiguousarray(source.labels.cpu().numpy()).tobytes())
    if source.files_key is not None and source.ids is not None:
        h.update(repr((source.files_key, source.ids)).encode())
        return h.hexdigest()
    n = len(source)
    per_image = int(np.prod(source.images.shape[1:])) if n else 0
    stride = max(1, (n * per_image) // max_bytes + 1) if n else 1
    h.update(np.ascontiguousarray(source.images[::stride].cpu().numpy()).tobytes())
    return h.hexdigest()


def preprocessing_tag(mean: Sequence[float], std: Sequence[float]) -> str:
    """8 hex digits naming the evaluation preprocessing and its constants."""
    desc = repr((PREPROCESSING, tuple(round(float(m), 8) for m in mean), tuple(round(float(s), 8) for s in std)))
    return hashlib.sha256(desc.encode()).hexdigest()[:8]


def cache_path(run_dir: str | Path, model_key: str, split: str, source: ImageSource, mean: Sequence[float],
               std: Sequence[float], fingerprint: Callable[[ImageSource], str] | None = None) -> Path:
    """Where the features of ``source`` under ``model_key`` are cached in the run directory.

    ``fingerprint`` gives the images' :func:`data_fingerprint` (computed here when None): a command that names
    several caches after the same split passes one memo of it (``functools.cache(data_fingerprint)``, made by the
    command and dropped when it ends), so that its images are read for it once, not once a name.
    """
    fingerprint = fingerprint or data_fingerprint
    name = f"{model_key}-{split}-{source.image_size}px-{preprocessing_tag(mean, std)}-{fingerprint(source)}"
    return Path(run_dir) / "features" / f"{name}.npy"


def encoder_cache_path(run_dir: str | Path, meta: dict[str, Any], part: str, source: ImageSource,
                       fingerprint: Callable[[ImageSource], str] | None = None) -> Path:
    """Where the features of ``source`` by the run's exported encoder are cached: the one name ``sslkit probe``
    and the reading commands (``neighbors``, ``map``, ``report``) both use, so that each reuses the other's.

    Args:
        run_dir: the run directory.
        meta: its :func:`read_run_meta` (the weights' ``sha256``, ``mean`` and ``std``).
        part: the probe's name for the split: ``train`` for the (labeled) train split, ``eval`` for the split
            scored; a reading command's ``--split test`` is the probe's ``eval``.
        source: the split's images.
        fingerprint: as for :func:`cache_path`.
    """
    return cache_path(run_dir, f"encoder-{meta['sha256'][:16]}", part, source, meta["mean"], meta["std"],
                      fingerprint)


def _labels_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".npy")] + ".labels.npy")


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`~sslkit.checkpoint.atomic_write`: readers never see a half-written file, and
    one that was renamed into place survives a crash."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to the temporary name
            np.save(f, array)

    atomic_write(path, write)


def cached_features(path: Path, labels: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The features cached at ``path`` if they are complete and match ``labels``; else ``compute()``, saved.

    A cache file that is unreadable or disagrees with the labels is recomputed and replaced, never trusted.

    Shape:
        labels: (N,) -> (N, D) float32
    """
    path = Path(path)
    labels = torch.as_tensor(labels).cpu().long()
    if path.is_file() and _labels_path(path).is_file():
        try:
            feats = np.load(path)
            cached_labels = np.load(_labels_path(path))
        except (OSError, ValueError, EOFError):
            feats = cached_labels = None
        if (feats is not None and feats.ndim == 2 and feats.dtype == np.float32 and len(feats) == len(labels)
                and np.array_equal(cached_labels, labels.numpy())):
            return torch.from_numpy(feats)
    feats = compute().detach().cpu().float().contiguous()
    if len(feats) != len(labels):
        raise ValueError(f"computed {len(feats)} feature rows for {len(labels)} labels")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(_labels_path(path), labels.numpy())
    atomic_save_npy(path, feats.numpy())
    return feats
