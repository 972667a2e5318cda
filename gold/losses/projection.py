"""Projection term: both next-token distributions at each group start projected into the teacher's vocabulary
through the tokens' bytes (in the spirit of X-Token's projection KL), then compared there.

Shape legend: G groups, Vs / Vt vocabularies, C = Vt + 2 classes (:mod:`gold.data.prefix_classes`).

The hybrid pairs only tokens that spell the same bytes and compares the rest by sorted probabilities (ULD), which
ignores *which* unmatched token got the mass; the first-byte marginal is identity-aware but, at a word start, knows
only that a space comes next. Here every student token counts towards the teacher token its bytes start with
(longest first), so the student's mass on a word the teacher cannot write in one token is still compared with the
teacher's mass on that word's first piece. Like the byte marginal, it is taken at group starts (both models condition
on the same bytes) and on the classes both sides produce, each side renormalized there.
"""

from __future__ import annotations

import torch

from gold.data.prefix_classes import PrefixClasses
from gold.losses.byte_marginal import fold_to_bytes, on_shared_bins
from gold.losses.divergences import generalized_jsd


def projection(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, classes: PrefixClasses, *,
               beta: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Divergence of the two distributions folded onto the pair's prefix classes, per group.

    Args:
        student_logprobs: (G, Vs) student next-token log-probabilities at group starts.
        teacher_logprobs: (G, Vt) teacher next-token log-probabilities at the same byte positions.
        classes: the pair's :class:`gold.data.prefix_classes.PrefixClasses`.
        beta: generalized-JSD β (0: KL(teacher ‖ student)).

    Returns:
        (G,) divergences.
    """
    num = classes.shared.shape[0]
    student = on_shared_bins(fold_to_bytes(student_logprobs, classes.student, num), classes.shared)
    teacher = on_shared_bins(fold_to_bytes(teacher_logprobs, classes.teacher, num), classes.shared)
    return generalized_jsd(student, teacher, beta=beta)
