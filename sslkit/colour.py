"""SimCLR's colour distortion: Kornia's ``ColorJitter`` then ``RandomGrayscale``, computed in place on one copy.

Kornia draws the parameters (which samples are jittered, each one's four factors, the batch's order of the four
steps, which samples turn gray). The pixels are computed here, because Kornia's kernels are written for any
input: each of their forty or so element-wise passes allocates a new batch-sized tensor, the jitter runs on every
sample and is then blended with the untouched ones by ``torch.where``, and grayscale makes a gray copy of the whole
batch to keep a fifth of it. Here one copy of the batch is made and every step works on it in place, while it is in
cache; samples that are not jittered get the neutral factors (brightness, contrast and saturation 1, hue 0); and
only the samples that turn gray are converted. ``eval/profile_augment.py`` times both.

Each step is one of the functions below, with Kornia's formula for it (a test holds the module equal to Kornia's
two modules, up to rounding, with the same random stream):

* brightness: x·f, clamped to [0, 1];
* contrast: x·f + μ·(1 − f), clamped, μ the image's mean gray level;
* saturation: x·f + gray·(1 − f), clamped;
* hue: the rotation of each pixel's HSV hue by f, computed without the HSV round trip (``hue_``).

Gray levels are ``kornia.color.rgb_to_grayscale``'s (ITU-R BT.601 luma).
"""

from __future__ import annotations

import math

import kornia.augmentation as K
import torch
from kornia.color import rgb_to_grayscale
from torch import nn

from sslkit.compiled import CompiledOrEager

_NEUTRAL = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation, hue: the factors that change nothing
_FACTORS = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")  # Kornia's order indices


def brightness_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scales ``x`` by ``factor`` (one per image, shape (B, 1, 1, 1)) in place and clamps it to [0, 1]."""
    return x.mul_(factor).clamp_(0.0, 1.0)


def contrast_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Moves ``x`` away from (factor > 1) or towards its image's mean gray level, in place, and clamps it.

    Luma is linear, so an RGB image's mean gray level is the luma of its channel means (no gray image is made).
    """
    means = x.mean(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    level = rgb_to_grayscale(means) if x.shape[-3] == 3 else means.mean(dim=-3, keepdim=True)
    return x.mul_(factor).add_(level * (1 - factor)).clamp_(0.0, 1.0)


def saturation_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blends RGB ``x`` with its gray image in place, ``x·f + gray·(1 − f)``, and clamps it."""
    luma = rgb_to_grayscale(x)  # before x is scaled
    return x.mul_(factor).addcmul_(luma, 1 - factor).clamp_(0.0, 1.0)


def hue_(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Rotates the HSV hue of RGB ``x`` in [0, 1] by ``factor`` radians, in place: ``kornia.enhance.adjust_hue``'s
    result without the HSV round trip.

    A hue rotation keeps each pixel's maximum M and minimum m, so only its hue sector h is needed (from the maximal
    channel: h ∈ [−1, 5]). Channel n of the result is M − (M − m)·clamp(2 − d, 0, 1), the closed form of HSV → RGB,
    where d is the distance on the circle of 6 sectors from offset_n + h + shift to 2. With the per-image constant
    c_n = (offset_n + shift) mod 6 − 5, k = h + c_n lies in [−6, 6) and d = ||k| − 3|, so the distance needs no
    element-wise modulo; and with r = clamp(d, 1, 2) the channel is (M − 2(M − m)) + (M − m)·r. Gray pixels (M = m)
    come out unchanged.

    Args:
        x: RGB in [0, 1]; overwritten with the result.
        factor: hue shift in radians, in [−π, π]; a scalar or one per image (any shape with B elements).

    Shape:
        (B, 3, H, W) -> (B, 3, H, W), the same tensor
    """
    b = x.shape[0]
    factor = torch.as_tensor(factor, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(b, 1)
    # offset_n: 5, 3, 1 for R, G, B; made on the device (a tensor from a list would be a blocking copy on a GPU)
    offsets = torch.arange(5.0, 0.0, -2.0, dtype=x.dtype, device=x.device)
    per_image = (factor * (3 / math.pi) + offsets).remainder_(6.0).sub_(5.0)  # (B, 3): c_n
    r, g, bl = x.unbind(dim=-3)
    top = x.amax(dim=-3)
    chroma = top - x.amin(dim=-3)
    # Which channel is the maximum (red first, then green, on ties), as 1/0 floats: comparisons written into
    # float tensors, products and sums are several times faster on a CPU than bool masks or torch.where.
    is_r = torch.eq(r, top, out=torch.empty_like(top))
    is_g = torch.eq(g, top, out=torch.empty_like(top)).sub_(is_r).clamp_min_(0.0)
    sector = torch.sub(bl, r).add_(chroma, alpha=2.0).mul_(is_g)  # (h·C where green is the maximum: b − r + 2C)
    sector.addcmul_(torch.sub(g, bl), is_r)  # red: g − b
    is_b = is_r.add_(is_g).neg_().add_(1.0)  # blue: neither
    sector.addcmul_(torch.sub(r, g, out=is_g).add_(chroma, alpha=4.0), is_b)  # blue: r − g + 4C
    sector.div_(chroma.clamp_min(torch.finfo(x.dtype).tiny))  # h; gray pixels: 0 / tiny = 0
    # From here x holds k = h + c_n, then r = clamp(d, 1, 2), then the result (r, g, bl are no longer needed).
    ramp = torch.add(sector.unsqueeze(-3), per_image.view(b, 3, 1, 1), out=x)
    ramp.abs_().sub_(3.0).abs_().clamp_(1.0, 2.0)
    return ramp.mul_(chroma.unsqueeze(-3)).add_(top.sub_(chroma, alpha=2.0).unsqueeze(-3))  # (M − 2C) + C·r


def _hue_turns_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``hue_`` with the factor in turns, the unit Kornia draws it in."""
    return hue_(x, factor * (2 * math.pi))


def shift_hue(image: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """``hue_`` on a copy: ``kornia.enhance.adjust_hue(image, factor)``'s result, about 10× faster on a CPU (1.97
    against 18.9 ms for 512 RGB 32×32 images on a 2-core CPU, ``eval/profile_step.py``).

    Shape:
        image: (B, 3, H, W), factor: () or (B,) -> (B, 3, H, W)
    """
    return hue_(image.clone(), factor)


_STEPS = (brightness_, contrast_, saturation_, _hue_turns_)  # Kornia's order indices; factors as Kornia draws them
_STEP_NAMES = ("brightness", "contrast", "saturation", "hue")


class ColourDistortion(nn.Module):
    """Kornia's ``ColorJitter(brightness, contrast, saturation, hue, p=jitter_p)`` then
    ``RandomGrayscale(p=grayscale_p)``: their parameters and random stream, the pixels computed in place.

    Kornia's ``ColorJitter`` conventions hold: factors are drawn per sample (brightness, contrast and saturation
    uniformly in [1 − s, 1 + s], hue in [−h, h] turns), the four steps run in a random order drawn per batch, the
    jittered samples are clamped to [0, 1] before and after. Here every sample is clamped, which changes only values
    a rounding step outside [0, 1]. One-channel images take brightness and contrast only.

    Args:
        channels: 1 or 3.
        brightness, contrast, saturation, hue: strengths, as Kornia's ``ColorJitter`` takes them; 0 turns a step off.
        jitter_p: probability that a sample is jittered.
        grayscale_p: probability that an RGB sample turns gray (after the jitter).
        compile: run each step through ``torch.compile``, which fuses its passes (the step falls back to the eager
            one with a warning where compiling fails).

    Shape:
        (B, C, H, W) float in [0, 1] -> (B, C, H, W), a new tensor (the input is left as it was)
    """

    def __init__(self, channels: int, brightness: float, contrast: float, saturation: float, hue: float,
                 jitter_p: float, grayscale_p: float = 0.0, compile: bool = False) -> None:
        super().__init__()
        if channels == 1:
            saturation, hue, grayscale_p = 0.0, 0.0, 0.0
        strengths = (brightness, contrast, saturation, hue)
        self.active = tuple(s > 0 for s in strengths) if jitter_p > 0 else (False,) * 4
        self.jitter = K.ColorJitter(*strengths, p=jitter_p) if any(self.active) else None
        self.grayscale = K.RandomGrayscale(p=grayscale_p) if grayscale_p > 0 else None
        self.steps = tuple(
            CompiledOrEager(step, f"augment.compile: compiling the colour jitter's {name} kernel", dynamic=False)
            if compile and on else step for step, name, on in zip(_STEPS, _STEP_NAMES, self.active, strict=True))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(0.0, 1.0)  # the one copy every step works on
        if self.jitter is not None:
            params = self.jitter.forward_parameters(x.shape)
            jittered = params["batch_prob"] > 0.5
            for i in params["order"].tolist():
                if self.active[i]:
                    factor = torch.where(jittered, params[_FACTORS[i]], _NEUTRAL[i])
                    factor = factor.to(x.device, x.dtype, non_blocking=True).view(-1, 1, 1, 1)
                    out = self.steps[i](out, factor)
            out.clamp_(0.0, 1.0)  # as Kornia's jitter ends; changes only rounding after a last hue step
        if self.grayscale is not None:
            turned = (self.grayscale.forward_parameters(x.shape)["batch_prob"] > 0.5).nonzero().flatten()
            if turned.numel():
                turned = turned.to(x.device, non_blocking=True)
                out.index_copy_(0, turned, rgb_to_grayscale(out.index_select(0, turned)).expand(-1, 3, -1, -1))
        return out

    def extra_repr(self) -> str:
        on = [name for name, active in zip(_STEP_NAMES, self.active, strict=True) if active]
        p = self.jitter.p if self.jitter is not None else 0.0
        g = self.grayscale.p if self.grayscale is not None else 0.0
        return f"jitter={'+'.join(on) or 'off'}, jitter_p={p}, grayscale_p={g}"
