"""gold: cross-tokenizer knowledge distillation.

The main entry points, imported on first use (``import gold`` stays light)::

    from gold import GoldTrainer, LossConfig, RolloutConfig, load_model, load_tokenizer
"""

from __future__ import annotations

import importlib
from typing import Any

from gold.models.zoo import ZooPackageMissing, load_model, load_tokenizer, tokenizer_names
from gold.version import __version__

_LAZY = {
    "GoldTrainer": "gold.training.trainer",
    "SequenceKDTrainer": "gold.training.baselines",
    "GoldConfig": "gold.config",
    "LossConfig": "gold.config",
    "RolloutConfig": "gold.config",
    "AlignmentConfig": "gold.config",
    "Example": "gold.data.examples",
    "examples_from_rows": "gold.data.files",
    "cross_tokenizer_loss": "gold.losses",
    "distillation_gap": "gold.evaluation.bits_per_byte",
    "group_agreement": "gold.evaluation.agreement",
    "load_recipe": "gold.cli.recipe",
}

__all__ = ["ZooPackageMissing", "__version__", "load_model", "load_tokenizer", "tokenizer_names", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gold' has no attribute {name!r}")
