"""The hybrid and ULD terms on the CPU in one fused pass set: values and the student's gradient together.

Shape legend: B batch, Ts / Tt sequence lengths, Vs / Vt logit sizes, N grouped tokens of one side,
G groups.

The composed torch path (:mod:`gold.losses.composite` with ``implementation="torch"``) builds (g, V)
rows, runs each term on them and lets autograd walk back through gathers, log-normalizers and
checkpoint recomputation: several dense (B, T, V) buffers and many passes over memory. Here numba
kernels (:mod:`gold.losses.fused_kernels`) read each group's two logit rows while they are in cache,
compute the term values and, when the student needs a gradient, write ∂loss/∂logits straight into
one (B, T, Vs) buffer during the forward. ``backward`` returns that buffer (times the incoming
gradient). Peak memory is that buffer plus a few K-level histograms per thread, whatever G is.

The values equal the torch path's (ULD at the same bfloat16 resolution, tested on values and
gradients in ``tests/gold/losses/test_fused.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch

from gold.config import LossConfig
from gold.data.batch import AlignedBatch
from gold.losses import fused_kernels as kernels
from gold.losses.fused_kernels import (
    HYBRID,
    MASS,
    MASS_BEFORE,
    MATCHED,
    ULD,
    UNMATCHED,
    finalize_gradient,
    group_terms,
    row_stats,
)
from gold.losses.merge import check_same_groups, checked_positions
from gold.losses.reduce import global_denominator
from gold.losses.uld_quantized import LEVEL_VALUES

FUSED_TERMS = ("hybrid", "uld")
KERNEL_SOURCES = ("fast_math.py", "fused_rows.py", "fused_kernels.py", "uld_quantized.py")


def purge_stale_kernel_cache(folder: Path = Path(__file__).parent) -> bool:
    """Drop numba's cached fused kernels when any of their sources changed; True if it dropped them.

    numba checks only the file that defines a cached kernel, not the helpers inlined into it from
    other files: after an edit of ``fused_rows.py`` or ``fast_math.py`` alone it would load the old
    machine code (of the fused kernels, or of :mod:`gold.losses.uld_quantized`). A digest
    of all kernel sources, kept next to the cache, catches that; the kernels are then compiled again.
    """
    digest = hashlib.sha256(b"".join((folder / name).read_bytes() for name in KERNEL_SOURCES)).hexdigest()
    cache = folder / "__pycache__"
    stamp = cache / "fused_kernels.sources"
    if stamp.is_file() and stamp.read_text() == digest:
        return False
    for prefix in ("fused_kernels", "uld_quantized"):
        for path in cache.glob(f"{prefix}.*.nb[ic]"):
            path.unlink(missing_ok=True)
    try:
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        pass  # a read-only install: numba then caches elsewhere and nothing here can go stale
    return True


purge_stale_kernel_cache()


def fused_applies(config: LossConfig, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> bool:
    """Whether ``config.implementation`` selects the fused path for these logits ("auto": when it can).

    Raises:
        ValueError: ``implementation="fused"`` for inputs it cannot take, naming which.
    """
    if config.implementation == "torch" or (config.hybrid_weight <= 0 and config.uld_weight <= 0):
        return False
    reasons = []
    for name, logits in (("student", student_logits), ("teacher", teacher_logits)):
        if not isinstance(logits, torch.Tensor):
            reasons.append(f"{name} logits come as hidden states (the GPU path, gold.losses.hidden)")
        if logits.device.type != "cpu":
            reasons.append(f"{name} logits are on {logits.device}")
        if logits.dtype != torch.float32:
            reasons.append(f"{name} logits are {logits.dtype}")
    if config.uld_method not in ("auto", "quantized"):
        reasons.append(f"uld_method is {config.uld_method!r}")
    if reasons and config.implementation == "fused":
        raise ValueError(
            f"LossConfig.implementation='fused' needs float32 CPU logits and uld_method 'auto' or 'quantized', "
            f"but {'; '.join(reasons)}; use implementation='auto' or 'torch'"
        )
    return not reasons


@dataclass(frozen=True)
class _Side:
    """One model's grouped tokens: where they are predicted and the per-group chain-rule prefix."""

    flat: np.ndarray  # (B*T, V) float32 logits
    rows: np.ndarray  # (N,) row predicting each grouped token
    token_ids: np.ndarray  # (N,)
    lse: np.ndarray  # (N,) float32 log-normalizer of the rows predicting earlier tokens (0 at last tokens)
    is_last: np.ndarray  # (N,) bool
    group: np.ndarray  # (N,) global group of each token
    prefix: np.ndarray  # (G,) float64 log-probability of each group's tokens before its last

    @property
    def last_rows(self) -> np.ndarray:
        return self.rows[self.is_last]


def _side(logits: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor, temperature: float) -> _Side:
    """Positions of the grouped tokens and the prefix of every group; the rows predicting the groups'
    last tokens are left to the group kernel, which reads each of them once."""
    batch_index, position, group, num_groups, last = checked_positions(logits, ids.cpu(), groups.cpu())
    flat = logits.detach().contiguous().view(-1, logits.shape[-1]).numpy()  # (B*T, V)
    rows = (batch_index * logits.shape[1] + position - 1).numpy()
    token_ids = ids.cpu()[batch_index, position].numpy()
    group_np, is_last = group.numpy(), last.numpy()
    inner = np.flatnonzero(~is_last)
    inner_lse, inner_token = np.empty(inner.shape[0], np.float32), np.empty(inner.shape[0], np.float32)
    row_stats(flat, rows[inner], token_ids[inner], 1.0 / temperature, inner_lse, inner_token)
    lse = np.zeros(rows.shape[0], np.float32)
    lse[inner] = inner_lse
    logprob = inner_token.astype(np.float64) - inner_lse
    prefix = np.bincount(group_np[inner], weights=logprob, minlength=int(num_groups.sum()))
    return _Side(flat, rows, token_ids, lse, is_last, group_np, prefix.astype(np.float64))


def _tables(batch: AlignedBatch, student_rows: int, teacher_rows: int) -> tuple[np.ndarray, ...]:
    """Matched ids of both sides and the ids without a partner (the hybrid's ULD part)."""
    tables = batch.tables
    student_matched = tables.student_matched.cpu().numpy().astype(np.int64)
    teacher_matched = tables.teacher_matched.cpu().numpy().astype(np.int64)

    def unmatched(matched: np.ndarray, size: int, leave_out: int | None = None) -> np.ndarray:
        keep = np.ones(size, dtype=bool)
        keep[matched] = False
        if leave_out is not None:
            keep[leave_out] = False  # the teacher's tail: the hybrid's tail outcome, not a ULD column
        return np.flatnonzero(keep).astype(np.int64)

    return (student_matched, teacher_matched, unmatched(student_matched, student_rows),
            unmatched(teacher_matched, teacher_rows, tables.teacher_tail))  # fmt: skip


def _shift_sets(batch: AlignedBatch, config: LossConfig, num_groups: int) -> tuple[np.ndarray, ...]:
    """The shifted groups' column pairs as flat arrays (:func:`gold.losses.fused_kernels.group_terms`); no group is
    shifted when ``config.shifted_matching`` is off or the batch carries none."""
    shifts = batch.shifts
    if not config.shifted_matching or shifts is None or not shifts.student_ids:
        empty = np.zeros(0, np.int64)
        return np.full(num_groups, -1, np.int64), np.zeros(1, np.int64), empty, empty
    sizes = [int(ids.shape[0]) for ids in shifts.student_ids]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    student = np.concatenate([ids.cpu().numpy() for ids in shifts.student_ids]).astype(np.int64)
    teacher = np.concatenate([ids.cpu().numpy() for ids in shifts.teacher_ids]).astype(np.int64)
    return shifts.group_set.cpu().numpy().astype(np.int64), offsets, student, teacher


def _settings(config: LossConfig, denominator: float, want_grad: bool, tail: int | None) -> np.ndarray:
    """The group kernel's (10,) settings vector, entries at the indices :mod:`gold.losses.fused_kernels` names."""
    entries = {
        kernels.BETA: config.beta,
        kernels.USE_HYBRID: config.hybrid_weight > 0,
        kernels.USE_ULD: config.uld_weight > 0,
        kernels.MASS_WEIGHTING: config.hybrid_weighting == "mass",
        kernels.MATCHED_WEIGHT: config.hybrid_matched_weight,
        kernels.UNMATCHED_WEIGHT: config.hybrid_unmatched_weight,
        kernels.HYBRID_COEF: config.hybrid_weight / denominator,
        kernels.ULD_COEF: config.uld_weight / denominator,
        kernels.WANT_GRAD: want_grad,
        kernels.TAIL: -1 if tail is None else tail,
    }
    settings = np.zeros(len(entries), dtype=np.float64)
    for index, value in entries.items():
        settings[index] = float(value)
    return settings


def _run(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: AlignedBatch, config: LossConfig,
    num_items_in_batch: int | torch.Tensor | None, want_grad: bool,
) -> tuple[np.ndarray, np.ndarray | None, float]:  # fmt: skip
    """(6, G) values per group, with ``want_grad`` the (B, Ts, Vs) gradient of the fused loss, and the
    number the group sums are divided by (:func:`gold.losses.reduce.global_denominator`)."""
    student = _side(student_logits, batch.student_ids, batch.student_groups, config.student_temperature)
    teacher = _side(teacher_logits, batch.teacher_ids, batch.teacher_groups, config.teacher_temperature)
    num_groups = student.prefix.shape[0]
    check_same_groups(num_groups, teacher.prefix.shape[0])
    denominator = float(global_denominator(num_groups, num_items_in_batch))
    rows = np.stack([student.last_rows, teacher.last_rows], axis=1)
    prefixes = np.stack([student.prefix, teacher.prefix], axis=1)
    inv = np.array([1.0 / config.student_temperature, 1.0 / config.teacher_temperature], dtype=np.float32)
    hybrid_tables = _tables(batch, student.flat.shape[1], teacher.flat.shape[1])
    values = np.zeros((6, num_groups), dtype=np.float64)
    grad = np.empty_like(student.flat) if want_grad else np.zeros((1, 1), np.float32)
    row_grad = np.zeros((num_groups, 2), dtype=np.float64)
    offsets = np.zeros((num_groups, 2), dtype=np.float32)
    workers = max(1, min(numba.get_num_threads(), num_groups))
    shift_sets = _shift_sets(batch, config, num_groups)
    settings = _settings(config, denominator, want_grad, batch.tables.teacher_tail)
    group_terms(student.flat, teacher.flat, rows, prefixes, inv, hybrid_tables, shift_sets, LEVEL_VALUES,
                settings, values, grad, row_grad, offsets, workers)  # fmt: skip
    if not want_grad:
        return values, None, denominator
    finalize_gradient(student.flat, grad, *_row_roles(student, row_grad), 1.0 / config.student_temperature)
    return values, grad.reshape(student_logits.shape), denominator


def _row_roles(student: _Side, row_grad: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per student logit row: role (0 none, 1 last token, 2 earlier token), log-normalizer, token, and
    ∂loss/∂prefix of its group (through the last row's offset and directly)."""
    total = student.flat.shape[0]
    role = np.zeros(total, dtype=np.int8)
    lse = np.zeros(total, dtype=np.float32)
    token = np.zeros(total, dtype=np.int64)
    coef = np.zeros(total, dtype=np.float64)
    role[student.rows] = np.where(student.is_last, 1, 2)
    lse[student.rows] = student.lse
    token[student.rows] = student.token_ids
    coef[student.rows] = (row_grad[:, 0] + row_grad[:, 1])[student.group]
    return role, lse, token, coef


class _FusedRowTerms(torch.autograd.Function):
    """Forward computes the loss, the (6, G) values and the reduced (hybrid, ULD) terms, and (when
    needed) the loss's gradient; backward hands the gradient on."""

    @staticmethod
    def forward(ctx: Any, student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: AlignedBatch,
                config: LossConfig, num_items_in_batch: int | torch.Tensor | None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        values, grad, denominator = _run(student_logits, teacher_logits, batch, config, num_items_in_batch,
                                         ctx.needs_input_grad[0])  # fmt: skip
        ctx.grad = None if grad is None else torch.from_numpy(grad)
        values_tensor = torch.from_numpy(values)
        terms = values_tensor[[HYBRID, ULD]].sum(dim=1) / denominator  # (2,), in FUSED_TERMS order
        ctx.mark_non_differentiable(values_tensor, terms)
        total = config.hybrid_weight * terms[0] + config.uld_weight * terms[1]
        return total.to(student_logits.dtype), values_tensor, terms

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: torch.Tensor) -> tuple[Any, ...]:
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            return None, None, None, None, None
        if not bool(grad_loss == 1):
            grad = grad * grad_loss
        return grad, None, None, None, None


def warm_up() -> None:
    """Load (or compile, the first time on a machine) the kernels on a tiny batch, e.g. before timing."""
    from alignment import AlignmentStats
    from gold.data.batch import PairTables
    from gold.losses.byte_marginal import NO_BYTE, NUM_BINS

    tables = PairTables(*(torch.tensor(v) for v in ([0, 1], [1, 0], [0, 0, 1, NO_BYTE], [0, 1, 1], [True] * NUM_BINS)))
    groups = torch.tensor([[-1, 0, 0, 1]])
    batch = AlignedBatch(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 1, 2, 0]]), groups, groups, tables,
                         AlignmentStats.combine([]))  # fmt: skip
    for beta in (0.0, 0.5, 1.0):
        config = LossConfig(uld_weight=1.0, beta=beta, implementation="fused")
        student = torch.randn(1, 4, 4, requires_grad=True)
        loss, _, _ = fused_row_terms(student, torch.randn(1, 4, 3), batch, config)
        loss.backward()


def fused_row_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    batch: AlignedBatch,
    config: LossConfig,
    *,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Hybrid and ULD terms of ``config`` on float32 CPU logits, with their gradient fused in.

    Args:
        student_logits: (B, Ts, Vs) float32 CPU; teacher_logits: (B, Tt, Vt) float32 CPU (no gradient).
        batch, config, num_items_in_batch: as for :func:`gold.losses.cross_tokenizer_loss`.

    Returns:
        ``(loss, terms, health)``: the weighted sum of the fused terms (differentiable), each term's
        reduced value (for logging and the finiteness check), and (4, G) teacher matched mass, matched
        JSD, unmatched ULD and the mass the global vocabulary map matches, per group.
    """
    loss, values, reduced = _FusedRowTerms.apply(student_logits, teacher_logits.detach(), batch, config,
                                                 num_items_in_batch)  # fmt: skip
    terms = {name: reduced[i] for i, name in enumerate(FUSED_TERMS) if getattr(config, f"{name}_weight") > 0}
    return loss, terms, values[[MASS, MATCHED, UNMATCHED, MASS_BEFORE]]
