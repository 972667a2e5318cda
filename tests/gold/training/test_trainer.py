"""GoldTrainer on tiny random models with real tokenizers of two families."""

from __future__ import annotations

import pytest
import torch

from alignment import encode_continuation
from gold.config import LossConfig, RolloutConfig
from gold.data.examples import DataError
from gold.training.trainer import GoldTrainer
from tests.gold.conftest import ROWS, tiny, training_args


def _trainer(tmp_path, student_tokenizer, teacher_tokenizer, *, rows=ROWS, loss=None, rollout=None, **args):
    return GoldTrainer(
        tiny(student_tokenizer, seed=0), tiny(teacher_tokenizer, seed=1), args=training_args(tmp_path, **args),
        train_dataset=rows, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
        loss=loss or LossConfig(), rollout=rollout or RolloutConfig(lmbda=0.0, max_completion_length=12),
    )  # fmt: skip


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
@pytest.mark.parametrize("loss", [LossConfig(), LossConfig(hybrid_weight=0.0, uld_weight=1.0)], ids=["hybrid", "uld"])
def test_train_steps_log_every_part(tmp_path, student_tokenizer, teacher_tokenizer, lmbda, loss) -> None:
    rollout = RolloutConfig(lmbda=lmbda, max_completion_length=8, temperature=1.0)
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, loss=loss, rollout=rollout, max_steps=2)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["rollout/on_policy_fraction"] == lmbda
    term = "loss/hybrid" if loss.hybrid_weight else "loss/uld"
    assert logged[term] > 0 and abs(logged[term] - logged["loss"]) < 1e-4
    for key in ("align/groups", "align/one_to_one_fraction", "align/approximate_fraction", "time/train_s",
                "time/rollout_and_alignment_s", "throughput/completion_tokens_per_s"):  # fmt: skip
        assert key in logged
    if loss.hybrid_weight:
        assert 0 < logged["hybrid/teacher_matched_mass"] <= 1
        assert 0 <= logged["hybrid/shifted_groups"] < 1  # groups whose last tokens start at different bytes


def test_loss_falls_on_a_fixed_batch(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    rows = ROWS[:4]
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, rows=rows, max_steps=8,
                       learning_rate=3e-2, lr_scheduler_type="constant", loss=LossConfig(beta=0.0))  # fmt: skip
    trainer.train()
    losses = _losses(trainer)
    assert losses[-1] < 0.7 * losses[0], losses


def test_gradient_accumulation_matches_one_big_batch(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    """2 slices of 2 examples (different group counts) give the same update as 1 slice of 4: the
    loss is the mean over the groups of the global batch, not a mean of slice means."""
    rows = [ROWS[0], ROWS[-1], ROWS[4], ROWS[8]]
    weights = []
    for batch, accumulation in ((4, 1), (2, 2)):
        trainer = _trainer(tmp_path / f"{batch}", student_tokenizer, teacher_tokenizer, rows=rows, max_steps=1,
                           per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                           optim="sgd", learning_rate=1.0, max_grad_norm=0)  # fmt: skip
        trainer.train()
        weights.append(trainer.model.get_output_embeddings().weight.detach().clone())
    assert not torch.equal(weights[0], tiny(student_tokenizer, seed=0).get_output_embeddings().weight)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)


def test_resume_gives_the_same_next_loss(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    rollout = RolloutConfig(lmbda=0.5, max_completion_length=8, temperature=1.0)
    straight = _trainer(tmp_path / "a", student_tokenizer, teacher_tokenizer, rollout=rollout, max_steps=4)
    straight.train()
    first = _trainer(tmp_path / "b", student_tokenizer, teacher_tokenizer, rollout=rollout, max_steps=4,
                     save_strategy="steps", save_steps=2)  # fmt: skip
    first.train()
    resumed = _trainer(tmp_path / "b", student_tokenizer, teacher_tokenizer, rollout=rollout, max_steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "run" / "checkpoint-2"))
    expected = _losses(straight)
    assert _losses(resumed)[-2:] == pytest.approx(expected[-2:], rel=1e-5)
    assert [e["rollout/on_policy_fraction"] for e in resumed.state.log_history if "loss" in e][-2:] == \
        [e["rollout/on_policy_fraction"] for e in straight.state.log_history if "loss" in e][-2:]  # fmt: skip


def test_seq_kd_trains_on_teacher_samples(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    rollout = RolloutConfig(lmbda=0.0, seq_kd=True, max_completion_length=6, temperature=1.0)
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, rollout=rollout, max_steps=1)
    examples = trainer.train_dataset[:2]
    batch = trainer.build_batch(examples, trainer.slice_source(0))
    assert batch.source == "teacher"
    assert all(c not in (e.completion for e in examples) for c in batch.completions)
    trainer.train()
    assert trainer.state.log_history[0]["loss"] > 0


def test_bad_rows_fail_before_training(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    with pytest.raises(DataError, match="row 1: the completion is empty"):
        _trainer(tmp_path, student_tokenizer, teacher_tokenizer, rows=[ROWS[0], {"prompt": "Q", "completion": ""}])


def test_bare_teacher_model_needs_its_tokenizer(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    with pytest.raises(ValueError, match="teacher_tokenizer"):
        GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=training_args(tmp_path), train_dataset=ROWS,
                    student_tokenizer=student_tokenizer)  # fmt: skip


def test_report_to_tensorboard_writes_every_metric(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, max_steps=1, report_to=["tensorboard"])
    trainer.train()
    events = b"".join(path.read_bytes() for path in (tmp_path / "run").rglob("events.out.tfevents*"))
    for tag in (b"train/loss", b"train/loss/hybrid", b"train/align/one_to_one_fraction",
                b"train/hybrid/teacher_matched_mass"):  # fmt: skip
        assert tag in events, tag


def test_slow_tokenizer_is_refused_with_the_fix(tmp_path, student_tokenizer) -> None:
    """A Python-backed SentencePiece tokenizer has no byte-exact vocabulary view: refuse it up front."""
    import shutil
    from pathlib import Path

    import mistral_common
    from transformers import SentencePieceBackend

    from alignment import TokenizerBytesError

    model_file = tmp_path / "tokenizer.model"
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", model_file)
    slow = SentencePieceBackend(vocab_file=str(model_file))
    with pytest.raises(TokenizerBytesError, match=r"not a fast .* use_fast=True"):
        GoldTrainer(tiny(student_tokenizer), tiny(student_tokenizer), args=training_args(tmp_path), train_dataset=ROWS,
                    student_tokenizer=student_tokenizer, teacher_tokenizer=slow)  # fmt: skip


def test_a_slice_without_any_group_gives_a_zero_loss_with_a_graph(tmp_path, student_tokenizer, teacher_tokenizer):
    """Every rollout of a slice can be cut before its first whole character: the loss is 0 and backward runs.
    (A rollout that stops at once is one end group: it is scored, see test_collate.)"""
    loss_config = LossConfig(hybrid_weight=1.0, uld_weight=1.0, span_weight=1.0, byte_marginal_weight=1.0)
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, loss=loss_config)
    examples = trainer.train_dataset[:2]
    partial = encode_continuation(student_tokenizer, "👍")[:1]  # the first bytes of a character, cut by the limit
    batch = trainer.collator([trainer._prompt("student", student_tokenizer, e.prompt) for e in examples],
                             [trainer._prompt("teacher", teacher_tokenizer, e.prompt) for e in examples],
                             [trainer.collator.from_rollout([]), trainer.collator.from_rollout(partial)],
                             source="student")  # fmt: skip
    assert batch.aligned.num_groups == 0 and batch.completions == ("", "")
    loss = trainer.compute_loss(trainer.model, {"batch": batch}, num_items_in_batch=torch.tensor(5.0))
    loss.backward()
    assert loss.item() == 0.0
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("trainer_cls", ["gold", "sft"])
def test_logged_terms_are_the_optimised_loss_under_accumulation(tmp_path, student_tokenizer, teacher_tokenizer,
                                                                trainer_cls) -> None:  # fmt: skip
    """Two slices of different sizes: the logged term is the global mean that was optimised, not a mean of
    the slice means (0.40 logged vs 0.22 optimised in one run before)."""
    from gold.training.baselines import SequenceKDTrainer

    cls = GoldTrainer if trainer_cls == "gold" else SequenceKDTrainer
    rows = [ROWS[0], ROWS[-1], ROWS[4], ROWS[8]]  # different group and token counts per slice
    trainer = cls(
        tiny(student_tokenizer, seed=0), tiny(teacher_tokenizer, seed=1),
        args=training_args(tmp_path, max_steps=2, per_device_train_batch_size=1, gradient_accumulation_steps=2),
        train_dataset=rows, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
        rollout=RolloutConfig(lmbda=0.0, max_completion_length=12),
    )  # fmt: skip
    trainer.train()
    term = "loss/hybrid" if trainer_cls == "gold" else "loss/cross_entropy"
    for logged in (e for e in trainer.state.log_history if "loss" in e):
        assert logged[term] == pytest.approx(logged["loss"], rel=1e-4)


def test_on_policy_share_is_logged_per_slice_and_per_row(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    """lmbda draws slices; an on-policy slice holds num_generations rows per prompt, so rows differ."""
    rollout = RolloutConfig(lmbda=0.5, max_completion_length=6, temperature=1.0, num_generations=3)
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, rollout=rollout, max_steps=6,
                       per_device_train_batch_size=2, gradient_accumulation_steps=2)  # fmt: skip
    trainer.train()
    mixed = 0
    for logged in (e for e in trainer.state.log_history if "loss" in e):
        on_policy_slices = round(2 * logged["rollout/on_policy_fraction"])
        rows = 6 * on_policy_slices + 2 * (2 - on_policy_slices)
        assert logged["rollout/on_policy_row_fraction"] == pytest.approx(6 * on_policy_slices / rows)
        mixed += on_policy_slices == 1
    assert mixed  # at least one step with one slice of each kind (seeded)


def test_sft_baseline_under_accumulation_matches_one_big_batch(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    """SFT divides by the completion tokens of the global batch, as gold divides by its groups: 2 slices of 2
    give the update of 1 slice of 4 (it was a mean of slice means, weighing short slices more)."""
    from gold.training.baselines import SequenceKDTrainer

    rows = [ROWS[0], ROWS[-1], ROWS[4], ROWS[8]]
    weights = []
    for batch, accumulation in ((4, 1), (2, 2)):
        trainer = SequenceKDTrainer(
            tiny(student_tokenizer, seed=0), tiny(teacher_tokenizer, seed=1),
            args=training_args(tmp_path / f"{batch}", max_steps=1, per_device_train_batch_size=batch,
                               gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=1.0,
                               max_grad_norm=0),
            train_dataset=rows, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
            rollout=RolloutConfig(lmbda=0.0, max_completion_length=12),
        )  # fmt: skip
        trainer.train()
        weights.append(trainer.model.get_output_embeddings().weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)
