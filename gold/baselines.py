"""Baselines that share GoldTrainer's data path, so comparisons differ only in the loss.

:class:`SequenceKDTrainer` is supervised fine-tuning on completions (sequence-level KD when the
completions were sampled from the teacher): cross-entropy on the student's own tokens of each
completion, no teacher logits. Same batches, optimizer and schedule as :class:`GoldTrainer`.
"""

from __future__ import annotations

from typing import Any

import torch

from gold.data import TrainBatch
from gold.trainer import GoldTrainer


class SequenceKDTrainer(GoldTrainer):
    """Cross-entropy on completion tokens (mean over the slice's tokens); use with ``lmbda=0``."""

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:  # fmt: skip
        batch: TrainBatch = inputs["batch"].to(self.args.device)
        logits = batch.student.logits(model)[:, :-1]  # (B, Ls - 1, Vs)
        targets = batch.student.completion_targets()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        self._metrics["loss/cross_entropy"].append(float(loss.detach()))
        loss = loss / self.current_gradient_accumulation_steps
        return (loss, None) if return_outputs else loss
