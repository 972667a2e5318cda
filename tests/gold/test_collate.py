"""The aligned training batch: loss-view columns, groups on both sides, errors."""

from __future__ import annotations

import pytest
import torch

import gold.collate
from gold.collate import Collator
from gold.data import CompletionBytesError, DataError, prompt_ids
from gold.losses import PairTables


@pytest.fixture(scope="module")
def collator(student_tokenizer, teacher_tokenizer) -> Collator:
    tables = PairTables.build(student_tokenizer, teacher_tokenizer, student_rows=len(student_tokenizer),
                              teacher_rows=len(teacher_tokenizer))  # fmt: skip
    return Collator(student_tokenizer, teacher_tokenizer, tables, max_completion_length=24, max_prompt_length=20)


def _prompts(tokenizer, texts):
    return [prompt_ids(tokenizer, t) for t in texts]


def test_loss_view_holds_completion_and_groups(collator, student_tokenizer, teacher_tokenizer) -> None:
    prompts = ["Q1?\n", "A longer question?\n"]
    completions = collator.student_completion_ids(["It says moo.", "Café ☕ 東京 1234"])
    batch = collator(_prompts(student_tokenizer, prompts), _prompts(teacher_tokenizer, prompts), completions,
                     source="dataset")  # fmt: skip
    aligned = batch.aligned
    for side, ids, groups in ((batch.student, aligned.student_ids, aligned.student_groups),
                              (batch.teacher, aligned.teacher_ids, aligned.teacher_groups)):  # fmt: skip
        assert ids.shape[1] == side.logits_to_keep
        assert torch.equal(ids, side.input_ids[:, side.prompt_width - 1 :])
        assert (groups[:, 0] == -1).all()  # the last prompt token only predicts
        real = side.attention_mask[:, side.prompt_width :].bool()
        assert ((groups[:, 1:] >= 0) <= real).all()  # groups only on real completion tokens
    for b in range(2):  # both sides carry the same groups, in order
        s_groups = aligned.student_groups[b][aligned.student_groups[b] >= 0].unique_consecutive()
        t_groups = aligned.teacher_groups[b][aligned.teacher_groups[b] >= 0].unique_consecutive()
        assert s_groups.tolist() == t_groups.tolist() == list(range(len(s_groups)))
    assert batch.completions == ("It says moo.", "Café ☕ 東京 1234")
    assert aligned.stats.approximate_groups == 0


def test_completions_are_cut_to_the_limit(collator, student_tokenizer, teacher_tokenizer) -> None:
    long = " ".join(["word"] * 40)
    batch = collator(_prompts(student_tokenizer, ["Q\n"]), _prompts(teacher_tokenizer, ["Q\n"]),
                     collator.student_completion_ids([long]), source="dataset")  # fmt: skip
    assert int(batch.student.attention_mask[0, batch.student.prompt_width :].sum()) == 24
    assert long.startswith(batch.completions[0]) and len(batch.completions[0]) < len(long)


def test_prompt_over_the_limit_is_named(collator, student_tokenizer, teacher_tokenizer) -> None:
    prompt = "many words " * 20
    with pytest.raises(
        DataError, match=r"example 0: the student prompt has \d+ tokens, over rollout.max_prompt_length=20"
    ):
        collator(_prompts(student_tokenizer, [prompt]), _prompts(teacher_tokenizer, [prompt]),
                 collator.student_completion_ids(["x"]), source="dataset")  # fmt: skip


def test_teacher_that_saw_other_bytes_raises(collator, student_tokenizer, teacher_tokenizer, monkeypatch) -> None:
    real = gold.collate.encode_continuation

    def doctored(tokenizer, text):
        return real(tokenizer, text.replace("moo", "baa") if tokenizer is teacher_tokenizer else text)

    monkeypatch.setattr(gold.collate, "encode_continuation", doctored)
    with pytest.raises(CompletionBytesError, match="example 0: the teacher's completion tokens spell"):
        collator(_prompts(student_tokenizer, ["Q\n"]), _prompts(teacher_tokenizer, ["Q\n"]),
                 [real(student_tokenizer, "It says moo.")], source="student")  # fmt: skip
