"""GOLD hybrid loss: generalized JSD on the vocabulary both sides share, ULD on the rest.

Shape legend: R rows, Vs / Vt student / teacher vocabularies, M matched token pairs.

Matched columns come from :class:`alignment.VocabMap` (identical canonical bytes, so ``Ġworld``,
``▁world`` and `` world`` match; TRL matches raw strings and misses them). The matched part is a JSD
over the M matched outcomes plus one "other" outcome holding each side's remaining mass, so both
are proper distributions; the unmatched part is ULD over the columns without a partner.

Weights: ``"mass"`` (default) weights each row's matched part by the teacher's matched probability
mass ``m`` and the unmatched part by ``1 - m`` (per row, not a per-pair constant like TRL's
"adaptive" weights); a fixed pair ``(w_matched, w_unmatched)`` is also accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gold.losses.divergences import generalized_jsd, generalized_jsd_of_finite
from gold.losses.floor import FLOOR
from gold.losses.merge import log1mexp
from gold.losses.uld import uld


@dataclass(frozen=True)
class HybridParts:
    """Per-row pieces of the hybrid loss, for logging.

    Attributes:
        loss: (R,) the weighted sum.
        matched: (R,) JSD on matched columns (+ the "other" bucket).
        unmatched: (R,) ULD on unmatched columns.
        matched_weight: (R,) weight of the matched part.
        teacher_matched_mass: (R,) teacher probability on matched columns.
    """

    loss: torch.Tensor
    matched: torch.Tensor
    unmatched: torch.Tensor
    matched_weight: torch.Tensor
    teacher_matched_mass: torch.Tensor


def _log_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(exp(a) + exp(b))`` that is ``-inf`` with a zero (not NaN) gradient where both are ``-inf``."""
    top = torch.maximum(a, b)
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(a - shift) + torch.exp(b - shift)
    present = total > 0
    value = shift + torch.log(torch.where(present, total, torch.ones_like(total)))
    return torch.where(present, value, torch.full_like(value, float("-inf")))


def _other(
    matched_logprobs: torch.Tensor, unmatched_logprobs: torch.Tensor, log_totals: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(R,) log-mass on the matched columns, and (R, 1) log-mass of the "other" outcome.

    "Other" is the unmatched columns plus the mass a chain-rule row leaves to other continuations
    (``1 - exp(log_total)``). It is summed from its parts, never taken as ``1 - Σ matched``: in float32
    that difference is exactly 0 when the matched mass rounds to 1, and a student with "no" other mass
    facing a teacher with some gives an infinite KL (seen with SmolLM2 ← Gemma-3, 94 % matched).
    """
    matched_total = torch.logsumexp(matched_logprobs, dim=-1).clamp(max=0.0)
    unmatched_total = torch.logsumexp(unmatched_logprobs, dim=-1)
    if log_totals is None:
        log_totals = _log_add(matched_total, unmatched_total)
    missing = log1mexp(log_totals.clamp(max=0.0))
    return matched_total, _log_add(unmatched_total, missing).unsqueeze(-1)


def hybrid(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    student_matched: torch.Tensor,
    teacher_matched: torch.Tensor,
    beta: float,
    weights: str | tuple[float, float] = "mass",
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = uld,
    student_log_totals: torch.Tensor | None = None,
    teacher_log_totals: torch.Tensor | None = None,
    teacher_tail: int | None = None,
) -> HybridParts:
    """The GOLD hybrid loss per row.

    Args:
        student_logprobs: (R, Vs) rows (may sum to less than 1).
        teacher_logprobs: (R, Vt) rows.
        student_matched: (M,) int64 student ids with a teacher partner.
        teacher_matched: (M,) int64 the partners, pairwise.
        beta: generalized-JSD β for the matched part (0 forward KL, 1 reverse KL).
        weights: ``"mass"`` or a fixed ``(w_matched, w_unmatched)``.
        distance: the ULD variant for the unmatched part (:func:`gold.losses.uld` by default).
        student_log_totals / teacher_log_totals: (R,) log of each row's total mass when known exactly
            (a chain-rule row's group prefix, :attr:`GroupIndex.prefix`; 0 for one-token groups); by
            default summed from the row.
        teacher_tail: the teacher's tail column when its rows are sparse (:mod:`gold.teacher.sparse`). For β in
            (0, 1) the JSD gets one more outcome, the teacher's tail against the student's mass on matched columns
            whose teacher partner is unknown (``-inf``) in that row, and the matched weight counts it; at β = 0 or 1
            both join "other" instead (an exact merge of the same two distributions: a KL would be infinite where a
            tail of the teacher's unmatched mass faced a student with no moved mass). The ULD leaves the tail out.
            Error bound: :func:`sparse_error_bound`.
    """
    if student_matched.shape != teacher_matched.shape:
        raise ValueError(f"matched id lists differ in length: {student_matched.shape} vs {teacher_matched.shape}")
    student_part = student_logprobs.index_select(-1, student_matched)  # (R, M)
    teacher_part = teacher_logprobs.index_select(-1, teacher_matched)  # (R, M)
    if teacher_tail is not None and teacher_log_totals is None:  # the row's total counts the tail too
        teacher_log_totals = torch.logsumexp(teacher_logprobs, dim=-1)
    student_rest = _unmatched_columns(student_logprobs, student_matched)
    teacher_rest = _unmatched_columns(teacher_logprobs, _with_tail(teacher_matched, teacher_tail))
    _, student_other = _other(student_part, student_rest, student_log_totals)
    teacher_total, teacher_other = _other(teacher_part, teacher_rest, teacher_log_totals)
    # the divergence over (M matched outcomes + "other") is a sum over columns: no concatenated copy
    if teacher_tail is None:
        matched = generalized_jsd_of_finite(student_part, teacher_part, beta=beta)
    else:
        student_part, student_moved = _tail_split(student_part, teacher_part)
        teacher_tail_logprobs = teacher_logprobs[:, teacher_tail : teacher_tail + 1]
        matched = generalized_jsd(student_part, teacher_part, beta=beta)
        if 0.0 < beta < 1.0:  # the tail: an outcome of its own (the student's moved mass against the teacher's tail)
            matched = matched + generalized_jsd(student_moved[:, None], teacher_tail_logprobs, beta=beta)
            teacher_total = _log_add(teacher_total, teacher_tail_logprobs[:, 0])
        else:  # a plain KL: both join "other" (an exact merge), which never faces zero mass
            student_other = _log_add(student_other, student_moved[:, None])
            teacher_other = _log_add(teacher_other, teacher_tail_logprobs)
    matched = matched + generalized_jsd(student_other, teacher_other, beta=beta)
    unmatched = distance(student_rest, teacher_rest)
    teacher_mass = teacher_total.exp().detach()
    if weights == "mass":
        w_matched, w_unmatched = teacher_mass, 1.0 - teacher_mass
    elif isinstance(weights, tuple) and len(weights) == 2:
        if float(weights[0]) + float(weights[1]) <= 0:
            raise ValueError(f"hybrid weights must not both be zero, got {weights}")
        w_matched = torch.full_like(teacher_mass, float(weights[0]))
        w_unmatched = torch.full_like(teacher_mass, float(weights[1]))
    else:
        raise ValueError(f"weights must be 'mass' or (w_matched, w_unmatched), got {weights!r}")
    loss = w_matched * matched + w_unmatched * unmatched
    return HybridParts(loss, matched, unmatched, w_matched, teacher_mass)


def _unmatched_columns(logprobs: torch.Tensor, matched: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(logprobs.shape[-1], dtype=torch.bool, device=logprobs.device)
    keep[matched] = False
    # index_select with explicit ids: a cheaper forward and backward than boolean-mask indexing
    return logprobs.index_select(-1, keep.nonzero(as_tuple=True)[0])


def _with_tail(teacher_matched: torch.Tensor, teacher_tail: int | None) -> torch.Tensor:
    """The teacher columns the ULD part leaves out: the matched ones, and the tail when there is one."""
    if teacher_tail is None:
        return teacher_matched
    return torch.cat([teacher_matched, teacher_matched.new_tensor([teacher_tail])])


def _tail_split(student_part: torch.Tensor, teacher_part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's matched log-probabilities with the columns whose teacher partner is unknown (``-inf``) moved out,
    and (R,) their log-mass."""
    unknown = torch.isneginf(teacher_part)
    # FLOOR, not -inf: a row with no unknown partner moves ~0 probability, with a finite (zero) gradient
    student_moved = torch.logsumexp(student_part.masked_fill(~unknown, FLOOR), dim=-1)
    return student_part.masked_fill(unknown, float("-inf")), student_moved


def sparse_error_bound(teacher_tail_mass: torch.Tensor, student_moved_mass: torch.Tensor, *, beta: float,
                       weights: str | tuple[float, float] = "mass") -> torch.Tensor:  # fmt: skip
    """(R,) a bound on |hybrid from sparse teacher rows - hybrid from the dense rows| per row, for β in (0, 1).

    ``teacher_tail_mass`` τ: the row's tail probability (what the teacher's known entries leave); ``student_moved_mass``
    σ: the student's probability on matched columns whose teacher partner is unknown. Write g(p, q) =
    β p ln(p/m) + (1-β) q ln(q/m), m = βp + (1-β)q, for one outcome's JSD term (teacher p, student q): convex,
    1-homogeneous (so sub-additive), g ≥ 0, g(p, q) ≤ β p ln(1/β) + (1-β) q ln(1/(1-β)), ∂g/∂p = β ln(p/m) with
    β ln p ≤ β ln(p/m) ≤ β ln(1/β) (m ≤ 1).

    1. The matched columns the teacher left out (teacher mass P ≤ τ, student σ) are merged into the tail outcome:
       the JSD drops by at most Σ g(u) ≤ β τ ln(1/β) + (1-β) σ ln(1/(1-β)).
    2. The teacher's unknown *unmatched* mass ν ≤ τ sits in the tail instead of "other": moving mass ν between two
       outcomes changes each of their g by at most β ∫₀^ν (ln(1/β) + ln(1/x)) dx, so the JSD by at most
       2 β ν (1 + ln(1/β) + ln(1/ν)), which grows with ν: evaluated at τ.
    3. The ULD part misses ν (sorted L1 is 1-Lipschitz) and the matched weight counts it: |ΔU| ≤ τ, |Δm| ≤ τ.

    With mass weights the row loss m·J + (1-m)·U then moves by at most ``max(ΔJ, τ) + 2τ`` (|J - U| ≤ 2); with fixed
    weights by ``w_m·ΔJ + w_u·τ``. At β = 0 or 1 (a plain KL, where the tail joins "other") no such bound exists: a KL
    term p ln(p/q) is unbounded as q → 0. Assumed: teacher temperature 1 (at T ≠ 1 the known entries are renormalized
    with the tail as one outcome) and the exact ULD (the quantized one adds its own resolution, ≤ 2^-7 per row).
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"the sparse-row error bound holds for beta in (0, 1), got {beta}")
    tau, sigma = teacher_tail_mass.clamp(0.0, 1.0), student_moved_mass.clamp(0.0, 1.0)
    log_inv_tau = torch.where(tau > 0, -torch.log(tau.clamp(min=1e-45)), torch.zeros_like(tau))
    merge = beta * tau * math.log(1 / beta) + (1 - beta) * sigma * math.log(1 / (1 - beta))
    move = 2 * beta * tau * (1 + math.log(1 / beta) + log_inv_tau)
    jsd_error = merge + move
    if weights == "mass":
        return torch.maximum(jsd_error, tau) + 2 * tau
    return float(weights[0]) * jsd_error + float(weights[1]) * tau
