"""Self-distillation (issue 17, item 3): a privileged ``teacher_prompt`` reaches the teacher only; ``teacher.model:
self`` is a frozen copy of the student's start, ``self-dynamic`` the student itself (one copy of the weights)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from alignment import encode_continuation
from gold import GoldTrainer
from gold.cli.recipe import RecipeError, load_recipe
from gold.cli.run import build_trainer
from gold.config import RolloutConfig
from gold.data.examples import DataError, prompt_ids
from gold.losses import cross_tokenizer_loss
from gold.rollout import Rollout
from tests.gold.cli.test_commands import _recipe
from tests.gold.conftest import tiny, training_args

ROWS = [{"prompt": f"What is {a} plus 2?\n", "completion": f"It is {a + 2}.",
         "teacher_prompt": f"(reference: {a} + 2 = {a + 2})\nWhat is {a} plus 2?\n"} for a in range(4)]  # fmt: skip


class RecordingGenerator:
    """Rollouts "It is 7." + EOS for every prompt; keeps the prompt ids the sampler was given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.prompts = tokenizer, []

    def rollout(self, prompts, *, seeds=None):
        self.prompts.extend(list(p) for p in prompts)
        ids = [*encode_continuation(self.tokenizer, "It is 7."), self.tokenizer.eos_token_id]
        return [Rollout(ids) for _ in prompts]


def _side_prompts(side) -> list[list[int]]:
    return [side.input_ids[b, : side.prompt_width][side.attention_mask[b, : side.prompt_width].bool()].tolist()
            for b in range(side.input_ids.shape[0])]  # fmt: skip


@pytest.mark.parametrize("source", ["dataset", "student"])
def test_the_teacher_prompt_reaches_the_teacher_only(tmp_path, student_tokenizer, teacher_tokenizer, source) -> None:
    """Each side's prompt ids are exactly its own rendering: the student's (and its sampler's) of ``prompt``, the
    teacher's of ``teacher_prompt``; on dataset rows and on the student's rollouts."""
    generator = RecordingGenerator(student_tokenizer)
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1), args=training_args(tmp_path),
                          train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          student_generator=generator,
                          rollout=RolloutConfig(lmbda=1.0 if source == "student" else 0.0))  # fmt: skip
    examples = list(trainer.train_dataset)[:2]
    batch = trainer.build_batch(examples, source)
    student_expected = [prompt_ids(student_tokenizer, e.prompt) for e in examples]
    teacher_expected = [prompt_ids(teacher_tokenizer, e.teacher_prompt) for e in examples]
    assert _side_prompts(batch.student) == student_expected
    assert _side_prompts(batch.teacher) == teacher_expected
    assert student_expected != [prompt_ids(student_tokenizer, e.teacher_prompt) for e in examples]
    if source == "student":
        assert generator.prompts == student_expected  # the sampler never saw the privileged prompt
        assert batch.completions == ("It is 7.", "It is 7.")
    else:
        assert batch.completions[0] == "It is 2."
    assert batch.aligned.num_groups > 0


def test_teacher_messages_are_rendered_for_the_teacher_only(tmp_path, student_tokenizer) -> None:
    """``teacher_messages``: chat turns the teacher's template renders; a bad value is refused with its row."""
    from tests.conftest import zoo

    teacher_tokenizer = zoo("qwen2.5")  # a chat template on the teacher's side
    turns = [{"role": "system", "content": "The answer is 4."}, {"role": "user", "content": "What is 2 plus 2?"}]
    rows = [{"prompt": "What is 2 plus 2?\n", "completion": "It is 4.", "teacher_messages": turns}]
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1), args=training_args(tmp_path),
                          train_dataset=rows, student_tokenizer=student_tokenizer,
                          teacher_tokenizer=teacher_tokenizer)  # fmt: skip
    batch = trainer.build_batch(list(trainer.train_dataset), "dataset")
    assert _side_prompts(batch.teacher) == [prompt_ids(teacher_tokenizer, turns)]
    assert _side_prompts(batch.student) == [prompt_ids(student_tokenizer, "What is 2 plus 2?\n")]
    bad = [{**rows[0], "teacher_messages": [{"role": "oracle", "content": "4"}]}]
    with pytest.raises(DataError, match="row 0"):
        GoldTrainer(
            tiny(student_tokenizer),
            tiny(teacher_tokenizer, seed=1),
            args=training_args(tmp_path),
            train_dataset=bad,
            student_tokenizer=student_tokenizer,
            teacher_tokenizer=teacher_tokenizer,
        )


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


def test_a_dynamic_self_teacher_teaches_without_dropout(student_tokenizer) -> None:
    """The student trains with dropout; as its own teacher its rows are deterministic, and its mode is restored."""
    from gold.data.examples import side_inputs
    from gold.teacher import DynamicSelfTeacher

    student = tiny(student_tokenizer)
    student.config.attention_dropout = 0.5
    for layer in student.model.layers:
        layer.self_attn.attention_dropout = 0.5
    teacher = DynamicSelfTeacher(student, student_tokenizer)
    prompt = prompt_ids(student_tokenizer, "What is 2 plus 2?\n")
    inputs = side_inputs([prompt], [encode_continuation(student_tokenizer, "It is 4.")], pad_id=0)
    student.train()
    torch.manual_seed(0)
    noisy = [inputs.logits(student).detach() for _ in range(2)]
    assert not torch.equal(noisy[0], noisy[1])  # the student's own forward in train mode is noised
    rows = [teacher.logits(inputs) for _ in range(2)]
    assert torch.equal(rows[0], rows[1]) and student.training
