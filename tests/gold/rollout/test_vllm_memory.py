"""Sizing a colocated CPU engine (pure arithmetic) and what a failed start says; no vLLM needed (a fake ``vllm.LLM``
that fails as vLLM does). The real start with the default settings is in test_vllm.py."""

from __future__ import annotations

import types

import pytest

from gold.cli import main
from gold.config import RolloutConfig
from gold.rollout.vllm_memory import (
    GIB,
    EngineStartError,
    cpu_engine_memory,
    cpu_kv_cache_bytes,
    engine_max_model_len,
    kv_bytes_per_token,
)
from tests.gold.cli.test_commands import _recipe
from tests.gold.conftest import tiny

# vLLM's refusal on the machine (vllm/v1/worker/cpu_worker.py), two lines as vLLM words it
VLLM_REFUSAL = ("Available memory on node 0 (18.9/23.54 GiB) on startup is less than desired CPU memory "
                "utilization (0.9, 21.19 GiB).\nOn the CPU backend, the `--gpu-memory-utilization` flag")  # fmt: skip


def test_the_cache_holds_every_sequence_of_one_call_in_whole_blocks() -> None:
    # 8 prompts × 4 generations of up to 200 tokens: 32 sequences of 2 blocks (256 tokens) at 1 KiB a token
    size = cpu_kv_cache_bytes(sequences=32, max_model_len=200, bytes_per_token=1024, free_bytes=100 * GIB)
    assert size == 32 * 256 * 1024


def test_the_cache_takes_at_most_half_the_free_memory_and_at_least_one_sequence() -> None:
    capped = cpu_kv_cache_bytes(sequences=10_000, max_model_len=4096, bytes_per_token=1 << 17, free_bytes=8 * GIB)
    assert capped == 4 * GIB
    floor = cpu_kv_cache_bytes(sequences=1, max_model_len=4096, bytes_per_token=1 << 20, free_bytes=GIB)
    assert floor == 4096 * (1 << 20)  # vLLM refuses a cache that cannot hold one whole sequence


def test_kv_bytes_per_token_counts_k_and_v_of_every_layer(student_tokenizer) -> None:
    model = tiny(student_tokenizer)  # hidden 16, 1 layer, 4 heads of 4, float32
    config = model.config
    expected = 2 * config.num_hidden_layers * config.num_key_value_heads * (16 // config.num_attention_heads) * 4
    assert kv_bytes_per_token(config, 4) == expected == 128


def test_the_context_is_the_prompt_and_completion_limits_within_the_model() -> None:
    assert engine_max_model_len(RolloutConfig(max_prompt_length=100, max_completion_length=28), 4096) == 128
    assert engine_max_model_len(RolloutConfig(max_prompt_length=8000, max_completion_length=200), 4096) == 4096
    assert engine_max_model_len(RolloutConfig(max_prompt_length=None), 4096) == 4096
    assert engine_max_model_len(RolloutConfig(vllm_max_model_length=64), 4096) == 64


def test_a_set_vllm_cpu_kvcache_space_is_left_to_vllm(student_tokenizer, monkeypatch) -> None:
    model, config = tiny(student_tokenizer), RolloutConfig(max_prompt_length=20, max_completion_length=8)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert cpu_engine_memory(model, config, prompts_per_call=4) == {"max_model_len": 28}
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    sized = cpu_engine_memory(model, config, prompts_per_call=4)
    assert sized == {"max_model_len": 28, "kv_cache_memory_bytes": 4 * 128 * 128}  # 4 sequences of one block


def _failing_vllm(monkeypatch, calls: list[dict]) -> None:
    """A ``vllm`` whose ``LLM`` records its arguments and refuses to start as vLLM does on a busy CPU machine."""
    import gold.rollout.vllm
    import gold.rollout.vllm_colocate as colocate

    def refuse(**kwargs):
        calls.append(kwargs)
        raise ValueError(VLLM_REFUSAL)

    fake = types.SimpleNamespace(LLM=refuse)
    for module in (gold.rollout.vllm, colocate):
        monkeypatch.setattr(module, "import_vllm", lambda: fake)
    monkeypatch.setattr(colocate, "_check_head_size", lambda model, device: None)
    monkeypatch.setattr(colocate, "_tolerate_foreign_namespaces", lambda: None)


def test_a_failed_start_is_one_line_naming_the_option(student_tokenizer, monkeypatch) -> None:
    from gold.rollout.vllm_colocate import ColocatedEngine

    calls: list[dict] = []
    _failing_vllm(monkeypatch, calls)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    config = RolloutConfig(use_vllm=True, max_prompt_length=20, max_completion_length=8, num_generations=2)
    with pytest.raises(EngineStartError) as info:
        ColocatedEngine(tiny(student_tokenizer), student_tokenizer, config, prompts_per_call=4)
    message = str(info.value)
    assert "\n" not in message and "less than desired CPU memory utilization" in message
    assert "VLLM_CPU_KVCACHE_SPACE=GiB" in message
    assert calls[0]["kv_cache_memory_bytes"] == 8 * 128 * 128 and calls[0]["max_model_len"] == 28
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "40")
    with pytest.raises(EngineStartError, match=r"VLLM_CPU_KVCACHE_SPACE=40 \(GiB\) sets the KV cache: lower it"):
        ColocatedEngine(tiny(student_tokenizer), student_tokenizer, config)
    assert "kv_cache_memory_bytes" not in calls[1]


def test_gold_train_ends_a_failed_engine_start_in_one_line(tmp_path, capsys, monkeypatch) -> None:
    _failing_vllm(monkeypatch, [])
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(_recipe(tmp_path)), "rollout.use_vllm=true", "rollout.lmbda=1.0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # the rest: the build's stage lines (every check had passed) and save_pretrained's progress
    lines = [line for line in err.splitlines() if line.startswith("gold") and not line.startswith("gold train: [")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("gold train: at step 1: the vLLM engine did not start: Available memory"), lines[0]
    assert "VLLM_CPU_KVCACHE_SPACE" in lines[0]
