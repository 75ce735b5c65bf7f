"""SimCLR's stochastic view generator, run on whole batches on the training device with Kornia.

Chen et al. 2020 (§3 and appendix A): random resized crop with resize, horizontal flip, colour distortion of
strength s (jitter applied with p=0.8: brightness, contrast, saturation 0.8·s, hue 0.2·s; grayscale with
p=0.2) and Gaussian blur. Every probability and strength comes from the recipe; none is left to a library
default. Each sample of a batch draws its own parameters, from Kornia's modules (except the order of the four
colour-jitter steps, drawn once per batch as Kornia's ``ColorJitter`` does; SimCLR draws it per image); the crop
with its flip (``ResizedCropFlip``) and the colour distortion (``sslkit.colour.ColourDistortion``) compute their
pixels in fewer passes than Kornia's kernels, with the same parameters and random stream. The crop samples the
image with ``align_corners=True`` and no antialiasing, as Kornia does (torchvision's ``resized_crop`` differs by
a sub-pixel shift); only a ``view_size`` below the image size would shrink a crop enough to alias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslkit.colour import ColourDistortion

if TYPE_CHECKING:
    from sslkit.config import AugmentConfig


class ResizedCropFlip(nn.Module):
    """Kornia's ``RandomResizedCrop`` (bilinear resampling) then ``RandomHorizontalFlip``, sampled in one pass.

    The parameters are Kornia's own: the crop boxes and flip coins come from the two modules'
    ``forward_parameters``, in the order a plain ``nn.Sequential`` of them draws them, so the random stream, and the
    views, are those of the two modules one after the other (up to rounding: a test holds them equal). The pixels
    are sampled once: the crop of box (x0, y0)–(x1, y1) onto an S×S view with corners aligned maps view column j to
    source column x0 + j·(x1 − x0)/(S − 1), and a flip of that view is the same map with x0 and x1 exchanged. One
    ``grid_sample`` replaces Kornia's warp (whose matrix it solves per box, and its gating passes) plus the flip's
    pass and its two gating passes: 2–3 ms instead of 5–6 ms for 512 RGB 32×32 views on a 2-core CPU
    (``eval/profile_augment.py``). A one-pixel side of a box samples that pixel across the view, as Kornia does.

    Args:
        size: (height, width) of the views.
        scale: area range of the crop, as a fraction of the image.
        ratio: aspect-ratio range of the crop.
        flip_p: probability of a horizontal flip.

    Shape:
        (B, C, H, W) float -> (B, C, size[0], size[1])
    """

    def __init__(self, size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float],
                 flip_p: float) -> None:
        super().__init__()
        self.size = tuple(size)
        self.crop = K.RandomResizedCrop(self.size, scale=tuple(scale), ratio=tuple(ratio), p=1.0,
                                        cropping_mode="resample", align_corners=True)
        self.flip = K.RandomHorizontalFlip(p=flip_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        out_h, out_w = self.size
        boxes = self.crop.forward_parameters(x.shape)["src"]  # (B, 4, 2) corners: top-left, top-right, …
        flipped = self.flip.forward_parameters((b, c, out_h, out_w))["batch_prob"] > 0.5
        boxes = boxes.to(x.device, x.dtype, non_blocking=True)
        flipped = flipped.to(x.device, non_blocking=True)
        (x0, y0), (x1, y1) = boxes[:, 0].unbind(-1), boxes[:, 2].unbind(-1)
        x0, x1 = torch.where(flipped, x1, x0), torch.where(flipped, x0, x1)  # a flip walks the box right to left
        # Source pixel coordinates of every view pixel, then normalised to [-1, 1] (corners aligned).
        cols = torch.linspace(0.0, 1.0, out_w, device=x.device, dtype=x.dtype)  # [0.] for a one-pixel side
        rows = torch.linspace(0.0, 1.0, out_h, device=x.device, dtype=x.dtype)
        gx = torch.addcmul(x0[:, None], (x1 - x0)[:, None], cols).mul_(2 / max(w - 1, 1)).sub_(1)  # (B, out_w)
        gy = torch.addcmul(y0[:, None], (y1 - y0)[:, None], rows).mul_(2 / max(h - 1, 1)).sub_(1)  # (B, out_h)
        grid = torch.stack([gx[:, None, :].expand(b, out_h, out_w), gy[:, :, None].expand(b, out_h, out_w)], dim=-1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class Normalize(nn.Module):
    """(x − mean) / std per channel, as ``kornia.augmentation.Normalize``; in place when asked.

    ``SimCLRAugment`` normalises its own views in place, while they are in cache, instead of writing a new batch.

    Shape:
        (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        return (x if inplace else x.clone()).sub_(self.mean).div_(self.std)


class SimCLRAugment(nn.Module):
    """Turns a batch of uint8 images into one batch of normalised random views.

    Call it twice on the same batch for the two views. Grayscale (1-channel) images skip the saturation,
    hue and grayscale operations, which do nothing meaningful on one channel.

    Args:
        image_size: side of the square output views.
        channels: 1 or 3.
        mean, std: per-channel normalisation applied last (in [0, 1] pixel units).
        crop_scale: area range of the random resized crop.
        crop_ratio: aspect-ratio range of the crop.
        flip_p: probability of a horizontal flip.
        jitter_p: probability of colour jitter.
        jitter_strength: s; brightness/contrast/saturation 0.8·s and hue 0.2·s.
        grayscale_p: probability of converting to grayscale (RGB only).
        blur_p: probability of Gaussian blur.
        blur_sigma: σ range of the blur.
        blur_kernel_frac: blur kernel size as a fraction of the image side (SimCLR: 10%), rounded to odd ≥ 3.
        compile: run each of the colour jitter's four steps (brightness, contrast, saturation, hue) through
            ``torch.compile``, which fuses each step's passes; a step falls back to the eager one with a warning
            where compiling fails. Same views up to rounding, after seconds of compiling.

    Shape:
        (B, C, H, W) uint8 or float in [0, 1] -> (B, C, image_size, image_size) float32 (from uint8; a float
        input keeps its dtype)
    """

    def __init__(self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float],
                 crop_scale: tuple[float, float] = (0.08, 1.0), crop_ratio: tuple[float, float] = (0.75, 4 / 3),
                 flip_p: float = 0.5, jitter_p: float = 0.8, jitter_strength: float = 1.0, grayscale_p: float = 0.2,
                 blur_p: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 blur_kernel_frac: float = 0.1, compile: bool = False) -> None:
        super().__init__()
        s = jitter_strength
        ops: list[nn.Module] = [ResizedCropFlip((image_size, image_size), crop_scale, crop_ratio, flip_p)]
        colour = ColourDistortion(channels, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, jitter_p if s > 0 else 0.0,
                                  grayscale_p, compile=compile)
        if colour.jitter is not None or colour.grayscale is not None:
            ops.append(colour)
        if blur_p > 0:
            k = max(3, int(round(blur_kernel_frac * image_size)) // 2 * 2 + 1)
            ops.append(K.RandomGaussianBlur((k, k), tuple(blur_sigma), p=blur_p))
        ops.append(Normalize(mean, std))
        self.ops = nn.Sequential(*ops)
        self.channels = channels

    @classmethod
    def from_config(cls, cfg: AugmentConfig, data_size: int, channels: int, mean: Sequence[float],
                    std: Sequence[float], compile: bool | None = None) -> SimCLRAugment:
        """The recipe's ``augment`` section for images of side ``data_size``; views are ``cfg.view_size`` when set.

        ``compile`` overrides ``cfg.compile`` (a preview of a few views is not worth compiling for).
        """
        return cls(cfg.view_size or data_size, channels, mean, std, crop_scale=cfg.crop_scale,
                   crop_ratio=cfg.crop_ratio, flip_p=cfg.flip_p, jitter_p=cfg.jitter_p,
                   jitter_strength=cfg.jitter_strength, grayscale_p=cfg.grayscale_p, blur_p=cfg.blur_p,
                   blur_sigma=cfg.blur_sigma, blur_kernel_frac=cfg.blur_kernel_frac,
                   compile=cfg.compile if compile is None else compile)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels
                or not (x.dtype == torch.uint8 or x.dtype.is_floating_point)):
            # Else a tuple-unpacking error deep in the crop, or (3-channel images into a 1-channel pipeline) views
            # without the saturation, hue and grayscale steps, silently.
            what = (f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__)
            raise ValueError(f"SimCLRAugment({self.channels} channel(s)) takes a (B, {self.channels}, H, W) tensor, "
                             f"uint8 in 0..255 or float in [0, 1], got {what}")
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        *random_ops, normalize = self.ops
        for op in random_ops:
            x = op(x)
        return normalize(x, inplace=True)  # x is the pipeline's own tensor: the crop always makes a new one


def image_tensor(x: Any) -> torch.Tensor:
    """``x`` as a tensor, a numpy array's memory shared where torch can view it. An array read backwards
    (``x[:, ::-1]``, the usual BGR→RGB flip of OpenCV images) is copied: torch takes no negative strides, and
    refused it with a ValueError from inside sslkit."""
    if isinstance(x, np.ndarray) and any(s < 0 for s in x.strides):
        x = np.ascontiguousarray(x)
    return torch.as_tensor(x)


def preprocess(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Deterministic evaluation preprocessing: uint8 → float in [0, 1] → normalised.

    Args:
        x: uint8 images, a tensor or a numpy array (as :func:`~sslkit.evaluation.features.extract_features` takes).
        mean, std: per-channel normalisation in [0, 1] units.

    Raises:
        ValueError: ``x`` is not uint8: floats already in [0, 1] would be divided by 255 again, into a blank image.

    Shape:
        (B, C, H, W) uint8 -> (B, C, H, W) float32
    """
    x = image_tensor(x)  # a numpy array's dtype never equals torch.uint8: it was refused as "got uint8"
    if x.dtype != torch.uint8:
        raise ValueError(f"preprocess takes uint8 images in 0..255, got {x.dtype} — convert floats in [0, 1] with "
                         "(x * 255).round().to(torch.uint8)")
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s
