"""Teacher–student agreement group by group: exact KL per byte on shared boundaries, next-byte agreement.

Both tokenizations of a completion are aligned into groups that end on the same byte (``alignment``);
each group's log-likelihood under each model is exact (the chain rule over its tokens,
:func:`gold.losses.index_groups`), and both models condition on the same bytes before it. So

* ``log p_T(group) − log p_S(group)``, summed over the groups of teacher samples and divided by
  their bytes, is the teacher→student KL per byte of :func:`gold.evaluate.distillation_gap`, split
  into per-group terms (equal to it when every token is in a group);
* at every group start both models answer "which byte comes next?": folding each next-token
  distribution onto the first byte (:func:`gold.losses.fold_to_bytes`) gives two 257-bin
  distributions whose top-1 agreement and KL need no vocabulary map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from gold.collate import Collator
from gold.data import Example, prompt_ids
from gold.losses import PairTables, fold_to_bytes, forward_kl, index_groups
from gold.losses.byte_marginal import on_shared_bins, shared_bins
from gold.losses.merge import start_rows

LN2 = math.log(2.0)
NO_LIMIT = 1 << 30


@dataclass(frozen=True)
class GroupAgreement:
    """Agreement of a student with its teacher on a set of completions.

    Attributes:
        kl_bits_per_byte: Σ over groups of ``log p_T − log p_S`` (bits) per completion byte.
        mean_abs_group_gap_bits: mean ``|log p_T(group) − log p_S(group)|`` in bits.
        next_byte_agreement: share of group starts where both models' most likely next byte is the same.
        next_byte_kl_bits: mean KL(teacher ‖ student) of the next-byte distributions, bits per group start
            (on the bins both tokenizers can produce, renormalized: :func:`gold.losses.byte_marginal.shared_bins`).
        num_groups: aligned groups scored.
        num_bytes: completion bytes.
    """

    kl_bits_per_byte: float
    mean_abs_group_gap_bits: float
    next_byte_agreement: float
    next_byte_kl_bits: float
    num_groups: int
    num_bytes: int


def _rows(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


@torch.no_grad()
def group_agreement(
    student: Any,
    student_tokenizer: Any,
    teacher: Any,
    teacher_tokenizer: Any,
    examples: Sequence[Example],
    *,
    batch_size: int = 8,
    tables: PairTables | None = None,
    progress: str | None = None,
) -> GroupAgreement:
    """Group-level agreement of ``student`` with ``teacher`` on ``examples`` (completions sampled from the teacher
    for a KL estimate; any completions for a cross-entropy gap).

    Args:
        student / teacher: causal LMs (evaluated in eval mode, restored after).
        student_tokenizer / teacher_tokenizer: their fast tokenizers.
        examples: prompts and completions; each model renders its own prompt.
        batch_size: examples per forward.
        tables: the pair's tables if already built (:meth:`PairTables.build`).
        progress: show a progress bar with this label.
    """
    if not examples:
        raise ValueError("group_agreement needs at least one example")
    tables = tables or PairTables.build(student_tokenizer, teacher_tokenizer, student_rows=_rows(student),
                                        teacher_rows=_rows(teacher))  # fmt: skip
    collator = Collator(student_tokenizer, teacher_tokenizer, tables, max_completion_length=NO_LIMIT)
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    gaps, agree, byte_kl, num_bytes = [], [], [], 0
    try:
        starts = range(0, len(examples), batch_size)
        for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None, leave=False):
            chunk = examples[start : start + batch_size]
            parts = _batch_terms(student, teacher, collator, chunk)
            gaps.append(parts[0])
            agree.append(parts[1])
            byte_kl.append(parts[2])
            num_bytes += parts[3]
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    gap, same, kl = torch.cat(gaps), torch.cat(agree), torch.cat(byte_kl)
    if num_bytes == 0 or gap.numel() == 0:
        raise ValueError("group_agreement needs non-empty completions; got only empty ones")
    return GroupAgreement(
        kl_bits_per_byte=float(gap.sum()) / num_bytes / LN2,
        mean_abs_group_gap_bits=float(gap.abs().mean()) / LN2,
        next_byte_agreement=float(same.float().mean()),
        next_byte_kl_bits=float(kl.mean()) / LN2,
        num_groups=int(gap.numel()),
        num_bytes=num_bytes,
    )


def _batch_terms(
    student: Any, teacher: Any, collator: Collator, examples: Sequence[Example]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Per-group log-likelihood gaps (nats), next-byte top-1 agreement, next-byte KL (nats), and bytes."""
    student_prompts = [prompt_ids(collator.student_tokenizer, e.prompt) for e in examples]
    teacher_prompts = [prompt_ids(collator.teacher_tokenizer, e.prompt) for e in examples]
    completions = collator.student_completion_ids([e.completion for e in examples])
    batch = collator(student_prompts, teacher_prompts, completions, source="dataset")
    student_device = next(student.parameters()).device
    teacher_device = next(teacher.parameters()).device
    aligned = batch.aligned
    student_logits = batch.student.to(student_device).logits(student).float().cpu()
    teacher_logits = batch.teacher.to(teacher_device).logits(teacher).float().cpu()
    student_index = index_groups(student_logits, aligned.student_ids, aligned.student_groups)
    teacher_index = index_groups(teacher_logits, aligned.teacher_ids, aligned.teacher_groups)
    gap = (teacher_index.observed - student_index.observed).double()  # (G,)
    tables = collator.tables
    shared = shared_bins(tables.student_bins.cpu(), tables.teacher_bins.cpu())
    student_bytes = on_shared_bins(
        fold_to_bytes(start_rows(student_logits, student_index), tables.student_bins), shared
    )
    teacher_bytes = on_shared_bins(
        fold_to_bytes(start_rows(teacher_logits, teacher_index), tables.teacher_bins), shared
    )
    same = student_bytes.argmax(dim=-1) == teacher_bytes.argmax(dim=-1)  # (G,)
    byte_kl = forward_kl(student_bytes, teacher_bytes).double()  # (G,)
    num_bytes = sum(len(text.encode("utf-8")) for text in batch.completions)
    return gap, same, byte_kl, num_bytes
