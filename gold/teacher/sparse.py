"""Sparse teacher rows: at each position the K most likely next tokens and the actual one, plus a tail bucket.

Shape legend: B batch, L loss-view columns, K known entries per column, V the teacher's logit rows.

A served teacher (vLLM ``prompt_logprobs=K``) or a teacher cache knows, at each position, the log-probabilities
of the K most likely next tokens and of the token that actually follows, exactly, and nothing else.
:func:`dense_rows` writes them in the layout every loss reads, (B, L, V + 1) log-probabilities: known columns hold
their values, the other V columns ``-inf``, and column V, the **tail**, holds ``log(1 - Σ known)``, so each
column sums to one. A dense local teacher is the case K = V (its tail is empty).

What the loss makes of it (:func:`gold.losses.hybrid.hybrid` with ``teacher_tail``): a group row's prefix comes from
the actual tokens' log-probabilities (exact), its last column from the top-K; the hybrid's JSD runs over the matched
columns the teacher knows plus one *tail outcome* on both sides (the teacher's tail mass; the student's mass on
matched columns whose teacher partner is unknown; at β = 0 or 1 both join "other"), its ULD over the unmatched
columns the teacher knows. For β ∈ (0, 1) the error per group is bounded in terms of the tail masses
(:func:`gold.losses.hybrid.sparse_error_bound`).
Temperature: the rows are the teacher's at temperature 1; a loss temperature T ≠ 1 divides them and renormalizes
with the tail as one outcome, which is exact only when K = V.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gold.losses.merge import log1mexp


@dataclass(frozen=True)
class SparseRows:
    """Known log-probabilities of a batch's loss-view columns.

    Attributes:
        ids: (B, L, K) int64 teacher ids, -1 where a column knows fewer than K (no id twice in a column).
        logprobs: (B, L, K) float32 their log-probabilities at temperature 1, ``-inf`` where ``ids`` is -1.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor

    def __post_init__(self) -> None:
        if self.ids.shape != self.logprobs.shape or self.ids.dim() != 3:
            raise ValueError(f"ids {tuple(self.ids.shape)} and logprobs {tuple(self.logprobs.shape)} must be one "
                             "(B, L, K) shape")  # fmt: skip


def dense_rows(rows: SparseRows, vocab_rows: int) -> torch.Tensor:
    """(B, L, V + 1) float32 log-probabilities: the known entries, ``-inf`` elsewhere, the tail in column V.

    Ids outside ``[0, vocab_rows)`` are left out (their mass stays in the tail). A column that knows all V ids has an
    empty tail (``-inf``), so K = V reproduces the dense teacher's log-softmax exactly.
    """
    ids = rows.ids.long()
    valid = (ids >= 0) & (ids < vocab_rows)
    logprobs = rows.logprobs.float().masked_fill(~valid, float("-inf"))
    out = torch.full((*ids.shape[:2], vocab_rows + 1), float("-inf"), dtype=torch.float32, device=ids.device)
    out.scatter_(2, torch.where(valid, ids, vocab_rows), logprobs)  # invalid entries land on the tail, rewritten below
    known = torch.logsumexp(logprobs, dim=-1).clamp(max=0.0)
    complete = valid.sum(dim=-1) >= vocab_rows
    out[..., vocab_rows] = torch.where(complete, torch.full_like(known, float("-inf")), log1mexp(known))
    return out


def stack_rows(rows: Sequence[tuple[np.ndarray, np.ndarray] | None], width: int) -> SparseRows:
    """B sequences' known entries — each (columns, known) ids and log-probabilities (padded with -1 / ``-inf``), or
    None for a sequence that knows nothing — as (B, width, K) :class:`SparseRows` (columns past ``width`` dropped)."""
    k = max([1] + [r[0].shape[1] for r in rows if r is not None])
    ids = np.full((len(rows), width, k), -1, dtype=np.int64)
    logprobs = np.full((len(rows), width, k), -np.inf, dtype=np.float32)
    for b, row in enumerate(rows):
        if row is not None:
            columns, known = min(width, row[0].shape[0]), row[0].shape[1]
            ids[b, :columns, :known] = row[0][:columns]
            logprobs[b, :columns, :known] = row[1][:columns]
    return SparseRows(torch.from_numpy(ids), torch.from_numpy(logprobs))


def top_k_rows(logprobs: torch.Tensor, k: int, actual: torch.Tensor | None = None) -> SparseRows:
    """What a server asked for ``prompt_logprobs=k`` answers, from (B, L, V) log-probabilities: each column's top-k
    and, when ``actual`` (B, L) is given, the actual next token's once more if it is not among them (k = -1: all V)."""
    k = logprobs.shape[-1] if k == -1 or k >= logprobs.shape[-1] else k
    top = logprobs.float().topk(k, dim=-1)
    ids, values = top.indices, top.values
    if actual is not None and k < logprobs.shape[-1]:
        actual = actual.long().clamp(0, logprobs.shape[-1] - 1)[..., None]
        seen = (ids == actual).any(-1, keepdim=True)
        extra = torch.where(seen, torch.full_like(actual, -1), actual)
        extra_value = logprobs.float().gather(-1, actual).masked_fill(seen, float("-inf"))
        ids, values = torch.cat([ids, extra], -1), torch.cat([values, extra_value], -1)
    return SparseRows(ids, values)


def next_token_ids(input_ids: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) the token each loss-view column predicts (the last column predicts past the end: id 0)."""
    following = input_ids[:, -width + 1 :] if width > 1 else input_ids[:, :0]
    return torch.cat([following, torch.zeros_like(input_ids[:, :1])], dim=1)
