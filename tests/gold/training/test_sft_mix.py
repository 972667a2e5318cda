"""SFT mixing (issue 17, item 1): ``loss.sft_weight`` adds the student's cross-entropy on completions it did not
write, a mean over those tokens in the whole step; its own rollouts are never part of it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gold import GoldTrainer
from gold.config import LossConfig, RolloutConfig
from tests.gold.conftest import ROWS, tiny, training_args


def _trainer(tmp_path, student_tokenizer, teacher_tokenizer, *, lmbda: float, sft_weight: float,
             seq_kd: bool = False) -> GoldTrainer:  # fmt: skip
    return GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1),
                       args=training_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                          max_steps=2),
                       train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                       loss=LossConfig(sft_weight=sft_weight),
                       rollout=RolloutConfig(lmbda=lmbda, max_completion_length=8, seq_kd=seq_kd,
                                             temperature=1.0))  # fmt: skip


def _reference_cross_entropy(model, batch) -> tuple[float, int]:
    """Σ −log p(token) over completion tokens, row by row from the model's own forward (float64)."""
    total, tokens = 0.0, 0
    side = batch.student
    for b in range(side.input_ids.shape[0]):
        keep = side.attention_mask[b].bool()
        ids = side.input_ids[b][keep]  # prompt (left-padded to prompt_width) then completion
        prompt_tokens = int(side.attention_mask[b, : side.prompt_width].sum())
        logits = model(input_ids=ids[None]).logits[0].double()
        for position in range(prompt_tokens, ids.shape[0]):
            total -= float(torch.log_softmax(logits[position - 1], dim=-1)[ids[position]])
            tokens += 1
    return total, tokens


def test_sft_term_is_the_cross_entropy_mean_over_the_steps_tokens(tmp_path, student_tokenizer,
                                                                   teacher_tokenizer) -> None:  # fmt: skip
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, lmbda=0.0, sft_weight=0.7)
    slices = [[dataclasses.replace(e) for e in trainer.train_dataset[i : i + 2]] for i in (0, 2)]
    inputs, items = trainer.get_batch_samples(iter(slices), 2, torch.device("cpu"))
    with torch.no_grad():
        mixed = trainer.compute_loss(trainer.model, inputs[0], num_items_in_batch=items)
        trainer.loss_config = LossConfig(sft_weight=0.0)
        plain = trainer.compute_loss(trainer.model, inputs[0], num_items_in_batch=items)
        first, first_tokens = _reference_cross_entropy(trainer.model, inputs[0]["batch"])
        _, second_tokens = _reference_cross_entropy(trainer.model, inputs[1]["batch"])
    assert float(inputs[0]["sft_tokens"]) == first_tokens + second_tokens  # the whole step's tokens
    assert float(mixed - plain) == pytest.approx(0.7 * first / (first_tokens + second_tokens), rel=1e-5)


def test_sft_mixing_never_touches_rollouts(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, lmbda=1.0, sft_weight=0.0)
    trainer.loss_config = LossConfig(sft_weight=1.0)  # (refused at construction: with lmbda 1 it has nothing to train)
    slices = [list(trainer.train_dataset[:2])]
    torch.manual_seed(0)
    inputs, items = trainer.get_batch_samples(iter(slices), 1, torch.device("cpu"))
    assert inputs[0]["batch"].source == "student" and float(inputs[0]["sft_tokens"]) == 1.0  # none (clamped)
    with torch.no_grad():
        mixed = trainer.compute_loss(trainer.model, inputs[0], num_items_in_batch=items)
        trainer.loss_config = LossConfig(sft_weight=0.0)
        plain = trainer.compute_loss(trainer.model, inputs[0], num_items_in_batch=items)
    assert torch.equal(mixed, plain)


def test_sft_mixing_is_logged_as_its_own_term(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, lmbda=0.0, sft_weight=0.5)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss/sft" in entry]
    assert len(logged) == 2 and all(entry["loss/sft"] > 0 for entry in logged)


def test_sft_mixing_trains_on_teacher_samples(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    """seq_kd slices are the teacher's samples, which the student did not write: SFT mixing covers their tokens."""
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, lmbda=0.0, sft_weight=1.0, seq_kd=True)
    slices = [list(trainer.train_dataset[:2])]
    torch.manual_seed(0)
    inputs, _ = trainer.get_batch_samples(iter(slices), 1, torch.device("cpu"))
    batch = inputs[0]["batch"]
    assert batch.source == "teacher"
    with torch.no_grad():
        _, tokens = _reference_cross_entropy(trainer.model, batch)
    assert tokens > 0 and float(inputs[0]["sft_tokens"]) == tokens


def test_sft_mixing_with_nothing_to_train_on_is_refused(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    with pytest.raises(ValueError, match="every slice is a student rollout: lower lmbda or set seq_kd"):
        _trainer(tmp_path, student_tokenizer, teacher_tokenizer, lmbda=1.0, sft_weight=0.5)
