"""Divergences between rows of log-probabilities over the same outcomes.

Shape legend: R rows, K outcomes. Every function returns one value per row, (R,).

Directions are named: ``forward_kl`` = KL(teacher ‖ student) (mode-covering, what SFT on teacher
samples minimises), ``reverse_kl`` = KL(student ‖ teacher) (mode-seeking). Entries may be ``-inf``
(zero probability): ``0 · log 0`` counts as 0 and the gradients stay finite, because the masked
branch is replaced by 0 *before* the subtraction (a ``where`` after it would back-propagate NaN).
"""

from __future__ import annotations

import math

import torch


def _kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) per row, exact with ``-inf`` entries; ``+inf`` where Q misses mass that P has."""
    support = p_logprobs > float("-inf")
    p_safe = torch.where(support, p_logprobs, torch.zeros_like(p_logprobs))
    q_safe = torch.where(support, q_logprobs, torch.zeros_like(q_logprobs))
    terms = torch.where(support, p_safe.exp() * (p_safe - q_safe), torch.zeros_like(p_safe))
    return terms.sum(dim=-1)


def forward_kl(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per row.

    Args:
        student_logprobs: (R, K).
        teacher_logprobs: (R, K).
    """
    return _kl(teacher_logprobs, student_logprobs)


def reverse_kl(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(student ‖ teacher) per row (shapes as :func:`forward_kl`)."""
    return _kl(student_logprobs, teacher_logprobs)


def generalized_jsd(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Generalized Jensen–Shannon divergence of GKD (Agarwal et al. 2024), per row.

    ``JSD_β = β·KL(T ‖ M) + (1-β)·KL(S ‖ M)`` with ``M = β·T + (1-β)·S``. The mixture form vanishes at
    both ends, so β = 0 is defined as forward KL(T ‖ S) and β = 1 as reverse KL(S ‖ T), computed
    exactly (the convention of GKD and TRL's ``beta``).

    Args:
        student_logprobs: (R, K).
        teacher_logprobs: (R, K).
        beta: in [0, 1].
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logprobs, teacher_logprobs)
    if beta == 1.0:
        return reverse_kl(student_logprobs, teacher_logprobs)
    mixture = _logaddexp(teacher_logprobs + math.log(beta), student_logprobs + math.log1p(-beta))
    return beta * _kl(teacher_logprobs, mixture) + (1.0 - beta) * _kl(student_logprobs, mixture)


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``logaddexp`` whose gradient stays finite where both inputs are ``-inf``."""
    empty = (a == float("-inf")) & (b == float("-inf"))
    zero = torch.zeros_like(a)
    out = torch.logaddexp(torch.where(empty, zero, a), torch.where(empty, zero, b))
    return torch.where(empty, torch.full_like(out, float("-inf")), out)
