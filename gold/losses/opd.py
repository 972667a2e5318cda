"""On-policy distillation as reinforcement learning (OPD-RL, ``loss.opd_weight``), across tokenizers.

For every aligned group g of a student rollout, the reward is the teacher's log-ratio on the bytes the student wrote,
r_g = log p_T(g) − log p_S(g) (both exact group log-likelihoods on shared byte boundaries; detached): the k1
estimator of −KL(student ‖ teacher) at group granularity. The advantage is A_g = A_base + ``opd_alpha``·r_g, where
A_base is a per-completion task advantage (GRPO's group-normalised rewards, when rewards are given; else 0), and the
loss is the policy gradient −Σ_g A_g · log p_S(g) / (groups of the global batch). One optimiser update per
generation, so the importance ratio is 1 and nothing is clipped. ms-swift's OPD does this per token with one
tokenizer; here the unit is the group, which both tokenizers agree on.
"""

from __future__ import annotations

import torch

from gold.data.batch import AlignedBatch
from gold.losses.merge import index_groups
from gold.losses.reduce import global_denominator


def opd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: AlignedBatch, *, alpha: float = 1.0,
    base_advantages: torch.Tensor | None = None, num_items_in_batch: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """``(loss, metrics)`` of the policy-gradient term on one micro-batch of student rollouts.

    Args:
        student_logits: (B, Ts, Vs) the loss view's logits (with grad); teacher_logits: (B, Tt, Vt).
        batch: the aligned rollouts.
        alpha: the weight of the teacher's log-ratio in the advantage.
        base_advantages: (B,) a task advantage per completion (GRPO), or None.
        num_items_in_batch: groups of the whole optimizer step.
    """
    student = index_groups(student_logits, batch.student_ids, batch.student_groups)
    with torch.no_grad():
        teacher = index_groups(teacher_logits, batch.teacher_ids, batch.teacher_groups)
    log_ratio = (teacher.observed.to(student.observed.dtype) - student.observed).detach()  # (G,) r_g
    advantages = alpha * log_ratio
    if base_advantages is not None:
        advantages = advantages + base_advantages.to(advantages)[student.example]
    denominator = global_denominator(int(student.observed.shape[0]), num_items_in_batch)
    loss = -(advantages * student.observed).sum() / denominator
    metrics = {"opd/log_ratio_mean": float(log_ratio.mean()) if log_ratio.numel() else 0.0,
               "opd/log_ratio_std": float(log_ratio.std()) if log_ratio.numel() > 1 else 0.0,
               "opd/advantage_mean": float(advantages.mean()) if advantages.numel() else 0.0,
               "opd/advantage_std": float(advantages.std()) if advantages.numel() > 1 else 0.0}  # fmt: skip
    return loss, metrics
