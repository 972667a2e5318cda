"""Build a :class:`gold.data.examples.TrainBatch` from prompts and completions.

One path for every source of completions (dataset, student rollout, teacher sample): the student's
ids are cut at a trailing unfinished character and decoded once, the teacher tokenizes that text, the
two tokenizations are checked to spell the same bytes, aligned in one batched call, and padded.

Where a completion ends matters as much as its bytes (DESIGN §3):

* a completion that **ended** (a dataset row within the limit; a sample that produced a stop id) gets
  one zero-byte *end group* after its last byte: each side's own end token (:mod:`gold.models.stops`),
  predicted from the last completion position, so the student learns when to stop;
* a completion **cut** by ``max_completion_length`` gets none. A dataset row or teacher sample that is
  too long is cut at a group boundary of the *whole* text's alignment, so both sides keep exactly the
  tokens they have in the whole text; a sample cut by the sampler's limit keeps the tokens it has, but
  its last group is not scored (the other side tokenized a text that ends there, and may have split its
  last word differently from how it would split the longer text).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alignment import (
    Alignment,
    AlignmentStats,
    align_identical,
    align_text_batch,
    encode_continuation,
    same_vocabulary,
    token_bytes_table,
)
from gold.data.batch import AlignedBatch, GroupShifts, PairTables
from gold.data.examples import (
    DataError,
    DecodedCompletion,
    TrainBatch,
    check_prompts,
    check_same_bytes,
    decode_completion,
    pad_id,
    read_sample,
    side_inputs,
)
from gold.models.stops import StopRule, stop_rule


@dataclass(frozen=True)
class Completion:
    """One completion on its way into a batch.

    Attributes:
        student_ids: the student's tokens of the completion text (no stop id).
        ended: the completion is whole (it gets an end group); False when a length limit cut it.
        student_end_id: the stop id the student sampled; None: the student's default end token.
        teacher_end_id: the stop id the teacher sampled (``seq_kd``); None: the teacher's default end token.
        teacher_ids: the teacher's own tokens of the same text, when known (its sample; a cut dataset row);
            None: the teacher tokenizes the decoded text.
        exact_tail: both sides' tokens are exactly those of the longer text (cut at a shared boundary), so
            the last group of a cut completion is scored.
        source_invalid_bytes: invalid bytes of a teacher sample, read as U+FFFD before the student encoded it
            (counted with the student's own in ``align/invalid_bytes``).
    """

    student_ids: tuple[int, ...]
    ended: bool
    student_end_id: int | None = None
    teacher_end_id: int | None = None
    teacher_ids: tuple[int, ...] | None = None
    exact_tail: bool = False
    source_invalid_bytes: int = 0


@dataclass(frozen=True)
class Collator:
    """Turns prompts and :class:`Completion` items into a :class:`TrainBatch`.

    Attributes:
        student_tokenizer / teacher_tokenizer: fast tokenizers.
        tables: the pair's vocabulary tables (built once, :meth:`PairTables.build`).
        max_completion_length: completions are cut to this many student tokens.
        max_prompt_length: longer prompts raise (None: no limit).
        max_edit_fraction: alignment tolerance for tokenizer rewrites.
        end_group: add the zero-byte end group to completions that ended (off: nothing teaches stopping).
        student_stop / teacher_stop: each side's stop ids and end token (default: from the tokenizer).

    When both tokenizers spell every id with the same bytes (:func:`alignment.same_vocabulary`: a self
    teacher, one model family), the teacher reads the student's own ids and the groups are the tokens
    (:func:`alignment.align_identical`, equal to the general aligner on those ids, without running it).
    """

    student_tokenizer: Any
    teacher_tokenizer: Any
    tables: PairTables
    max_completion_length: int
    max_prompt_length: int | None = None
    max_edit_fraction: float = 0.5
    end_group: bool = True
    student_stop: StopRule | None = field(default=None)
    teacher_stop: StopRule | None = field(default=None)
    one_vocabulary: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.student_stop is None:
            object.__setattr__(self, "student_stop", stop_rule(self.student_tokenizer))
        if self.teacher_stop is None:
            object.__setattr__(self, "teacher_stop", stop_rule(self.teacher_tokenizer))
        # both sides spell every id alike: the teacher reads the student's ids, groups are 1:1
        object.__setattr__(self, "one_vocabulary", same_vocabulary(self.student_tokenizer, self.teacher_tokenizer))

    @property
    def student_rule(self) -> StopRule:
        assert self.student_stop is not None  # set in __post_init__
        return self.student_stop

    @property
    def teacher_rule(self) -> StopRule:
        assert self.teacher_stop is not None  # set in __post_init__
        return self.teacher_stop

    # ---- completions from their sources ----

    def from_rollout(self, ids: Sequence[int]) -> Completion:
        """A student sample: cut after its first stop id, which becomes the student's end token. A sampler that
        returned more than ``max_completion_length`` tokens before its stop is cut there, and did not end.

        Raises:
            ValueError: the sample holds a non-stop special token (a sampler that does not mask them).
        """
        body, stop = self.student_rule.split(ids)
        inside = _special_ids(self.student_tokenizer, body)
        if inside:
            raise ValueError(
                f"a student sample holds the special token id(s) {inside[:4]}, which spell no bytes (the teacher would "
                "never see them); the sampler must mask non-stop specials (gold.rollout.spellable_ids)"
            )
        limit = self.max_completion_length
        ended = stop is not None and len(body) <= limit
        return Completion(tuple(body[:limit]), ended=ended, student_end_id=stop if ended else None)

    def from_text(
        self, text: str, *, index: int, ended: bool = True, teacher_ids: Sequence[int] | None = None,
        teacher_end_id: int | None = None,
    ) -> Completion:  # fmt: skip
        """A completion given as text (a dataset row, a teacher sample).

        Args:
            text: the completion.
            index: its row, named in errors.
            ended: the text is whole (False: a teacher sample cut by the sampler's limit).
            teacher_ids: the teacher's own tokens of exactly ``text`` (its sample), if known; under one vocabulary
                the student reads these ids too (when they spell ``text``).
            teacher_end_id: the stop id the teacher sampled, if any.

        Raises:
            DataError: a tokenizer encodes the text with a special token (``<unk>``), which spells no bytes.
        """
        if (self.one_vocabulary and teacher_ids is not None
                and decode_completion(self.student_tokenizer, teacher_ids).text == text):  # fmt: skip
            student_ids, student_text = list(teacher_ids), text  # the student reads the teacher's sample as sampled
        else:
            student_ids = encode_continuation(self.student_tokenizer, text)
            # the teacher reads the text the student's tokens spell (a normalizer may have rewritten it)
            student_text = decode_completion(self.student_tokenizer, student_ids).text
        _check_no_specials(self.student_tokenizer, student_ids, index=index, role="student")
        if self.one_vocabulary:
            teacher_ids = student_ids
        elif teacher_ids is None or student_text != text:
            teacher_ids = encode_continuation(self.teacher_tokenizer, student_text)
            _check_no_specials(self.teacher_tokenizer, teacher_ids, index=index, role="teacher")
        if len(student_ids) <= self.max_completion_length:
            return Completion(tuple(student_ids), ended, None, teacher_end_id, tuple(teacher_ids))
        return self._cut_at_shared_boundary(student_ids, list(teacher_ids), student_text)

    def from_teacher_sample(self, ids: Sequence[int], *, index: int) -> Completion:
        """A teacher sample (``seq_kd``) as a completion: the teacher keeps its own tokens and stop id (unless its
        bytes were replaced on decoding: then it re-encodes the text)."""
        sample = read_sample(self.teacher_tokenizer, self.teacher_rule, ids)
        decoded = sample.decoded
        own = decoded.ids if not decoded.invalid_bytes else None
        completion = self.from_text(decoded.text, index=index, ended=sample.ended, teacher_ids=own,
                                    teacher_end_id=sample.stop_id)  # fmt: skip
        return dataclasses.replace(completion, source_invalid_bytes=decoded.invalid_bytes)

    def _cut_at_shared_boundary(self, student_ids: list[int], teacher_ids: list[int], text: str) -> Completion:
        """A too-long completion cut at the last group boundary of its whole text within the limit that
        ends on a whole character: both sides keep exactly their tokens of the whole text."""
        if self.one_vocabulary:
            whole = align_identical(self.student_tokenizer, [student_ids], [text],
                                    max_edit_fraction=self.max_edit_fraction)[0]  # fmt: skip
        else:
            whole = align_text_batch(self.student_tokenizer, self.teacher_tokenizer, [text],
                                     student_ids=[student_ids], teacher_ids=[teacher_ids],
                                     max_edit_fraction=self.max_edit_fraction)[0]  # fmt: skip
        limit = self.max_completion_length
        # the first group past the limit (tokens after the last shared boundary of an approximate alignment
        # belong to none: then the groups up to the limit's side of it)
        student_groups, teacher_groups = whole.student_groups, whole.teacher_groups
        kept_groups = (
            int(student_groups[limit]) if student_groups[limit] >= 0 else int(student_groups[:limit].max()) + 1
        )
        while kept_groups > 0 and not _whole_characters(whole, kept_groups):
            kept_groups -= 1
        if kept_groups <= 0:  # one group longer than the limit: keep the limit, score all but the tail
            return Completion(tuple(student_ids[:limit]), ended=False)
        student_kept = np.asarray(student_ids)[(student_groups >= 0) & (student_groups < kept_groups)]
        teacher_kept = np.asarray(teacher_ids)[(teacher_groups >= 0) & (teacher_groups < kept_groups)]
        if len(student_kept) != int(np.flatnonzero(student_groups == kept_groups - 1)[-1]) + 1:
            return Completion(tuple(student_ids[:limit]), ended=False)  # a group-less token inside: not a prefix
        return Completion(tuple(student_kept.tolist()), ended=False, teacher_ids=tuple(teacher_kept.tolist()),
                          exact_tail=True)  # fmt: skip

    # ---- the batch ----

    def __call__(
        self,
        student_prompts: Sequence[Sequence[int]],
        teacher_prompts: Sequence[Sequence[int]],
        completions: Sequence[Completion],
        *,
        source: str,
    ) -> TrainBatch:
        """Build the batch.

        Args:
            student_prompts: B student prompt id lists.
            teacher_prompts: B teacher prompt id lists (the teacher's own rendering).
            completions: B completions (:meth:`from_text`, :meth:`from_rollout`).
            source: "dataset", "student" or "teacher", kept for metrics.
        """
        check_prompts(student_prompts, role="student", limit=self.max_prompt_length)
        check_prompts(teacher_prompts, role="teacher", limit=self.max_prompt_length)
        decoded = [decode_completion(self.student_tokenizer, c.student_ids) for c in completions]
        teacher_ids = [self._teacher_ids(c, d, index) for index, (c, d) in enumerate(zip(completions, decoded,
                                                                                           strict=True))]  # fmt: skip
        alignments = self._align(decoded, teacher_ids)
        rows = [self._scored(c, d, a) for c, d, a in zip(completions, decoded, alignments, strict=True)]
        student = side_inputs(student_prompts, [r.student_ids for r in rows], pad_id=pad_id(self.student_tokenizer))
        teacher = side_inputs(teacher_prompts, [r.teacher_ids for r in rows], pad_id=pad_id(self.teacher_tokenizer))
        aligned = AlignedBatch(
            student_ids=student.input_ids[:, student.prompt_width - 1 :],
            teacher_ids=teacher.input_ids[:, teacher.prompt_width - 1 :],
            student_groups=_loss_view_groups([r.student_groups for r in rows], student.logits_to_keep),
            teacher_groups=_loss_view_groups([r.teacher_groups for r in rows], teacher.logits_to_keep),
            tables=self.tables,
            stats=AlignmentStats.combine([a.stats for a in alignments]),
            shifts=self._shifts(alignments, rows),
        )
        counts = {
            "completions": float(len(rows)),
            "completions/ended": float(sum(r.ended for r in rows)),
            "align/end_groups": float(sum(r.end_group for r in rows)),
            "align/dropped_tail_groups": float(sum(r.dropped_tail for r in rows)),
            "align/invalid_bytes": float(
                sum(d.invalid_bytes + c.source_invalid_bytes for c, d in zip(completions, decoded, strict=True))
            ),
            "completions/cut_partial_tokens": float(sum(d.cut_tokens for d in decoded)),
        }
        return TrainBatch(student, teacher, aligned, tuple(d.text for d in decoded), source, counts)

    def _shifts(self, alignments: Sequence[Alignment], rows: Sequence[_ScoredRow]) -> GroupShifts | None:
        """Each scored group whose last tokens start at different bytes, with the column pairs of its shift."""
        if self.tables.shifted is None:
            return None
        kept = [a.num_groups - int(r.dropped_tail) for a, r in zip(alignments, rows, strict=True)]
        sizes = [count + int(r.end_group) for count, r in zip(kept, rows, strict=True)]
        return GroupShifts.build(alignments, kept, self.tables.shifted, sizes)

    def _teacher_ids(self, completion: Completion, decoded: DecodedCompletion, index: int) -> list[int]:
        """The teacher's tokens of the decoded text: the student's under one vocabulary, its own when given and
        still the same text, else encoded."""
        if self.one_vocabulary:
            return list(decoded.ids)
        if completion.teacher_ids is not None and decoded.cut_tokens == 0 and not decoded.invalid_bytes:
            ids = list(completion.teacher_ids)
        else:
            ids = encode_continuation(self.teacher_tokenizer, decoded.text)
            _check_no_specials(self.teacher_tokenizer, ids, index=index, role="teacher")
        check_same_bytes(self.teacher_tokenizer, ids, decoded.text, index=index)
        return ids

    def _align(self, decoded: Sequence[DecodedCompletion], teacher_ids: Sequence[list[int]]) -> list[Alignment]:
        """Align every example in one batched call per tolerance: a text with invalid bytes differs from the
        student's stream by exactly those replacements (at any share of the bytes), so it is accepted whole."""
        out: list[Alignment | None] = [None] * len(decoded)
        for broken in (False, True):
            chosen = [i for i, d in enumerate(decoded) if bool(d.invalid_bytes) == broken]
            if not chosen:
                continue
            texts = [decoded[i].text for i in chosen]
            tolerance = 1.0 if broken else self.max_edit_fraction
            if self.one_vocabulary:
                aligned = align_identical(self.student_tokenizer, [decoded[i].ids for i in chosen], texts,
                                          max_edit_fraction=tolerance)  # fmt: skip
            else:
                aligned = align_text_batch(
                    self.student_tokenizer, self.teacher_tokenizer, texts, student_ids=[decoded[i].ids for i in chosen],
                    teacher_ids=[teacher_ids[i] for i in chosen], max_edit_fraction=tolerance,
                )  # fmt: skip
            for i, alignment in zip(chosen, aligned, strict=True):
                out[i] = alignment
        return [a for a in out if a is not None]

    def _scored(self, completion: Completion, decoded: DecodedCompletion, alignment: Alignment) -> _ScoredRow:
        """One example's ids and groups as scored: the end group added, or an inexact tail group dropped."""
        student_ids, teacher_ids = list(decoded.ids), [int(i) for i in alignment.teacher_ids]
        student_groups, teacher_groups = alignment.student_groups.copy(), alignment.teacher_groups.copy()
        num_groups = alignment.num_groups
        ended = completion.ended and decoded.cut_tokens == 0  # a stop after a cut character follows other bytes
        dropped = not ended and not completion.exact_tail and num_groups > 0
        if dropped:
            num_groups -= 1
            student_groups[student_groups == num_groups] = -1
            teacher_groups[teacher_groups == num_groups] = -1
        student_end, teacher_end = self._end_ids(completion)
        end_group = ended and self.end_group and student_end is not None and teacher_end is not None
        if end_group:
            student_ids.append(int(student_end))  # type: ignore[arg-type]
            teacher_ids.append(int(teacher_end))  # type: ignore[arg-type]
            student_groups = np.append(student_groups, num_groups)
            teacher_groups = np.append(teacher_groups, num_groups)
        return _ScoredRow(student_ids, teacher_ids, student_groups, teacher_groups, ended, end_group, dropped)

    def _end_ids(self, completion: Completion) -> tuple[int | None, int | None]:
        """Each side's end token: the stop id it sampled, else its rule's end token. Under one vocabulary both
        sides read one sequence, so the stop id one side sampled ends it on both when both rules stop on it."""
        student_end, teacher_end = completion.student_end_id, completion.teacher_end_id
        if self.one_vocabulary:
            sampled = student_end if student_end is not None else teacher_end
            if sampled in self.student_rule.stop_ids and sampled in self.teacher_rule.stop_ids:
                student_end = teacher_end = sampled
        return (student_end if student_end is not None else self.student_rule.end_id,
                teacher_end if teacher_end is not None else self.teacher_rule.end_id)  # fmt: skip


@dataclass(frozen=True)
class _ScoredRow:
    student_ids: list[int]
    teacher_ids: list[int]
    student_groups: np.ndarray
    teacher_groups: np.ndarray
    ended: bool
    end_group: bool
    dropped_tail: bool


def _whole_characters(alignment: Alignment, num_groups: int) -> bool:
    """Whether the bytes of the first ``num_groups`` groups end on a whole UTF-8 character."""
    end = int(alignment.group_bytes[num_groups - 1, 1])
    try:
        alignment.text_bytes[:end].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _special_ids(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """The ids among ``ids`` that are special tokens of ``tokenizer`` (one vectorized lookup)."""
    special = token_bytes_table(tokenizer).special_mask
    array = np.asarray(ids, dtype=np.int64)
    array = array[array < special.shape[0]]
    return array[special[array]].tolist()


def _check_no_specials(tokenizer: Any, ids: Sequence[int], *, index: int, role: str) -> None:
    """Raise :class:`DataError` when encoded text holds a special token (``<unk>``, ``[UNK]``): it spells no
    bytes, so the two models would see different contexts."""
    found = _special_ids(tokenizer, ids)
    if found:
        names = sorted(set(tokenizer.convert_ids_to_tokens(found)))
        raise DataError(
            f"row {index}: the {role} tokenizer encodes the completion with special token(s) {names}, which spell "
            "no bytes (the other model would see different text); remove the characters it cannot spell "
            "or use a tokenizer with byte fallback"
        )


def _loss_view_groups(groups: Sequence[Any], width: int) -> torch.Tensor:
    """(B, width) group of each loss-view column: -1 for the last prompt token and padding."""
    out = torch.full((len(groups), width), -1, dtype=torch.int64)
    for b, row in enumerate(groups):
        out[b, 1 : 1 + len(row)] = torch.as_tensor(row, dtype=torch.int64)
    return out
