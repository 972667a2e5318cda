"""Self-distillation (issue 17, item 3): a privileged ``teacher_prompt`` reaches the teacher only; ``teacher.model:
self`` is a frozen copy of the student's start, ``self-dynamic`` the student itself (one copy of the weights)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from gold import GoldTrainer
from gold.losses import cross_tokenizer_loss
from gold.recipe import RecipeError, load_recipe
from gold.run import build_trainer
from tests.gold.conftest import tiny, training_args
from tests.gold.test_cli import _recipe

ROWS = [{"prompt": f"What is {a} plus 2?\n", "completion": f"It is {a + 2}.",
         "teacher_prompt": f"(reference: {a} + 2 = {a + 2})\nWhat is {a} plus 2?\n"} for a in range(4)]  # fmt: skip


def test_the_teacher_prompt_reaches_the_teacher_only(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1), args=training_args(tmp_path),
                          train_dataset=ROWS, student_tokenizer=student_tokenizer,
                          teacher_tokenizer=teacher_tokenizer)  # fmt: skip
    batch = trainer.build_batch(list(trainer.train_dataset)[:2], "dataset")
    for side, tokenizer, privileged in ((batch.student, student_tokenizer, False),
                                        (batch.teacher, teacher_tokenizer, True)):  # fmt: skip
        for b in range(2):
            prompt = side.input_ids[b, : side.prompt_width][side.attention_mask[b, : side.prompt_width].bool()]
            text = tokenizer.decode(prompt.tolist(), skip_special_tokens=True)
            assert ("(reference:" in text) is privileged, text
            assert f"What is {b} plus 2?" in text
    assert batch.completions[0] == "It is 2." and batch.aligned.num_groups > 0  # one completion, both sides


def _self_recipe(tmp_path, kind: str) -> list[str]:
    rows = tmp_path / "self.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in ROWS), encoding="utf-8")
    return [f"teacher.model={kind}", "teacher.tokenizer=null", "teacher.tiny={}", f"data.path={rows}"]


@pytest.mark.parametrize("kind", ["self", "self-dynamic"])
def test_self_teachers(tmp_path, kind) -> None:
    config = load_recipe(_recipe(tmp_path), [*_self_recipe(tmp_path, kind), "training.max_steps=2",
                                             "training.learning_rate=0.05"])  # fmt: skip
    trainer = build_trainer(config)
    student, teacher = trainer.model, trainer.teacher.model
    start = {k: v.detach().clone() for k, v in student.state_dict().items()}
    assert trainer.teacher.tokenizer is trainer.student_tokenizer
    if kind == "self-dynamic":
        assert teacher is student and all(p.requires_grad for p in student.parameters())  # one copy, trained
    else:
        assert teacher is not student and not any(p.requires_grad for p in teacher.parameters())
        assert all(torch.equal(start[k], v) for k, v in teacher.state_dict().items())  # the student's start
    trainer.train()
    moved = any(not torch.equal(start[k], v) for k, v in student.state_dict().items())
    assert moved
    teacher_moved = any(not torch.equal(start[k], v) for k, v in teacher.state_dict().items())
    assert teacher_moved is (kind == "self-dynamic")


def test_a_self_student_is_refused(tmp_path) -> None:
    with pytest.raises(RecipeError, match=r"student\.model 'self' names a teacher kind"):
        load_recipe(_recipe(tmp_path), ["student.model=self", "student.tiny={}", "student.tokenizer=null"])


def test_a_self_teacher_reads_the_sampled_ids_and_agrees_exactly_at_the_start(tmp_path) -> None:
    """One vocabulary: the teacher reads the student's own (non-canonical) sample, token for token, so a frozen
    copy of the start gives the student's logits on every scored column and the distillation loss is 0."""
    from gold.rollout import Rollout

    config = load_recipe(_recipe(tmp_path), [*_self_recipe(tmp_path, "self"), "rollout.max_completion_length=16"])
    trainer = build_trainer(config)
    tokenizer = trainer.student_tokenizer
    assert trainer.collator.one_vocabulary
    sampled = [i for ch in "It is 7." for i in tokenizer.encode(ch, add_special_tokens=False)]
    examples = list(trainer.train_dataset)[:1]
    examples = [dataclasses.replace(e, teacher_prompt=None) for e in examples]
    batch = trainer.build_batch(examples, "student", [Rollout([*sampled, tokenizer.eos_token_id])])
    assert torch.equal(batch.aligned.student_ids, batch.aligned.teacher_ids)
    with torch.no_grad():
        student_logits = batch.student.logits(trainer.model)
        teacher_logits = trainer.teacher.logits(batch.teacher)
    scored = batch.aligned.student_groups >= 0
    assert int(scored.sum()) == len(sampled) + 1  # 1:1 groups and the end group
    torch.testing.assert_close(student_logits[scored], teacher_logits[scored])
    loss, metrics = cross_tokenizer_loss(student_logits, teacher_logits, batch.aligned, trainer.loss_config)
    assert abs(float(loss)) < 1e-6 and metrics["loss/hybrid"] < 1e-6
