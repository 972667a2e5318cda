"""The 258 bins of the byte marginal, per tokenizer: each token id's first byte (or the end, or no byte), and the bins
both sides of a pair can produce. Built once per pair with the batch's tables (:class:`gold.data.batch.PairTables`);
the loss that folds distributions onto them is :mod:`gold.losses.byte_marginal`.

Shape legend: V one side's vocabulary (embedding rows), 258 = 256 byte values + END + NO_BYTE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

NUM_BINS = 258
END_BIN = 256  # the completion ends here (a stop id): an outcome both sides predict
NO_BYTE = 257


def first_byte_table(table: Any, *, num_rows: int | None = None, end_ids: Sequence[int] = ()) -> torch.Tensor:
    """(V,) int64 bin of every token id: its first byte, END_BIN for the stop ids, NO_BYTE when it spells
    no byte (other specials, padded embedding rows).

    Args:
        table: an :class:`alignment.TokenBytesTable`.
        num_rows: embedding rows of the model (≥ vocabulary size); extra rows go to NO_BYTE.
        end_ids: the side's stop ids (:class:`gold.models.stops.StopRule`).
    """
    lengths = table.lengths
    first = np.full(num_rows or table.vocab_size, NO_BYTE, dtype=np.int64)
    has_bytes = np.flatnonzero(lengths > 0)
    first[has_bytes] = table.buffer[table.offsets[has_bytes]]
    ends = np.asarray([i for i in end_ids if i < first.shape[0]], dtype=np.int64)
    first[ends] = END_BIN
    return torch.from_numpy(first)


def shared_bins(student_bins: torch.Tensor, teacher_bins: torch.Tensor) -> torch.Tensor:
    """(258,) bool: bins (first bytes, end, and "no byte") that some token of *each* side falls in."""
    student_has = torch.bincount(student_bins, minlength=NUM_BINS) > 0
    teacher_has = torch.bincount(teacher_bins.to(student_bins.device), minlength=NUM_BINS) > 0
    return student_has & teacher_has
