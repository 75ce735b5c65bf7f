"""Encoder contract (timm) for both stems, projection head and the SimCLR module."""

from __future__ import annotations

import pytest
import torch

from sslkit.augment import preprocess
from sslkit.errors import UserError
from sslkit.models import (
    ProjectionHead,
    SimCLR,
    build_encoder,
    full_scale_residuals,
    recalibrate_batchnorm,
    recalibrate_on_images,
)


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_encoder_keeps_the_timm_contract(stem: str, in_chans: int) -> None:
    enc = build_encoder("resnet18", stem, in_chans).eval()
    x = torch.randn(2, in_chans, 32, 32)
    with torch.no_grad():
        h = enc(x)
        fmap = enc.forward_features(x)
        pooled = enc.forward_head(fmap, pre_logits=True)
    assert h.shape == (2, 512) and enc.num_features == 512
    torch.testing.assert_close(h, pooled)
    assert enc.pretrained_cfg["input_size"][0] == in_chans
    # the cifar stem keeps 32×32 at 4×4 in the last stage (total stride 8); the imagenet stem reaches 1×1
    assert fmap.shape[-1] == (4 if stem == "cifar" else 1)
    assert enc.feature_info[-1]["reduction"] == (8 if stem == "cifar" else 32)


def test_cifar_stem_is_3x3_stride_1_without_pooling() -> None:
    enc = build_encoder("resnet18", "cifar", 3)
    assert enc.conv1.kernel_size == (3, 3) and enc.conv1.stride == (1, 1)
    assert isinstance(enc.maxpool, torch.nn.Identity)


def test_bad_names_are_user_errors() -> None:
    with pytest.raises(UserError, match="did you mean 'resnet18'"):
        build_encoder("resnet19")
    with pytest.raises(UserError, match="unknown stem"):
        build_encoder("resnet18", "tiny")


def test_head_shapes_and_layers() -> None:
    head = ProjectionHead(512, 256, 64, layers=3, batch_norm=True)
    assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == 3
    assert head(torch.randn(4, 512)).shape == (4, 64)
    assert ProjectionHead(512, 256, 64, layers=1)(torch.randn(4, 512)).shape == (4, 64)


def test_simclr_batched_forward_equals_separate_forwards_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = SimCLR(build_encoder("resnet18", "imagenet", 1), ProjectionHead(512, 128, 32)).eval()
    v1, v2 = torch.randn(3, 1, 28, 28), torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        z1, z2 = model(v1, v2)
        ref1 = model.head(model.encoder(v1))
    assert z1.shape == z2.shape == (3, 32)
    torch.testing.assert_close(z1, ref1, atol=1e-5, rtol=1e-4)


def test_batchnorm_calibration_measures_the_whole_not_class_sorted_batches() -> None:
    # An image folder comes sorted by class: batches of one class each would give the variance within a class.
    torch.manual_seed(0)
    dark = torch.randint(0, 60, (256, 3, 16, 16), dtype=torch.uint8)
    bright = torch.randint(190, 256, (256, 3, 16, 16), dtype=torch.uint8)
    images = torch.cat([dark, bright])
    mean, std = (0.5,) * 3, (0.25,) * 3
    encoder = build_encoder("resnet18", "cifar", 3)
    sorted_batches = recalibrate_on_images(encoder, images, mean, std, batch_size=256).bn1.running_var.clone()
    whole = recalibrate_batchnorm(encoder, [preprocess(images, mean, std)]).bn1.running_var.clone()  # one batch
    shuffled = recalibrate_on_images(encoder, images.flip(0), mean, std, batch_size=256).bn1.running_var
    ratio = sorted_batches / whole
    assert 0.9 < float(ratio.median()) < 1.1 and 0.9 < float((shuffled / whole).median()) < 1.1
    within = recalibrate_batchnorm(encoder, [preprocess(dark, mean, std), preprocess(bright, mean, std)])
    assert float((within.bn1.running_var / whole).median()) < 0.5  # what class-sorted batches measured before


def test_batchnorm_calibration_takes_a_count_that_leaves_one_image_over() -> None:
    # 257 images in batches of 256 left a batch of one, which batch norm refuses in train mode where a layer's
    # output is 1×1 (ResNet-18's last stage at 28 px): sslkit pretrain with monitor.bank_size=257 died at step 0.
    torch.manual_seed(0)
    images = torch.randint(0, 256, (257, 1, 28, 28), dtype=torch.uint8)
    encoder = recalibrate_on_images(build_encoder("resnet18", "imagenet", 1), images, (0.5,), (0.25,), batch_size=256)
    assert not encoder.training and bool(torch.isfinite(encoder.layer4[1].bn2.running_var).all())
    assert int(encoder.bn1.num_batches_tracked) == 1  # the odd image joined the batch before it
    one = recalibrate_on_images(build_encoder("resnet18", "cifar", 1), images[:1], (0.5,), (0.25,))  # 4×4 at the end
    assert int(one.bn1.num_batches_tracked) == 1


def test_full_scale_residuals_is_timm_s_init_without_zero_init_last() -> None:
    torch.manual_seed(3)
    zeroed = build_encoder("resnet18", "cifar", 3)
    torch.manual_seed(3)
    full = build_encoder("resnet18", "cifar", 3, zero_init_last=False)
    assert float(zeroed.layer1[0].bn2.weight.abs().sum()) == 0  # the training's start: branches off
    torch.manual_seed(4)  # another draw: only the zeroed scales are taken from it, and they are 1 in any draw
    on = full_scale_residuals(zeroed, build_encoder("resnet18", "cifar", 3, zero_init_last=False)).state_dict()
    for k, v in full.state_dict().items():
        assert torch.equal(on[k], v), k


@pytest.mark.parametrize("name", ["regnetx_002", "cspresnet50", "resnet33ts"])
def test_full_scale_residuals_finds_what_other_families_zeroed(name: str) -> None:
    torch.manual_seed(0)
    model = build_encoder(name, "imagenet", 3)
    zero = {k for k, p in model.named_parameters() if not p.any() and not k.endswith("bias")}
    assert zero, "zero_init_last zeroed something"
    full_scale_residuals(model, build_encoder(name, "imagenet", 3, zero_init_last=False))
    assert all(dict(model.named_parameters())[k].any() for k in zero)


def test_families_without_zero_init_last_build_either_way() -> None:
    for name in ("mobilenetv3_small_050", "regnetz_005"):  # no such option; an option timm sets itself
        torch.manual_seed(0)
        plain = build_encoder(name, "imagenet", 3)
        torch.manual_seed(0)
        full = build_encoder(name, "imagenet", 3, zero_init_last=False)
        assert full_scale_residuals(plain, full) is plain
