"""Shifted groups (last tokens starting at different bytes) pair the columns that spell the same string: the pairs
against a brute force over strings, the loss against the float64 reference with each group's own pairs, both
paths on values and gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from alignment import align_texts, token_bytes_table
from alignment.shifted import ShiftedPairs, group_shifts
from gold.config import LossConfig
from gold.losses import AlignedBatch, GroupShifts, cross_tokenizer_loss
from tests.conftest import zoo
from tests.gold.losses.test_fused import STUDENT_VOCAB, TEACHER_VOCAB, random_batch
from tests.reference import reference_group_rows, reference_hybrid

TEXTS = [
    "12345 + 678 = 13023, and 99999 - 1 = 99998.",
    "東京は日本の首都です。人口は約1400万人。",
    "    def fib(n):\n        return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Emoji: 👍🏽 👩‍💻 🇫🇷 — naïve café.",
]
PAIRS = [("qwen2.5", "llama-3"), ("llama-3", "gemma-3"), ("smollm2", "mistral-v1"), ("gemma-3", "deepseek")]


def _bytes_of(tokenizer: object) -> list[bytes | None]:
    """Canonical bytes of each text token (None for specials, unknown and empty ids)."""
    table = token_bytes_table(tokenizer)
    buffer = table.buffer.tobytes()
    out: list[bytes | None] = []
    for i in range(table.vocab_size):
        piece = buffer[table.offsets[i] : table.offsets[i + 1]]
        out.append(piece if table.known_mask[i] and not table.special_mask[i] and piece else None)
    return out


def _last_start(groups: np.ndarray, spans: np.ndarray, group: int) -> int:
    return int(spans[np.flatnonzero(groups == group)[-1], 0])


def test_the_123_group_pairs_the_same_strings() -> None:
    student, teacher = zoo("qwen2.5"), zoo("llama-3")  # 1·2·3 against 123
    alignment = align_texts(student, teacher, "x = 123")
    (shift,) = [s for s in group_shifts(alignment) if alignment.group_text(s.group) == b"123"]
    assert shift.shift == b"12" and shift.student_ahead
    student_ids, teacher_ids = ShiftedPairs.build(student, teacher).pairs(b"12", student_ahead=True)
    pairs = {(student.convert_ids_to_tokens(int(s)), teacher.convert_ids_to_tokens(int(t)))
             for s, t in zip(student_ids, teacher_ids, strict=True)}  # fmt: skip
    assert ("3", "123") in pairs and ("4", "124") in pairs  # the observed columns, and another number
    members = alignment.student_ids[alignment.student_groups == shift.group]
    observed_teacher = alignment.teacher_ids[alignment.teacher_groups == shift.group][-1]
    assert (int(members[-1]), int(observed_teacher)) in set(
        zip(student_ids.tolist(), teacher_ids.tolist(), strict=True)
    )
    # the teacher's `1` and `12` are strings the student row (which has spelled `12` already) cannot continue to
    unmatched = {teacher.convert_tokens_to_ids(t) for t in ("1", "12")}
    assert not unmatched & set(teacher_ids.tolist())


@pytest.mark.parametrize(("student_name", "teacher_name"), PAIRS)
def test_pairs_equal_a_brute_force_over_strings(student_name: str, teacher_name: str) -> None:
    student, teacher = zoo(student_name), zoo(teacher_name)
    student_bytes, teacher_bytes = _bytes_of(student), _bytes_of(teacher)
    pairs = ShiftedPairs.build(student, teacher)
    checked = 0
    for text in TEXTS:
        alignment = align_texts(student, teacher, text)
        for shifted in group_shifts(alignment):
            start = int(alignment.group_bytes[shifted.group, 0])
            text_bytes = alignment.text_bytes
            student_prefix = text_bytes[start : _last_start(alignment.student_groups, alignment.student_spans,
                                                            shifted.group)]  # fmt: skip
            teacher_prefix = text_bytes[start : _last_start(alignment.teacher_groups, alignment.teacher_spans,
                                                            shifted.group)]  # fmt: skip
            teacher_strings = {teacher_prefix + b for b in teacher_bytes if b is not None}
            expected = {(b, (student_prefix + b)[len(teacher_prefix) :]) for b in set(student_bytes)
                        if b is not None and student_prefix + b in teacher_strings}  # fmt: skip
            student_ids, teacher_ids = pairs.pairs(shifted.shift, student_ahead=shifted.student_ahead)
            found = {(student_bytes[s], teacher_bytes[t]) for s, t in zip(student_ids, teacher_ids, strict=True)}
            assert found == expected, (text, shifted)
            checked += 1
    assert checked >= 3  # every pair here splits some digits, characters or indentation differently


def test_identical_tokenizers_have_no_shifted_groups() -> None:
    tokenizer = zoo("llama-3")
    assert all(not group_shifts(align_texts(tokenizer, tokenizer, text)) for text in TEXTS)


def _shifted_batch(seed: int) -> AlignedBatch:
    """The random batch of test_fused with some groups given their own (one-to-one) column pairs."""
    batch = random_batch(seed)
    tables = batch.tables
    one_to_one = dataclasses.replace(tables, student_matched=tables.student_matched[:-1],
                                     teacher_matched=tables.teacher_matched[:-1])  # fmt: skip
    gen = torch.Generator().manual_seed(seed + 100)
    sets = []
    for size in (3, 6, 0):  # an empty set too: a shift no token pair spells
        sets.append(
            (torch.randperm(STUDENT_VOCAB, generator=gen)[:size], torch.randperm(TEACHER_VOCAB, generator=gen)[:size])
        )
    group_set = torch.full((batch.num_groups,), -1, dtype=torch.int64)
    group_set[[1, 3, 4, 6]] = torch.tensor([0, 1, 0, 2])
    shifts = GroupShifts(group_set, tuple(s for s, _ in sets), tuple(t for _, t in sets))
    return dataclasses.replace(batch, tables=one_to_one, shifts=shifts)


@pytest.mark.parametrize("implementation", ["fused", "torch"])
def test_the_loss_uses_each_groups_own_pairs(implementation: str) -> None:
    """Against the float64 reference loops, each group with its own pairs: values, and the gradient of the
    matched part (fixed weights 1, 0)."""
    batch = _shifted_batch(21)
    gen = torch.Generator().manual_seed(22)
    student = (2 * torch.randn(*batch.student_ids.shape, STUDENT_VOCAB, generator=gen)).requires_grad_()
    teacher = 2 * torch.randn(*batch.teacher_ids.shape, TEACHER_VOCAB, generator=gen)
    shifts = batch.shifts
    assert shifts is not None

    def reference(student_logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s_rows = reference_group_rows(student_logits, batch.student_ids, batch.student_groups)
        t_rows = reference_group_rows(teacher.double(), batch.teacher_ids, batch.teacher_groups)
        parts = []
        for g in range(s_rows.shape[0]):
            k = int(shifts.group_set[g])
            s_ids, t_ids = ((batch.tables.student_matched, batch.tables.teacher_matched) if k < 0
                            else (shifts.student_ids[k], shifts.teacher_ids[k]))  # fmt: skip
            parts.append(reference_hybrid(s_rows[g : g + 1], t_rows[g : g + 1], s_ids.tolist(), t_ids.tolist(), 0.5))
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))

    config = LossConfig(beta=0.5, implementation=implementation, chunk_groups=2)
    loss, metrics = cross_tokenizer_loss(student, teacher, batch, config)
    matched, unmatched, mass = reference(student.detach().double())
    expected = (mass * matched + (1 - mass) * unmatched).mean()
    # ULD is quantized on CPU: within 2^-7 of the exact one per row
    assert abs(float(loss.detach()) - float(expected)) <= 2**-7 * float((1 - mass).mean())
    assert metrics["hybrid/matched_jsd"] == pytest.approx(float(matched.mean()), rel=1e-5)
    assert metrics["hybrid/shifted_groups"] == pytest.approx(4 / batch.num_groups)
    shifted = shifts.group_set >= 0
    assert metrics["hybrid/shifted_mass_after"] == pytest.approx(float(mass[shifted].mean()), rel=1e-5)
    only_matched = dataclasses.replace(config, hybrid_weighting="fixed", hybrid_matched_weight=1.0,
                                       hybrid_unmatched_weight=0.0)  # fmt: skip
    (grad,) = torch.autograd.grad(cross_tokenizer_loss(student, teacher, batch, only_matched)[0], student)
    student64 = student.detach().double().requires_grad_()
    (grad_reference,) = torch.autograd.grad(reference(student64)[0].mean(), student64)
    torch.testing.assert_close(grad.double(), grad_reference, atol=1e-7, rtol=1e-4)


def test_shifted_matching_off_is_the_global_map_everywhere() -> None:
    batch = _shifted_batch(31)
    gen = torch.Generator().manual_seed(32)
    student = 2 * torch.randn(*batch.student_ids.shape, STUDENT_VOCAB, generator=gen)
    teacher = 2 * torch.randn(*batch.teacher_ids.shape, TEACHER_VOCAB, generator=gen)
    unshifted = dataclasses.replace(batch, shifts=None)
    for implementation in ("fused", "torch"):
        off = LossConfig(implementation=implementation, shifted_matching=False)
        loss_off, metrics = cross_tokenizer_loss(student, teacher, batch, off)
        loss_none, _ = cross_tokenizer_loss(student, teacher, unshifted, LossConfig(implementation=implementation))
        loss_on, _ = cross_tokenizer_loss(student, teacher, batch, LossConfig(implementation=implementation))
        assert float(loss_off) == float(loss_none) != float(loss_on)
        assert metrics["hybrid/shifted_mass_before"] == metrics["hybrid/shifted_mass_after"]


def test_both_paths_agree_on_a_real_pair_with_shifted_groups() -> None:
    from tests.gold.losses.test_composite import logits_for, make_batch

    batch = make_batch("qwen2.5", "llama-3", student_rows=151936, teacher_rows=128256)
    assert batch.shifts is not None and batch.shifts.num_shifted > 0
    student = logits_for(batch.student_ids, 151936, 5).float().requires_grad_()
    teacher = logits_for(batch.teacher_ids, 128256, 6).float()
    results = []
    for implementation in ("fused", "torch"):
        loss, metrics = cross_tokenizer_loss(student, teacher, batch, LossConfig(implementation=implementation))
        results.append((loss, metrics, torch.autograd.grad(loss, student)[0]))
    (loss_f, metrics_f, grad_f), (loss_t, metrics_t, grad_t) = results
    torch.testing.assert_close(loss_f, loss_t, atol=1e-6, rtol=1e-5)
    assert metrics_f["hybrid/shifted_mass_after"] == pytest.approx(metrics_t["hybrid/shifted_mass_after"], 1e-5)
    assert float((grad_f - grad_t).norm()) <= 1e-2 * float(grad_t.norm())


def test_raw_vocab_match_is_trls_pairing_without_shifted_pairs() -> None:
    from gold.config import LossConfig
    from gold.losses import PairTables
    from tests.conftest import zoo

    with pytest.raises(ValueError, match="set shifted_matching: false with it"):
        LossConfig(vocab_match="raw")
    qwen, llama = zoo("qwen2.5"), zoo("llama-3")
    raw = PairTables.build(qwen, llama, student_rows=len(qwen), teacher_rows=len(llama), vocab_match="raw")
    assert raw.shifted is None and raw.student_matched.numel() > 100_000
    with pytest.raises(ValueError, match="vocab_match must be 'bytes' or 'raw', got 'exact'"):
        PairTables.build(qwen, llama, student_rows=len(qwen), teacher_rows=len(llama), vocab_match="exact")
