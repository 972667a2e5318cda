"""A recipe's ``training`` section as ``transformers.TrainingArguments`` (gold's defaults, unknown keys named)."""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import TrainingArguments

from gold.config import RecipeError

DEFAULT_OUTPUT_DIR = "out/gold"


def training_arguments(values: dict[str, Any]) -> TrainingArguments:
    """``TrainingArguments`` from the recipe's ``training`` section, naming an unknown key."""
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    for key in values:
        if key not in known:
            raise RecipeError(f"unknown key {key!r} in training (transformers.TrainingArguments has no such field)")
    settings = {"output_dir": DEFAULT_OUTPUT_DIR, "report_to": [], **values}
    return TrainingArguments(**settings)
