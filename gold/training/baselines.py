"""Baselines that share GoldTrainer's data path, so comparisons differ only in the loss.

:class:`SequenceKDTrainer` is supervised fine-tuning on completions (sequence-level KD when the
completions were sampled from the teacher): cross-entropy on the student's own tokens of each
completion, no teacher logits. Same batches, optimizer and schedule as :class:`GoldTrainer`.
"""

from __future__ import annotations

from typing import Any

import torch

from gold.data.examples import TrainBatch
from gold.training.sft_mix import completion_cross_entropy
from gold.training.trainer import GoldTrainer


class SequenceKDTrainer(GoldTrainer):
    """Cross-entropy on completion tokens, a mean over the tokens of the global batch; use with ``lmbda=0``.

    The completion ids of a batch end with the student's end token when the completion ended, so SFT
    learns to stop exactly as the distilled student does (the end group's token).
    """

    def count_items(self, batch: TrainBatch) -> int:
        """Completion tokens (the end token included): what cross-entropy is averaged over."""
        return int((batch.student.completion_targets() != -100).sum())

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:  # fmt: skip
        parts = self.slice_parts(inputs)  # with several teachers: each teacher's rows (its samples under seq_kd)
        denominator = num_items_in_batch if num_items_in_batch is not None else max(self.slice_items(inputs), 1)
        loss = None
        for part in parts:
            batch: TrainBatch = part.batch.to(self.args.device)
            total, _ = completion_cross_entropy(batch.student.logits(model), batch)
            part_loss = total / denominator if part.weight == 1.0 else part.weight * total / denominator
            terms = {"loss/cross_entropy": float((total / denominator).detach())}
            self._record(terms, batch, num_items_in_batch, weight=part.weight)
            self._note_loss_terms(part_loss, terms)
            loss = part_loss if loss is None else loss + part_loss
        loss = loss * self.accelerator.num_processes  # each process holds its share of the global mean
        return (loss, None) if return_outputs else loss
