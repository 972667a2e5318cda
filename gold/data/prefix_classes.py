"""The classes of the projection term, per pair: each token of either side projected into the teacher's vocabulary
through its bytes (in the spirit of X-Token's projection KL). Built once per pair, with the batch's tables
(:class:`gold.data.batch.PairTables`), when ``loss.projection_weight`` is set; the loss that folds distributions onto
them is :func:`gold.losses.byte_marginal.projection`.

A student token goes to the **longest teacher token its bytes start with** (student ``Ġmoon`` → teacher ``▁moo``
when the teacher has no ``▁moon``); that teacher token names its class. A teacher token goes to the longest of its
own prefixes (itself included) that some student token was sent to, so both sides land on the same set of classes
(teacher ``▁moooo`` → ``▁moo`` when no student token starts with ``▁mooo``). Stop ids share one END class; tokens
that spell no byte, and tokens with no class, fall in NONE. Where the first-byte marginal knows only "a space comes
next" at a word start, these classes tell which word.

Shape legend: Vs / Vt embedding rows, C = Vt + 2 classes (one per teacher id, END, NONE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class PrefixClasses:
    """Attributes:
    student: (Vs,) int64 class of every student id. teacher: (Vt,) int64 likewise.
    shared: (C,) bool, the classes some token of *each* side falls in (the loss renormalizes on them).
    """

    student: torch.Tensor
    teacher: torch.Tensor
    shared: torch.Tensor

    def to(self, device: torch.device | str) -> PrefixClasses:
        return PrefixClasses(self.student.to(device), self.teacher.to(device), self.shared.to(device))


def token_strings(table: Any) -> list[bytes]:
    """Every id's bytes from an :class:`alignment.TokenBytesTable` (b"" for specials)."""
    buffer, offsets = table.buffer.tobytes(), table.offsets
    return [buffer[offsets[i] : offsets[i + 1]] for i in range(table.vocab_size)]


def longest_prefix(text: bytes, known: dict[bytes, int]) -> int | None:
    """The id of the longest prefix of ``text`` (``text`` itself included) in ``known``, None if there is none."""
    for end in range(len(text), 0, -1):
        found = known.get(text[:end])
        if found is not None:
            return found
    return None


def prefix_classes(
    student_table: Any, teacher_table: Any, *, student_rows: int, teacher_rows: int,
    student_end_ids: Sequence[int] = (), teacher_end_ids: Sequence[int] = (),
) -> PrefixClasses:  # fmt: skip
    """The projection's classes for a pair (see the module text); ``*_rows`` are the models' logit sizes."""
    end_class, none_class = teacher_rows, teacher_rows + 1
    teacher_strings = token_strings(teacher_table)
    teacher_ids: dict[bytes, int] = {}
    for index, text in enumerate(teacher_strings):
        if text and index < teacher_rows:
            teacher_ids.setdefault(text, index)  # byte-fallback duplicates share the lowest id's class
    student = np.full(student_rows, none_class, dtype=np.int64)
    for index, text in enumerate(token_strings(student_table)[:student_rows]):
        found = longest_prefix(text, teacher_ids) if text else None
        if found is not None:
            student[index] = found
    used = {teacher_strings[i]: int(i) for i in np.unique(student[student < end_class])}
    teacher = np.full(teacher_rows, none_class, dtype=np.int64)
    for index, text in enumerate(teacher_strings[:teacher_rows]):
        found = longest_prefix(text, used) if text else None
        if found is not None:
            teacher[index] = found
    student[[i for i in student_end_ids if i < student_rows]] = end_class
    teacher[[i for i in teacher_end_ids if i < teacher_rows]] = end_class
    classes = teacher_rows + 2
    shared = (np.bincount(student, minlength=classes) > 0) & (np.bincount(teacher, minlength=classes) > 0)
    return PrefixClasses(torch.from_numpy(student), torch.from_numpy(teacher), torch.from_numpy(shared))
