"""TRL configs as ``args`` (issue 30, item 2): every field gold has is taken, a field gold cannot honour is refused
by name, and a field set both in the TRL config and in gold's config to different values is refused."""

from __future__ import annotations

import warnings

import pytest
import torch

from gold.config import LossConfig, RolloutConfig
from gold.training.trainer import GoldTrainer
from gold.training.trl_args import from_trl_config, is_trl_config
from tests.gold.conftest import ROWS, tiny, training_args

trl_gold = pytest.importorskip("trl.experimental.gold")
trl_gkd = pytest.importorskip("trl.experimental.gkd")
trl_distillation = pytest.importorskip("trl.trainer.distillation_config")

CPU = dict(max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, logging_steps=1, report_to=[],
           save_strategy="no", use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True)  # fmt: skip


def trl_config(cls, tmp_path, **fields):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(output_dir=str(tmp_path / "run"), **CPU, **fields)


def test_the_probe_trains_with_lambda_0_beta_0_and_16_tokens(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    """GOLDConfig(lmbda=0, beta=0, max_completion_length=16) ran with gold's λ 0.5, β 0.5 and 128 tokens before."""
    args = trl_config(trl_gold.GOLDConfig, tmp_path, lmbda=0.0, beta=0.0, max_completion_length=16)
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=args, train_dataset=ROWS,
                          student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer)  # fmt: skip
    assert (trainer.rollout_config.lmbda, trainer.loss_config.beta) == (0.0, 0.0)
    assert trainer.rollout_config.max_completion_length == 16 and trainer.collator.max_completion_length == 16
    assert trainer.rollout_config.top_p == 0.95  # TRL's default, taken as TRL would run it
    drawn = []
    original = trainer.slice_source
    trainer.slice_source = lambda index: drawn.append(original(index)) or drawn[-1]
    trainer.train()
    assert drawn and set(drawn) == {"dataset"}  # λ 0: never a student rollout (λ 0.5 gave about half)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)


@pytest.mark.parametrize(
    ("module", "cls", "fields", "expected"),
    [
        ("gold", "GOLDConfig", dict(temperature=1.0, top_k=5, num_generations=1, seq_kd=True),
         {"rollout": dict(temperature=1.0, top_k=5, seq_kd=True)}),
        ("gold", "GOLDConfig", dict(use_uld_loss=True, uld_distillation_weight=0.7),
         {"loss": dict(hybrid_weight=0.0, uld_weight=0.7)}),
        ("gold", "GOLDConfig", dict(use_uld_loss=True, uld_use_hybrid_loss=True, uld_hybrid_matched_weight=0.8,
                                    uld_hybrid_unmatched_weight=0.2, uld_teacher_temperature=2.0),
         {"loss": dict(hybrid_weight=1.0, hybrid_weighting="fixed", hybrid_matched_weight=0.8,
                       hybrid_unmatched_weight=0.2, teacher_temperature=2.0)}),
        ("gkd", "GKDConfig", dict(lmbda=0.25, beta=0.1, max_new_tokens=24),
         {"rollout": dict(lmbda=0.25, max_completion_length=24), "loss": dict(beta=0.1)}),
        ("distillation", "DistillationConfig", dict(max_completion_length=20, top_k=3),
         {"rollout": dict(max_completion_length=20, top_k=3), "loss": dict(beta=1.0)}),
    ],
)  # fmt: skip
def test_every_mapped_field_is_taken(tmp_path, module, cls, fields, expected) -> None:
    source = {"gold": trl_gold, "gkd": trl_gkd, "distillation": trl_distillation}[module]
    args = trl_config(getattr(source, cls), tmp_path, **fields)
    assert is_trl_config(args) and not is_trl_config(training_args(tmp_path))
    loss, rollout = from_trl_config(args, None, None)
    for section, values in expected.items():
        config = loss if section == "loss" else rollout
        assert {key: getattr(config, key) for key in values} == values


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (dict(uld_crossentropy_weight=0.5), "GOLDConfig.uld_crossentropy_weight=0.5 cannot be honoured: .*sft_weight"),
        (dict(packing=True), "GOLDConfig.packing=True cannot be honoured"),
        (dict(use_extended_uld=False), "GOLDConfig.use_extended_uld=False"),
        (dict(vllm_model_impl="transformers"), "GOLDConfig.vllm_model_impl='transformers'"),
        (dict(loss_type="dft"), "GOLDConfig.loss_type='dft'"),
    ],
)
def test_a_field_gold_cannot_honour_is_refused_by_name(tmp_path, fields, named) -> None:
    with pytest.raises(ValueError, match=named):
        from_trl_config(trl_config(trl_gold.GOLDConfig, tmp_path, **fields), None, None)


def test_distillation_config_sampling_fields_gold_lacks_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"DistillationConfig.repetition_penalty=1.2"):
        from_trl_config(trl_config(trl_distillation.DistillationConfig, tmp_path, repetition_penalty=1.2), None, None)


def test_both_sides_setting_a_field_differently_is_refused(tmp_path) -> None:
    args = trl_config(trl_gold.GOLDConfig, tmp_path, beta=0.2)
    with pytest.raises(ValueError, match=r"GOLDConfig.beta=0.2 and loss=LossConfig\(beta=0.7\) disagree"):
        from_trl_config(args, LossConfig(beta=0.7), None)
    loss, _ = from_trl_config(args, LossConfig(beta=0.2, sft_weight=0.3), None)  # agreeing, and gold-only fields kept
    assert (loss.beta, loss.sft_weight) == (0.2, 0.3)
    _, rollout = from_trl_config(trl_config(trl_gold.GOLDConfig, tmp_path), None, RolloutConfig(lmbda=1.0))
    assert rollout.lmbda == 1.0  # set in gold's config only: kept; unset fields take TRL's values
    assert rollout.max_completion_length == 128 and rollout.max_prompt_length == 1024 - 128


def test_plain_training_arguments_leave_gold_configs_alone(tmp_path) -> None:
    loss, rollout = LossConfig(beta=0.3), RolloutConfig(lmbda=0.1)
    assert from_trl_config(training_args(tmp_path), loss, rollout) == (loss, rollout)


def test_the_readme_trl_script_runs_with_trls_own_defaults(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    """README "Coming from TRL": models by id, a GOLDConfig with TRL's defaults (gradient checkpointing on, logging
    every 10 steps; bf16 off only because this is a CPU), eval_dataset and evaluate()."""
    folders = []
    for name, tokenizer, seed in (("student", student_tokenizer, 0), ("teacher", teacher_tokenizer, 1)):
        folders.append(str(tmp_path / name))
        tiny(tokenizer, seed=seed).save_pretrained(folders[-1])
        tokenizer.save_pretrained(folders[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = trl_gold.GOLDConfig(output_dir=str(tmp_path / "out"), lmbda=0.5, beta=0.0, max_completion_length=8,
                                   use_uld_loss=True, uld_use_hybrid_loss=True, max_steps=2,
                                   per_device_train_batch_size=2, use_cpu=True, bf16=False, report_to=[])  # fmt: skip
    assert args.gradient_checkpointing
    trainer = GoldTrainer(model=folders[0], teacher_model=folders[1], args=args, train_dataset=ROWS,
                          eval_dataset=ROWS[:2])  # fmt: skip
    assert (trainer.loss_config.hybrid_weight, trainer.loss_config.beta, trainer.rollout_config.lmbda) == (1, 0, 0.5)
    trainer.train()
    scores = trainer.evaluate()
    assert scores["eval_forward_kl_bits_per_byte"] > 0 and "eval_reverse_kl_bits_per_byte" in scores
