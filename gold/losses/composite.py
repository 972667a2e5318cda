"""The cross-tokenizer loss: every configured term over the aligned groups, in one call.

Shape legend: B batch, Ts / Tt sequence lengths, Vs / Vt logit sizes, G groups, g groups per chunk.

On float32 CPU logits the hybrid and ULD terms run in fused numba kernels (:mod:`gold.losses.fused`).
Otherwise (and for the span, byte-marginal and projection terms) rows are computed only for aligned groups,
never as full ``[B, T, V]`` probabilities. With ``chunk_groups`` set, each chunk of groups is
wrapped in activation checkpointing, so its (g, V) rows are recomputed in backward instead of being
kept: peak memory grows with the chunk, not with G. Rows, terms and the loss are float32 for bf16 /
fp16 logits (:func:`gold.losses.merge.reduction_dtype`); only each chunk's rows are upcast.

Either side's logits may instead be :class:`gold.losses.hidden.HiddenLogits` (the GPU path: hidden states and the
output layer); then each chunk computes its rows from the hidden states and recomputes them in backward, so
no (B, T, V) logits exist at all.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from gold.config import LossConfig
from gold.data.batch import AlignedBatch
from gold.losses.byte_marginal import byte_marginal
from gold.losses.fused import FUSED_TERMS, fused_applies, fused_row_terms
from gold.losses.hybrid import HybridParts, hybrid
from gold.losses.merge import GroupIndex, check_same_groups, index_groups, reduction_dtype, rows_of, start_rows
from gold.losses.projection import projection
from gold.losses.reduce import check_finite, reduce_rows
from gold.losses.span import span_likelihood
from gold.losses.triton_uld import triton_uld_quantized
from gold.losses.uld import uld, uld_topk
from gold.losses.uld_quantized import uld_quantized

TERMS = ("hybrid", "uld", "span", "byte_marginal", "projection")


def _row_terms(
    config: LossConfig, terms: frozenset[str], batch: AlignedBatch, student_logits: torch.Tensor,
    teacher_logits: torch.Tensor, student_index: GroupIndex, teacher_index: GroupIndex, select: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """(8, g) per-group values for one chunk: hybrid, ULD, byte marginal, projection, teacher matched mass, the hybrid's
    matched (JSD) and unmatched (ULD) parts before weighting, and the teacher mass the global vocabulary map
    matches (zeros for terms not asked)."""
    zeros = torch.zeros(select.shape[0], dtype=reduction_dtype(student_logits), device=student_logits.device)
    hybrid_rows, uld_rows, byte_rows, projection_rows = zeros, zeros, zeros, zeros
    mass, matched, unmatched = zeros, zeros, zeros
    mass_before = zeros
    if "hybrid" in terms or "uld" in terms:
        student_rows = rows_of(student_logits, student_index, select)  # (g, Vs)
        teacher_rows = rows_of(teacher_logits, teacher_index, select).detach()  # (g, Vt)
    if "hybrid" in terms:
        parts = _hybrid_rows(config, batch, student_rows, teacher_rows, student_index, teacher_index, select)
        hybrid_rows, mass, matched, unmatched, mass_before = parts
    # sparse teacher rows: the tail is no token, so the sorted ULD and the next-byte marginal leave it out (ULD moves
    # by at most the tail mass; the byte marginal renormalizes the known mass over the shared bins)
    known = slice(None, batch.tables.teacher_tail)
    if "uld" in terms:
        uld_rows = uld_distance(config, student_rows.device)(student_rows, teacher_rows[:, known])
    if "byte_marginal" in terms:
        byte_rows = byte_marginal(
            start_rows(student_logits, student_index, select),
            start_rows(teacher_logits, teacher_index, select).detach()[:, known],
            student_bins=batch.tables.student_bins, teacher_bins=batch.tables.teacher_bins[known],
            shared=batch.tables.shared_bins,
            beta=config.beta,
        )  # fmt: skip
    if "projection" in terms:
        projection_rows = _projection_rows(config, batch, student_logits, teacher_logits, student_index,
                                           teacher_index, select)  # fmt: skip
    return torch.stack([hybrid_rows, uld_rows, byte_rows, projection_rows, mass, matched.detach(), unmatched.detach(),
                        mass_before])  # fmt: skip


def _projection_rows(
    config: LossConfig, batch: AlignedBatch, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
    student_index: GroupIndex, teacher_index: GroupIndex, select: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """The projection term's rows for one chunk (:mod:`gold.losses.projection`); sparse teacher rows leave their
    tail out, as the byte marginal does."""
    classes = batch.tables.prefix_classes
    if classes is None:
        raise ValueError("loss.projection_weight > 0 needs the pair's prefix classes: build the PairTables with "
                         "with_prefix_classes=True (GoldTrainer does when the weight is set)")  # fmt: skip
    known = slice(None, batch.tables.teacher_tail)
    classes = dataclasses.replace(classes, teacher=classes.teacher[known])
    return projection(start_rows(student_logits, student_index, select),
                      start_rows(teacher_logits, teacher_index, select).detach()[:, known], classes,
                      beta=config.beta)  # fmt: skip


def _hybrid_rows(
    config: LossConfig, batch: AlignedBatch, student_rows: torch.Tensor, teacher_rows: torch.Tensor,
    student_index: GroupIndex, teacher_index: GroupIndex, select: torch.Tensor,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """The hybrid's loss, teacher matched mass, matched and unmatched parts per row of a chunk, and the mass the
    global map matches: every row through the global vocabulary map, then each shifted group through its own
    column pairs (:attr:`AlignedBatch.shifts`), when ``config.shifted_matching``."""
    weights = "mass" if config.hybrid_weighting == "mass" else (config.hybrid_matched_weight,
                                                                 config.hybrid_unmatched_weight)  # fmt: skip
    options = dict(beta=config.beta, weights=weights, distance=uld_distance(config, student_rows.device))
    student_totals, teacher_totals = student_index.prefix[select], teacher_index.prefix[select].detach()

    def run(rows: torch.Tensor | slice, student_ids: torch.Tensor, teacher_ids: torch.Tensor) -> HybridParts:
        return hybrid(student_rows[rows], teacher_rows[rows], student_matched=student_ids, teacher_matched=teacher_ids,
                      student_log_totals=student_totals[rows], teacher_log_totals=teacher_totals[rows],
                      teacher_tail=batch.tables.teacher_tail, **options)  # type: ignore[arg-type]  # fmt: skip

    tables, shifts = batch.tables, batch.shifts
    if not config.shifted_matching or shifts is None:
        parts = run(slice(None), tables.student_matched, tables.teacher_matched)
        return parts.loss, parts.teacher_matched_mass, parts.matched, parts.unmatched, parts.teacher_matched_mass
    # each row once: unshifted rows (-1) through the global map, each shifted group through its own pairs
    sets = shifts.group_set[select]
    values = [student_rows.new_zeros(select.shape[0]) for _ in range(4)]
    for k in sets.unique().tolist():
        rows = (sets == k).nonzero(as_tuple=True)[0]
        ids = (
            (tables.student_matched, tables.teacher_matched)
            if k < 0
            else (shifts.student_ids[k], shifts.teacher_ids[k])
        )
        part = run(rows, *ids)
        found = (part.loss, part.teacher_matched_mass, part.matched, part.unmatched)
        values = [v.index_put((rows,), f.to(v.dtype)) for v, f in zip(values, found, strict=True)]
    # the teacher mass the global map would match in the shifted rows (for the log)
    shifted = (sets >= 0).nonzero(as_tuple=True)[0]
    global_mass = torch.logsumexp(teacher_rows[shifted].index_select(-1, tables.teacher_matched), dim=-1)
    before = values[1].index_put((shifted,), global_mass.clamp(max=0.0).exp().to(values[1].dtype))
    return (*values, before)


def uld_distance(config: LossConfig, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The ULD function ``config.uld_method`` names ("auto": quantized on CPU, exact elsewhere; "quantized" off the CPU:
    the Triton kernels of :mod:`gold.losses.triton_uld`)."""
    method = config.uld_method
    if method == "auto":
        method = "quantized" if device.type == "cpu" else "exact"
    if method == "quantized":
        return uld_quantized if device.type == "cpu" else triton_uld_quantized
    if method == "topk":
        return functools.partial(uld_topk, k=config.uld_top_k)
    return uld


def cross_tokenizer_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    batch: AlignedBatch,
    config: LossConfig,
    *,
    num_items_in_batch: int | torch.Tensor | None = None,
    step: int | None = None,
    check: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured mix of loss terms, averaged over the groups of the global batch.

    On float32 CPU logits the hybrid and ULD terms run fused (:mod:`gold.losses.fused`) unless
    ``config.implementation`` is "torch"; span, byte-marginal and projection terms always take the torch path.

    Args:
        student_logits: (B, Ts, Vs) student logits (with grad).
        teacher_logits: (B, Tt, Vt) teacher logits (no grad needed).
        batch: ids and groups of both sides, and the pair tables.
        config: which terms, with which weights.
        num_items_in_batch: groups in the whole optimizer step (gradient accumulation); default G.
        step: the training step, named in the error if a term is not finite.
        check: raise :class:`NonFiniteLossError` on a NaN, infinite or floored term (False: the caller checks; the
            trainer does, on every process together, so that one process's NaN cannot leave the others waiting).

    Returns:
        ``(loss, metrics)``: the scalar loss (float32 for bf16 / fp16 logits) and floats for logging
        (each term, matched mass, alignment coverage).
    """
    weights = {"hybrid": config.hybrid_weight, "uld": config.uld_weight, "span": config.span_weight,
               "byte_marginal": config.byte_marginal_weight, "projection": config.projection_weight}  # fmt: skip
    fused = fused_applies(config, student_logits, teacher_logits) and bool((batch.student_groups >= 0).any())
    dtype = reduction_dtype(student_logits)
    loss = torch.zeros((), dtype=dtype, device=student_logits.device)
    values: dict[str, torch.Tensor] = {}
    hybrid_health = torch.zeros(3, 0, dtype=dtype, device=student_logits.device)
    if fused:
        fused_loss, values, hybrid_health = fused_row_terms(
            student_logits, teacher_logits, batch, config, num_items_in_batch=num_items_in_batch
        )
        for term, value in values.items():
            check_finite(value, term=term, step=step, check=check)
        loss = loss + fused_loss
    torch_terms = frozenset(t for t in TERMS if weights[t] > 0 and not (fused and t in FUSED_TERMS))
    if torch_terms:
        rows, torch_health = _torch_rows(config, torch_terms, batch, student_logits, teacher_logits)
        hybrid_health = hybrid_health if fused else torch_health
        for term in TERMS:
            if term in torch_terms:
                values[term] = check_finite(reduce_rows(rows[term], num_items_in_batch=num_items_in_batch),
                                            term=term, step=step, check=check)  # fmt: skip
                loss = loss + weights[term] * values[term]
    metrics = {f"loss/{term}": float(values[term].detach()) for term in TERMS if term in values}
    metrics.update(_health(batch, hybrid_health, config))
    return check_finite(loss, term="total", step=step, check=check), metrics


def _torch_rows(
    config: LossConfig, terms: frozenset[str], batch: AlignedBatch, student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:  # fmt: skip
    """Per-group rows of ``terms`` by the composed torch path, and the hybrid's (4, G) health rows."""
    # the temperatures are applied to each chunk's upcast rows, never to a copy of the whole logits
    teacher_logits = teacher_logits.detach()
    student_index = index_groups(student_logits, batch.student_ids, batch.student_groups,
                                 temperature=config.student_temperature)  # fmt: skip
    teacher_index = index_groups(teacher_logits, batch.teacher_ids, batch.teacher_groups,
                                 temperature=config.teacher_temperature)  # fmt: skip
    check_same_groups(student_index.num_groups, teacher_index.num_groups)
    per_row = _chunked(config, terms, batch, student_logits, teacher_logits, student_index, teacher_index)  # (8, G)
    span_rows = span_likelihood(student_index.observed, teacher_index.observed.detach(), beta=config.beta)
    rows = {"hybrid": per_row[0], "uld": per_row[1], "span": span_rows, "byte_marginal": per_row[2],
            "projection": per_row[3]}  # fmt: skip
    return rows, per_row[4:]


def _chunked(
    config: LossConfig, terms: frozenset[str], batch: AlignedBatch, student_logits: torch.Tensor,
    teacher_logits: torch.Tensor, student_index: GroupIndex, teacher_index: GroupIndex,
) -> torch.Tensor:  # fmt: skip
    total = student_index.num_groups
    device = student_logits.device
    dtype = reduction_dtype(student_logits)
    if total == 0:
        # no groups anywhere in this slice (e.g. every rollout stopped at once): empty rows that are
        # still views of the student logits, so the (zero) loss has a graph to call backward on
        empty = student_logits.flatten()[:0].to(dtype) if isinstance(student_logits, torch.Tensor) else (
            student_logits.empty_view(dtype))  # fmt: skip
        return torch.stack([empty] * 8)
    if not terms & {"hybrid", "uld", "byte_marginal", "projection"}:
        return torch.zeros(8, total, dtype=dtype, device=device)
    hidden = not isinstance(student_logits, torch.Tensor)  # gold.losses.hidden: never all rows at once
    size = config.chunk_groups or (student_logits.rows_per_block if hidden else total)  # type: ignore[union-attr,attr-defined]
    parts = []
    for start in range(0, total, size):
        select = torch.arange(start, min(start + size, total), device=device)
        fn: Callable[..., torch.Tensor] = _row_terms
        args = (config, terms, batch, student_logits, teacher_logits, student_index, teacher_index, select)
        if (config.chunk_groups is not None or hidden) and student_logits.requires_grad:
            parts.append(checkpoint(fn, *args, use_reentrant=False))
        else:
            parts.append(fn(*args))
    return torch.cat(parts, dim=1)


def _health(batch: AlignedBatch, hybrid_rows: torch.Tensor, config: LossConfig) -> dict[str, float]:
    """Alignment coverage and, with the hybrid term, its parts: ``hybrid_rows`` is (4, G) of teacher matched
    mass, matched JSD, unmatched ULD and the mass the global vocabulary map matches, per group."""
    stats = batch.stats
    health = {
        "align/groups": float(stats.num_groups),
        "align/one_to_one_fraction": stats.one_to_one_fraction,
        "align/approximate_fraction": stats.approximate_fraction,
        "align/student_tokens_per_group": stats.student_tokens_per_group,
    }
    if config.hybrid_weight > 0 and hybrid_rows.shape[1]:
        mass, matched, unmatched, _ = hybrid_rows.detach().mean(dim=1).tolist()
        health["hybrid/teacher_matched_mass"] = mass
        health["hybrid/matched_jsd"] = matched
        health["hybrid/unmatched_uld"] = unmatched
        health.update(_shifted_health(batch, hybrid_rows.detach(), config))
    return health


def _shifted_health(batch: AlignedBatch, hybrid_rows: torch.Tensor, config: LossConfig) -> dict[str, float]:
    """Share of groups whose last tokens start at different bytes, and the teacher mass matched in them by the
    global map (before) and by their own column pairs (after; equal to before with shifted matching off)."""
    if batch.shifts is None or batch.shifts.group_set.shape[0] != hybrid_rows.shape[1]:
        return {}
    shifted = batch.shifts.group_set.to(hybrid_rows.device) >= 0
    out = {"hybrid/shifted_groups": float(shifted.float().mean())}
    if shifted.any():
        out["hybrid/shifted_mass_before"] = float(hybrid_rows[3][shifted].mean())
        out["hybrid/shifted_mass_after"] = float(hybrid_rows[0][shifted].mean())
    return out
