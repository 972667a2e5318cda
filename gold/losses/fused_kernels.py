"""numba kernels of the fused CPU loss (:mod:`gold.losses.fused`): one pass set per group row.

Shape legend: R logit rows of one side (B × T flattened), V that side's vocabulary, N grouped tokens,
G groups, M matched pairs, K = 16,257 ULD levels.

Notation per group (see :mod:`gold.losses.merge`): ``z`` the row predicting the group's last token
(already divided by the temperature), ``r(v) = z(v) - off`` the chain-rule row with
``off = logsumexp(z) - prefix``. The group kernel computes the hybrid and ULD values from ``z`` and,
when asked, ``q(v) = ∂loss/∂r(v)`` straight into the gradient buffer, then the row's gradient through
its log-normalizer; :func:`finalize_gradient` writes the rows of the groups' earlier tokens (through
the prefix, by the chain rule) and zeros elsewhere. Each group reads its two rows once and works on
them while they are in cache; nothing of size (G, V) is ever allocated.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from gold.losses.fast_math import FASTMATH, fexp
from gold.losses.fused_rows import (
    gather_scaled,
    jsd_scalar,
    log1mexp,
    log_add,
    lse_of,
    matched_jsd,
    probs_all,
    probs_of,
    scatter_add,
    tail_gradient,
    teacher_matched_probs,
    uld_gradient_all,
    uld_gradient_cols,
)
from gold.losses.uld_quantized import LEVELS, compare_counts, count_levels

# value rows of the group kernel (MASS_BEFORE: the teacher mass the global vocabulary map matches, = MASS except in
# shifted groups, whose own column pairs replace the map)
HYBRID, ULD, MASS, MATCHED, UNMATCHED, MASS_BEFORE = range(6)
# entries of its settings vector (built by gold.losses.fused._settings)
# (TAIL: the teacher's tail column with sparse rows, -1 for a dense teacher)
BETA, USE_HYBRID, USE_ULD, MASS_WEIGHTING, MATCHED_WEIGHT, UNMATCHED_WEIGHT, HYBRID_COEF, ULD_COEF, WANT_GRAD, TAIL = (
    range(10)
)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def row_stats(
    flat: np.ndarray, rows: np.ndarray, ids: np.ndarray, inv_t: float, lse: np.ndarray, token: np.ndarray
) -> None:
    """For each of N rows: its log-normalizer and the (scaled) logit of the token it predicts."""
    scale = np.float32(inv_t)
    for n in prange(rows.shape[0]):
        z = flat[rows[n]]
        lse[n] = lse_of(z, z.shape[0], scale)
        token[n] = z[ids[n]] * scale


@njit(inline="always")
def _hybrid(
    student_row: np.ndarray,
    teacher_row: np.ndarray,
    g: int,
    tables: tuple,
    levels: np.ndarray,
    offsets: np.ndarray,
    prefixes: np.ndarray,
    inv: np.ndarray,
    settings: np.ndarray,
    scratch: tuple,
    values: np.ndarray,
    q: np.ndarray,
) -> float:
    """The hybrid term of group ``g`` into ``values``; its gradient into ``q``; returns ∂loss/∂prefix."""
    student_matched, teacher_matched, student_unmatched, teacher_unmatched = tables
    (
        student_counts,
        teacher_counts,
        signs,
        student_probs,
        teacher_probs,
        student_scaled,
        teacher_scaled,
        teacher_logprobs,
        teacher_probs_matched,
        grads,
        saved,
    ) = scratch
    beta, c_hybrid, want = settings[BETA], settings[HYBRID_COEF], settings[WANT_GRAD] > 0
    tail = int(settings[TAIL])
    student_off, teacher_off = offsets[g, 0], offsets[g, 1]
    mass = teacher_matched_probs(
        teacher_row, teacher_matched, inv[1], teacher_off, teacher_logprobs, teacher_probs_matched
    )
    # sparse teacher rows: the tail is an outcome of its own for β in (0, 1) (part of the JSD's share); at a plain KL
    # it joins "other" (an exact merge)
    own_outcome = 0.0 < beta < 1.0
    teacher_tail = float(teacher_row[tail] * inv[1] - teacher_off) if tail >= 0 else -np.inf
    if tail >= 0 and own_outcome:
        mass = min(mass + math.exp(teacher_tail), 1.0)
    w_matched, w_unmatched = (
        (mass, 1.0 - mass)
        if settings[MASS_WEIGHTING] > 0
        else (
            settings[MATCHED_WEIGHT],
            settings[UNMATCHED_WEIGHT],
        )
    )
    matched, student_tail = matched_jsd(
        student_row,
        student_matched,
        inv[0],
        student_off,
        teacher_logprobs,
        teacher_probs_matched,
        beta,
        grads,
        tail >= 0,
        saved,
    )
    # "other": the unmatched columns plus the mass the chain-rule row leaves to other continuations (and, with sparse
    # teacher rows, the teacher's tail and the student's mass on matched columns whose partner the teacher left out)
    student_count, teacher_count = student_unmatched.shape[0], teacher_unmatched.shape[0]
    gather_scaled(student_row, student_unmatched, inv[0], student_scaled)
    gather_scaled(teacher_row, teacher_unmatched, inv[1], teacher_scaled)
    student_missing = log1mexp(min(prefixes[g, 0], 0.0))
    student_other = log_add(lse_of(student_scaled, student_count, np.float32(1.0)) - student_off, student_missing)
    teacher_other = log_add(
        lse_of(teacher_scaled, teacher_count, np.float32(1.0)) - teacher_off, log1mexp(min(prefixes[g, 1], 0.0))
    )
    if tail >= 0 and not own_outcome:
        student_other = log_add(student_other, student_tail)
        teacher_other = log_add(teacher_other, teacher_tail)
    other, d_other = jsd_scalar(student_other, teacher_other, beta)
    if tail >= 0 and own_outcome:
        tail_value, d_tail = jsd_scalar(student_tail, teacher_tail, beta)
        matched += tail_value
        if want and np.isfinite(student_tail):
            tail_gradient(teacher_logprobs, saved, student_tail, d_tail, grads, student_matched.shape[0])
    elif want and tail >= 0 and np.isfinite(student_tail):
        tail_gradient(teacher_logprobs, saved, student_other, d_other, grads, student_matched.shape[0])
    if want:
        scatter_add(student_matched, grads, c_hybrid * w_matched, q)
    probs_of(student_scaled, student_count, student_off, student_probs)
    probs_of(teacher_scaled, teacher_count, teacher_off, teacher_probs)
    valid = count_levels(student_probs, student_count, student_counts)
    valid &= count_levels(teacher_probs, teacher_count, teacher_counts)
    unmatched = compare_counts(student_counts, teacher_counts, levels, signs) if valid else np.nan
    values[HYBRID, g] = w_matched * (matched + other) + w_unmatched * unmatched
    values[MASS, g], values[MATCHED, g], values[UNMATCHED, g] = mass, matched + other, unmatched
    if not want:
        return 0.0
    other_coef = c_hybrid * w_matched * d_other if np.isfinite(student_other) else 0.0
    uld_gradient_cols(
        student_scaled,
        student_unmatched,
        student_probs,
        signs,
        c_hybrid * w_unmatched,
        student_off + student_other,
        other_coef,
        grads,
        q,
    )
    if not np.isfinite(student_missing):
        return 0.0
    # student_other = log(unmatched mass + exp(student_missing)) with student_missing = log(1 - exp(prefix))
    d_missing = -1.0 / math.expm1(-prefixes[g, 0])
    return other_coef * math.exp(student_missing - student_other) * d_missing


@njit(inline="always")
def _uld(
    student_row: np.ndarray,
    teacher_row: np.ndarray,
    g: int,
    levels: np.ndarray,
    offsets: np.ndarray,
    inv: np.ndarray,
    settings: np.ndarray,
    scratch: tuple,
    values: np.ndarray,
    q: np.ndarray,
) -> None:
    """The ULD term of group ``g`` over whole rows into ``values``; its gradient into ``q``."""
    student_counts, teacher_counts, signs, student_probs, teacher_probs = scratch[:5]
    probs_all(student_row, inv[0], offsets[g, 0], student_probs)
    probs_all(teacher_row, inv[1], offsets[g, 1], teacher_probs)
    tail = int(settings[TAIL])
    if tail >= 0:
        teacher_probs[tail] = 0.0  # sparse teacher rows: the tail is no token
    valid = count_levels(student_probs, student_row.shape[0], student_counts)
    valid &= count_levels(teacher_probs, teacher_row.shape[0], teacher_counts)
    values[ULD, g] = compare_counts(student_counts, teacher_counts, levels, signs) if valid else np.nan
    if settings[WANT_GRAD] > 0:
        uld_gradient_all(student_probs, signs, settings[ULD_COEF], q)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def group_terms(
    student_flat: np.ndarray,
    teacher_flat: np.ndarray,
    rows: np.ndarray,
    prefixes: np.ndarray,
    inv: np.ndarray,
    hybrid_tables: tuple,
    shift_sets: tuple,
    levels: np.ndarray,
    settings: np.ndarray,
    values: np.ndarray,
    grad: np.ndarray,
    row_grad: np.ndarray,
    offsets: np.ndarray,
    workers: int,
) -> None:
    """Hybrid and ULD values of every group and, with ``settings[WANT_GRAD]``, the gradient of the rows
    predicting the groups' last tokens, final (softmax and temperature included) while in cache.

    Args:
        student_flat / teacher_flat: (Rs, Vs) / (Rt, Vt) float32 logits.
        rows: (G, 2) int64 student and teacher row predicting each group's last token.
        hybrid_tables: (M,) student and teacher matched ids, then the student's and the teacher's ids
            without a partner; levels: (K,) float64 ULD level values.
        shift_sets: the column pairs of shifted groups: (G,) int64 pair set of each group (-1: the global map),
            (S + 1,) int64 offsets of each set in the next two, (P,) int64 student and teacher ids, pairwise.
        prefixes: (G, 2) float64 log-probability of each group's earlier tokens, per side.
        inv: (2,) float32 inverse temperatures; settings: (10,) float64, entries named by the constants
            above (β, which terms, the hybrid's weighting, coefficients, whether to write the gradient).
        values: (6, G) float64 out; grad: (Rs, Vs) float32 out (rows of last tokens only);
        row_grad: (G, 2) float64 out, Σ_v ∂loss/∂r(v) and the explicit ∂loss/∂prefix per group;
        offsets: (G, 2) float32 out, ``logsumexp(z) - prefix`` per side.
    """
    groups = rows.shape[0]
    want = settings[WANT_GRAD] > 0
    student_size, teacher_size = student_flat.shape[1], teacher_flat.shape[1]
    group_set, set_offsets = shift_sets[0], shift_sets[1]
    matched = hybrid_tables[0].shape[0]
    for k in range(set_offsets.shape[0] - 1):
        matched = max(matched, set_offsets[k + 1] - set_offsets[k])
    for worker in prange(workers):
        scratch = (
            np.zeros(LEVELS, np.int64),
            np.zeros(LEVELS, np.int64),
            np.zeros(LEVELS, np.float32),
            np.empty(student_size, np.float32),
            np.empty(teacher_size, np.float32),
            np.empty(student_size, np.float32),
            np.empty(teacher_size, np.float32),
            np.empty(matched, np.float32),
            np.empty(matched, np.float32),
            np.empty(max(matched, student_size), np.float32),
            np.empty(matched, np.float32),
        )
        dummy = np.zeros(1, np.float32)
        masks = (np.zeros(student_size, np.bool_), np.zeros(teacher_size, np.bool_))
        buffers = (np.empty(student_size, np.int64), np.empty(teacher_size, np.int64))
        for g in range(worker, groups, workers):
            student_row, teacher_row = student_flat[rows[g, 0]], teacher_flat[rows[g, 1]]
            student_lse = np.float32(lse_of(student_row, student_row.shape[0], inv[0]))
            offsets[g, 0] = student_lse - np.float32(prefixes[g, 0])
            offsets[g, 1] = lse_of(teacher_row, teacher_row.shape[0], inv[1]) - prefixes[g, 1]
            q = grad[rows[g, 0]] if want else dummy
            if want:
                q[:] = 0.0
            pre_grad = 0.0
            if settings[USE_ULD] > 0:
                _uld(student_row, teacher_row, g, levels, offsets, inv, settings, scratch, values, q)
            if settings[USE_HYBRID] > 0:
                tables = _group_tables(g, hybrid_tables, shift_sets, masks, buffers, int(settings[TAIL]))
                if group_set[g] >= 0:
                    values[MASS_BEFORE, g] = teacher_matched_probs(
                        teacher_row, hybrid_tables[1], inv[1], offsets[g, 1], scratch[7], scratch[8]
                    )
                pre_grad = _hybrid(
                    student_row,
                    teacher_row,
                    g,
                    tables,
                    levels,
                    offsets,
                    prefixes,
                    inv,
                    settings,
                    scratch,
                    values,
                    q,
                )
                if group_set[g] < 0:
                    values[MASS_BEFORE, g] = values[MASS, g]
            row_grad[g, 1] = pre_grad
            if want:
                row_grad[g, 0] = _row_sum(q)
                _finish_last_row(student_row, inv[0], student_lse, row_grad[g, 0], q)


@njit(inline="always")
def _group_tables(g: int, hybrid_tables: tuple, shift_sets: tuple, masks: tuple, buffers: tuple, tail: int) -> tuple:
    """The hybrid's (student matched, teacher matched, student unmatched, teacher unmatched) ids of group ``g``:
    the global tables, or a shifted group's own pairs and their complements (built in ``buffers``; the teacher's
    tail column, when ``tail`` ≥ 0, is in neither)."""
    group_set, set_offsets, set_student, set_teacher = shift_sets
    k = group_set[g]
    if k < 0:
        return (hybrid_tables[0][0:], hybrid_tables[1][0:], hybrid_tables[2][0:], hybrid_tables[3][0:])
    start, end = set_offsets[k], set_offsets[k + 1]
    student_ids, teacher_ids = set_student[start:end], set_teacher[start:end]
    student_rest = _complement(student_ids, masks[0], buffers[0], -1)
    teacher_rest = _complement(teacher_ids, masks[1], buffers[1], tail)
    return (student_ids, teacher_ids, student_rest, teacher_rest)


@njit(inline="always")
def _complement(ids: np.ndarray, mask: np.ndarray, buffer: np.ndarray, leave_out: int) -> np.ndarray:
    """The ids of ``0 … len(mask) - 1`` not in ``ids`` (nor ``leave_out`` when ≥ 0), written into ``buffer``;
    ``mask`` is left all False."""
    for i in ids:
        mask[i] = True
    if leave_out >= 0:
        mask[leave_out] = True
    count = 0
    for v in range(mask.shape[0]):
        if not mask[v]:
            buffer[count] = v
            count += 1
    for i in ids:
        mask[i] = False
    if leave_out >= 0:
        mask[leave_out] = False
    return buffer[0:count]


@njit(inline="always", fastmath=FASTMATH)
def _row_sum(q: np.ndarray) -> float:
    total = np.float32(0.0)
    for v in range(q.shape[0]):
        total += q[v]
    return float(total)


@njit(inline="always", fastmath=FASTMATH)
def _finish_last_row(z: np.ndarray, inv: np.float32, lse: np.float32, total: float, q: np.ndarray) -> None:
    """``q ← (q - softmax(z) · Σq) / T``: through the row's log-normalizer and the temperature."""
    c = np.float32(total)
    for v in range(q.shape[0]):
        q[v] = inv * (q[v] - fexp(z[v] * inv - lse) * c)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def finalize_gradient(
    flat: np.ndarray,
    grad: np.ndarray,
    role: np.ndarray,
    lse: np.ndarray,
    token: np.ndarray,
    coef: np.ndarray,
    inv_t: float,
) -> None:
    """∂loss/∂logits of the rows :func:`group_terms` did not write.

    Role 2 (predicts an earlier token of a group): ``coef · (onehot(token) - softmax) / T`` with
    coef = ∂loss/∂prefix of its group. Role 0 (predicts no grouped token): zero. Role 1 (predicts a
    group's last token): already final, left as it is.
    """
    scale = np.float32(inv_t)
    for r in prange(flat.shape[0]):
        out = grad[r]
        if role[r] == 0:
            out[:] = 0.0
        elif role[r] == 2:
            z, shift, c = flat[r], np.float32(lse[r]), np.float32(coef[r])
            for v in range(out.shape[0]):
                out[v] = -scale * c * fexp(z[v] * scale - shift)
            out[token[r]] += scale * c
