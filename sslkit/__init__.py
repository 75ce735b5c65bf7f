"""sslkit: SimCLR pretraining of timm encoders and honest evaluation of what they learned.

Public API::

    from sslkit import load_recipe, pretrain, load_encoder
    recipe = load_recipe("recipes/quickstart.yaml", ["train.epochs=1"])
    pretrain(recipe, "runs/quick")
    encoder = load_encoder("runs/quick")          # eval-mode timm module, (B, C, H, W) -> (B, 512)

A recipe's sections (``DataConfig``, ``AugmentConfig``, ``ModelConfig``, ``LossConfig``, ``OptimConfig``,
``TrainConfig``, ``MonitorConfig``) build or change one in code: ``Recipe(train=TrainConfig(epochs=2))``,
``recipe.replace(optim=OptimConfig(name="sgd", lr=0.1))``; ``pretrain`` checks it as ``load_recipe`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AugmentConfig", "DataConfig", "LossConfig", "ModelConfig", "MonitorConfig", "OptimConfig", "Recipe",
           "TrainConfig", "UserError", "build_encoder", "export_encoder", "extract_features", "load_encoder",
           "load_recipe", "load_source", "nt_xent", "pretrain"]

_CONFIGS = ("AugmentConfig", "DataConfig", "LossConfig", "ModelConfig", "MonitorConfig", "OptimConfig", "TrainConfig")
_WHERE = {"Recipe": "sslkit.config", **dict.fromkeys(_CONFIGS, "sslkit.config"), "load_recipe": "sslkit.config",
          "UserError": "sslkit.errors",
          "build_encoder": "sslkit.models", "load_encoder": "sslkit.checkpoint", "export_encoder": "sslkit.checkpoint",
          "load_source": "sslkit.data", "nt_xent": "sslkit.losses", "pretrain": "sslkit.trainer",
          "extract_features": "sslkit.evaluation.features"}

if TYPE_CHECKING:
    from sslkit.checkpoint import export_encoder, load_encoder
    from sslkit.config import (
        AugmentConfig,
        DataConfig,
        LossConfig,
        ModelConfig,
        MonitorConfig,
        OptimConfig,
        Recipe,
        TrainConfig,
        load_recipe,
    )
    from sslkit.data import load_source
    from sslkit.errors import UserError
    from sslkit.evaluation.features import extract_features
    from sslkit.losses import nt_xent
    from sslkit.models import build_encoder
    from sslkit.trainer import pretrain


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))  # the lazy names too, for completion in IPython and editors


def __getattr__(name: str) -> Any:
    # Imported on first use so that `import sslkit` stays fast (torch, timm and kornia load lazily).
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'sslkit' has no attribute {name!r}")
