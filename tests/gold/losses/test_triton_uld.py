"""The quantized ULD as Triton kernels (gold.losses.triton_uld) under Triton's interpreter on CPU: the same values and
gradients as the numba version (gold.losses.uld_quantized), within its stated bound of the exact sort-based ULD,
NaN for invalid rows, refusals; and the hybrid with it equals the hybrid with the numba version. On a GPU the same
tests run compiled (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import pytest
import torch

from gold.losses.hybrid import hybrid
from gold.losses.triton_jsd import triton_available
from gold.losses.triton_uld import TILE, triton_uld_quantized
from gold.losses.uld import uld
from gold.losses.uld_quantized import uld_quantized
from tests.reference import reference_uld

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed (make test installs it)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rows(count: int, student_width: int, teacher_width: int, seed: int, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.log_softmax(scale * torch.randn(count, student_width, generator=gen), -1)
    teacher = torch.log_softmax(scale * torch.randn(count, teacher_width, generator=gen), -1)
    return student, teacher


@pytest.mark.parametrize(("student_width", "teacher_width", "scale"), [(37, 29, 3.0), (300, 2 * TILE + 5, 1.0),
                                                                       (2 * TILE + 5, 300, 6.0)])  # fmt: skip
def test_equals_the_numba_version_and_stays_within_the_bound_of_the_exact_uld(student_width, teacher_width,
                                                                                scale) -> None:  # fmt: skip
    student, teacher = rows(5, student_width, teacher_width, seed=student_width, scale=scale)
    student[0, :3] = student[0, 3]  # ties within a bucket
    leaf = student.to(DEVICE).requires_grad_()
    found = triton_uld_quantized(leaf, teacher.to(DEVICE))
    weights = torch.arange(1.0, 6.0, device=DEVICE)
    (grad,) = torch.autograd.grad((found * weights).sum(), leaf)
    cpu_leaf = student.clone().requires_grad_()
    expected = uld_quantized(cpu_leaf, teacher)
    (expected_grad,) = torch.autograd.grad((expected * weights.cpu()).sum(), cpu_leaf)
    torch.testing.assert_close(found.cpu(), expected.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.cpu(), expected_grad, rtol=1e-6, atol=1e-7)
    assert float(grad.abs().max()) > 0
    exact = uld(student, teacher) if student_width > 100 else reference_uld(student, teacher)  # the slow one: small
    bound = 2**-8 * (student.exp().sum(-1) + teacher.exp().sum(-1))
    assert ((found.cpu() - exact).abs() <= bound + 1e-6).all()


def test_invalid_rows_give_nan_and_the_teacher_gets_no_gradient() -> None:
    student, teacher = rows(3, 20, 20, seed=4)
    student[1, 5] = float("nan")
    found = triton_uld_quantized(student.to(DEVICE), teacher.to(DEVICE)).cpu()
    assert torch.isnan(found[1]) and torch.isfinite(found[[0, 2]]).all()
    with pytest.raises(ValueError, match=r"gives the teacher no gradient; pass teacher_logprobs\.detach\(\)"):
        triton_uld_quantized(student, teacher.clone().requires_grad_())
    empty = triton_uld_quantized(student[:0].to(DEVICE), teacher[:0].to(DEVICE))
    assert empty.shape == (0,)


def test_the_hybrid_with_it_equals_the_hybrid_with_the_numba_version() -> None:
    student, teacher = rows(6, 41, 33, seed=8)
    matched = dict(student_matched=torch.tensor([0, 3, 5, 9, 20]), teacher_matched=torch.tensor([1, 2, 7, 8, 30]))
    results = []
    for distance in (uld_quantized, triton_uld_quantized):
        leaf = student.clone().requires_grad_()
        parts = hybrid(leaf, teacher, beta=0.5, distance=distance, **matched)  # type: ignore[arg-type]
        results.append((parts.loss, torch.autograd.grad(parts.loss.sum(), leaf)[0]))
    torch.testing.assert_close(results[1][0], results[0][0].float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-6, atol=1e-7)


def test_uld_method_quantized_takes_the_triton_kernels_off_the_cpu() -> None:
    from gold.config import LossConfig
    from gold.losses.composite import uld_distance

    config = LossConfig(uld_method="quantized")
    assert uld_distance(config, torch.device("cpu")) is uld_quantized
    assert uld_distance(config, torch.device("cuda")) is triton_uld_quantized
    assert uld_distance(LossConfig(), torch.device("cuda")) is uld  # "auto" stays exact on GPUs until measured there
