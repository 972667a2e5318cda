"""Half-precision logits: every term is reduced in float32, so bf16 / fp16 logits give the loss of the
same values held in float32 (DESIGN §4, Precision), and the gradient only differs by its own rounding."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gold.config import LossConfig
from gold.losses import AlignedBatch, cross_tokenizer_loss, group_logprobs, index_groups
from gold.losses.merge import rows_of, start_rows
from tests.gold.losses.test_composite import make_batch

HALF = [torch.bfloat16, torch.float16]
TERMS: dict[str, dict[str, Any]] = {
    "hybrid_mass": {"hybrid_weight": 1.0},
    "hybrid_fixed": {"hybrid_weighting": "fixed", "hybrid_matched_weight": 0.7, "hybrid_unmatched_weight": 0.4},
    "uld_exact": {"hybrid_weight": 0.0, "uld_weight": 1.0, "uld_method": "exact"},
    "uld_quantized": {"hybrid_weight": 0.0, "uld_weight": 1.0, "uld_method": "quantized"},
    "span": {"hybrid_weight": 0.0, "span_weight": 1.0},
    "byte_marginal": {"hybrid_weight": 0.0, "byte_marginal_weight": 1.0},
    "projection": {"hybrid_weight": 0.0, "projection_weight": 1.0},
}


def peaked_logits(ids: torch.Tensor, vocab: int, seed: int) -> torch.Tensor:
    """(B, T, V) float32 logits whose row at k favours the actual token k + 1, like a trained model's, so
    group likelihoods (the span term) are neither 0 nor 1."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(*ids.shape, vocab, generator=gen)
    boost = 6.0 + 4.0 * torch.rand(ids.shape[0], ids.shape[1] - 1, generator=gen)  # (B, T - 1)
    logits[:, :-1].scatter_add_(-1, ids[:, 1:, None], boost[..., None])
    return logits


@pytest.fixture(scope="module")
def pair() -> tuple[AlignedBatch, torch.Tensor, torch.Tensor]:
    """SmolLM2 (byte-level BPE) student, Mistral-v1 (SentencePiece, byte fallback) teacher, float32 logits."""
    batch = make_batch("smollm2", "mistral-v1", student_rows=49152, teacher_rows=32000)
    return batch, peaked_logits(batch.student_ids, 49152, 1), peaked_logits(batch.teacher_ids, 32000, 2)


def loss_and_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: AlignedBatch,
                  config: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    leaf = student_logits.detach().requires_grad_()
    loss, _ = cross_tokenizer_loss(leaf, teacher_logits, batch, config)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def check_rounded(grad: torch.Tensor, expected_grad: torch.Tensor) -> None:
    """``grad`` (half) is the float32 ``expected_grad`` after one rounding to its format: within eps / 2
    relative (2^-9 for bf16, 2^-12 for fp16; eps allowed) or, below fp16's smallest normal, half the
    subnormal spacing."""
    eps = torch.finfo(grad.dtype).eps
    spacing = torch.finfo(grad.dtype).smallest_normal * eps
    torch.testing.assert_close(grad.float(), expected_grad, rtol=eps, atol=spacing)
    error = float((grad.float() - expected_grad).norm())
    assert error <= eps * float(expected_grad.norm()) + spacing * grad.numel() ** 0.5


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("term", list(TERMS))
def test_half_logits_give_the_float32_loss(pair: Any, term: str, beta: float, dtype: torch.dtype) -> None:
    """The loss of bf16 / fp16 logits is the loss of the same values held in float32, and their gradient
    that gradient rounded once: the parts a row's gradient is made of (each entry's own, the softmax of
    its normalizer) are summed in float32 before the cast back."""
    batch, student_logits, teacher_logits = pair
    student_half, teacher_half = student_logits.to(dtype), teacher_logits.to(dtype)
    config = LossConfig(**TERMS[term], beta=beta, implementation="torch")
    loss, grad = loss_and_grad(student_half, teacher_half, batch, config)
    expected, expected_grad = loss_and_grad(student_half.float(), teacher_half.float(), batch, config)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, expected, rtol=2e-6, atol=0)
    check_rounded(grad, expected_grad)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("term", list(TERMS))
def test_half_logits_under_auto_match_float32_with_temperatures(pair: Any, term: str, dtype: torch.dtype) -> None:
    """Under "auto" half logits take the torch path, float32 ones the fused kernels for the hybrid and
    quantized ULD (float32 exp/log within 5e-7 of torch's, so test_fused's rtol there; their gradients
    are compared to the torch path's in test_fused). The temperatures divide the upcast rows, not the
    half logits (a bf16 ``x / 0.7`` is off by up to 2^-9 of x)."""
    batch, student_logits, teacher_logits = pair
    student_half, teacher_half = student_logits.to(dtype), teacher_logits.to(dtype)
    options = dict(TERMS[term], beta=0.5, student_temperature=0.7, teacher_temperature=1.5, chunk_groups=5)
    loss, grad = loss_and_grad(student_half, teacher_half, batch, LossConfig(**options))
    expected, _ = loss_and_grad(student_half.float(), teacher_half.float(), batch, LossConfig(**options))
    fused = term in ("hybrid_mass", "hybrid_fixed", "uld_quantized")
    torch.testing.assert_close(loss, expected, rtol=1e-5 if fused else 2e-6, atol=0)
    torch_path = LossConfig(**options, implementation="torch")
    check_rounded(grad, loss_and_grad(student_half.float(), teacher_half.float(), batch, torch_path)[1])


def test_index_and_rows_of_bf16_logits_are_float32(pair: Any) -> None:
    """Scalars and rows of bf16 logits are those of the same values in float32, bit for bit."""
    batch, student_logits, _ = pair
    half = student_logits.bfloat16()
    index = index_groups(half, batch.student_ids, batch.student_groups)
    expected = index_groups(half.float(), batch.student_ids, batch.student_groups)
    for value, expected_value in ((index.observed, expected.observed), (index.prefix, expected.prefix),
                                  (index.log_normalizer, expected.log_normalizer),
                                  (index.start_normalizer, expected.start_normalizer)):  # fmt: skip
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, expected_value, rtol=0, atol=0)
    select = torch.arange(3, 9)
    torch.testing.assert_close(rows_of(half, index, select), rows_of(half.float(), expected, select), rtol=0, atol=0)
    torch.testing.assert_close(start_rows(half, index, select), start_rows(half.float(), expected, select),
                               rtol=0, atol=0)  # fmt: skip
    rows = group_logprobs(half, batch.student_ids, batch.student_groups, temperature=0.7)
    torch.testing.assert_close(rows.logprobs, group_logprobs(half.float(), batch.student_ids, batch.student_groups,
                                                             temperature=0.7).logprobs)  # fmt: skip


def test_the_graph_keeps_no_float32_copy_of_the_logits(pair: Any) -> None:
    """Only the half logits themselves, (N,) scalars and chunk-sized rows are saved for backward."""
    batch, student_logits, teacher_logits = pair
    leaf = student_logits.bfloat16().requires_grad_()
    saved: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    config = LossConfig(hybrid_weight=1.0, span_weight=1.0, byte_marginal_weight=1.0, chunk_groups=4)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss, _ = cross_tokenizer_loss(leaf, teacher_logits.bfloat16(), batch, config)
    float32_bytes = sum(t.numel() * 4 for t in saved if t.dtype == torch.float32)
    assert float32_bytes < 0.1 * leaf.numel() * 4, f"{float32_bytes} float32 bytes saved for backward"
    loss.backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
