"""Divergences between rows of log-probabilities over the same outcomes.

Shape legend: R rows, K outcomes. Every function returns one value per row, (R,).

Directions are named: ``forward_kl`` = KL(teacher ‖ student) (mode-covering, what SFT on teacher
samples minimises), ``reverse_kl`` = KL(student ‖ teacher) (mode-seeking). Entries may be ``-inf``
(zero probability): ``0 · log 0`` counts as 0 and the gradients stay finite, because ``-inf`` is
clamped to a floor whose exponential is exactly 0 before any subtraction (``-inf - -inf`` would be
NaN, and a ``where`` after it would still back-propagate NaN).
"""

from __future__ import annotations

import math

import torch

from gold.losses.floor import FLOOR

# the generalized JSD by the Triton kernel (gold.losses.triton_jsd): "auto" for float32 rows on a CUDA device when
# Triton imports, "always" for float32 rows anywhere (tests: on CPU under TRITON_INTERPRET=1), "never"
TRITON = "auto"


def _use_triton(student_logprobs: torch.Tensor) -> bool:
    if TRITON == "never" or student_logprobs.dtype != torch.float32 or student_logprobs.dim() != 2:
        return False
    if TRITON == "auto" and student_logprobs.device.type != "cuda":
        return False
    from gold.losses.triton_jsd import triton_available

    return triton_available()


def _kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) per row, exact with ``-inf`` entries. Where Q misses mass that P has, the true value is
    ``+inf``; it comes out near ``1e30 · p``, which :func:`gold.losses.check_finite` rejects."""
    return _kl_finite(p_logprobs.clamp(min=FLOOR), q_logprobs.clamp(min=FLOOR))


def _kl_finite(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    return (p_logprobs.exp() * (p_logprobs - q_logprobs)).sum(dim=-1)


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
    if _use_triton(student_logprobs):  # one fused pass, values and gradient (gold.losses.triton_jsd)
        from gold.losses.triton_jsd import triton_generalized_jsd

        return triton_generalized_jsd(student_logprobs, teacher_logprobs, beta=beta)
    return _jsd(student_logprobs.clamp(min=FLOOR), teacher_logprobs.clamp(min=FLOOR), beta)


def generalized_jsd_of_finite(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, *, beta: float
) -> torch.Tensor:
    """:func:`generalized_jsd` for rows known to hold no ``-inf`` (log-softmax of finite logits), without
    the clamping passes; a ``-inf`` entry gives NaN, which the loss's finiteness check reports. (The Triton kernel,
    where it runs, clamps in its single pass and counts such an entry as zero probability.)"""
    if _use_triton(student_logprobs):
        from gold.losses.triton_jsd import triton_generalized_jsd

        return triton_generalized_jsd(student_logprobs, teacher_logprobs, beta=beta)
    return _jsd(student_logprobs, teacher_logprobs, beta)


def _jsd(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, beta: float) -> torch.Tensor:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return _kl_finite(teacher_logprobs, student_logprobs)
    if beta == 1.0:
        return _kl_finite(student_logprobs, teacher_logprobs)
    mixture = torch.logaddexp(teacher_logprobs + math.log(beta), student_logprobs + math.log1p(-beta))
    return beta * _kl_finite(teacher_logprobs, mixture) + (1.0 - beta) * _kl_finite(student_logprobs, mixture)
