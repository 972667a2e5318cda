"""Per-row pieces of the fused CPU loss, inlined into :func:`gold.losses.fused_kernels.group_terms`.

Notation as in :mod:`gold.losses.fused_kernels`: ``z`` one logit row, ``inv`` the inverse temperature,
``off`` the row's offset, so ``r(v) = z(v)·inv - off`` is the chain-rule log-probability; ``q`` the
row of ∂loss/∂r being accumulated. Loops are written so that LLVM vectorizes them: contiguous
passes, gathers into scratch arrays, scatters in loops of their own.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gold.losses.fast_math import FASTMATH, fexp, flog
from gold.losses.floor import FLOOR  # a -inf "other" bucket is clamped to it
from gold.losses.uld_quantized import level_of

TINY = np.float32(1.1754944e-38)  # smallest normal float32: flog's domain


@njit(inline="always", fastmath=FASTMATH)
def probs_all(z: np.ndarray, inv: np.float32, off: np.float32, probs: np.ndarray) -> None:
    """``probs[v] = exp(r(v))`` for every column."""
    for v in range(z.shape[0]):
        probs[v] = fexp(z[v] * inv - off)


@njit(inline="always", fastmath=FASTMATH)
def gather_scaled(z: np.ndarray, cols: np.ndarray, inv: np.float32, out: np.ndarray) -> None:
    """``out[i] = z[cols[i]] · inv``: a gather loop of its own, so the math after it vectorizes."""
    for i in range(cols.shape[0]):
        out[i] = z[cols[i]] * inv


@njit(inline="always", fastmath=FASTMATH)
def probs_of(x: np.ndarray, size: int, off: float, probs: np.ndarray) -> None:
    """``probs[i] = exp(x[i] - off)`` for ``i < size``."""
    shift = np.float32(off)
    for i in range(size):
        probs[i] = fexp(x[i] - shift)


@njit(inline="always", fastmath=FASTMATH)
def lse_of(x: np.ndarray, size: int, inv: np.float32) -> float:
    """``logsumexp(x[:size] · inv)`` (-inf when empty, NaN when ``x`` holds one)."""
    top = np.float32(-np.inf)
    for i in range(size):
        top = max(top, x[i])
    top *= inv
    if not np.isfinite(top):
        return float(top)
    total = np.float32(0.0)
    for i in range(size):
        total += fexp(x[i] * inv - top)
    return float(top) + math.log(total)


@njit(inline="always", fastmath=FASTMATH)
def teacher_matched_probs(
    teacher_row: np.ndarray,
    teacher_matched: np.ndarray,
    inv: np.float32,
    off: np.float32,
    teacher_logprobs: np.ndarray,
    teacher_probs_matched: np.ndarray,
) -> float:
    """Teacher log-probabilities and probabilities on the matched columns; returns their mass (≤ 1)."""
    floor = np.float32(FLOOR)  # an unknown (-inf) entry of sparse rows: its terms vanish instead of giving NaN
    for m in range(teacher_matched.shape[0]):
        teacher_logprobs[m] = max(teacher_row[teacher_matched[m]] * inv - off, floor)
    total = np.float32(0.0)
    for m in range(teacher_matched.shape[0]):
        e = fexp(teacher_logprobs[m])
        teacher_probs_matched[m] = e
        total += e
    return min(float(total), 1.0)


@njit(inline="always", fastmath=FASTMATH)
def matched_jsd(
    student_row: np.ndarray,
    student_matched: np.ndarray,
    inv: np.float32,
    off: np.float32,
    teacher_logprobs: np.ndarray,
    teacher_probs_matched: np.ndarray,
    beta: float,
    grads: np.ndarray,
    tail: bool,
    saved: np.ndarray,
) -> tuple[float, float]:
    """Generalized JSD over the matched columns; ∂JSD/∂s per matched pair into ``grads``; returns it and the log of the
    student's mass moved out (``-inf`` without ``tail``).

    With ``tail`` (sparse teacher rows), a pair whose teacher entry is unknown (at the floor) leaves the sum: the
    student's log-probability moves to ``saved`` and its mass to the tail outcome (or "other"), whose gradient
    :func:`tail_gradient` writes back.

    β = 0 is KL(T‖S) and β = 1 KL(S‖T), exactly (:func:`gold.losses.divergences.generalized_jsd`).
    Where both probabilities are below float32's normal range the mixture's log is taken at that
    bound; such a pair adds less than 1e-36 to the value and the gradient.
    """
    b, one_minus_b = np.float32(beta), np.float32(1.0 - beta)
    for m in range(student_matched.shape[0]):
        grads[m] = student_row[student_matched[m]] * inv - off  # the student's log-probabilities, overwritten below
    student_tail = _split_unknown(teacher_logprobs, grads, saved, student_matched.shape[0]) if tail else -np.inf
    total = np.float32(0.0)
    if beta == 0.0:
        for m in range(student_matched.shape[0]):
            total += teacher_probs_matched[m] * (teacher_logprobs[m] - grads[m])
            grads[m] = -teacher_probs_matched[m]
    elif beta == 1.0:
        for m in range(student_matched.shape[0]):
            s = grads[m]
            es = fexp(s)
            total += es * (s - teacher_logprobs[m])
            grads[m] = es * (s - teacher_logprobs[m] + np.float32(1.0))
    else:
        for m in range(student_matched.shape[0]):
            s = grads[m]
            es = fexp(s)
            mix = flog(max(b * teacher_probs_matched[m] + one_minus_b * es, TINY))
            total += b * teacher_probs_matched[m] * (teacher_logprobs[m] - mix) + one_minus_b * es * (s - mix)
            grads[m] = one_minus_b * es * (s - mix)
    return float(total), student_tail


@njit(inline="always")
def _split_unknown(teacher_logprobs: np.ndarray, student_logprobs: np.ndarray, saved: np.ndarray, count: int) -> float:
    """For pairs whose teacher entry is unknown: the student's log-probability into ``saved``, the floor in its place;
    returns the log of their total student mass (``-inf`` when there is none)."""
    floor = np.float32(FLOOR)
    top = -np.inf
    for m in range(count):
        if teacher_logprobs[m] <= floor:
            top = max(top, float(student_logprobs[m]))
    if top == -np.inf:
        return -np.inf
    total = 0.0
    for m in range(count):
        if teacher_logprobs[m] <= floor:
            saved[m] = student_logprobs[m]
            total += math.exp(float(student_logprobs[m]) - top)
            student_logprobs[m] = floor
    return top + math.log(total)


@njit(inline="always")
def tail_gradient(teacher_logprobs: np.ndarray, saved: np.ndarray, student_other: float, d_other: float,
                  grads: np.ndarray, count: int) -> None:  # fmt: skip
    """``grads[m] = d_other · exp(s_m - student_other)`` for the pairs :func:`_split_unknown` moved out, into the
    outcome of log-mass ``student_other`` (the tail outcome, or "other")."""
    floor = np.float32(FLOOR)
    for m in range(count):
        if teacher_logprobs[m] <= floor:
            grads[m] = d_other * math.exp(float(saved[m]) - student_other)


@njit(inline="always", fastmath=FASTMATH)
def scatter_add(cols: np.ndarray, grads: np.ndarray, coef: float, q: np.ndarray) -> None:
    """``q[cols[i]] += coef · grads[i]`` (duplicate columns add up)."""
    c = np.float32(coef)
    for i in range(cols.shape[0]):
        q[cols[i]] += c * grads[i]


@njit(inline="always", fastmath=FASTMATH)
def uld_gradient_all(probs: np.ndarray, signs: np.ndarray, coef: float, q: np.ndarray) -> None:
    """``q[v] += coef · sign(level of p_v) · p_v``: the quantized ULD subgradient over a whole row."""
    c = np.float32(coef)
    for v in range(q.shape[0]):
        q[v] += c * signs[level_of(probs[v])] * probs[v]


@njit(inline="always", fastmath=FASTMATH)
def uld_gradient_cols(
    x: np.ndarray,
    cols: np.ndarray,
    probs: np.ndarray,
    signs: np.ndarray,
    coef: float,
    other: float,
    other_coef: float,
    grads: np.ndarray,
    q: np.ndarray,
) -> None:
    """On ``cols`` (``x`` their log-probabilities, ``probs`` their exponentials): the ULD subgradient
    times ``coef`` plus ``other_coef · exp(x - other)``, the chain rule into the log-mass ``other``."""
    c_uld, c_other = np.float32(coef), np.float32(other_coef)
    shift = np.float32(other) if np.isfinite(other) else np.float32(0.0)
    for i in range(cols.shape[0]):
        grads[i] = c_uld * signs[level_of(probs[i])] * probs[i] + c_other * fexp(x[i] - shift)
    scatter_add(cols, grads, 1.0, q)


@njit(inline="always")
def log1mexp(x: float) -> float:
    """``log(1 - exp(x))`` for ``x <= 0`` (``-inf`` at 0)."""
    if x >= 0.0:
        return -np.inf
    return math.log(-math.expm1(x)) if x > -0.6931471805599453 else math.log1p(-math.exp(x))


@njit(inline="always")
def log_add(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))`` in float64, ``-inf`` when both are."""
    top = max(a, b)
    if top == -np.inf:
        return -np.inf
    return top + math.log(math.exp(a - top) + math.exp(b - top))


@njit(inline="always")
def jsd_scalar(s: float, t: float, beta: float) -> tuple[float, float]:
    """Generalized JSD of one outcome with log-masses ``s`` (student) and ``t``, and its d/ds.

    Entries of ``-inf`` are clamped to the divergences' floor (their exponential is 0, their
    gradient 0), as :func:`gold.losses.divergences.generalized_jsd` does.
    """
    live = s > FLOOR
    s, t = max(s, FLOOR), max(t, FLOOR)
    es, et = math.exp(s), math.exp(t)
    if beta == 0.0:
        value, grad = et * (t - s), -et
    elif beta == 1.0:
        value, grad = es * (s - t), es * (s - t + 1.0)
    else:
        mix = log_add(t + math.log(beta), s + math.log1p(-beta))
        value = beta * et * (t - mix) + (1.0 - beta) * es * (s - mix)
        grad = (1.0 - beta) * es * (s - mix)
    return value, grad if live else 0.0
