"""Teacher–student agreement group by group: exact KL per byte on shared boundaries, next-byte agreement.

Both tokenizations of a completion are aligned into groups that end on the same byte (``alignment``);
each group's log-likelihood under each model is exact (the chain rule over its tokens,
:func:`gold.losses.index_groups`), and both models condition on the same bytes before it. So

* ``log p_T(group) − log p_S(group)``, summed over the groups of teacher samples and divided by
  their bytes, is the teacher→student KL per byte of :func:`gold.evaluation.bits_per_byte.distillation_gap`, split
  into per-group terms (equal to it when every token is in a group);
* at every group start both models answer "which byte comes next?": folding each next-token
  distribution onto the first byte (:func:`gold.losses.fold_to_bytes`) gives two 258-bin
  distributions whose top-1 agreement and KL need no vocabulary map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from gold.data.collate import Collator
from gold.data.examples import Example, SideInputs, TrainBatch, logit_rows, prompt_ids
from gold.evaluation.bits_per_byte import LN2, sequence_logprobs
from gold.losses import PairTables, fold_to_bytes, forward_kl, index_groups
from gold.losses.byte_marginal import on_shared_bins
from gold.losses.merge import start_rows
from gold.models.stops import model_stop_rule

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
        student_bits_per_byte / teacher_bits_per_byte: each model's bits per completion byte (every token).
        num_groups: aligned groups scored.
        num_bytes: completion bytes.
    """

    kl_bits_per_byte: float
    mean_abs_group_gap_bits: float
    next_byte_agreement: float
    next_byte_kl_bits: float
    student_bits_per_byte: float
    teacher_bits_per_byte: float
    num_groups: int
    num_bytes: int


@dataclass(frozen=True)
class _SideTerms:
    """What one model contributes for one batch: (G,) group log-likelihoods, (G, S) next-byte
    log-probabilities on the shared bins, and the completions' total log-likelihood."""

    observed: torch.Tensor
    next_bytes: torch.Tensor
    logprob: float


@dataclass
class AgreementCache:
    """Work that does not depend on a student's weights, kept across the students scored against one teacher
    (checkpoints of a run): the pair tables per student vocabulary, and the teacher's terms per batch (a batch
    is the same when the student tokenizer, hence its alignment, is)."""

    tables: dict[tuple[Any, ...], PairTables] = field(default_factory=dict)
    teacher: dict[bytes, _SideTerms] = field(default_factory=dict)

    def pair_tables(self, student: Any, student_tokenizer: Any, teacher: Any, teacher_tokenizer: Any) -> PairTables:
        key = (logit_rows(student), tuple(sorted(student_tokenizer.get_vocab().items())))
        if key not in self.tables:
            self.tables[key] = PairTables.build(student_tokenizer, teacher_tokenizer, student_rows=key[0],
                                                teacher_rows=logit_rows(teacher),
                                                student_stop=model_stop_rule(student, student_tokenizer),
                                                teacher_stop=model_stop_rule(teacher, teacher_tokenizer))  # fmt: skip
        return self.tables[key]


@torch.no_grad()
def group_agreement(
    student: Any,
    student_tokenizer: Any,
    teacher: Any,
    teacher_tokenizer: Any,
    examples: Sequence[Example],
    *,
    batch_size: int = 8,
    cache: AgreementCache | None = None,
    progress: str | None = None,
) -> GroupAgreement:
    """Group-level agreement of ``student`` with ``teacher`` on ``examples`` (completions sampled from the teacher
    for a KL estimate; any completions for a cross-entropy gap).

    Args:
        student / teacher: causal LMs (evaluated in eval mode, restored after).
        student_tokenizer / teacher_tokenizer: their fast tokenizers.
        examples: prompts and completions; each model renders its own prompt.
        batch_size: examples per forward.
        cache: reuse tables and teacher forwards across calls with the same teacher and examples.
        progress: show a progress bar with this label.
    """
    if not examples:
        raise ValueError("group_agreement needs at least one example")
    cache = cache if cache is not None else AgreementCache()
    tables = cache.pair_tables(student, student_tokenizer, teacher, teacher_tokenizer)
    collator = Collator(student_tokenizer, teacher_tokenizer, tables, max_completion_length=NO_LIMIT,
                        student_stop=model_stop_rule(student, student_tokenizer),
                        teacher_stop=model_stop_rule(teacher, teacher_tokenizer))  # fmt: skip
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    pairs, num_bytes = [], 0
    try:
        starts = range(0, len(examples), batch_size)
        for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None, leave=False):
            batch = _collate(collator, examples[start : start + batch_size])
            aligned = batch.aligned
            student_terms = _side_terms(student, batch.student, aligned.student_ids, aligned.student_groups,
                                        tables.student_bins, tables.shared_bins)  # fmt: skip
            key = _batch_key(batch)
            if key not in cache.teacher:
                cache.teacher[key] = _side_terms(teacher, batch.teacher, aligned.teacher_ids, aligned.teacher_groups,
                                                 tables.teacher_bins, tables.shared_bins)  # fmt: skip
            pairs.append((student_terms, cache.teacher[key]))
            num_bytes += sum(len(text.encode("utf-8")) for text in batch.completions)
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    return _summary(pairs, num_bytes)


def _collate(collator: Collator, examples: Sequence[Example]) -> TrainBatch:
    student_prompts = [prompt_ids(collator.student_tokenizer, e.prompt) for e in examples]
    teacher_prompts = [prompt_ids(collator.teacher_tokenizer, e.prompt_for_teacher) for e in examples]
    # evaluation scores each text as given, every group of it (as completion_logprobs does): a sample cut by a
    # length limit keeps its last group here, where training leaves it out (the tail may be split otherwise
    # in the longer text, a bias both sides share when both tokenize the same cut text)
    completions = [
        dataclasses.replace(collator.from_text(e.completion, index=i, ended=e.ended), exact_tail=True)
        for i, e in enumerate(examples)
    ]
    return collator(student_prompts, teacher_prompts, completions, source="dataset")


def _batch_key(batch: TrainBatch) -> bytes:
    """Identifies the teacher's side of a batch: its inputs and its groups."""
    parts = (batch.teacher.input_ids, batch.teacher.attention_mask, batch.aligned.teacher_groups)
    return b"|".join(str(tuple(t.shape)).encode() + t.cpu().numpy().tobytes() for t in parts)


def _side_terms(
    model: Any, side: SideInputs, ids: torch.Tensor, groups: torch.Tensor, bins: torch.Tensor, shared: torch.Tensor
) -> _SideTerms:
    logits = side.to(next(model.parameters()).device).logits(model).float().cpu()  # (B, L, V)
    index = index_groups(logits, ids, groups)
    next_bytes = on_shared_bins(fold_to_bytes(start_rows(logits, index), bins), shared)
    logprob = float(sequence_logprobs(logits, side.completion_targets()).sum())
    return _SideTerms(index.observed.double(), next_bytes, logprob)


def _summary(pairs: list[tuple[_SideTerms, _SideTerms]], num_bytes: int) -> GroupAgreement:
    gap = torch.cat([t.observed - s.observed for s, t in pairs])  # (G,) nats
    if num_bytes == 0 or gap.numel() == 0:
        raise ValueError("group_agreement needs non-empty completions; got only empty ones")
    student_bytes = torch.cat([s.next_bytes for s, _ in pairs])
    teacher_bytes = torch.cat([t.next_bytes for _, t in pairs])
    same = student_bytes.argmax(dim=-1) == teacher_bytes.argmax(dim=-1)
    byte_kl = forward_kl(student_bytes, teacher_bytes).double()
    return GroupAgreement(
        kl_bits_per_byte=float(gap.sum()) / num_bytes / LN2,
        mean_abs_group_gap_bits=float(gap.abs().mean()) / LN2,
        next_byte_agreement=float(same.float().mean()),
        next_byte_kl_bits=float(byte_kl.mean()) / LN2,
        student_bits_per_byte=-sum(s.logprob for s, _ in pairs) / num_bytes / LN2,
        teacher_bits_per_byte=-sum(t.logprob for _, t in pairs) / num_bytes / LN2,
        num_groups=int(gap.numel()),
        num_bytes=num_bytes,
    )
