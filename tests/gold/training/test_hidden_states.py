"""The GPU path in the trainer (``loss.hidden_states``): the decoder's hidden states through the output layer equal
each architecture's own logits, a run from hidden states equals the run from logits step for step, and a side that
cannot take the path says why and takes its logits."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import transformers

from gold.config import LossConfig, RolloutConfig
from gold.data.examples import SideInputs
from gold.losses.head import output_head
from gold.teacher import LocalTeacher
from gold.training.hidden_states import hidden_logits, hidden_plan
from gold.training.trainer import GoldTrainer
from tests.gold.conftest import ROWS, tiny, training_args
from tests.gold.losses.test_head import ARCHITECTURES
from tests.gold.losses.test_head import tiny as tiny_of_kind


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_hidden_states_of_every_architecture_equal_its_logits(kind: str) -> None:
    model = tiny_of_kind(kind)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 97, (2, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded prompt
    inputs = SideInputs(ids, mask, (mask.cumsum(1) - 1).clamp(min=0), prompt_width=5)
    head, why = output_head(model)
    assert head is not None, why
    with torch.no_grad():
        expected = inputs.logits(model).float()  # (2, 7, 97)
        found = hidden_logits(model, inputs, head)
    assert found.shape == expected.shape
    torch.testing.assert_close(found.dense(2), expected, rtol=1e-5, atol=1e-5)


def _trainer(tmp_path, student_tokenizer, teacher_tokenizer, hidden_states: str, bf16: bool = False, **loss):
    config = LossConfig(implementation="torch", hidden_states=hidden_states, chunk_groups=5, **loss)  # type: ignore[arg-type]
    rollout = RolloutConfig(lmbda=0.5, max_completion_length=8, temperature=1.0, log_completions_steps=1)
    return GoldTrainer(
        tiny(student_tokenizer, seed=0), tiny(teacher_tokenizer, seed=1),
        # SGD: Adam would turn a 1e-12 gradient difference on an untouched embedding row into a full step
        args=training_args(tmp_path, max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                           optim="sgd", learning_rate=0.5, bf16=bf16),
        train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
        loss=config, rollout=rollout,
    )  # fmt: skip


@pytest.mark.parametrize("loss", [
    dict(uld_weight=0.3, span_weight=0.2, byte_marginal_weight=0.1, sft_weight=0.5),
    dict(beta=0.0, opd_weight=0.5),
    dict(hybrid_weight=0.0, opd_weight=1.0),
], ids=["every-term-and-sft", "forward-kl-and-opd", "opd-alone"])  # fmt: skip
def test_a_run_from_hidden_states_equals_the_run_from_logits(tmp_path, student_tokenizer, teacher_tokenizer,
                                                             loss) -> None:  # fmt: skip
    runs = {}
    for mode in ("never", "always"):
        trainer = _trainer(tmp_path / mode, student_tokenizer, teacher_tokenizer, mode, **loss)
        trainer.train()
        plan = trainer.hidden_plan()
        assert (plan.student is None and plan.teacher is None) == (mode == "never") and not plan.notes
        logged = [e for e in trainer.state.log_history if "loss" in e]
        weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        runs[mode] = (logged, weights)
    (off_log, off_weights), (on_log, on_weights) = runs["never"], runs["always"]
    assert len(on_log) == 3 and any(e["rollout/on_policy_fraction"] > 0 for e in on_log)
    for off, on in zip(off_log, on_log, strict=True):
        for key in ("loss", "loss/hybrid", "loss/uld", "loss/span", "loss/sft", "loss/opd", "grad_norm"):
            if key in off:
                assert on[key] == pytest.approx(off[key], rel=1e-4, abs=1e-6), key
    for name, weight in off_weights.items():
        torch.testing.assert_close(on_weights[name], weight, rtol=1e-4, atol=1e-6)


def test_under_bf16_mixed_precision_the_head_runs_under_the_same_autocast(tmp_path, student_tokenizer,
                                                                          teacher_tokenizer) -> None:  # fmt: skip
    """accelerate runs the model's forward under bf16 autocast; the loss applies the output layer outside the forward,
    under the autocast it recorded, so the run equals the logits run to bf16 precision (and is not a float32 run)."""
    runs = {}
    for mode in ("never", "always"):
        trainer = _trainer(tmp_path / mode, student_tokenizer, teacher_tokenizer, mode, bf16=True, uld_weight=0.3)
        trainer.train()
        runs[mode] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        if mode == "always":
            batch = trainer.get_batch_samples(iter([trainer.train_dataset[:2]]), 1, trainer.args.device)[0][0]
            with trainer.accelerator.autocast():
                found = hidden_logits(trainer.model, batch["batch"].student, trainer.hidden_plan().student)
            assert found.autocast == torch.bfloat16
            with torch.no_grad(), trainer.accelerator.autocast():
                expected = batch["batch"].student.logits(trainer.model).float()
            assert expected.dtype == torch.float32
            torch.testing.assert_close(found.dense(2), expected, rtol=0, atol=0)  # the model's own bf16 product
    assert runs["always"] == pytest.approx(runs["never"], rel=2e-3)


def test_auto_is_the_logits_path_on_cpu_and_on_says_why_a_side_cannot(tmp_path, student_tokenizer, teacher_tokenizer,
                                                                       caplog) -> None:  # fmt: skip
    cpu = torch.device("cpu")
    student, teacher = tiny(student_tokenizer), LocalTeacher(tiny(teacher_tokenizer, seed=1), teacher_tokenizer)
    assert hidden_plan("auto", student_model=student, teacher=teacher, device=cpu) == hidden_plan(
        "never", student_model=student, teacher=teacher, device=cpu)  # fmt: skip
    plan = hidden_plan("always", student_model=student, teacher=teacher, device=cpu)
    assert plan.student is not None and plan.teacher is not None and not plan.teacher.weight.requires_grad
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=97, n_embd=16, n_layer=1, n_head=2))
    plan = hidden_plan("always", student_model=gpt2, teacher=object(), device=cpu, sharded=None)
    assert plan.student is None and plan.teacher is None
    assert plan.notes[0].startswith("student: model type 'gpt2' is not among")
    assert plan.notes[1] == "teacher: it is a object: its rows are not a model's hidden states"
    plan = hidden_plan("always", student_model=student, teacher=teacher, device=cpu, sharded="FSDP")
    assert plan.notes == ("student: its output layer is sharded (FSDP)",) and plan.teacher is not None
    # in a run: the reason is logged once and the run trains on that side's logits
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, "always")
    trainer.teacher.model.config.model_type = "gpt2"  # as if the teacher were an architecture gold does not cover
    with caplog.at_level(logging.WARNING, logger="gold.training.trainer"):
        trainer.train()
    notes = [r.getMessage() for r in caplog.records if "loss.hidden_states" in r.getMessage()]
    assert notes == ["loss.hidden_states=always: the teacher: model type 'gpt2' is not among those whose output layer "
                     "gold reproduces (llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, cohere, granite); "
                     "that side takes its logits"]  # fmt: skip
    assert trainer.hidden_plan().student is not None and trainer.state.global_step == 3


def test_hidden_states_value_is_checked() -> None:
    with pytest.raises(ValueError, match=r"LossConfig.hidden_states must be auto, always or never, got 'yes'"):
        LossConfig(hidden_states="yes")  # type: ignore[arg-type]
    assert dataclasses.replace(LossConfig(), hidden_states="always").hidden_states == "always"
