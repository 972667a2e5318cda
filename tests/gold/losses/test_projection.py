"""The projection term (gold.losses.projection) and its classes (gold.data.prefix_classes) against obviously-right
references: the classes by a brute-force scan of both vocabularies, the loss by a float64 loop over classes, on values
and gradients, and on a real pair through the composite loss."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alignment import token_bytes_table
from gold.config import LossConfig
from gold.data.prefix_classes import prefix_classes, token_strings
from gold.losses import cross_tokenizer_loss
from gold.losses.projection import projection
from tests.conftest import zoo
from tests.gold.losses.test_composite import logits_for, make_batch

STUDENT = [b"", b" m", b" moo", b" moon", b"oo", b" c", b" cow", b"x", b"</s>"]
TEACHER = [b"", b" ", b" m", b" mo", b" moo", b" mooo", b"o", b" cow", b"z"]


def fake_table(strings: list[bytes]) -> SimpleNamespace:
    lengths = np.array([len(s) for s in strings], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    buffer = np.frombuffer(b"".join(strings), dtype=np.uint8)
    return SimpleNamespace(buffer=buffer, offsets=offsets, vocab_size=len(strings))


def brute_classes(student: list[bytes], teacher: list[bytes], end_student: int, end_teacher: int, extra: int = 0):
    """The module text's rule, scanned the slow way: every prefix relation tested pairwise."""
    rows_t = len(teacher)
    end, none = rows_t, rows_t + 1

    def longest(text: bytes, candidates: dict[int, bytes]) -> int:
        best = [i for i, c in candidates.items() if c and text.startswith(c)]
        if not best:
            return none
        length = max(len(candidates[i]) for i in best)
        return min(i for i in best if len(candidates[i]) == length)

    teacher_ids = dict(enumerate(teacher))
    s_classes = [longest(s, teacher_ids) if s else none for s in student] + [none] * extra
    image = {i: teacher[i] for i in set(s_classes) if i < rows_t}
    t_classes = [longest(t, image) if t else none for t in teacher]
    s_classes[end_student], t_classes[end_teacher] = end, end
    return s_classes, t_classes


def test_classes_follow_the_longest_teacher_prefix_rule() -> None:
    classes = prefix_classes(fake_table(STUDENT), fake_table(TEACHER), student_rows=len(STUDENT) + 2,
                             teacher_rows=len(TEACHER), student_end_ids=[8], teacher_end_ids=[0])  # fmt: skip
    want_s, want_t = brute_classes(STUDENT, TEACHER, 8, 0, extra=2)
    assert classes.student.tolist() == want_s
    assert classes.teacher.tolist() == want_t
    # by hand: student " moon" goes to teacher " moo", teacher " mooo" to " moo"; no student token's longest teacher
    # prefix is " mo" (" moo" is longer), so teacher " mo" goes to " m"
    assert classes.student[3] == 4 and classes.teacher[5] == 4 and classes.teacher[3] == 2
    # "x" has no teacher prefix, "z" no student one: both NONE; NONE is shared, END is shared
    assert classes.student[7] == classes.teacher[8] == len(TEACHER) + 1
    assert classes.shared[len(TEACHER)] and classes.shared[4] and not classes.shared[3]


def test_classes_on_a_real_pair_match_the_brute_force_scan() -> None:
    student, teacher = zoo("smollm2"), zoo("mistral-v1")
    s_table, t_table = token_bytes_table(student), token_bytes_table(teacher)
    classes = prefix_classes(s_table, t_table, student_rows=len(student), teacher_rows=len(teacher))
    s_strings, t_strings = token_strings(s_table), token_strings(t_table)
    rng = np.random.default_rng(0)
    for index in rng.choice(len(student), 300, replace=False):
        text, chosen = s_strings[index], int(classes.student[index])
        prefixes = [t for t in t_strings if t and text.startswith(t)]
        if not prefixes:
            assert chosen == len(teacher) + 1
            continue
        assert t_strings[chosen] == max(prefixes, key=len), (text, t_strings[chosen])


def reference_projection(student_logprobs, teacher_logprobs, s_classes, t_classes, shared, beta):
    """float64 loop: sum probabilities per class, keep the shared classes, renormalize, generalized JSD."""
    out = []
    for s_row, t_row in zip(student_logprobs.double(), teacher_logprobs.double(), strict=True):
        kept = [c for c in range(len(shared)) if shared[c]]
        p_s = torch.stack([s_row.exp()[[i for i, k in enumerate(s_classes) if k == c]].sum() for c in kept])
        p_t = torch.stack([t_row.exp()[[i for i, k in enumerate(t_classes) if k == c]].sum() for c in kept])
        p_s, p_t = p_s / p_s.sum(), p_t / p_t.sum()
        if beta == 0:
            value = (p_t * (p_t.log() - p_s.log())).sum()
        elif beta == 1:
            value = (p_s * (p_s.log() - p_t.log())).sum()
        else:
            mix = beta * p_t + (1 - beta) * p_s
            value = beta * (p_t * (p_t / mix).log()).sum() + (1 - beta) * (p_s * (p_s / mix).log()).sum()
        out.append(value)
    return torch.stack(out)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_projection_matches_the_reference_on_values_and_gradients(beta: float) -> None:
    classes = prefix_classes(fake_table(STUDENT), fake_table(TEACHER), student_rows=len(STUDENT),
                             teacher_rows=len(TEACHER), student_end_ids=[8], teacher_end_ids=[0])  # fmt: skip
    gen = torch.Generator().manual_seed(int(beta * 10))
    student = torch.randn(5, len(STUDENT), generator=gen, dtype=torch.float64).log_softmax(-1).requires_grad_()
    teacher = torch.randn(5, len(TEACHER), generator=gen, dtype=torch.float64).log_softmax(-1)
    value = projection(student, teacher, classes, beta=beta)
    want = reference_projection(student, teacher, classes.student.tolist(), classes.teacher.tolist(),
                                classes.shared.tolist(), beta)  # fmt: skip
    torch.testing.assert_close(value, want)
    (grad,) = torch.autograd.grad(value.sum(), student)
    (want_grad,) = torch.autograd.grad(want.sum(), student)
    torch.testing.assert_close(grad, want_grad)
    assert math.isfinite(float(value.detach().sum())) and grad.abs().sum() > 0


def test_projection_is_zero_where_the_projected_distributions_agree() -> None:
    """Different token distributions with the same class masses: nothing to learn (the term sees classes only)."""
    classes = prefix_classes(fake_table(STUDENT), fake_table(TEACHER), student_rows=len(STUDENT),
                             teacher_rows=len(TEACHER), student_end_ids=[8], teacher_end_ids=[0])  # fmt: skip
    student = torch.zeros(1, len(STUDENT))
    teacher = torch.zeros(1, len(TEACHER))
    student[0, [2, 3]] = 0.25  # " moo", " moon" → class " moo"
    teacher[0, [4, 5]] = 0.25  # " moo", " mooo" → class " moo"
    student[0, 6], teacher[0, 7] = 0.5, 0.5  # " cow"
    value = projection(student.log(), teacher.log(), classes)
    assert float(value) == pytest.approx(0.0, abs=1e-7)
    teacher[0, [4, 5]], teacher[0, 7] = 0.1, 0.8
    assert float(projection(student.log(), teacher.log(), classes)) > 0.1


def test_the_composite_loss_takes_the_projection_term_on_a_real_pair() -> None:
    batch = make_batch("qwen2.5", "llama-3", student_rows=151936, teacher_rows=128256)
    student_logits = logits_for(batch.student_ids, 151936, 9).float().requires_grad_()
    teacher_logits = logits_for(batch.teacher_ids, 128256, 10).float()
    config = LossConfig(projection_weight=0.5, chunk_groups=None, implementation="torch")
    loss, metrics = cross_tokenizer_loss(student_logits, teacher_logits, batch, config)
    alone, _ = cross_tokenizer_loss(student_logits, teacher_logits, batch,
                                    LossConfig(implementation="torch", chunk_groups=None))  # fmt: skip
    chunked_config = LossConfig(projection_weight=0.5, chunk_groups=5, implementation="torch")
    chunked, _ = cross_tokenizer_loss(student_logits, teacher_logits, batch, chunked_config)
    torch.testing.assert_close(loss, alone + 0.5 * torch.tensor(metrics["loss/projection"]))
    torch.testing.assert_close(chunked, loss)
    assert metrics["loss/projection"] > 0
    (grad,) = torch.autograd.grad(loss, student_logits)
    assert torch.isfinite(grad).all()


def test_a_projection_weight_without_classes_is_refused_with_what_to_do() -> None:
    batch = make_batch("qwen2.5", "llama-3", student_rows=151936, teacher_rows=128256)
    batch = dataclasses.replace(batch, tables=dataclasses.replace(batch.tables, prefix_classes=None))
    student_logits = logits_for(batch.student_ids, 151936, 9).float()
    teacher_logits = logits_for(batch.teacher_ids, 128256, 10).float()
    with pytest.raises(ValueError, match="with_prefix_classes=True"):
        cross_tokenizer_loss(student_logits, teacher_logits, batch, LossConfig(projection_weight=1.0))
