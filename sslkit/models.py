"""Encoder, projection head and the SimCLR model.

The encoder is a timm model built with ``num_classes=0`` so that ``encoder(x)`` returns pooled features
``h`` of shape (B, num_features) and timm's contract (``forward_features``, ``forward_head(pre_logits=True)``,
``num_features``, ``pretrained_cfg``) still holds for code that loads it elsewhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import timm
import torch
from torch import nn

from sslkit.augment import preprocess
from sslkit.errors import UserError

STEMS = ("imagenet", "cifar")


def build_encoder(name: str = "resnet18", stem: str = "imagenet", in_chans: int = 3,
                  zero_init_last: bool = True) -> nn.Module:
    """Builds a randomly initialised timm encoder that maps images to pooled features.

    Args:
        name: timm model name (a ResNet for the ``cifar`` stem).
        stem: ``imagenet`` keeps timm's 7×7 stride-2 conv and max-pool; ``cifar`` replaces them with a 3×3
            stride-1 conv and no pooling, as SimCLR does for 32×32 images (Chen et al. 2020, appendix B.9).
        in_chans: image channels (1 for Fashion-MNIST, 3 for RGB).
        zero_init_last: start each residual block's last batch-norm scale at 0 (timm's default and SimCLR's;
            it helps training, but a network fresh from it is close to a shallow one, so the random-init
            evaluation baseline turns it off to give random features their best chance). Families without the
            option ignore False.

    Returns:
        The encoder, with ``num_features`` set and ``pretrained_cfg['input_size']`` naming ``in_chans``.

    Shape:
        (B, in_chans, H, W) -> (B, num_features)
    """
    if stem not in STEMS:
        raise UserError(f"unknown stem {stem!r} (model.stem) — use one of {', '.join(STEMS)}")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" — did you mean {close[0]!r}?" if close else " — see timm.list_models()"
        raise UserError(f"unknown encoder {name!r} (model.encoder){hint}")
    kwargs = {} if zero_init_last else {"zero_init_last": False}
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    except TypeError as e:  # a family without the option (EfficientNet, ViT, …), or one that fixes it itself
        if not kwargs or "zero_init_last" not in str(e):
            raise
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    if stem == "cifar":
        if not (isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool")):
            raise UserError(f"model.stem 'cifar' needs a ResNet-style encoder with conv1 and maxpool, not {name!r}")
        out_chs = model.conv1.out_channels
        model.conv1 = nn.Conv2d(in_chans, out_chs, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
        # The stem no longer down-samples by 4: keep timm's feature metadata true for features_only users.
        for info in getattr(model, "feature_info", []):
            info["reduction"] = max(1, info["reduction"] // 4)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg.update(num_classes=0, input_size=(in_chans, *cfg.get("input_size", (3, 224, 224))[1:]))
    model.pretrained_cfg = cfg
    return model


def feature_dim(encoder: nn.Module) -> int:
    """The width of the encoder's pooled features: timm's ``head_hidden_size`` where the family has a layer after
    the pooling (MobileNetV3's ``conv_head``: 1,024 against ``num_features`` 288 for mobilenetv3_small_050),
    else ``num_features``."""
    return int(getattr(encoder, "head_hidden_size", None) or encoder.num_features)


@torch.no_grad()
def input_size_problem(encoder: nn.Module, shape: Sequence[int]) -> str | None:
    """Why ``encoder`` cannot embed images of ``shape`` (C, H, W), or None when it can.

    One eval-mode forward of two zero images on the encoder's device: it draws no random numbers and leaves the
    weights, batch-norm statistics and training mode as they were.

    Returns:
        None, or the first line of the error the forward raised, without its full stop.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        encoder(torch.zeros(2, *shape, device=next(encoder.parameters()).device))
    except (AssertionError, RuntimeError, ValueError) as e:  # timm asserts fixed sizes; torch raises on too small
        return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
    finally:
        encoder.train(was_training)
    return None


class ProjectionHead(nn.Module):
    """The SimCLR projection MLP g(·): Linear → [BN] → ReLU repeated, then a final Linear.

    Chen et al. 2020 ("A Simple Framework for Contrastive Learning of Visual Representations", §2.1) use one
    hidden layer; SimCLRv2 (Chen et al. 2020b) uses deeper heads with batch norm. ``layers`` counts Linear layers.

    Shape:
        (B, in_dim) -> (B, out_dim)
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, layers: int = 2,
                 batch_norm: bool = True) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            blocks.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm1d(hidden_dim))
            blocks.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        blocks.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class SimCLR(nn.Module):
    """Encoder f(·) plus projection head g(·); both views go through one batched forward.

    One forward over the concatenated views keeps batch-norm statistics shared between the views, as in the
    reference implementation, and is faster than two forwards.

    Called with one batch of views it returns that batch's projections: the gradient cache embeds its chunks so,
    through the DDP wrapper's forward, which arranges the all-reduce of the gradients.

    Shape:
        v1, v2: (B, C, H, W) -> z1, z2: (B, out_dim); v1 alone: (N, C, H, W) -> (N, out_dim)
    """

    def __init__(self, encoder: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, v1: torch.Tensor,
                v2: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if v2 is None:
            return self.head(self.encoder(v1))
        z = self.head(self.encoder(torch.cat([v1, v2])))
        return z[: v1.shape[0]], z[v1.shape[0]:]


@torch.no_grad()
def full_scale_residuals(model: nn.Module, reference: nn.Module) -> nn.Module:
    """Gives the parameters that timm's ``zero_init_last`` left at 0 their values in ``reference``, the same
    architecture built with ``zero_init_last=False``: in place, returns ``model``.

    What ``zero_init_last`` zeroes differs by family (a ResNet block's last batch-norm scale, ``bn2`` or ``bn3``;
    RegNet's ``conv3.bn``; a ByobNet block's last ``bn``; a pre-activation block's last convolution), so every
    parameter that is all zero here but not in ``reference`` is taken from it (a batch-norm scale becomes 1; a
    bias, 0 in both, stays 0). Meant for a network that has not trained yet, whose only such zeros are those.
    """
    theirs = dict(reference.named_parameters())
    for key, p in model.named_parameters():
        if not p.any() and theirs[key].any():
            p.copy_(theirs[key])
    return model


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Replaces every batch-norm layer's running statistics by their exact average over ``batches``.

    A freshly initialised network has running mean 0 and variance 1, which in eval mode are nowhere near the
    real activation statistics, so its eval-mode features are degenerate. Any honest evaluation of a random
    encoder (the step-0 k-NN, the ``random_init`` probe baseline) first recomputes them from data. Works in
    place and returns ``model`` in eval mode; weights are untouched.

    Args:
        model: the network.
        batches: preprocessed input batches, e.g. a few thousand training images.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: equal weight for every batch
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


def recalibrate_on_images(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                          batch_size: int = 256) -> nn.Module:
    """:func:`recalibrate_batchnorm` on clean uint8 images, preprocessed ``batch_size`` at a time on the
    model's device (the images may stay where they are), in a seeded random order.

    The order matters: the running variance is the average of the batches' own variances, which misses the spread
    between batches. An image folder comes sorted by class, and batches of one class each measured variances of
    0.4-0.95 of the true ones; shuffled batches are samples of the whole, as precise BN assumes.

    Shape:
        images: (N, C, H, W) uint8
    """
    device = next(model.parameters()).device
    n = images.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:  # a last batch of one image: train-mode batch norm refuses it when a
        starts.pop()  # layer's output is 1×1 (ResNet-18 at 28 px), so it joins the batch before it
    ends = starts[1:] + [n]
    batches = (order[i:j].sort().values for i, j in zip(starts, ends, strict=True))
    return recalibrate_batchnorm(model, (preprocess(images[idx.to(images.device)].to(device), mean, std)
                                         for idx in batches))
