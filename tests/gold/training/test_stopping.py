"""A distilled student learns to stop: the end of a completion is an aligned event (DESIGN §3).

Before the end group existed no end token entered a batch, so the logit row after the last byte got
exactly zero gradient and no student trained by gold learned to stop (measured: teacher stops 100 %,
gold student 0 %). Here a tiny teacher (Mistral-v1 SentencePiece) always answers " ok." and stops; a
tiny random student (SmolLM2 byte BPE) is distilled on the teacher's samples.
"""

from __future__ import annotations

import pytest
import torch

from alignment import encode_continuation
from gold.config import AlignmentConfig, LossConfig, RolloutConfig
from gold.data.examples import Example, prompt_ids, side_inputs
from gold.evaluation.run import model_stop_rate
from gold.models.stops import model_stop_rule
from gold.rollout import sample_completions
from gold.training.baselines import SequenceKDTrainer
from gold.training.trainer import GoldTrainer
from tests.gold.conftest import tiny, training_args

PROMPTS = [f"Item {i}:" for i in range(8)]
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def stopping_teacher(teacher_tokenizer):
    """A tiny teacher fitted to answer " ok." and then its end token, after every prompt."""
    teacher = tiny(teacher_tokenizer, seed=1)
    answer = [*encode_continuation(teacher_tokenizer, " ok."), model_stop_rule(teacher, teacher_tokenizer).end_id]
    side = side_inputs([prompt_ids(teacher_tokenizer, p) for p in PROMPTS], [answer] * len(PROMPTS), pad_id=0)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=3e-2)
    torch.manual_seed(0)
    for _ in range(80):
        logits = side.logits(teacher)[:, :-1]  # (B, L - 1, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 side.completion_targets().reshape(-1))  # fmt: skip
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return teacher.eval()


def _teacher_samples(teacher, tokenizer) -> list[Example]:
    config = RolloutConfig(temperature=1.0, top_p=1.0, max_completion_length=MAX_NEW_TOKENS)
    torch.manual_seed(0)
    samples = sample_completions(teacher, tokenizer, PROMPTS * 4, config)
    return [Example(p, s.text, ended=s.ended) for p, s in zip(PROMPTS * 4, samples, strict=True) if s.text]


def _distilled_stop_rate(tmp_path, trainer_cls, teacher, student_tokenizer, teacher_tokenizer, *, end_group: bool):
    student = tiny(student_tokenizer, seed=2)
    args = training_args(tmp_path, max_steps=15, per_device_train_batch_size=8, learning_rate=3e-2,
                         lr_scheduler_type="constant", logging_steps=5)  # fmt: skip
    trainer = trainer_cls(
        student, teacher, args=args, train_dataset=_teacher_samples(teacher, teacher_tokenizer),
        student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer, loss=LossConfig(beta=0.0),
        rollout=RolloutConfig(lmbda=0.0, max_completion_length=MAX_NEW_TOKENS),
        alignment=AlignmentConfig(end_group=end_group),
    )  # fmt: skip
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["stop_rate/dataset"] == 1.0  # every teacher sample ended
    assert (logged["align/end_groups"] > 0) == end_group
    return model_stop_rate(student, student_tokenizer, PROMPTS, samples=4, max_new_tokens=MAX_NEW_TOKENS)


def test_a_distilled_student_stops_as_often_as_its_teacher(tmp_path, stopping_teacher, student_tokenizer,
                                                           teacher_tokenizer) -> None:  # fmt: skip
    teacher_rate = model_stop_rate(stopping_teacher, teacher_tokenizer, PROMPTS, samples=4,
                                   max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
    assert teacher_rate == 1.0
    gold_rate = _distilled_stop_rate(tmp_path / "gold", GoldTrainer, stopping_teacher, student_tokenizer,
                                     teacher_tokenizer, end_group=True)  # fmt: skip
    assert gold_rate >= 0.9
    # the check can fail: without the end group the row after the last byte gets no gradient
    without = _distilled_stop_rate(tmp_path / "off", GoldTrainer, stopping_teacher, student_tokenizer,
                                   teacher_tokenizer, end_group=False)  # fmt: skip
    assert without <= 0.1


def test_the_sft_baseline_learns_to_stop_too(tmp_path, stopping_teacher, student_tokenizer, teacher_tokenizer) -> None:
    """SFT scores the student's end token after each completion that ended, as the end group does."""
    rate = _distilled_stop_rate(tmp_path, SequenceKDTrainer, stopping_teacher, student_tokenizer, teacher_tokenizer,
                                end_group=True)  # fmt: skip
    assert rate >= 0.9
