"""gold: cross-tokenizer knowledge distillation.

The main entry points, imported on first use (``import gold`` stays light)::

    from gold import GoldTrainer, LossConfig, RolloutConfig, load_model, load_tokenizer
"""

from __future__ import annotations

import importlib
from typing import Any

from gold.version import __version__
from gold.zoo import ZooPackageMissing, load_model, load_tokenizer, tokenizer_names

_LAZY = {
    "GoldTrainer": "gold.trainer",
    "SequenceKDTrainer": "gold.baselines",
    "GoldConfig": "gold.config",
    "LossConfig": "gold.config",
    "RolloutConfig": "gold.config",
    "AlignmentConfig": "gold.config",
    "Example": "gold.data",
    "examples_from_rows": "gold.data_files",
    "cross_tokenizer_loss": "gold.losses",
    "distillation_gap": "gold.evaluate",
    "group_agreement": "gold.agreement",
    "load_recipe": "gold.recipe",
}

__all__ = ["ZooPackageMissing", "__version__", "load_model", "load_tokenizer", "tokenizer_names", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gold' has no attribute {name!r}")
