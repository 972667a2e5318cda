"""The generalized JSD of :mod:`gold.losses.divergences` as one Triton kernel: values and the student's gradient in one
pass per row, tile by tile, with no intermediate (rows × outcomes) buffers besides the (R, K) gradient it returns (the
torch form builds the mixture, both exponentials and two products per outcome, and autograd keeps them for backward).

Shape legend: R rows, K outcomes.

It is the hybrid's matched part, the term the loss spends most of its element-wise passes on: the GPU path
(:mod:`gold.losses.hidden`) calls it through :func:`gold.losses.divergences.generalized_jsd` whenever the rows are on
a CUDA device and Triton imports. On CPU it runs under Triton's interpreter (``TRITON_INTERPRET=1``, set before
Triton is imported), which is how ``tests/gold/losses/test_triton_jsd.py`` checks it against ``tests/reference.py``
and the torch form, values and gradients, with ``-inf`` entries and the β = 0 / 1 ends.

Per outcome, with s, t the student's and teacher's log-probabilities clamped to ``FLOOR`` (so ``0 · log 0`` is 0):

* β = 0, KL(T ‖ S): value ``e^t (t − s)``, ∂/∂s ``−e^t``;
* β = 1, KL(S ‖ T): value ``e^s (s − t)``, ∂/∂s ``e^s (s − t + 1)``;
* otherwise, with ``m = log(β e^t + (1 − β) e^s)``: value ``β e^t (t − m) + (1 − β) e^s (s − m)``, ∂/∂s
  ``(1 − β) e^s (s − m)`` (the two terms through m cancel: ∂m/∂s · e^m = (1 − β) e^s).
"""

# no `from __future__ import annotations`: Triton reads the kernel's annotations (tl.constexpr) as objects

import math
from typing import Any

import torch

from gold.losses.floor import FLOOR

BLOCK = 1024  # outcomes per tile


try:  # Triton ships with CUDA builds of torch; on CPU it is an extra, for the interpreter
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    # both names defined either way: triton_uld imports them, and the kernels below are defined only with Triton
    triton = None
    tl = None


def triton_available() -> bool:
    """Whether Triton imports."""
    return triton is not None


if triton is not None:

    @triton.jit  # type: ignore[misc]
    def _jsd_rows(student_ptr, teacher_ptr, value_ptr, grad_ptr, outcomes, student_stride, teacher_stride,
                  grad_stride, beta, log_beta, log_rest, floor, MODE: tl.constexpr, WANT_GRAD: tl.constexpr,
                  BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        total = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, outcomes, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            keep = cols < outcomes
            s = tl.load(student_ptr + row * student_stride + cols, mask=keep, other=0.0).to(tl.float32)
            t = tl.load(teacher_ptr + row * teacher_stride + cols, mask=keep, other=0.0).to(tl.float32)
            # -inf (zero probability) to the floor; a NaN stays NaN, for the loss's finiteness check
            s = tl.where(s < floor, floor, s)
            t = tl.where(t < floor, floor, t)
            if MODE == 0:  # forward KL(T || S)
                value = tl.exp(t) * (t - s)
                grad = -tl.exp(t)
            elif MODE == 1:  # reverse KL(S || T)
                value = tl.exp(s) * (s - t)
                grad = tl.exp(s) * (s - t + 1.0)
            else:
                a = t + log_beta
                b = s + log_rest
                top = tl.maximum(a, b)
                mixture = top + tl.log(tl.exp(a - top) + tl.exp(b - top))
                value = beta * tl.exp(t) * (t - mixture) + (1.0 - beta) * tl.exp(s) * (s - mixture)
                grad = (1.0 - beta) * tl.exp(s) * (s - mixture)
            total += tl.where(keep, value, 0.0)
            if WANT_GRAD:
                tl.store(grad_ptr + row * grad_stride + cols, grad, mask=keep)
        tl.store(value_ptr + row, tl.sum(total, axis=0))


def _launch(student: torch.Tensor, teacher: torch.Tensor, beta: float,
            want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    rows, outcomes = student.shape
    values = torch.empty(rows, dtype=torch.float32, device=student.device)
    grad = torch.empty(rows, outcomes, dtype=torch.float32, device=student.device) if want_grad else None
    mode = 0 if beta == 0.0 else 1 if beta == 1.0 else 2
    log_beta = math.log(beta) if beta > 0.0 else 0.0
    log_rest = math.log1p(-beta) if beta < 1.0 else 0.0
    if rows and outcomes:
        _jsd_rows[(rows,)](student, teacher, values, values if grad is None else grad, outcomes, student.stride(0),
                           teacher.stride(0), outcomes, float(beta), log_beta, log_rest, FLOOR, MODE=mode,
                           WANT_GRAD=want_grad, BLOCK=BLOCK)  # fmt: skip
    else:
        values.zero_()
        if grad is not None:
            grad.zero_()
    return values, grad


class _TritonJSD(torch.autograd.Function):
    """Forward launches the kernel (with the gradient when the student needs one); backward scales that gradient."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
        values, grad = _launch(student, teacher, beta, want_grad=ctx.needs_input_grad[0])
        ctx.save_for_backward(grad if grad is not None else values.new_empty(0))
        return values

    @staticmethod
    def backward(ctx: Any, grad_values: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return grad * grad_values.unsqueeze(1), None, None


def triton_generalized_jsd(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, *,
                           beta: float) -> torch.Tensor:  # fmt: skip
    """:func:`gold.losses.divergences.generalized_jsd` (R, K) → (R,) float32 by the Triton kernel; the gradient flows
    to the student's log-probabilities only (the teacher's are a target)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if student_logprobs.shape != teacher_logprobs.shape or student_logprobs.dim() != 2:
        raise ValueError(f"student and teacher rows must be the same (R, K), got {tuple(student_logprobs.shape)} and "
                         f"{tuple(teacher_logprobs.shape)}")  # fmt: skip
    student, teacher = student_logprobs.contiguous(), teacher_logprobs.detach().contiguous()
    return _TritonJSD.apply(student, teacher, beta)  # type: ignore[no-any-return]
