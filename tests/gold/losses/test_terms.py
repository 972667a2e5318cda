"""Hybrid, span likelihood, byte marginal and reduction against references and by hand."""

from __future__ import annotations

import math

import pytest
import torch

from gold.losses import (
    NonFiniteLossError,
    byte_marginal,
    check_finite,
    generalized_jsd,
    hybrid,
    reduce_rows,
    span_likelihood,
)
from gold.losses.byte_marginal import NO_BYTE
from gold.losses.reduce import global_denominator
from tests.reference import reference_hybrid, reference_kl


def rows(shape: tuple[int, int], seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = torch.randn(*shape, generator=gen, dtype=torch.float64).log_softmax(-1)
    return out + math.log(scale)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_hybrid_matches_reference(beta: float) -> None:
    student = rows((4, 11), 1, scale=0.8).requires_grad_()  # sub-probability rows, like group rows
    teacher = rows((4, 8), 2)
    s_matched, t_matched = [0, 3, 5, 7], [1, 0, 6, 2]
    parts = hybrid(student, teacher, student_matched=torch.tensor(s_matched), teacher_matched=torch.tensor(t_matched),
                   beta=beta, weights="mass")  # fmt: skip
    matched, unmatched, mass = reference_hybrid(student, teacher, s_matched, t_matched, beta)
    torch.testing.assert_close(parts.matched, matched)
    torch.testing.assert_close(parts.unmatched, unmatched)
    torch.testing.assert_close(parts.teacher_matched_mass, mass)
    expected = mass * matched + (1 - mass) * unmatched
    torch.testing.assert_close(parts.loss, expected)
    (grad,) = torch.autograd.grad(parts.loss.sum(), student)
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    torch.testing.assert_close(grad, expected_grad)


def test_hybrid_other_mass_survives_float32_rounding() -> None:
    """A student whose matched mass rounds to 1 in float32 (unmatched mass ~1e-9) facing a teacher with real
    unmatched mass: ``1 - Σ matched`` is exactly 0 in float32 and the KL was infinite (seen on SmolLM2 ← Gemma-3)."""
    student64 = torch.tensor([[0.0, 0.0, -22.0, -22.0]], dtype=torch.float64).log_softmax(-1)
    teacher64 = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64).log_softmax(-1)
    s_matched, t_matched = [0, 1], [0, 1]
    matched, _, _ = reference_hybrid(student64, teacher64, s_matched, t_matched, 0.0)
    student = student64.float().requires_grad_()
    parts = hybrid(student, teacher64.float(), student_matched=torch.tensor(s_matched),
                   teacher_matched=torch.tensor(t_matched), beta=0.0, student_log_totals=torch.zeros(1),
                   teacher_log_totals=torch.zeros(1))  # fmt: skip
    assert float(1 - student.detach()[0, :2].exp().sum()) == 0.0  # the float32 trap is real
    torch.testing.assert_close(parts.matched.double(), matched, rtol=1e-4, atol=1e-6)
    (grad,) = torch.autograd.grad(parts.loss.sum(), student)
    assert torch.isfinite(grad).all()


def test_hybrid_fixed_weights() -> None:
    student, teacher = rows((2, 5), 3), rows((2, 5), 4)
    ids = torch.tensor([0, 1])
    parts = hybrid(student, teacher, student_matched=ids, teacher_matched=ids, beta=0.5, weights=(0.25, 2.0))
    torch.testing.assert_close(parts.loss, 0.25 * parts.matched + 2.0 * parts.unmatched)
    with pytest.raises(ValueError, match="'nope'"):
        hybrid(student, teacher, student_matched=ids, teacher_matched=ids, beta=0.5, weights="nope")


def test_hybrid_on_one_vocabulary_is_the_jsd() -> None:
    student, teacher = rows((5, 9), 5), rows((5, 9), 6)
    every = torch.arange(9)
    parts = hybrid(student, teacher, student_matched=every, teacher_matched=every, beta=0.3)
    torch.testing.assert_close(parts.loss, generalized_jsd(student, teacher, beta=0.3), atol=1e-6, rtol=0)
    torch.testing.assert_close(parts.unmatched, torch.zeros(5, dtype=torch.float64))


def test_span_likelihood_is_a_bernoulli_kl_by_hand() -> None:
    student, teacher = torch.log(torch.tensor([0.2, 0.9])), torch.log(torch.tensor([0.5, 0.9]))
    expected = torch.tensor([0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8), 0.0])
    torch.testing.assert_close(span_likelihood(student.double(), teacher.double()), expected.double())


def test_byte_marginal_folds_tokens_onto_first_bytes() -> None:
    # student tokens: "a", "ab", "b", <special>; teacher tokens: "a", "b"
    student_bins, teacher_bins = torch.tensor([97, 97, 98, NO_BYTE]), torch.tensor([97, 98])
    student = torch.log(torch.tensor([[0.1, 0.3, 0.5, 0.1]], dtype=torch.float64))
    teacher = torch.log(torch.tensor([[0.6, 0.4]], dtype=torch.float64))
    value = byte_marginal(student, teacher, student_bins=student_bins, teacher_bins=teacher_bins)
    # bins both sides produce: "a", "b" (the student's special has no teacher counterpart); renormalized
    expected = 0.6 * math.log(0.6 / (0.4 / 0.9)) + 0.4 * math.log(0.4 / (0.5 / 0.9))
    assert math.isclose(float(value), expected, rel_tol=1e-12)


def test_byte_marginal_stays_finite_where_only_the_teacher_can_start_a_byte() -> None:
    # teacher tokens "a", "b", <0xF1> (byte fallback); the student has no token starting with 0xF1
    student_bins, teacher_bins = torch.tensor([97, 98]), torch.tensor([97, 98, 0xF1])
    student = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64)).requires_grad_()
    teacher = torch.log(torch.tensor([[0.45, 0.45, 0.1]], dtype=torch.float64))
    value = byte_marginal(student, teacher, student_bins=student_bins, teacher_bins=teacher_bins)
    assert math.isclose(float(value.detach()), 0.0, abs_tol=1e-12)
    (grad,) = torch.autograd.grad(value.sum(), student)
    assert torch.isfinite(grad).all()


def test_reduction_uses_the_global_count_and_tolerates_empty_rows() -> None:
    values = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    assert reduce_rows(values, num_items_in_batch=6).item() == 1.0
    assert reduce_rows(values).item() == 2.0
    empty = reduce_rows(torch.zeros(0, requires_grad=True), num_items_in_batch=4)
    assert empty.item() == 0.0 and empty.requires_grad


def test_the_denominator_is_the_same_for_counts_given_as_numbers_or_tensors() -> None:
    assert global_denominator(3) == 3 and global_denominator(3, 8) == 8 and global_denominator(0, 0) == 1
    assert global_denominator(3, torch.tensor(8.0)).item() == 8.0
    assert global_denominator(0, torch.tensor(0.0)).item() == 1.0  # no rows anywhere: no division by zero
    empty = reduce_rows(torch.zeros(0, requires_grad=True), num_items_in_batch=torch.tensor(0.0))
    assert empty.item() == 0.0 and empty.requires_grad


def test_gradient_accumulation_equals_one_big_batch() -> None:
    values = torch.arange(7, dtype=torch.float64)
    whole = reduce_rows(values)
    parts = reduce_rows(values[:2], num_items_in_batch=7) + reduce_rows(values[2:], num_items_in_batch=7)
    torch.testing.assert_close(whole, parts)


def test_non_finite_loss_names_the_term_and_step() -> None:
    with pytest.raises(NonFiniteLossError, match=r"'hybrid'.*step 12"):
        check_finite(torch.tensor(float("nan")), term="hybrid", step=12)
    assert reference_kl(torch.zeros(1, 1), torch.zeros(1, 1)).item() == 0.0
