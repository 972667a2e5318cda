"""The Triton generalized-JSD kernel (gold.losses.triton_jsd) under Triton's interpreter on CPU: equal to the
definition (tests/reference.py) and to the torch form, values and gradients, at β 0, 0.3, 0.5, 1, with ``-inf``
entries, more outcomes than one tile and non-contiguous rows; and the whole loss with the kernel in place equals the
loss without it. On a GPU the same tests run compiled (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import os

import pytest
import torch

from gold.config import LossConfig
from gold.losses import cross_tokenizer_loss, divergences
from gold.losses.triton_jsd import BLOCK, triton_available, triton_generalized_jsd
from tests.gold.losses.test_fused import STUDENT_VOCAB, TEACHER_VOCAB, random_batch
from tests.reference import reference_jsd

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed (make test installs it)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_the_interpreter_runs_on_cpu() -> None:
    if DEVICE == "cpu":
        assert os.environ.get("TRITON_INTERPRET") == "1"  # tests/conftest.py sets it before Triton is imported


def rows(count: int, outcomes: int, seed: int, *, holes: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Log-softmax rows; ``holes``: which side gets zero-probability outcomes ("teacher", "student" or "both"), plus
    an outcome neither side has."""
    gen = torch.Generator().manual_seed(seed)
    student = torch.log_softmax(3 * torch.randn(count, outcomes, generator=gen), -1)
    teacher = torch.log_softmax(3 * torch.randn(count, outcomes, generator=gen), -1)
    if holes:
        if holes in ("teacher", "both"):
            teacher[:, 1] = float("-inf")
        if holes in ("student", "both"):
            student[0, 2] = float("-inf")
        student[:, 3] = teacher[:, 3] = float("-inf")
    return student.to(DEVICE), teacher.to(DEVICE)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("holes", [False, True])
def test_values_and_gradients_equal_the_definition(beta: float, holes: bool) -> None:
    # a KL is finite only where its second side has mass wherever its first does: β 0 is KL(T ‖ S), β 1 KL(S ‖ T)
    side = {0.0: "teacher", 1.0: "student"}.get(beta, "both") if holes else ""
    student, teacher = rows(5, 37, seed=1, holes=side)
    student = student.clone().requires_grad_()
    found = triton_generalized_jsd(student, teacher, beta=beta)
    (grad,) = torch.autograd.grad(found.sum(), student)
    reference_student = student.detach().cpu().double().requires_grad_()
    expected = reference_jsd(reference_student, teacher.cpu().double(), beta)
    torch.testing.assert_close(found.cpu().double(), expected, rtol=1e-5, atol=1e-6)
    torch_leaf = student.detach().clone().requires_grad_()
    torch_form = divergences._jsd(torch_leaf.clamp(min=divergences.FLOOR), teacher.clamp(min=divergences.FLOOR), beta)
    torch.testing.assert_close(found, torch_form.detach(), rtol=1e-5, atol=1e-6)
    (torch_grad,) = torch.autograd.grad(torch_form.sum(), torch_leaf)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, torch_grad, rtol=1e-5, atol=1e-7)
    # the definition's gradient is NaN where both sides have no mass (log 0 in the mixture): compared elsewhere
    (expected_grad,) = torch.autograd.grad(expected.sum(), reference_student)
    defined = torch.isfinite(expected_grad)
    assert defined.float().mean() > 0.9
    torch.testing.assert_close(grad.cpu().double()[defined], expected_grad[defined], rtol=1e-5, atol=1e-6)


def test_more_outcomes_than_a_tile_strided_rows_and_the_torch_form() -> None:
    student, teacher = rows(3, 2 * BLOCK + 77, seed=2)
    wide = torch.cat([student, student], dim=1)[:, : student.shape[1]]  # a view with row stride ≠ width
    for beta in (0.0, 0.4, 1.0):
        leaf = wide.clone().requires_grad_()
        found = triton_generalized_jsd(leaf[:, : student.shape[1]], teacher, beta=beta)
        weights = torch.arange(1.0, 4.0, device=DEVICE)
        (grad,) = torch.autograd.grad((found * weights).sum(), leaf)
        torch_leaf = wide.clone().requires_grad_()
        expected = divergences._jsd(torch_leaf, teacher, beta)
        (expected_grad,) = torch.autograd.grad((expected * weights).sum(), torch_leaf)
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_refusals_and_empty_rows() -> None:
    student, teacher = rows(2, 5, seed=3)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\], got 1.5"):
        triton_generalized_jsd(student, teacher, beta=1.5)
    with pytest.raises(ValueError, match=r"must be the same \(R, K\), got \(2, 5\) and \(2, 4\)"):
        triton_generalized_jsd(student, teacher[:, :4], beta=0.5)
    empty = triton_generalized_jsd(student[:0], teacher[:0], beta=0.5)
    assert empty.shape == (0,)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_loss_with_the_kernel_in_place_equals_the_loss_without(beta: float, monkeypatch) -> None:
    batch = random_batch(5).to(DEVICE)
    gen = torch.Generator().manual_seed(7)
    student = (3 * torch.randn(*batch.student_ids.shape, STUDENT_VOCAB, generator=gen)).to(DEVICE).requires_grad_()
    teacher = (3 * torch.randn(*batch.teacher_ids.shape, TEACHER_VOCAB, generator=gen)).to(DEVICE)
    config = LossConfig(implementation="torch", beta=beta, uld_weight=0.3, chunk_groups=3)
    results = {}
    for mode in ("never", "always"):
        monkeypatch.setattr(divergences, "TRITON", mode)
        loss, _ = cross_tokenizer_loss(student, teacher, batch, config)
        results[mode] = (loss, torch.autograd.grad(loss, student)[0])
    torch.testing.assert_close(results["always"][0], results["never"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["always"][1], results["never"][1], rtol=1e-5, atol=1e-7)
