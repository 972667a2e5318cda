"""The loss from hidden states (gold.losses.hidden) equals the loss from the logits those hidden states give, on values
and on gradients (to the hidden states and to the output layer), for every term, in float32 and bf16, with blocks and
chunks small enough that every path runs many times."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gold.config import LossConfig
from gold.losses import cross_tokenizer_loss
from gold.losses.head import OutputHead
from gold.losses.hidden import HiddenLogits
from gold.losses.opd import opd_loss
from tests.gold.losses.test_fused import STUDENT_VOCAB, TEACHER_VOCAB, random_batch

HIDDEN = 16
CONFIGS = {
    "hybrid-jsd": {"beta": 0.5},
    "hybrid-forward-kl": {"beta": 0.0},
    "hybrid-reverse-kl-fixed": {"beta": 1.0, "hybrid_weighting": "fixed"},
    "uld-exact": {"hybrid_weight": 0.0, "uld_weight": 1.0, "uld_method": "exact"},
    "uld-quantized": {"hybrid_weight": 0.0, "uld_weight": 1.0, "uld_method": "quantized"},
    "span": {"hybrid_weight": 0.0, "span_weight": 1.0},
    "byte-marginal": {"hybrid_weight": 0.0, "byte_marginal_weight": 1.0},
    "projection": {"hybrid_weight": 0.0, "projection_weight": 1.0},
    "all-terms-tempered": {
        "uld_weight": 0.5,
        "span_weight": 0.3,
        "byte_marginal_weight": 0.2,
        "projection_weight": 0.4,
        "student_temperature": 0.8,
        "teacher_temperature": 1.5,
    },
}


def random_head(vocab: int, seed: int, dtype: torch.dtype, **post: float) -> OutputHead:
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(vocab, HIDDEN, generator=gen) * 1.5).to(dtype).requires_grad_()
    bias = (torch.randn(vocab, generator=gen) * 0.5).to(dtype).requires_grad_()
    return OutputHead(weight, bias, **post)  # type: ignore[arg-type]


def sides(batch, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(*batch.student_ids.shape, HIDDEN, generator=gen).to(dtype).requires_grad_()
    teacher_hidden = torch.randn(*batch.teacher_ids.shape, HIDDEN, generator=gen).to(dtype)
    student_head = random_head(STUDENT_VOCAB, seed + 1, dtype, softcap=6.0)  # Gemma-style capping bends logits
    teacher_head = random_head(TEACHER_VOCAB, seed + 2, dtype, scale=0.7)
    return student_hidden, teacher_hidden, student_head, teacher_head


def run(student, teacher, batch, config, leaves):
    loss, metrics = cross_tokenizer_loss(student, teacher, batch, config)
    return loss, metrics, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hidden_states_equal_their_logits(name: str, dtype: torch.dtype) -> None:
    batch = random_batch(3)
    student_hidden, teacher_hidden, student_head, teacher_head = sides(batch, dtype, seed=5)
    leaves = (student_hidden, student_head.weight, student_head.bias)
    config = LossConfig(implementation="torch", chunk_groups=2, **CONFIGS[name])
    expected, expected_metrics, expected_grads = run(
        student_head.logits(student_hidden), teacher_head.logits(teacher_hidden), batch,
        dataclasses.replace(config, chunk_groups=None), leaves,
    )  # fmt: skip
    student = HiddenLogits(student_hidden, student_head, rows_per_block=3)
    teacher = HiddenLogits(teacher_hidden, teacher_head, rows_per_block=2)
    loss, metrics, grads = run(student, teacher, batch, config, leaves)
    assert loss.dtype == torch.float32 and float(expected.detach()) > 1e-3
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert metrics.keys() == expected_metrics.keys()
    for key in metrics:
        assert metrics[key] == pytest.approx(expected_metrics[key], rel=1e-4, abs=1e-6), key
    # bf16: each chunk's gradient is rounded to bf16 before the chunks are summed, the logits path rounds once
    tolerance = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=2**-6, atol=2**-6)
    for grad, reference in zip(grads, expected_grads, strict=True):
        assert grad.dtype == dtype and float(reference.abs().max()) > 0
        scale = float(reference.abs().max())
        torch.testing.assert_close(grad.float() / scale, reference.float() / scale, **tolerance)


def test_the_default_blocks_and_chunks_and_the_fused_refusal() -> None:
    batch = random_batch(4)
    student_hidden, teacher_hidden, student_head, teacher_head = sides(batch, torch.float32, seed=9)
    leaves = (student_hidden, student_head.weight)
    reference, _, reference_grads = run(student_head.logits(student_hidden), teacher_head.logits(teacher_hidden),
                                        batch, LossConfig(implementation="torch"), leaves)  # fmt: skip
    student, teacher = HiddenLogits(student_hidden, student_head), HiddenLogits(teacher_hidden, teacher_head)
    assert student.rows_per_block == (1 << 24) // STUDENT_VOCAB
    for config in (LossConfig(), LossConfig(chunk_groups=None)):  # "auto" takes the torch path for hidden states
        loss, _, grads = run(student, teacher, batch, config, leaves)
        torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
        for grad, expected in zip(grads, reference_grads, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="student logits come as hidden states"):
        cross_tokenizer_loss(student, teacher, batch, LossConfig(implementation="fused"))


def test_a_teacher_of_logits_beside_a_student_of_hidden_states() -> None:
    batch = random_batch(6)
    student_hidden, teacher_hidden, student_head, teacher_head = sides(batch, torch.float32, seed=2)
    teacher_logits = teacher_head.logits(teacher_hidden).detach()
    config = LossConfig(implementation="torch", chunk_groups=3, uld_weight=0.5)
    expected, _, (expected_grad,) = run(student_head.logits(student_hidden), teacher_logits, batch, config,
                                        (student_hidden,))  # fmt: skip
    loss, _, (grad,) = run(HiddenLogits(student_hidden, student_head, rows_per_block=4), teacher_logits, batch,
                           config, (student_hidden,))  # fmt: skip
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_opd_and_completion_logprobs_from_hidden_states() -> None:
    batch = random_batch(7)
    student_hidden, teacher_hidden, student_head, teacher_head = sides(batch, torch.float32, seed=3)
    student = HiddenLogits(student_hidden, student_head, rows_per_block=5)
    teacher = HiddenLogits(teacher_hidden, teacher_head, rows_per_block=5)
    logits = student_head.logits(student_hidden)
    expected, _ = opd_loss(logits, teacher_head.logits(teacher_hidden), batch, alpha=0.5)
    loss, _ = opd_loss(student, teacher, batch, alpha=0.5)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    targets = batch.student_ids[:, 1:].masked_fill(batch.student_groups[:, 1:] < 0, -100)
    picked = student.completion_logprobs(targets)
    reference = torch.log_softmax(logits[:, :-1], -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(picked, reference.masked_fill(targets == -100, 0.0), rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(picked.sum(), student_hidden)
    (expected_grad,) = torch.autograd.grad(reference.masked_fill(targets == -100, 0.0).sum(), student_hidden)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_bad_hidden_states_are_refused() -> None:
    head = random_head(STUDENT_VOCAB, 0, torch.float32)
    with pytest.raises(ValueError, match=r"must be \(B, T, 16\) for this output layer, got \(2, 5, 8\)"):
        HiddenLogits(torch.zeros(2, 5, 8), head)
    with pytest.raises(ValueError, match="rows_per_block must be >= 1, got 0"):
        HiddenLogits(torch.zeros(2, 5, HIDDEN), head, rows_per_block=0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_on_cuda_in_bf16_hidden_states_equal_their_logits(name: str) -> None:
    batch = random_batch(3).to("cuda")
    student_hidden, teacher_hidden, student_head, teacher_head = sides(batch, torch.bfloat16, seed=5)
    moved = [t.detach().cuda().requires_grad_(t.requires_grad) for t in (student_hidden, teacher_hidden)]
    student_hidden, teacher_hidden = moved
    student_head, teacher_head = (
        OutputHead(h.weight.detach().cuda().requires_grad_(), h.bias.detach().cuda().requires_grad_(), h.scale,
                   h.softcap)
        for h in (student_head, teacher_head)
    )  # fmt: skip
    leaves = (student_hidden, student_head.weight)
    config = LossConfig(chunk_groups=2, **CONFIGS[name])  # "auto" on CUDA: the torch path, exact ULD
    expected, _, expected_grads = run(student_head.logits(student_hidden), teacher_head.logits(teacher_hidden), batch,
                                      config, leaves)  # fmt: skip
    student = HiddenLogits(student_hidden, student_head, rows_per_block=3)
    loss, _, grads = run(student, HiddenLogits(teacher_hidden, teacher_head, rows_per_block=2), batch, config, leaves)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    for grad, reference in zip(grads, expected_grads, strict=True):
        scale = float(reference.abs().max())
        torch.testing.assert_close(grad.float() / scale, reference.float() / scale, rtol=2**-6, atol=2**-6)
