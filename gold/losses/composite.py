"""The cross-tokenizer loss: every configured term over the aligned groups, in one call.

Shape legend: B batch, Ts / Tt sequence lengths, Vs / Vt logit sizes, G groups, g groups per chunk.

Rows are computed only for aligned groups, never as full ``[B, T, V]`` probabilities. With
``chunk_groups`` set, each chunk of groups is wrapped in activation checkpointing, so its (g, V) rows
are recomputed in backward instead of being kept: peak memory grows with the chunk, not with G.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from gold.config import LossConfig
from gold.losses.batch import AlignedBatch
from gold.losses.byte_marginal import byte_marginal
from gold.losses.hybrid import hybrid
from gold.losses.merge import GroupIndex, index_groups, rows_of, scale, start_rows
from gold.losses.reduce import check_finite, reduce_rows
from gold.losses.span import span_likelihood
from gold.losses.uld import uld, uld_topk

TERMS = ("hybrid", "uld", "span", "byte_marginal")


def _row_terms(
    config: LossConfig, batch: AlignedBatch, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
    student_index: GroupIndex, teacher_index: GroupIndex, select: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """(4, g) per-group values of hybrid, ULD, byte marginal and teacher matched mass for one chunk."""
    tables = batch.tables
    student_rows = rows_of(student_logits, student_index, select)  # (g, Vs)
    teacher_rows = rows_of(teacher_logits, teacher_index, select).detach()  # (g, Vt)
    zeros = torch.zeros(student_rows.shape[0], dtype=student_rows.dtype, device=student_rows.device)
    hybrid_rows, uld_rows, byte_rows, mass = zeros, zeros, zeros, zeros
    if config.hybrid_weight > 0:
        weights = "mass" if config.hybrid_weighting == "mass" else (config.hybrid_matched_weight,
                                                                     config.hybrid_unmatched_weight)  # fmt: skip
        parts = hybrid(student_rows, teacher_rows, student_matched=tables.student_matched,
                       teacher_matched=tables.teacher_matched, beta=config.beta, weights=weights)  # fmt: skip
        hybrid_rows, mass = parts.loss, parts.teacher_matched_mass
    if config.uld_weight > 0:
        if config.uld_top_k is None:
            uld_rows = uld(student_rows, teacher_rows)
        else:
            uld_rows = uld_topk(student_rows, teacher_rows, k=config.uld_top_k)
    if config.byte_marginal_weight > 0:
        byte_rows = byte_marginal(
            start_rows(student_logits, student_index, select),
            start_rows(teacher_logits, teacher_index, select).detach(),
            student_bins=tables.student_bins, teacher_bins=tables.teacher_bins, beta=config.beta,
        )  # fmt: skip
    return torch.stack([hybrid_rows, uld_rows, byte_rows, mass])


def cross_tokenizer_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    batch: AlignedBatch,
    config: LossConfig,
    *,
    num_items_in_batch: int | torch.Tensor | None = None,
    step: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured mix of loss terms, averaged over the groups of the global batch.

    Args:
        student_logits: (B, Ts, Vs) student logits (with grad).
        teacher_logits: (B, Tt, Vt) teacher logits (no grad needed).
        batch: ids and groups of both sides, and the pair tables.
        config: which terms, with which weights.
        num_items_in_batch: groups in the whole optimizer step (gradient accumulation); default G.
        step: the training step, named in the error if a term is not finite.

    Returns:
        ``(loss, metrics)``: the scalar loss and floats for logging (each term, matched mass,
        alignment coverage).
    """
    s_logits = scale(student_logits, config.student_temperature)
    t_logits = scale(teacher_logits.detach(), config.teacher_temperature)
    student_index = index_groups(s_logits, batch.student_ids, batch.student_groups)
    teacher_index = index_groups(t_logits, batch.teacher_ids, batch.teacher_groups)
    if student_index.num_groups != teacher_index.num_groups:
        raise ValueError(
            f"the student side has {student_index.num_groups} groups and the teacher side "
            f"{teacher_index.num_groups}; both must come from the same alignments"
        )
    per_row = _chunked(config, batch, s_logits, t_logits, student_index, teacher_index)  # (4, G)
    span_rows = span_likelihood(student_index.observed, teacher_index.observed.detach(), beta=config.beta)
    rows = {"hybrid": per_row[0], "uld": per_row[1], "span": span_rows, "byte_marginal": per_row[2]}
    weights = {"hybrid": config.hybrid_weight, "uld": config.uld_weight, "span": config.span_weight,
               "byte_marginal": config.byte_marginal_weight}  # fmt: skip
    loss = student_logits.new_zeros(())
    metrics: dict[str, float] = {}
    for term in TERMS:
        if weights[term] > 0:
            value = check_finite(reduce_rows(rows[term], num_items_in_batch=num_items_in_batch), term=term, step=step)
            loss = loss + weights[term] * value
            metrics[f"loss/{term}"] = float(value.detach())
    metrics.update(_health(batch, per_row[3], config))
    return check_finite(loss, term="total", step=step), metrics


def _chunked(
    config: LossConfig, batch: AlignedBatch, s_logits: torch.Tensor, t_logits: torch.Tensor,
    student_index: GroupIndex, teacher_index: GroupIndex,
) -> torch.Tensor:  # fmt: skip
    total = student_index.num_groups
    device = s_logits.device
    if total == 0:
        return s_logits.new_zeros((4, 0))
    size = config.chunk_groups or total
    parts = []
    for start in range(0, total, size):
        select = torch.arange(start, min(start + size, total), device=device)
        fn: Callable[..., torch.Tensor] = _row_terms
        args = (config, batch, s_logits, t_logits, student_index, teacher_index, select)
        if config.chunk_groups is not None and s_logits.requires_grad:
            parts.append(checkpoint(fn, *args, use_reentrant=False))
        else:
            parts.append(fn(*args))
    return torch.cat(parts, dim=1)


def _health(batch: AlignedBatch, matched_mass: torch.Tensor, config: LossConfig) -> dict[str, float]:
    stats = batch.stats
    health = {
        "align/groups": float(stats.num_groups),
        "align/one_to_one_fraction": stats.one_to_one_fraction,
        "align/approximate_fraction": stats.approximate_fraction,
        "align/student_tokens_per_group": stats.student_tokens_per_group,
    }
    if config.hybrid_weight > 0 and matched_mass.numel():
        health["hybrid/teacher_matched_mass"] = float(matched_mass.detach().mean())
    return health
