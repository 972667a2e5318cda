"""Sparse teacher rows (top-K + actual token + tail bucket): K = V is the dense teacher exactly, the fused path equals
the torch path, the torch path equals the slow reference, and with small K the hybrid stays within the stated bound,
which shrinks as K grows."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gold.config import LossConfig
from gold.losses import AlignedBatch, cross_tokenizer_loss
from gold.losses.byte_marginal import NO_BYTE
from gold.losses.hybrid import hybrid, sparse_error_bound
from gold.losses.uld import uld
from gold.teacher import SparseRows, dense_rows, top_k_rows
from tests.gold.losses.test_fused import STUDENT_VOCAB, TEACHER_VOCAB, random_batch
from tests.reference import reference_sparse_hybrid


def top_k_of_logits(logits: torch.Tensor, k: int, actual: torch.Tensor | None = None) -> SparseRows:
    """What a server with ``prompt_logprobs=k`` answers for these logits."""
    return top_k_rows(torch.log_softmax(logits.float(), -1), k, actual)


def sparse_batch(batch: AlignedBatch) -> AlignedBatch:
    """The batch's tables with one more teacher column, the tail (no first byte, no partner)."""
    bins = torch.cat([batch.tables.teacher_bins, torch.tensor([NO_BYTE])])
    tables = dataclasses.replace(batch.tables, teacher_bins=bins, teacher_tail=TEACHER_VOCAB)
    return dataclasses.replace(batch, tables=tables)


def next_ids(batch: AlignedBatch) -> torch.Tensor:
    """(B, L) the id each teacher column predicts (the next one; the last column: id 0)."""
    return torch.cat([batch.teacher_ids[:, 1:], torch.zeros_like(batch.teacher_ids[:, :1])], dim=1)


def logits_pair(batch: AlignedBatch, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(*batch.student_ids.shape, STUDENT_VOCAB, generator=gen)).requires_grad_()
    teacher = 3 * torch.randn(*batch.teacher_ids.shape, TEACHER_VOCAB, generator=gen)
    return student, teacher


def loss_and_grad(student, teacher, batch, implementation, **config):
    config = LossConfig(implementation=implementation, chunk_groups=None, **config)
    loss, metrics = cross_tokenizer_loss(student, teacher, batch, config)
    (grad,) = torch.autograd.grad(loss, student)
    return loss, metrics, grad


CONFIGS = {
    "hybrid-jsd": {"beta": 0.5},
    "hybrid-forward-kl": {"beta": 0.0},
    "hybrid-reverse-kl-fixed": {
        "beta": 1.0,
        "hybrid_weighting": "fixed",
        "hybrid_matched_weight": 0.6,
        "hybrid_unmatched_weight": 0.3,
    },
    "uld-span-byte-marginal": {
        "hybrid_weight": 0.0,
        "uld_weight": 1.0,
        "span_weight": 0.5,
        "byte_marginal_weight": 0.5,
        "projection_weight": 0.5,
        "beta": 0.3,
    },
}


def test_dense_rows_of_every_column_are_the_log_softmax_with_an_empty_tail() -> None:
    logits = torch.randn(2, 3, TEACHER_VOCAB)
    dense = dense_rows(top_k_of_logits(logits, TEACHER_VOCAB), TEACHER_VOCAB)
    torch.testing.assert_close(dense[..., :-1], torch.log_softmax(logits, -1))
    assert torch.isneginf(dense[..., -1]).all()
    small = dense_rows(top_k_of_logits(logits, 3), TEACHER_VOCAB)
    assert (torch.isfinite(small[..., :-1]).sum(-1) == 3).all()
    torch.testing.assert_close(torch.logsumexp(small, -1), torch.zeros(2, 3), atol=1e-6, rtol=0)


def test_ids_outside_the_rows_stay_in_the_tail_and_bad_shapes_are_refused() -> None:
    rows = SparseRows(torch.tensor([[[0, 5, -1]]]), torch.tensor([[[-1.0, -2.0, float("-inf")]]]))
    dense = dense_rows(rows, 4)  # id 5 has no row: its mass stays in the tail
    assert dense[0, 0, 0] == -1.0 and torch.isneginf(dense[0, 0, 1:4]).all()
    assert dense[0, 0, 4].exp() == pytest.approx(1 - torch.tensor(-1.0).exp().item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"\(B, L, K\)"):
        SparseRows(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 4))


@pytest.mark.parametrize("implementation", ["fused", "torch"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_column_known_equals_the_dense_teacher(name: str, implementation: str) -> None:
    batch = random_batch(0)
    student, teacher = logits_pair(batch, 1)
    dense_loss, dense_metrics, dense_grad = loss_and_grad(student, teacher, batch, implementation, **CONFIGS[name])
    sparse = dense_rows(top_k_of_logits(teacher, TEACHER_VOCAB), TEACHER_VOCAB)
    loss, metrics, grad = loss_and_grad(student, sparse, sparse_batch(batch), implementation, **CONFIGS[name])
    torch.testing.assert_close(loss, dense_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, dense_grad, rtol=1e-4, atol=1e-6)
    for key in ("loss/hybrid", "loss/uld", "loss/span", "loss/byte_marginal", "loss/projection",
                "hybrid/teacher_matched_mass"):  # fmt: skip
        if key in dense_metrics:
            assert metrics[key] == pytest.approx(dense_metrics[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_path_equals_torch_path_on_sparse_rows(name: str, k: int) -> None:
    batch = random_batch(2)
    student, teacher = logits_pair(batch, 3)
    sparse = dense_rows(top_k_of_logits(teacher, k, next_ids(batch)), TEACHER_VOCAB)
    fused_loss, fused_metrics, fused_grad = loss_and_grad(
        student, sparse, sparse_batch(batch), "fused", **CONFIGS[name]
    )
    torch_loss, torch_metrics, torch_grad = loss_and_grad(
        student, sparse, sparse_batch(batch), "torch", **CONFIGS[name]
    )
    torch.testing.assert_close(fused_loss, torch_loss, rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(fused_grad, torch_grad, rtol=2e-3, atol=2e-5)
    for key in ("loss/hybrid", "loss/uld", "hybrid/teacher_matched_mass", "hybrid/matched_jsd"):
        if key in torch_metrics:
            assert fused_metrics[key] == pytest.approx(torch_metrics[key], rel=1e-4, abs=1e-6), key


def chain_rule_rows(rows: int, vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    """(R, V) rows like a group's: a log-softmax row plus a prefix log-probability (so they sum to less than 1)."""
    gen = torch.Generator().manual_seed(seed)
    prefix = -torch.rand(rows, 1, generator=gen)
    return torch.log_softmax(scale * torch.randn(rows, vocab, generator=gen), -1) + prefix


MATCHED = ([0, 3, 4, 7, 9, 12, 20, 21, 30], [1, 2, 5, 6, 8, 11, 15, 16, 28])


def sparse_of(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Chain-rule rows reduced to their top-k columns (prefix kept) with the rest of the row's mass as the tail."""
    prefix = torch.logsumexp(rows, -1, keepdim=True)
    dense = dense_rows(top_k_of_logits((rows - prefix)[:, None], k), rows.shape[-1])[:, 0]
    return dense + prefix


def test_the_torch_path_equals_the_reference_on_sparse_rows() -> None:
    student = chain_rule_rows(6, STUDENT_VOCAB, 0).requires_grad_()
    teacher = sparse_of(chain_rule_rows(6, TEACHER_VOCAB, 1), 4)
    s_ids, t_ids = (torch.tensor(m) for m in MATCHED)
    for beta in (0.0, 0.4, 1.0):
        parts = hybrid(student, teacher, student_matched=s_ids, teacher_matched=t_ids, beta=beta,
                       distance=uld, teacher_tail=TEACHER_VOCAB,
                       student_log_totals=torch.logsumexp(student, -1),
                       teacher_log_totals=torch.logsumexp(teacher, -1))  # fmt: skip
        matched, unmatched, mass = reference_sparse_hybrid(student, teacher, *MATCHED, TEACHER_VOCAB, beta)
        torch.testing.assert_close(parts.matched, matched, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(parts.unmatched, unmatched, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(parts.teacher_matched_mass, mass, rtol=1e-5, atol=1e-6)
        (grad,) = torch.autograd.grad(parts.matched.sum(), student)
        (reference_grad,) = torch.autograd.grad(matched.sum(), student)
        torch.testing.assert_close(grad, reference_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weights", ["mass", (0.7, 0.3)])
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_small_k_stays_within_the_bound_and_the_error_shrinks_as_k_grows(beta: float, weights) -> None:

    s_ids, t_ids = (torch.tensor(m) for m in MATCHED)
    errors = []
    for seed, scale in ((0, 1.0), (1, 3.0), (2, 6.0)):  # near-uniform to peaked teachers
        student = chain_rule_rows(64, STUDENT_VOCAB, 10 + seed, scale)
        teacher = chain_rule_rows(64, TEACHER_VOCAB, 20 + seed, scale)
        options = dict(student_matched=s_ids, teacher_matched=t_ids, beta=beta, weights=weights, distance=uld,
                       student_log_totals=torch.logsumexp(student, -1))  # fmt: skip
        exact = hybrid(student, teacher, teacher_log_totals=torch.logsumexp(teacher, -1), **options).loss
        per_k = []
        for k in (1, 2, 4, 8, 16, TEACHER_VOCAB):
            sparse = sparse_of(teacher, k)
            totals = torch.logsumexp(teacher, -1)
            approx = hybrid(student, sparse, teacher_tail=TEACHER_VOCAB, teacher_log_totals=totals, **options).loss
            tau = sparse[:, TEACHER_VOCAB].exp()
            unknown = torch.isneginf(sparse[:, t_ids])
            sigma = (student[:, s_ids].exp() * unknown).sum(-1)
            bound = sparse_error_bound(tau, sigma, beta=beta, weights=weights)
            error = (approx - exact).abs()
            assert (error <= bound + 1e-5).all(), (k, float((error - bound).max()))
            per_k.append(float(error.mean()))
        assert per_k[-1] < 1e-5  # K = V: exact
        errors.append(per_k)
    mean = torch.tensor(errors).mean(0)
    assert mean[0] > mean[2] > mean[4] > mean[5], mean.tolist()


def test_the_bound_is_refused_for_a_plain_kl() -> None:
    with pytest.raises(ValueError, match="beta in \\(0, 1\\)"):
        sparse_error_bound(torch.zeros(1), torch.zeros(1), beta=0.0)


@pytest.mark.parametrize("implementation", ["fused", "torch"])
def test_forward_kl_stays_finite_when_the_tail_is_all_unmatched(implementation: str) -> None:
    """Every matched teacher column known, some unmatched mass in the tail: the tail belongs to "other" on the
    teacher's side, which the student's unmatched mass faces (a tail outcome of its own would face nothing: KL = ∞)."""
    batch = sparse_batch(random_batch(4))
    student, teacher = logits_pair(batch, 5)
    teacher = teacher.clone()
    teacher[..., batch.tables.teacher_matched] += 6.0  # the matched columns are the teacher's top ones
    sparse = dense_rows(top_k_of_logits(teacher, len(set(batch.tables.teacher_matched.tolist())) + 2), TEACHER_VOCAB)
    assert (sparse[..., TEACHER_VOCAB].exp() > 1e-6).float().mean() > 0.9  # unmatched mass in nearly every tail
    loss, _, grad = loss_and_grad(student, sparse, batch, implementation, beta=0.0)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and 0 < float(loss.detach()) < 10


@pytest.mark.parametrize("k", [2, 6])
def test_fused_path_equals_torch_path_on_sparse_rows_with_shifted_groups(k: int) -> None:
    from tests.gold.losses.test_shifted import _shifted_batch

    batch = sparse_batch(_shifted_batch(6))
    student, teacher = logits_pair(batch, 7)
    sparse = dense_rows(top_k_of_logits(teacher, k, next_ids(batch)), TEACHER_VOCAB)
    for beta in (0.0, 0.5):
        fused_loss, _, fused_grad = loss_and_grad(student, sparse, batch, "fused", beta=beta, uld_weight=0.5)
        torch_loss, _, torch_grad = loss_and_grad(student, sparse, batch, "torch", beta=beta, uld_weight=0.5)
        torch.testing.assert_close(fused_loss, torch_loss, rtol=2e-4, atol=1e-5)
        torch.testing.assert_close(fused_grad, torch_grad, rtol=2e-3, atol=2e-5)


def test_without_totals_the_tail_is_counted_once() -> None:
    student = chain_rule_rows(8, STUDENT_VOCAB, 3)
    teacher = sparse_of(chain_rule_rows(8, TEACHER_VOCAB, 4), 3)
    s_ids, t_ids = (torch.tensor(m) for m in MATCHED)
    options = dict(student_matched=s_ids, teacher_matched=t_ids, beta=0.5, distance=uld, teacher_tail=TEACHER_VOCAB,
                   student_log_totals=torch.logsumexp(student, -1))  # fmt: skip
    given = hybrid(student, teacher, teacher_log_totals=torch.logsumexp(teacher, -1), **options)
    default = hybrid(student, teacher, **options)
    torch.testing.assert_close(default.loss, given.loss)


@pytest.mark.parametrize("k", [1, 4, 12])
def test_uld_alone_leaves_the_tail_out_and_moves_by_at_most_the_tail(k: int) -> None:
    teacher_rows = chain_rule_rows(32, TEACHER_VOCAB, 8)
    student_rows = chain_rule_rows(32, STUDENT_VOCAB, 9)
    sparse = sparse_of(teacher_rows, k)
    exact = uld(student_rows, teacher_rows)
    approx = uld(student_rows, sparse[:, :TEACHER_VOCAB])
    tail = sparse[:, TEACHER_VOCAB].exp()
    assert ((approx - exact).abs() <= tail + 1e-6).all()
    batch = sparse_batch(random_batch(8))
    student, teacher = logits_pair(batch, 9)
    rows = dense_rows(top_k_of_logits(teacher, k, next_ids(batch)), TEACHER_VOCAB)
    config = {"hybrid_weight": 0.0, "uld_weight": 1.0, "uld_method": "exact"}
    sparse_loss, _, _ = loss_and_grad(student, rows, batch, "torch", **config)
    dense_loss, _, _ = loss_and_grad(student, teacher, random_batch(8), "torch", **config)
    assert abs(float(sparse_loss - dense_loss)) <= float(rows[..., TEACHER_VOCAB].exp().max()) + 1e-6
    fused_loss, _, fused_grad = loss_and_grad(student, rows, batch, "fused", hybrid_weight=0.0, uld_weight=1.0)
    quantized, _, quantized_grad = loss_and_grad(student, rows, batch, "torch", hybrid_weight=0.0, uld_weight=1.0,
                                                 uld_method="quantized")  # fmt: skip
    torch.testing.assert_close(fused_loss, quantized, rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(fused_grad, quantized_grad, rtol=2e-3, atol=2e-5)
