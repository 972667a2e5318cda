"""ULD exact against the loop reference; the top-k bound holds."""

from __future__ import annotations

import pytest
import torch

from gold.losses import uld, uld_topk, uld_topk_error_bound
from tests.reference import reference_uld


def rows(shape: tuple[int, int], seed: int, *, sharp: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (sharp * torch.randn(*shape, generator=gen, dtype=torch.float64)).log_softmax(-1)


@pytest.mark.parametrize(("vs", "vt"), [(17, 17), (23, 11), (5, 40)])
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
