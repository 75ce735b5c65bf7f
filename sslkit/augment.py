"""SimCLR's stochastic view generator, run on whole batches on the training device with Kornia.

Chen et al. 2020 (§3 and appendix A): random resized crop with resize, horizontal flip, colour distortion of
strength s (jitter applied with p=0.8: brightness, contrast, saturation 0.8·s, hue 0.2·s; grayscale with
p=0.2) and Gaussian blur. Every probability and strength comes from the recipe; none is left to a library
default. Each sample of a batch draws its own parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import nn


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

    Shape:
        (B, C, H, W) uint8 or float in [0, 1] -> (B, C, image_size, image_size) float32
    """

    def __init__(self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float],
                 crop_scale: tuple[float, float] = (0.08, 1.0), crop_ratio: tuple[float, float] = (0.75, 4 / 3),
                 flip_p: float = 0.5, jitter_p: float = 0.8, jitter_strength: float = 1.0, grayscale_p: float = 0.2,
                 blur_p: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 blur_kernel_frac: float = 0.1) -> None:
        super().__init__()
        s = jitter_strength
        ops: list[nn.Module] = [
            K.RandomResizedCrop((image_size, image_size), scale=tuple(crop_scale), ratio=tuple(crop_ratio), p=1.0,
                               cropping_mode="resample"),
            K.RandomHorizontalFlip(p=flip_p),
        ]
        if jitter_p > 0 and s > 0:
            if channels == 3:
                ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=jitter_p))
            else:
                ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.0, 0.0, p=jitter_p))
        if channels == 3 and grayscale_p > 0:
            ops.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p > 0:
            k = max(3, int(round(blur_kernel_frac * image_size)) // 2 * 2 + 1)
            ops.append(K.RandomGaussianBlur((k, k), tuple(blur_sigma), p=blur_p))
        ops.append(K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std), p=1.0))
        self.ops = nn.Sequential(*ops)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return self.ops(x)


def preprocess(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Deterministic evaluation preprocessing: uint8 → float in [0, 1] → normalised.

    Shape:
        (B, C, H, W) uint8 -> (B, C, H, W) float32
    """
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s
