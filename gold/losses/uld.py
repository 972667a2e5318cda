"""Universal Logit Distillation (Boizard et al. 2024, arXiv 2402.12030): sorted-probability L1.

Shape legend: R rows, Vs / Vt student / teacher outcomes per row.

ULD compares two distributions over *different* vocabularies through their sorted probabilities:
sort each row descending, zero-pad the shorter to the longer, and sum the absolute differences. The
value only depends on the multisets of probabilities, so it needs no vocabulary map. Rows may be
sub-probabilities (chain-rule group rows); they are compared as they are.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def sorted_descending(probs: torch.Tensor) -> torch.Tensor:
    """(R, V) rows sorted in descending order, differentiable where ``probs`` needs a gradient.

    On CPU, NumPy's vectorized sort (AVX-512 on x86) is several times faster than ``torch.sort``:
    rows without a gradient are sorted by value with it, rows with one are ordered by
    ``np.argsort`` and gathered, so autograd routes each rank's gradient back to its element.
    """
    if probs.device.type != "cpu" or probs.dtype not in (torch.float32, torch.float64):
        return probs.sort(dim=-1, descending=True).values
    if not probs.requires_grad:
        # .copy(), not np.ascontiguousarray: a (R, 1) reversed view counts as contiguous and keeps
        # its negative stride, which torch.from_numpy refuses
        return torch.from_numpy(np.sort(probs.numpy(), axis=-1)[:, ::-1].copy())
    order = np.argsort(probs.detach().numpy(), axis=-1)[:, ::-1]
    return probs.gather(-1, torch.from_numpy(order.copy()))


def uld(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """Exact ULD per row: ``Σ_i |sort(p_S)_i - sort(p_T)_i|`` with zero padding.

    The gradient flows through the sort (each element receives the sign of its rank's difference).

    Args:
        student_logprobs: (R, Vs).
        teacher_logprobs: (R, Vt).

    Returns:
        (R,) distances in [0, 2].
    """
    student_sorted = sorted_descending(student_logprobs.exp())
    teacher_sorted = sorted_descending(teacher_logprobs.exp())
    width = max(student_sorted.shape[-1], teacher_sorted.shape[-1])
    student_sorted = F.pad(student_sorted, (0, width - student_sorted.shape[-1]))
    teacher_sorted = F.pad(teacher_sorted, (0, width - teacher_sorted.shape[-1]))
    return (student_sorted - teacher_sorted).abs().sum(dim=-1)


def uld_topk(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, *, k: int) -> torch.Tensor:
    """ULD on the top ``k`` probabilities of each row, plus the difference of the two tail masses.

    Error bound (tested): with tail masses ``A`` (student) and ``B`` (teacher) outside the top ``k``,
    the exact tail term ``Σ_{i≥k} |a_(i) - b_(i)|`` lies in ``[|A - B|, A + B]``; this function uses
    ``|A - B|``, so ``0 ≤ uld - uld_topk ≤ 2·min(A, B)`` per row. For a trained model's peaked
    distributions the tails are small and so is the error; for near-uniform rows it is not.

    Args:
        student_logprobs: (R, Vs).
        teacher_logprobs: (R, Vt).
        k: how many of the largest probabilities of each row are compared exactly.

    Returns:
        (R,) approximate distances.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    student_top = student_logprobs.exp().topk(min(k, student_logprobs.shape[-1]), dim=-1).values
    teacher_top = teacher_logprobs.exp().topk(min(k, teacher_logprobs.shape[-1]), dim=-1).values
    width = max(student_top.shape[-1], teacher_top.shape[-1])
    head = F.pad(student_top, (0, width - student_top.shape[-1])) - F.pad(
        teacher_top, (0, width - teacher_top.shape[-1])
    )
    student_tail = student_logprobs.exp().sum(dim=-1) - student_top.sum(dim=-1)
    teacher_tail = teacher_logprobs.exp().sum(dim=-1) - teacher_top.sum(dim=-1)
    return head.abs().sum(dim=-1) + (student_tail - teacher_tail).abs()


def uld_topk_error_bound(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, *, k: int) -> torch.Tensor:
    """(R,) the bound ``2·min(A, B)`` of :func:`uld_topk` (tail masses outside the top ``k``)."""
    student_probs, teacher_probs = student_logprobs.exp(), teacher_logprobs.exp()
    student_tail = student_probs.sum(-1) - student_probs.topk(min(k, student_probs.shape[-1]), -1).values.sum(-1)
    teacher_tail = teacher_probs.sum(-1) - teacher_probs.topk(min(k, teacher_probs.shape[-1]), -1).values.sum(-1)
    return 2 * torch.minimum(student_tail, teacher_tail).clamp(min=0)
