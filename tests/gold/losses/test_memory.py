"""The memory bound of the loss from hidden states (the GPU path), measured on CPU tensors with the same code: peak
extra memory of forward + backward grows with the chunk of groups, not with the sequence, and stays under
``HIDDEN_PATH_BUFFERS`` (g, V) float32 buffers plus the output layer's gradient. The logits path at the same shapes
breaks that bound, so the measurement can tell the two apart.

Memory is counted by ``torch.distributed._tools.mem_tracker.MemTracker``: every storage the ops allocate, live or
freed, on any device; it is a test of the design, not a timing."""

from __future__ import annotations

import pytest
import torch

from alignment import AlignmentStats
from benchmarks.memory_gpu_path import peak_extra_bytes as measured_peak
from gold.config import LossConfig
from gold.losses import AlignedBatch, PairTables, cross_tokenizer_loss
from gold.losses.byte_marginal import NUM_BINS
from gold.losses.head import OutputHead
from gold.losses.hidden import HIDDEN_PATH_BUFFERS, HiddenLogits, hidden_path_bound

HIDDEN, VOCAB, BATCH = 32, 8000, 2
CONFIGS = {
    "hybrid-exact-uld": dict(uld_weight=0.5, uld_method="exact"),
    "every-term": dict(uld_weight=0.5, span_weight=0.5, byte_marginal_weight=0.5),
}


def _inputs(length: int) -> tuple[AlignedBatch, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(length)
    ids = [torch.randint(0, VOCAB, (BATCH, length), generator=gen) for _ in range(2)]
    groups = (torch.arange(length) - 1).expand(BATCH, length).clone()  # every token but the first, its own group
    tables = PairTables(student_matched=torch.arange(0, VOCAB, 2), teacher_matched=torch.arange(1, VOCAB, 2),
                        student_bins=torch.randint(0, 256, (VOCAB,), generator=gen),
                        teacher_bins=torch.randint(0, 256, (VOCAB,), generator=gen),
                        shared_bins=torch.ones(NUM_BINS, dtype=torch.bool))  # fmt: skip
    batch = AlignedBatch(ids[0], ids[1], groups, groups.clone(), tables, AlignmentStats.combine([]))
    leaves = {
        "student_hidden": torch.randn(BATCH, length, HIDDEN, generator=gen).requires_grad_(),
        "student_weight": (torch.randn(VOCAB, HIDDEN, generator=gen) * 0.2).requires_grad_(),
        "teacher_hidden": torch.randn(BATCH, length, HIDDEN, generator=gen),
        "teacher_weight": torch.randn(VOCAB, HIDDEN, generator=gen) * 0.2,
    }
    return batch, leaves


def peak_extra_bytes(length: int, chunk: int, *, hidden: bool, **loss: object) -> int:
    """Peak bytes allocated above what existed before, over the loss's forward and backward."""
    batch, leaves = _inputs(length)
    return measured_peak("hidden" if hidden else "logits", batch, leaves, chunk, **loss)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_hidden_path_stays_within_its_bound_and_the_logits_path_does_not(name: str) -> None:
    length, chunk = 256, 32
    bound = hidden_path_bound(chunk, VOCAB, VOCAB, student_hidden=HIDDEN, teacher_hidden=HIDDEN, tokens=BATCH * length)
    assert bound == HIDDEN_PATH_BUFFERS * chunk * VOCAB * 4 + 2 * VOCAB * HIDDEN * 4 + 64 * BATCH * length * HIDDEN
    hidden_peak = peak_extra_bytes(length, chunk, hidden=True, **CONFIGS[name])
    logits_peak = peak_extra_bytes(length, chunk, hidden=False, **CONFIGS[name])
    assert hidden_peak <= bound < logits_peak, (hidden_peak, bound, logits_peak)


def test_the_hidden_path_grows_with_the_chunk_not_with_the_sequence() -> None:
    short, long = (peak_extra_bytes(length, 32, hidden=True) for length in (128, 512))
    assert abs(long - short) <= 0.1 * short, (short, long)  # 4× the tokens, the same peak
    logits_short, logits_long = (peak_extra_bytes(length, 32, hidden=False) for length in (128, 512))
    assert logits_long >= 3 * logits_short, (logits_short, logits_long)
    small, large = (peak_extra_bytes(256, chunk, hidden=True) for chunk in (16, 64))
    assert large >= 2.5 * (small - 2 * VOCAB * HIDDEN * 4), (small, large)  # 4× the chunk: the buffers grow with it


@pytest.mark.gpu
def test_on_cuda_the_hidden_path_stays_within_its_bound_at_a_real_vocabulary() -> None:
    """Qwen2.5's 151,936 rows, 2 × 1024 tokens, hidden 896, bf16: the bound holds for torch.cuda's own allocator
    count, and the logits path needs more."""
    vocab, hidden, tokens, chunk = 151_936, 896, 1024, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    groups = (torch.arange(tokens, device="cuda") - 1).expand(2, tokens).clone()
    ids = torch.randint(0, vocab, (2, tokens), device="cuda", generator=gen)
    tables = PairTables(student_matched=torch.arange(0, vocab, 2), teacher_matched=torch.arange(1, vocab, 2),
                        student_bins=torch.randint(0, 256, (vocab,)), teacher_bins=torch.randint(0, 256, (vocab,)),
                        shared_bins=torch.ones(NUM_BINS, dtype=torch.bool)).to("cuda")  # fmt: skip
    batch = AlignedBatch(ids, ids.clone(), groups, groups.clone(), tables, AlignmentStats.combine([]))
    weights = [torch.randn(vocab, hidden, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.05 for _ in "st"]
    states = [torch.randn(2, tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in "st"]
    weights[0].requires_grad_()
    states[0].requires_grad_()
    peaks = {}
    for path in ("hidden", "logits"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        if path == "hidden":
            student = HiddenLogits(states[0], OutputHead(weights[0], None), rows_per_block=chunk)
            teacher = HiddenLogits(states[1], OutputHead(weights[1], None), rows_per_block=chunk)
        else:
            student, teacher = states[0] @ weights[0].T, states[1] @ weights[1].T
        loss, _ = cross_tokenizer_loss(student, teacher, batch, LossConfig(chunk_groups=chunk))  # type: ignore[arg-type]
        loss.backward()
        del loss, student, teacher
        weights[0].grad, states[0].grad = None, None
        peaks[path] = torch.cuda.max_memory_allocated() - before
    bound = hidden_path_bound(chunk, vocab, vocab, student_hidden=hidden, teacher_hidden=hidden, tokens=2 * tokens)
    assert peaks["hidden"] <= bound and peaks["hidden"] < peaks["logits"], (peaks, bound)
