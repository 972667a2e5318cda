"""The fused CPU kernels against the composed torch path: values and gradients on random batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alignment import AlignmentStats
from gold.config import LossConfig
from gold.data.prefix_classes import PrefixClasses
from gold.losses import AlignedBatch, NonFiniteLossError, PairTables, cross_tokenizer_loss, fused
from gold.losses.byte_marginal import NUM_BINS
from gold.losses.fast_math import FASTMATH, fexp, flog
from gold.losses.fused import fused_applies, fused_row_terms
from tests.gold.losses.test_composite import logits_for, make_batch
from tests.reference import reference_group_rows, reference_hybrid

STUDENT_VOCAB, TEACHER_VOCAB = 37, 29


def random_batch(seed: int) -> AlignedBatch:
    """Three examples: prompts of different lengths, groups of 1-3 tokens on either side, padding, and
    an example without any group; a random partial vocabulary map (one student id matched twice)."""
    gen = torch.Generator().manual_seed(seed)
    # per example: (prompt length, group sizes per side)
    layout = [(2, [1, 2, 1, 3, 1], [2, 1, 1, 1, 2]), (1, [1, 1], [1, 3]), (3, [], [])]
    s_ids, t_ids, s_groups, t_groups = [], [], [], []
    for prompt, s_sizes, t_sizes in layout:
        for sizes, ids, groups, vocab in ((s_sizes, s_ids, s_groups, STUDENT_VOCAB),
                                          (t_sizes, t_ids, t_groups, TEACHER_VOCAB)):  # fmt: skip
            tokens = [-1] * prompt + [g for g, size in enumerate(sizes) for _ in range(size)]
            groups.append(tokens)
            ids.append(torch.randint(0, vocab, (len(tokens),), generator=gen).tolist())
    tables = PairTables(
        student_matched=torch.tensor([0, 3, 4, 7, 9, 12, 20, 21, 30, 3]),
        teacher_matched=torch.tensor([1, 2, 5, 6, 8, 11, 15, 16, 28, 27]),
        student_bins=torch.randint(0, NUM_BINS, (STUDENT_VOCAB,), generator=gen),
        teacher_bins=torch.randint(0, NUM_BINS, (TEACHER_VOCAB,), generator=gen),
        shared_bins=torch.ones(NUM_BINS, dtype=torch.bool),
        prefix_classes=PrefixClasses(  # random classes: the projection term's code paths, not its meaning
            student=torch.randint(0, TEACHER_VOCAB + 2, (STUDENT_VOCAB,), generator=gen),
            teacher=torch.randint(0, TEACHER_VOCAB + 2, (TEACHER_VOCAB,), generator=gen),
            shared=torch.ones(TEACHER_VOCAB + 2, dtype=torch.bool),
        ),
    )
    return AlignedBatch(_pad(s_ids, 0), _pad(t_ids, 0), _pad(s_groups, -1), _pad(t_groups, -1), tables,
                        AlignmentStats.combine([]))  # fmt: skip


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows) + 1
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def both_paths(batch: AlignedBatch, config_kwargs: dict, seed: int, **kwargs: object) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(*batch.student_ids.shape, STUDENT_VOCAB, generator=gen)).requires_grad_()
    teacher = 3 * torch.randn(*batch.teacher_ids.shape, TEACHER_VOCAB, generator=gen)
    out = []
    for implementation in ("fused", "torch"):
        config = LossConfig(implementation=implementation, chunk_groups=None, **config_kwargs)
        loss, metrics = cross_tokenizer_loss(student, teacher, batch, config, **kwargs)
        (grad,) = torch.autograd.grad(loss, student)
        out.append((loss, metrics, grad))
    return out


CONFIGS = {
    "hybrid-mass-jsd": {"beta": 0.5},
    "hybrid-forward-kl-fixed": {
        "beta": 0.0,
        "hybrid_weighting": "fixed",
        "hybrid_matched_weight": 0.7,
        "hybrid_unmatched_weight": 0.2,
    },
    "hybrid-reverse-kl": {"beta": 1.0},
    "uld": {"hybrid_weight": 0.0, "uld_weight": 1.0},
    "both-with-temperatures": {"uld_weight": 0.5, "beta": 0.3, "student_temperature": 0.7, "teacher_temperature": 1.3},
    "with-span-and-byte-marginal": {"span_weight": 0.4, "byte_marginal_weight": 0.3, "beta": 0.2},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_equals_torch_path_on_values_and_gradients(name: str, seed: int) -> None:
    batch = random_batch(seed)
    (loss_f, metrics_f, grad_f), (loss_t, metrics_t, grad_t) = both_paths(batch, CONFIGS[name], seed + 10)
    torch.testing.assert_close(loss_f, loss_t, atol=1e-6, rtol=1e-5)
    assert metrics_f.keys() == metrics_t.keys()
    for key in metrics_t:
        assert metrics_f[key] == pytest.approx(metrics_t[key], rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(grad_f, grad_t, atol=1e-6, rtol=1e-4)
    assert grad_f.abs().sum() > 0
    # rows that predict no grouped token (prompt tail excepted) get exactly no gradient
    assert (grad_f[2] == 0).all() and (grad_f[0, -1] == 0).all()


def test_fused_normalizes_by_the_global_number_of_groups() -> None:
    batch = random_batch(3)
    (loss_f, _, grad_f), (loss_t, _, grad_t) = both_paths(batch, {"uld_weight": 0.5}, 4, num_items_in_batch=40)
    torch.testing.assert_close(loss_f, loss_t, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_f, grad_t, atol=1e-7, rtol=1e-4)


def test_both_paths_take_the_global_count_as_a_tensor_and_name_a_group_count_mismatch() -> None:
    batch = random_batch(5)
    (loss_f, _, grad_f), (loss_t, _, grad_t) = both_paths(batch, {}, 6, num_items_in_batch=torch.tensor(40.0))
    (loss_int, _, grad_int), _ = both_paths(batch, {}, 6, num_items_in_batch=40)
    torch.testing.assert_close(loss_f, loss_t, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_f, grad_t, atol=1e-7, rtol=1e-4)
    assert loss_f.item() == loss_int.item()
    # the kernels' vectorized row sums start where the gradient buffer happens to be aligned, so two runs on
    # two threads can differ in the last bit of tiny entries (seen: 9 of 1,221 by 2e-16); nothing more
    torch.testing.assert_close(grad_f, grad_int, atol=1e-12, rtol=1e-6)
    teacher_groups = batch.teacher_groups.clone()
    teacher_groups[1][teacher_groups[1] == 1] = -1  # example 1's teacher side loses its second group
    mismatched = AlignedBatch(batch.student_ids, batch.teacher_ids, batch.student_groups, teacher_groups,
                              batch.tables, batch.stats)  # fmt: skip
    student, teacher = (
        torch.randn(*batch.student_ids.shape, STUDENT_VOCAB),
        torch.randn(*batch.teacher_ids.shape, TEACHER_VOCAB),
    )
    for implementation in ("fused", "torch"):
        with pytest.raises(ValueError, match="student side has 7 groups and the teacher side 6"):
            cross_tokenizer_loss(student, teacher, mismatched, LossConfig(implementation=implementation))


def test_fused_on_a_real_pair_equals_torch_path() -> None:
    batch = make_batch("qwen2.5", "llama-3", student_rows=151936, teacher_rows=128256)
    student = logits_for(batch.student_ids, 151936, 3).float().requires_grad_()
    teacher = logits_for(batch.teacher_ids, 128256, 4).float()
    results = []
    for implementation in ("fused", "torch"):
        config = LossConfig(uld_weight=0.5, implementation=implementation)
        loss, metrics = cross_tokenizer_loss(student, teacher, batch, config)
        results.append((loss, metrics, torch.autograd.grad(loss, student)[0]))
    (loss_f, metrics_f, grad_f), (loss_t, metrics_t, grad_t) = results
    torch.testing.assert_close(loss_f, loss_t, atol=1e-6, rtol=1e-5)
    assert metrics_f["hybrid/teacher_matched_mass"] == pytest.approx(metrics_t["hybrid/teacher_matched_mass"], 1e-5)
    # Both paths bucket the same probabilities at bfloat16 resolution, but torch's exp and the kernels'
    # differ in the last bit, so a value within an ulp of a level boundary can land in the neighbouring
    # level and take that level's ULD sign: a handful of 7.3M entries, nothing systematic.
    mismatched = ~torch.isclose(grad_f, grad_t, atol=1e-9, rtol=1e-3)
    assert int(mismatched.sum()) <= 2e-6 * grad_t.numel()
    assert float((grad_f - grad_t).norm()) <= 1e-2 * float(grad_t.norm())


def test_backward_scales_with_the_incoming_gradient_and_no_grad_gives_the_same_values() -> None:
    batch = random_batch(5)
    gen = torch.Generator().manual_seed(6)
    student = torch.randn(*batch.student_ids.shape, STUDENT_VOCAB, generator=gen).requires_grad_()
    teacher = torch.randn(*batch.teacher_ids.shape, TEACHER_VOCAB, generator=gen)
    config = LossConfig(uld_weight=1.0, implementation="fused")
    loss, _ = cross_tokenizer_loss(student, teacher, batch, config)
    (grad,) = torch.autograd.grad(loss, student)
    (grad_tripled,) = torch.autograd.grad(3 * cross_tokenizer_loss(student, teacher, batch, config)[0], student)
    torch.testing.assert_close(grad_tripled, 3 * grad)
    with torch.no_grad():
        no_grad_loss, _ = cross_tokenizer_loss(student, teacher, batch, config)
    torch.testing.assert_close(no_grad_loss, loss.detach())


def test_identity_property_through_the_fused_path() -> None:
    """One tokenizer on both sides: every group is one token and every column matched, so the hybrid
    is the JSD of the two log-softmax rows (the "other" bucket and the ULD part are empty)."""
    batch = random_batch(7)
    size = STUDENT_VOCAB
    ids = torch.arange(size)
    tables = PairTables(ids, ids, torch.zeros(size, dtype=torch.long), torch.zeros(size, dtype=torch.long),
                        torch.ones(NUM_BINS, dtype=torch.bool))  # fmt: skip
    one_token = torch.where(batch.student_groups >= 0, torch.cumsum(batch.student_groups >= 0, 1) - 1, -1)
    same = AlignedBatch(batch.student_ids, batch.student_ids, one_token, one_token, tables, batch.stats)
    gen = torch.Generator().manual_seed(8)
    student = torch.randn(*same.student_ids.shape, size, generator=gen)
    teacher = torch.randn(*same.student_ids.shape, size, generator=gen)
    loss, _ = cross_tokenizer_loss(student, teacher, same, LossConfig(beta=0.4, implementation="fused"))
    mask = one_token[:, 1:] >= 0
    s_rows = student[:, :-1][mask].double().log_softmax(-1)
    t_rows = teacher[:, :-1][mask].double().log_softmax(-1)
    mixture = torch.logaddexp(t_rows + np.log(0.4), s_rows + np.log(0.6))
    jsd = 0.4 * (t_rows.exp() * (t_rows - mixture)).sum(-1) + 0.6 * (s_rows.exp() * (s_rows - mixture)).sum(-1)
    torch.testing.assert_close(loss.double(), jsd.mean(), atol=1e-6, rtol=1e-5)


def test_errors_name_the_problem() -> None:
    batch = random_batch(9)
    student = torch.randn(*batch.student_ids.shape, STUDENT_VOCAB, dtype=torch.float64)
    teacher = torch.randn(*batch.teacher_ids.shape, TEACHER_VOCAB)
    with pytest.raises(ValueError, match=r"torch\.float64"):
        cross_tokenizer_loss(student, teacher, batch, LossConfig(implementation="fused"))
    with pytest.raises(ValueError, match="'exact'"):
        fused_applies(LossConfig(implementation="fused", uld_method="exact"), student.float(), teacher)
    assert not fused_applies(LossConfig(), student, teacher)  # auto: float64 takes the torch path
    poisoned = student.float()
    poisoned[0, 3, 5] = float("nan")
    with pytest.raises(NonFiniteLossError, match="'hybrid'"):
        cross_tokenizer_loss(poisoned, teacher, batch, LossConfig(implementation="fused"), step=12)
    early = batch.student_groups.clone()
    early[1, 0] = 0
    shifted = AlignedBatch(batch.student_ids, batch.teacher_ids, early, batch.teacher_groups, batch.tables, batch.stats)
    with pytest.raises(ValueError, match="position 0"):
        fused_row_terms(student.float(), teacher, shifted, LossConfig(implementation="fused"))


def test_a_batch_without_groups_gives_zero_loss_with_a_graph() -> None:
    batch = random_batch(0)
    empty = AlignedBatch(batch.student_ids, batch.teacher_ids, torch.full_like(batch.student_groups, -1),
                         torch.full_like(batch.teacher_groups, -1), batch.tables, batch.stats)  # fmt: skip
    student = torch.randn(*batch.student_ids.shape, STUDENT_VOCAB, requires_grad=True)
    loss, _ = cross_tokenizer_loss(student, torch.randn(*batch.teacher_ids.shape, TEACHER_VOCAB), empty, LossConfig())
    loss.backward()
    assert float(loss.detach()) == 0.0 and (student.grad == 0).all()


def test_fast_exp_and_log_are_accurate_and_keep_special_values() -> None:
    from numba import njit

    @njit(fastmath=FASTMATH)
    def apply(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        exps, logs = np.empty_like(values), np.empty_like(values)
        for i in range(values.shape[0]):
            exps[i] = fexp(values[i])
            logs[i] = flog(abs(values[i]) + np.float32(1.2e-38))
        return exps, logs

    values = np.linspace(-87, 88, 200_001, dtype=np.float32)
    exps, logs = apply(values)
    exact = np.exp(values.astype(np.float64))
    assert np.max(np.abs(exps - exact) / exact) < 5e-7
    log_exact = np.log(np.abs(values.astype(np.float64)) + 1.2e-38)
    assert np.max(np.abs(logs - log_exact) / np.maximum(np.abs(log_exact), 1.0)) < 3e-7
    special, _ = apply(np.array([-np.inf, -100.0, np.nan, 0.0], dtype=np.float32))
    assert special[0] == 0.0 and special[1] == 0.0 and np.isnan(special[2]) and special[3] == 1.0


def test_cached_kernels_are_dropped_when_an_inlined_source_changes(tmp_path: Path) -> None:
    source = Path(fused.__file__).parent
    for name in fused.KERNEL_SOURCES:
        (tmp_path / name).write_bytes((source / name).read_bytes())
    cached = tmp_path / "__pycache__" / "fused_kernels.group_terms-120.py311.nbi"
    cached.parent.mkdir()
    cached.write_bytes(b"old machine code")
    assert fused.purge_stale_kernel_cache(tmp_path)  # no digest yet: whatever is cached is suspect
    assert not cached.exists()
    cached.write_bytes(b"fresh machine code")
    assert not fused.purge_stale_kernel_cache(tmp_path) and cached.exists()
    (tmp_path / "fused_rows.py").write_text((source / "fused_rows.py").read_text() + "\n# edited\n")
    assert fused.purge_stale_kernel_cache(tmp_path) and not cached.exists()


def test_fused_hybrid_equals_the_float64_reference_loops() -> None:
    """Straight against ``tests/reference.py``: group rows by explicit loops, the hybrid row by row. The
    vocabulary map is one-to-one here, as :class:`alignment.VocabMap` builds it (the reference's "other"
    bucket, ``1 - Σ matched``, would count a student id matched twice twice)."""
    duplicated = random_batch(11)
    tables = duplicated.tables
    one_to_one = PairTables(tables.student_matched[:-1], tables.teacher_matched[:-1], tables.student_bins,
                            tables.teacher_bins, tables.shared_bins)  # fmt: skip
    batch = AlignedBatch(duplicated.student_ids, duplicated.teacher_ids, duplicated.student_groups,
                         duplicated.teacher_groups, one_to_one, duplicated.stats)  # fmt: skip
    gen = torch.Generator().manual_seed(12)
    student = (2 * torch.randn(*batch.student_ids.shape, STUDENT_VOCAB, generator=gen)).requires_grad_()
    teacher = 2 * torch.randn(*batch.teacher_ids.shape, TEACHER_VOCAB, generator=gen)
    s_matched, t_matched = batch.tables.student_matched.tolist(), batch.tables.teacher_matched.tolist()

    def reference(student_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s_rows = reference_group_rows(student_logits, batch.student_ids, batch.student_groups)
        t_rows = reference_group_rows(teacher.double(), batch.teacher_ids, batch.teacher_groups)
        return reference_hybrid(s_rows, t_rows, s_matched, t_matched, 0.5)

    loss, metrics = cross_tokenizer_loss(student, teacher, batch, LossConfig(beta=0.5, implementation="fused"))
    matched, unmatched, mass = reference(student.detach().double())
    expected = (mass * matched + (1 - mass) * unmatched).mean()
    # the kernels' ULD is quantized: within 2^-8 · (Σ p_S + Σ p_T) ≤ 2^-7 of the exact one, per row
    assert abs(float(loss.detach()) - float(expected)) <= 2**-7 * float((1 - mass).mean())
    assert metrics["hybrid/matched_jsd"] == pytest.approx(float(matched.mean()), rel=1e-5)
    assert metrics["hybrid/teacher_matched_mass"] == pytest.approx(float(mass.mean()), rel=1e-5)

    # gradients of the matched part (fixed weights 1, 0): the float64 loops' autograd
    only_matched = LossConfig(beta=0.5, hybrid_weighting="fixed", hybrid_matched_weight=1.0,
                              hybrid_unmatched_weight=0.0, implementation="fused")  # fmt: skip
    (grad,) = torch.autograd.grad(cross_tokenizer_loss(student, teacher, batch, only_matched)[0], student)
    student64 = student.detach().double().requires_grad_()
    (grad_reference,) = torch.autograd.grad(reference(student64)[0].mean(), student64)
    torch.testing.assert_close(grad.double(), grad_reference, atol=1e-7, rtol=1e-4)
