"""KL / JSD against the loop reference; -inf entries; gradients stay finite."""

from __future__ import annotations

import pytest
import torch

from gold.losses import forward_kl, generalized_jsd, reverse_kl
from tests.reference import reference_jsd, reference_kl


def rows(shape: tuple[int, int], seed: int, *, holes: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if holes:  # zero-probability entries, in the same places on both sides
        logits[:, ::3] = float("-inf")
    return logits.log_softmax(-1)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("holes", [False, True])
def test_generalized_jsd_matches_reference(beta: float, holes: bool) -> None:
    student = rows((5, 13), 1, holes=holes).requires_grad_()
    teacher = rows((5, 13), 2, holes=holes)
    value = generalized_jsd(student, teacher, beta=beta)
    expected = reference_jsd(student, teacher, beta)
    torch.testing.assert_close(value, expected)
    (grad,) = torch.autograd.grad(value.sum(), student)
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(torch.nan_to_num(grad), torch.nan_to_num(expected_grad))


def test_directions_are_named() -> None:
    student, teacher = rows((3, 7), 3), rows((3, 7), 4)
    torch.testing.assert_close(forward_kl(student, teacher), reference_kl(teacher, student))
    torch.testing.assert_close(reverse_kl(student, teacher), reference_kl(student, teacher))
    torch.testing.assert_close(generalized_jsd(student, teacher, beta=0.0), forward_kl(student, teacher))
    torch.testing.assert_close(generalized_jsd(student, teacher, beta=1.0), reverse_kl(student, teacher))


def test_identical_rows_have_zero_divergence() -> None:
    student = rows((4, 9), 5, holes=True)
    for beta in (0.0, 0.5, 1.0):
        torch.testing.assert_close(generalized_jsd(student, student, beta=beta), torch.zeros(4, dtype=torch.float64))


def test_beta_out_of_range_names_the_value() -> None:
    with pytest.raises(ValueError, match=r"1\.5"):
        generalized_jsd(rows((1, 2), 0), rows((1, 2), 1), beta=1.5)
