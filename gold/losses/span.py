"""Span likelihood: compare how likely each model finds every aligned group's bytes.

Shape legend: G groups.

Every group's bytes have an exact log-likelihood on both sides (the observed column of the chain-rule
row), whatever the vocabularies. Following ALM (Minixhofer et al., arXiv 2503.20083) each group is a
binary event, "the model spells these bytes next" with probability p or not (1 - p), and the two
Bernoulli distributions are compared with the generalized JSD. It needs no vocabulary map and is
exact for every group.
"""

from __future__ import annotations

import torch

from gold.losses.divergences import generalized_jsd
from gold.losses.merge import log1mexp


def binarize(observed_logprobs: torch.Tensor) -> torch.Tensor:
    """(G,) log p → (G, 2) ``[log p, log(1 - p)]``."""
    observed = observed_logprobs.clamp(max=0.0)
    return torch.stack([observed, log1mexp(observed)], dim=-1)


def span_likelihood(
    student_observed: torch.Tensor, teacher_observed: torch.Tensor, *, beta: float = 0.0
) -> torch.Tensor:
    """Binarised divergence of the groups' byte likelihoods, per group.

    Args:
        student_observed: (G,) student log-likelihood of each group's bytes.
        teacher_observed: (G,) teacher log-likelihood of the same bytes.
        beta: generalized-JSD β (0: KL(teacher ‖ student), the default).

    Returns:
        (G,) divergences.
    """
    if student_observed.shape != teacher_observed.shape:
        raise ValueError(f"{student_observed.shape} student groups vs {teacher_observed.shape} teacher groups")
    return generalized_jsd(binarize(student_observed), binarize(teacher_observed), beta=beta)
