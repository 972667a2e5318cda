"""ULD exact against the loop reference; the top-k bound holds."""

from __future__ import annotations

import pytest
import torch

from gold.losses import uld, uld_quantized, uld_topk, uld_topk_error_bound
from tests.reference import reference_uld


def rows(shape: tuple[int, int], seed: int, *, sharp: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (sharp * torch.randn(*shape, generator=gen, dtype=torch.float64)).log_softmax(-1)


@pytest.mark.parametrize(("vs", "vt"), [(17, 17), (23, 11), (5, 40), (1, 3), (1, 1)])  # one column: a view trap
def test_exact_matches_reference_values_and_gradients(vs: int, vt: int) -> None:
    student = rows((4, vs), vs).requires_grad_()
    teacher = rows((4, vt), vt)
    value = uld(student, teacher)
    expected = reference_uld(student, teacher)
    torch.testing.assert_close(value, expected)
    (grad,) = torch.autograd.grad(value.sum(), student)
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    torch.testing.assert_close(grad, expected_grad)


def test_sub_probability_rows_are_compared_as_they_are() -> None:
    student = rows((2, 6), 1) + torch.log(torch.tensor(0.5, dtype=torch.float64))
    teacher = rows((2, 9), 2)
    torch.testing.assert_close(uld(student, teacher), reference_uld(student, teacher))


@pytest.mark.parametrize("sharp", [0.5, 3.0, 8.0])
@pytest.mark.parametrize("k", [1, 4, 16])
def test_topk_error_is_within_the_stated_bound(sharp: float, k: int) -> None:
    student, teacher = rows((6, 50), 7, sharp=sharp), rows((6, 70), 8, sharp=sharp)
    exact, approx = uld(student, teacher), uld_topk(student, teacher, k=k)
    bound = uld_topk_error_bound(student, teacher, k=k)
    assert (approx <= exact + 1e-12).all()
    assert (exact - approx <= bound + 1e-12).all()


def test_topk_with_k_covering_the_vocabulary_is_exact() -> None:
    student, teacher = rows((3, 12), 1), rows((3, 9), 2)
    torch.testing.assert_close(uld_topk(student, teacher, k=12), uld(student, teacher))


@pytest.mark.parametrize(("vs", "vt", "sharp"), [(40, 30, 3.0), (1000, 700, 1.0), (7, 300, 8.0)])
def test_quantized_is_within_its_bound_and_matches_exact_gradients(vs: int, vt: int, sharp: float) -> None:
    student = rows((5, vs), vs, sharp=sharp).float().requires_grad_()
    teacher = rows((5, vt), vt, sharp=sharp).float()
    exact, fast = uld(student, teacher), uld_quantized(student, teacher)
    bound = 2**-8 * (student.exp().sum(-1) + teacher.exp().sum(-1))
    assert ((exact - fast).abs() <= bound.detach() + 1e-6).all()
    (grad_exact,) = torch.autograd.grad(exact.sum(), student)
    (grad_fast,) = torch.autograd.grad(fast.sum(), student)
    # the same sign per rank, except where quantization ties a value with a teacher value
    agree = (grad_exact - grad_fast).abs() < 1e-6
    assert agree.float().mean() > 0.95


def test_quantized_is_exact_on_bucket_midpoints() -> None:
    keys = torch.tensor([[0x3E80, 0x3D00, 0x3C40], [0x3F00, 0x3B80, 0x3A00]], dtype=torch.int32)
    probs = ((keys << 16) | 0x8000).view(torch.float32)
    teacher = ((torch.tensor([[0x3E00, 0x3D80], [0x3E40, 0x3C00]], dtype=torch.int32) << 16) | 0x8000).view(
        torch.float32
    )
    torch.testing.assert_close(uld_quantized(probs.log(), teacher.log()), uld(probs.log(), teacher.log()))


def test_quantized_propagates_nan_and_refuses_a_teacher_gradient() -> None:
    student = torch.tensor([[float("nan"), -1.0]])
    assert torch.isnan(uld_quantized(student, torch.zeros(1, 1).log_softmax(-1))).all()
    with pytest.raises(ValueError, match="detach"):
        uld_quantized(torch.zeros(1, 2), torch.zeros(1, 2, requires_grad=True))
