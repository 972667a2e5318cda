"""ULD without sorting on GPUs: :mod:`gold.losses.uld_quantized`'s algorithm as three Triton kernels.

Shape legend: R rows, Vs / Vt outcomes per row, K = 16,257 levels (``uld_quantized.LEVELS``).

``ULD = ∫_0^∞ |C_S(x) − C_T(x)| dx`` with ``C(x) = #{p_i ≥ x}``: each probability is put in the bucket of the top 16
bits of its float32 pattern (bfloat16 resolution, error ≤ 2^-8 of the value, so ≤ 2^-7 per row in all), the buckets
are counted, and the integral is a sum over the K levels. Kernels:

1. ``count``: per row and side, the histogram of levels (atomic adds into an (R, K) int32 buffer); a value that is
   negative, above 1 by more than rounding, infinite or NaN marks the row invalid (its value is then NaN, for the
   loss's finiteness check, as on CPU).
2. ``compare``: per row, from the top level down in tiles (a running count carried between tiles), the value and the
   student's gradient sign per level (the exact sort-based subgradient, averaged over a tie's ranks).
3. backward: each student value gets its level's sign.

Memory: two (R, K) count buffers and one (R, K) sign buffer, whatever the vocabulary; no sort. On CPU these kernels
run under Triton's interpreter (``tests/gold/losses/test_triton_uld.py`` checks them against the numba version and
the exact ULD, values and gradients); on CUDA ``LossConfig.uld_method: quantized`` selects them.
"""

# no `from __future__ import annotations`: Triton reads the kernels' annotations (tl.constexpr) as objects

import functools
from typing import Any

import torch

from gold.losses.triton_jsd import tl, triton, triton_available
from gold.losses.uld_quantized import LEVEL_VALUES, LEVELS, SHIFT

TILE = 1024

if triton is not None:

    @triton.jit  # type: ignore[misc]
    def _tile_levels(probs_ptr, outcomes, probs_stride, SHIFT_BITS: tl.constexpr,
                     TILE_SIZE: tl.constexpr):  # type: ignore[no-untyped-def]  # fmt: skip
        """This program's row, its tile of probabilities (with the in-bounds mask) and their raw level keys (the top
        bits of the float32 pattern; negative for a negative value)."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * TILE_SIZE + tl.arange(0, TILE_SIZE)
        keep = cols < outcomes
        p = tl.load(probs_ptr + row * probs_stride + cols, mask=keep, other=0.0).to(tl.float32)
        return row, cols, keep, p, p.to(tl.int32, bitcast=True) >> SHIFT_BITS

    @triton.jit  # type: ignore[misc]
    def _count(probs_ptr, counts_ptr, invalid_ptr, outcomes, probs_stride, LEVEL_COUNT: tl.constexpr,
               SHIFT_BITS: tl.constexpr, TILE_SIZE: tl.constexpr):  # type: ignore[no-untyped-def]  # fmt: skip
        row, _cols, keep, p, key = _tile_levels(probs_ptr, outcomes, probs_stride, SHIFT_BITS, TILE_SIZE)
        bad = keep & ((key >= LEVEL_COUNT) | (key < 0) | (p != p))
        key = tl.where(bad, LEVEL_COUNT - 1, key)
        tl.atomic_add(counts_ptr + row * LEVEL_COUNT + key, 1, mask=keep)
        tl.atomic_max(invalid_ptr + row, tl.max(bad.to(tl.int32), axis=0))

    @triton.jit  # type: ignore[misc]
    def _compare(student_counts_ptr, teacher_counts_ptr, levels_ptr, invalid_ptr, values_ptr, signs_ptr,
                 LEVEL_COUNT: tl.constexpr, TILE_SIZE: tl.constexpr):  # type: ignore[no-untyped-def]  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        s_carry = 0  # values in levels above the tile
        t_carry = 0
        total = tl.zeros((TILE_SIZE,), dtype=tl.float32)
        for start in range(0, LEVEL_COUNT - 1, TILE_SIZE):
            offs = tl.arange(0, TILE_SIZE)
            k = LEVEL_COUNT - 1 - (start + offs)  # descending levels, K - 1 down to 1
            keep = k >= 1
            s_count = tl.load(student_counts_ptr + row * LEVEL_COUNT + k, mask=keep, other=0)
            t_count = tl.load(teacher_counts_ptr + row * LEVEL_COUNT + k, mask=keep, other=0)
            s_at = s_carry + tl.cumsum(s_count, axis=0)  # C_S at level k (inclusive)
            t_at = t_carry + tl.cumsum(t_count, axis=0)
            s_above = s_at - s_count
            t_above = t_at - t_count
            width = tl.load(levels_ptr + k, mask=keep, other=0.0) - tl.load(levels_ptr + k - 1, mask=keep, other=0.0)
            total += tl.where(keep, tl.abs(s_at - t_at).to(tl.float32) * width, 0.0)
            # student ranks s_above .. s_above + n - 1 against the teacher's: above (-1) below t_above, tied (0)
            # up to t_at, below (+1) from t_at on
            low = s_above
            high = s_above + s_count
            minus = tl.maximum(0, tl.minimum(high, t_above) - low)
            plus = tl.maximum(0, high - tl.maximum(low, t_at))
            sign = tl.where(s_count > 0, (plus - minus).to(tl.float32) / tl.maximum(s_count, 1).to(tl.float32), 0.0)
            tl.store(signs_ptr + row * LEVEL_COUNT + k, sign, mask=keep)
            s_carry += tl.sum(s_count, axis=0)
            t_carry += tl.sum(t_count, axis=0)
        tl.store(signs_ptr + row * LEVEL_COUNT, 0.0)  # the zero bucket: its values are 0, so is their gradient
        invalid = tl.load(invalid_ptr + row)
        value = tl.sum(total, axis=0)
        tl.store(values_ptr + row, tl.where(invalid > 0, float("nan"), value))

    @triton.jit  # type: ignore[misc]
    def _gradient(probs_ptr, signs_ptr, grad_out_ptr, grad_ptr, outcomes, probs_stride, LEVEL_COUNT: tl.constexpr,
                  SHIFT_BITS: tl.constexpr, TILE_SIZE: tl.constexpr):  # type: ignore[no-untyped-def]  # fmt: skip
        row, cols, keep, _p, key = _tile_levels(probs_ptr, outcomes, probs_stride, SHIFT_BITS, TILE_SIZE)
        key = tl.minimum(tl.maximum(key, 0), LEVEL_COUNT - 1)
        sign = tl.load(signs_ptr + row * LEVEL_COUNT + key, mask=keep, other=0.0)
        scale = tl.load(grad_out_ptr + row)
        tl.store(grad_ptr + row * outcomes + cols, sign * scale, mask=keep)


@functools.cache
def _levels(device: torch.device) -> torch.Tensor:
    """(K,) the level values on ``device``, copied there once (not per chunk of every step)."""
    return torch.as_tensor(LEVEL_VALUES, dtype=torch.float32, device=device)


def _counts(probs: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    rows, outcomes = probs.shape
    counts = torch.zeros(rows, LEVELS, dtype=torch.int32, device=probs.device)
    if rows and outcomes:
        grid = (rows, triton.cdiv(outcomes, TILE))
        _count[grid](probs, counts, invalid, outcomes, probs.stride(0), LEVEL_COUNT=LEVELS, SHIFT_BITS=SHIFT,
                     TILE_SIZE=TILE)  # fmt: skip
    return counts


class _TritonQuantizedULD(torch.autograd.Function):
    """Forward counts and compares (values and the per-level signs); backward reads each student value's sign."""

    @staticmethod
    def forward(ctx: Any, student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        rows = student_probs.shape[0]
        invalid = torch.zeros(rows, dtype=torch.int32, device=student_probs.device)
        student_counts, teacher_counts = _counts(student_probs, invalid), _counts(teacher_probs, invalid)
        levels = _levels(student_probs.device)
        values = torch.empty(rows, dtype=torch.float32, device=student_probs.device)
        signs = torch.empty(rows, LEVELS, dtype=torch.float32, device=student_probs.device)
        if rows:
            _compare[(rows,)](student_counts, teacher_counts, levels, invalid, values, signs, LEVEL_COUNT=LEVELS,
                              TILE_SIZE=TILE)  # fmt: skip
        ctx.save_for_backward(student_probs, signs)
        return values

    @staticmethod
    def backward(ctx: Any, grad_values: torch.Tensor) -> tuple[torch.Tensor, None]:
        student_probs, signs = ctx.saved_tensors
        rows, outcomes = student_probs.shape
        grad = torch.empty(rows, outcomes, dtype=torch.float32, device=student_probs.device)
        if rows and outcomes:
            _gradient[(rows, triton.cdiv(outcomes, TILE))](student_probs, signs, grad_values.float().contiguous(),
                                                          grad, outcomes, student_probs.stride(0), LEVEL_COUNT=LEVELS,
                                                          SHIFT_BITS=SHIFT, TILE_SIZE=TILE)  # fmt: skip
        return grad, None


def triton_uld_quantized(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """:func:`gold.losses.uld_quantized.uld_quantized` (R, Vs), (R, Vt) → (R,) float32 by the Triton kernels: ULD at
    bfloat16 resolution, within ``2^-8 · (Σ p_S + Σ p_T)`` of the exact :func:`gold.losses.uld`, without a sort.

    Raises:
        ValueError: the teacher's rows carry a gradient (it is a fixed target), or Triton is not installed.
    """
    if teacher_logprobs.requires_grad:
        raise ValueError("the quantized ULD gives the teacher no gradient; pass teacher_logprobs.detach()")
    if not triton_available():
        raise ValueError("the quantized ULD on a GPU needs Triton (it ships with CUDA builds of torch); use "
                         "uld_method: exact")  # fmt: skip
    student_probs = student_logprobs.float().exp().contiguous()
    teacher_probs = teacher_logprobs.float().exp().contiguous()
    return _TritonQuantizedULD.apply(student_probs, teacher_probs)  # type: ignore[no-any-return]
