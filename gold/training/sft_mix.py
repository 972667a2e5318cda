"""SFT mixing (``loss.sft_weight``): the student's cross-entropy on completions it did not write — dataset rows and
teacher samples, never its own rollouts — added to the distillation loss as its own term, a mean over the completion
tokens of those rows in the whole optimizer step (every slice and process), like ms-swift's ``sft_alpha`` and
Oumi's ``uld_crossentropy_weight``. The end token of a completion that ended counts as one of its tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gold.data.examples import TrainBatch


def completion_cross_entropy(student_logits: torch.Tensor, batch: TrainBatch) -> tuple[torch.Tensor, int]:
    """``(sum, tokens)``: the student's summed cross-entropy over the completion tokens of ``batch`` (float32)."""
    targets = batch.student.completion_targets()
    if not isinstance(student_logits, torch.Tensor):  # hidden states (gold.losses.hidden): a block at a time
        return -student_logits.completion_logprobs(targets).sum(), int((targets != -100).sum())
    logits = student_logits[:, :-1]  # (B, Ls - 1, Vs): column c predicts input c + 1
    total = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                              reduction="sum")  # fmt: skip
    return total, int((targets != -100).sum())


def sft_tokens(batches: Sequence[TrainBatch]) -> int:
    """Completion tokens of the step's slices that SFT mixing trains on (every source but the student's own)."""
    return sum(int((b.student.completion_targets() != -100).sum()) for b in batches if b.source != "student")
