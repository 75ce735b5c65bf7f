"""SimCLR views: shapes, per-sample randomness, probabilities honoured, grayscale handled."""

from __future__ import annotations

import pytest
import torch

from sslkit.augment import SimCLRAugment, preprocess
from sslkit.step import make_views


def _images(n: int = 64, c: int = 3, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)


def test_views_shape_dtype_and_independence() -> None:
    aug = SimCLRAugment(24, 3, (0.5,) * 3, (0.25,) * 3)
    x = _images()
    v1, v2 = aug(x), aug(x)
    assert v1.shape == (64, 3, 24, 24) and v1.dtype == torch.float32
    assert not torch.allclose(v1, v2)  # two calls, two different views
    batch = aug(x[:1].repeat(8, 1, 1, 1))
    assert batch.std(dim=0).mean() > 0.01  # copies of one image get different parameters in one batch
    # The trainer's call: both views of each image in one batch, each with its own draw.
    views = make_views(aug, x, torch.channels_last)
    assert views.shape == (128, 3, 24, 24) and views.is_contiguous(memory_format=torch.channels_last)
    differ = (views[:64] - views[64:]).flatten(1).abs().amax(1) > 1e-3
    assert bool(differ.all())


def test_images_that_do_not_fit_the_pipeline_are_one_clear_error() -> None:
    rgb, gray = SimCLRAugment(16, 3, (0.5,) * 3, (0.25,) * 3), SimCLRAugment(16, 1, (0.5,), (0.25,))
    assert rgb(_images(2, 3, 16)).shape == (2, 3, 16, 16)
    assert rgb(_images(2, 3, 16).double() / 255).dtype == torch.float64
    for aug, bad, got in [
        (rgb, _images(2, 1, 16), r"torch\.uint8 of shape \(2, 1, 16, 16\)"),  # was: not enough values to unpack
        (rgb, _images(1, 3, 16)[0], r"torch\.uint8 of shape \(3, 16, 16\)"),  # one image without its batch axis
        (rgb, _images(2, 3, 16).long(), r"torch\.int64"),  # was: result type Float can't be cast to Long
        (rgb, _images(2, 3, 16).numpy(), r"ndarray"),
        (gray, _images(2, 3, 16), r"torch\.uint8 of shape \(2, 3, 16, 16\)"),  # was: RGB views, no colour steps
    ]:
        n = aug.channels
        with pytest.raises(ValueError, match=rf"^SimCLRAugment\({n} channel\(s\)\) takes a \(B, {n}, H, W\) tensor, "
                                             rf"uint8 in 0\.\.255 or float in \[0, 1\], got {got}"):
            aug(bad)


def test_identity_when_every_probability_is_zero() -> None:
    mean, std = (0.5,), (0.25,)
    aug = SimCLRAugment(28, 1, mean, std, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                        grayscale_p=0.0, blur_p=0.0)
    x = _images(8, 1, 28)
    torch.testing.assert_close(aug(x), preprocess(x, mean, std), atol=1e-5, rtol=1e-5)


def test_flip_probability_one_mirrors() -> None:
    aug = SimCLRAugment(16, 1, (0.0,), (1.0,), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=1.0,
                        jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    x = _images(4, 1, 16)
    torch.testing.assert_close(aug(x), (x.float() / 255).flip(-1), atol=1e-5, rtol=1e-5)


def test_grayscale_probability_one_gives_equal_channels_and_gray_input_skips_colour_ops() -> None:
    aug = SimCLRAugment(16, 3, (0.0,) * 3, (1.0,) * 3, jitter_p=0.0, grayscale_p=1.0)
    v = aug(_images(4, 3, 16))
    torch.testing.assert_close(v[:, 0], v[:, 1])
    gray = SimCLRAugment(16, 1, (0.0,), (1.0,), jitter_p=1.0, jitter_strength=1.0, grayscale_p=1.0, blur_p=0.5)
    names = [type(m).__name__ for m in gray.ops]
    assert names == ["ResizedCropFlip", "ColourDistortion", "RandomGaussianBlur", "Normalize"]
    colour = gray.ops[1]
    assert colour.grayscale is None and colour.active == (True, True, False, False)  # brightness, contrast only
    assert gray(_images(4, 1, 16)).shape == (4, 1, 16, 16)


@pytest.mark.parametrize("height, width, size, scale, flip_p", [
    (32, 32, 32, (0.2, 1.0), 0.5),
    (28, 28, 20, (0.08, 1.0), 1.0),
    (16, 24, 12, (0.001, 0.01), 0.5),  # boxes of one or two pixels a side
    (28, 28, 28, (1.0, 1.0), 0.0),
])
def test_fused_crop_and_flip_equal_kornias_two_modules_with_the_same_random_stream(
        height: int, width: int, size: int, scale: tuple[float, float], flip_p: float) -> None:
    import kornia.augmentation as K
    from torch import nn

    from sslkit.augment import ResizedCropFlip
    x = torch.rand(128, 3, height, width, generator=torch.Generator().manual_seed(0))
    fused = ResizedCropFlip((size, size), scale, (3 / 4, 4 / 3), flip_p)
    kornia_pair = nn.Sequential(K.RandomResizedCrop((size, size), scale=scale, ratio=(3 / 4, 4 / 3), p=1.0,
                                                    cropping_mode="resample"), K.RandomHorizontalFlip(p=flip_p))
    torch.manual_seed(5)
    got, state_after = fused(x), torch.get_rng_state()
    torch.manual_seed(5)
    want = kornia_pair(x)
    assert torch.equal(state_after, torch.get_rng_state())  # same draws: later ops see the same random stream
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    if flip_p == 1.0:  # every view flipped: the test would also pass for a fused op that never flips otherwise
        torch.manual_seed(5)
        unflipped = kornia_pair[0](x)
        assert (got - unflipped).abs().max() > 0.1


def test_shift_hue_equals_kornias_adjust_hue() -> None:
    import math

    import kornia

    from sslkit.colour import shift_hue
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 12, 12, generator=g)
    x[:, :, :2] = x[:, :1, :2]  # gray pixels: no hue at all
    x[:, 1, 2:4] = x[:, 0, 2:4]  # red = green: ties for the maximum
    x[:, 2, 4:6] = x[:, 1, 4:6]  # green = blue
    x[:, :, 6:8] = x[:, :, 6:8].round()  # saturated corners of the cube (0 and 1)
    per_image = (torch.rand(64, generator=g) * 2 - 1) * math.pi
    for factor in (per_image, 0.0, 0.3, -2.0, math.pi, -math.pi):
        want = kornia.enhance.adjust_hue(x, factor if isinstance(factor, torch.Tensor) else torch.tensor(factor))
        torch.testing.assert_close(shift_hue(x, factor), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels, strengths, jitter_p, grayscale_p", [
    (3, (0.8, 0.8, 0.8, 0.2), 0.8, 0.2),  # SimCLR's, at s = 1
    (3, (0.4, 0.4, 0.4, 0.1), 1.0, 0.0),
    (3, (0.0, 0.0, 0.8, 0.5), 0.5, 1.0),  # saturation and hue only; every sample turns gray after
    (3, (0.8, 0.0, 0.0, 0.0), 0.0, 0.5),  # grayscale only
    (1, (0.8, 0.8, 0.0, 0.0), 0.8, 0.0),
])
def test_colour_distortion_equals_kornias_jitter_and_grayscale_with_the_same_random_stream(
        channels: int, strengths: tuple[float, ...], jitter_p: float, grayscale_p: float) -> None:
    import kornia.augmentation as K
    from torch import nn

    from sslkit.colour import ColourDistortion
    x = torch.rand(256, channels, 12, 12, generator=torch.Generator().manual_seed(0))
    x[:8] = x[:8, :1]  # some gray images among the colour ones
    before = x.clone()
    ours = ColourDistortion(channels, *strengths, jitter_p=jitter_p, grayscale_p=grayscale_p)
    kornias = nn.Sequential(*([K.ColorJitter(*strengths, p=jitter_p)] if jitter_p else []),  # as SimCLRAugment
                            *([K.RandomGrayscale(p=grayscale_p)] if grayscale_p and channels == 3 else []))
    torch.manual_seed(7)
    got, state_after = ours(x), torch.get_rng_state()
    torch.manual_seed(7)
    want = kornias(x)
    assert torch.equal(state_after, torch.get_rng_state())  # same draws: later ops see the same random stream
    assert torch.equal(x, before)  # the input is left as it was
    torch.testing.assert_close(got, want, atol=3e-6, rtol=0)
    assert (got - x).abs().amax() > 0.3  # it did distort


def test_colour_steps_are_kornias_kernels() -> None:
    import math

    import kornia

    from sslkit.colour import brightness_, contrast_, hue_, saturation_
    x = torch.rand(32, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    f = torch.linspace(0.2, 1.8, 32).view(-1, 1, 1, 1)
    cases = [(brightness_, f, kornia.enhance.adjust_brightness_accumulative(x, f)),
             (contrast_, f, kornia.enhance.adjust_contrast_with_mean_subtraction(x, f)),
             (saturation_, f, kornia.enhance.adjust_saturation_with_gray_subtraction(x, f)),
             (hue_, f - 1, kornia.enhance.adjust_hue(x, (f - 1).flatten() * math.pi))]
    for step, factor, want in cases:
        y = x.clone()
        out = step(y, factor * math.pi if step is hue_ else factor)
        assert out.data_ptr() == y.data_ptr()  # in place
        torch.testing.assert_close(out, want, atol=2e-6, rtol=0)
    gray = x[:, :1]
    want = kornia.enhance.adjust_contrast_with_mean_subtraction(gray, f)
    torch.testing.assert_close(contrast_(gray.clone(), f), want, atol=2e-6, rtol=0)


def test_from_config_passes_every_recipe_key_and_the_view_size() -> None:
    from sslkit.config import AugmentConfig

    cfg = AugmentConfig(crop_scale=(0.5, 0.9), crop_ratio=(0.8, 1.2), flip_p=0.3, jitter_p=0.6, jitter_strength=0.7,
                        grayscale_p=0.4, blur_p=0.5, blur_sigma=(0.2, 1.0), blur_kernel_frac=0.3, view_size=12)
    direct = SimCLRAugment(12, 3, (0.5,) * 3, (0.25,) * 3, crop_scale=(0.5, 0.9), crop_ratio=(0.8, 1.2), flip_p=0.3,
                           jitter_p=0.6, jitter_strength=0.7, grayscale_p=0.4, blur_p=0.5, blur_sigma=(0.2, 1.0),
                           blur_kernel_frac=0.3)
    made = SimCLRAugment.from_config(cfg, 16, 3, (0.5,) * 3, (0.25,) * 3)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(3)
    want = direct(x)
    torch.manual_seed(3)
    got = made(x)
    assert got.shape == (8, 3, 12, 12)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert SimCLRAugment.from_config(AugmentConfig(), 16, 3, (0.5,) * 3, (0.25,) * 3)(x).shape[-1] == 16


def test_compiled_colour_jitter_makes_the_eager_views_and_falls_back_when_compiling_fails() -> None:
    from torch._dynamo.utils import counters

    x = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))

    def make(compile: bool) -> SimCLRAugment:
        return SimCLRAugment(12, 3, (0.5,) * 3, (0.25,) * 3, jitter_p=1.0, grayscale_p=0.0, compile=compile)

    def views(aug: SimCLRAugment) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return aug(x)

    eager = views(make(False))
    torch._dynamo.reset()
    counters.clear()
    compiled = make(True)
    torch.testing.assert_close(views(compiled), eager, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 4  # brightness, contrast, saturation, hue: each ran compiled

    def broken(*args) -> None:
        raise RuntimeError("no C++ compiler found\nmore detail")

    fallback = make(True)
    for step in fallback.ops[1].steps:
        step.compiled = broken
    with pytest.warns(UserWarning) as caught:
        assert torch.equal(views(fallback), eager)
    assert sorted(str(w.message) for w in caught) == [
        f"augment.compile: compiling the colour jitter's {k} kernel failed (RuntimeError: no C++ compiler found); "
        "running it uncompiled" for k in ("brightness", "contrast", "hue", "saturation")]
