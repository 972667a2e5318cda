"""How much memory a colocated vLLM engine asks for, and what a failed start says.

On CPU, vLLM reads ``gpu_memory_utilization`` as the share of *host* memory to reserve and refuses to start when
less than that share is free (``vllm/v1/worker/cpu_worker.py``: "Available memory on node 0 (18.9/23.54 GiB) on
startup is less than desired CPU memory utilization (0.9, 21.19 GiB)"); the check is skipped when the KV cache has
an explicit size (``kv_cache_memory_bytes``, or ``VLLM_CPU_KVCACHE_SPACE`` in GiB, which wins). So on CPU gold gives
the engine an explicit size from what the rollouts need: every sequence of one engine call held at once,
``prompts × num_generations × (max_prompt_length + max_completion_length)`` tokens, capped at half the memory free
now and never below one whole ``max_model_len`` sequence (vLLM refuses a cache that cannot hold one).

Shape legend: none (counts of tokens and bytes).
"""

from __future__ import annotations

import math
import os
from typing import Any

from gold.config import RolloutConfig

CPU_KV_ENV = "VLLM_CPU_KVCACHE_SPACE"
BLOCK_TOKENS = 128  # vLLM allocates the cache in blocks; a sequence may leave its last one part empty
FREE_SHARE = 0.5  # at most this share of the memory free at start goes to the cache (the trainer needs the rest)
GIB = 1 << 30


class EngineStartError(RuntimeError):
    """The vLLM engine did not start; the message is one line with vLLM's reason and the option to change."""


def kv_bytes_per_token(model_config: Any, dtype_bytes: int) -> int:
    """Bytes of K and V for one token across all layers: 2 × layers × kv heads × head size × dtype bytes."""
    config = model_config.to_dict()
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes


def engine_max_model_len(config: RolloutConfig, model_max: int) -> int:
    """The engine's context: ``vllm_max_model_length``, else prompt + completion limits (gold never sends more:
    longer prompts are refused), at most the model's own ``model_max``."""
    if config.vllm_max_model_length is not None:
        return config.vllm_max_model_length
    if config.max_prompt_length is None:
        return model_max
    return min(model_max, config.max_prompt_length + config.max_completion_length)


def cpu_kv_cache_bytes(*, sequences: int, max_model_len: int, bytes_per_token: int, free_bytes: int) -> int:
    """The KV cache for ``sequences`` sequences of up to ``max_model_len`` tokens held at once (each rounded up to
    whole blocks), capped at ``FREE_SHARE`` of ``free_bytes`` but never below one sequence."""
    per_sequence = math.ceil(max_model_len / BLOCK_TOKENS) * BLOCK_TOKENS * bytes_per_token
    wanted = max(1, sequences) * per_sequence
    return max(per_sequence, min(wanted, int(FREE_SHARE * free_bytes)))


def cpu_engine_memory(model: Any, config: RolloutConfig, *, prompts_per_call: int) -> dict[str, int]:
    """``vllm.LLM`` arguments that size a CPU engine (``max_model_len``, ``kv_cache_memory_bytes``); the KV size is
    left to vLLM when the user set ``VLLM_CPU_KVCACHE_SPACE``."""
    import psutil

    model_max = int(model.config.to_dict().get("max_position_embeddings") or 2048)
    length = engine_max_model_len(config, model_max)
    if os.environ.get(CPU_KV_ENV):
        return {"max_model_len": length}
    dtype_bytes = next(model.parameters()).element_size()
    sequences = prompts_per_call * config.num_generations
    size = cpu_kv_cache_bytes(sequences=sequences, max_model_len=length, free_bytes=psutil.virtual_memory().available,
                              bytes_per_token=kv_bytes_per_token(model.config, dtype_bytes))  # fmt: skip
    return {"max_model_len": length, "kv_cache_memory_bytes": size}


def start_failure(err: BaseException, *, on_cpu: bool, memory: dict[str, int]) -> EngineStartError:
    """One line: vLLM's reason (first 300 characters, on one line) and the option to change."""
    reason = " ".join(str(err).split())[:300] or type(err).__name__
    if not on_cpu:
        fix = ("if other processes hold GPU memory lower rollout.vllm_gpu_memory_utilization (now the engine's share "
               "of the GPU), or lower rollout.vllm_max_model_length")  # fmt: skip
    elif os.environ.get(CPU_KV_ENV):
        fix = f"{CPU_KV_ENV}={os.environ[CPU_KV_ENV]} (GiB) sets the KV cache: lower it, or unset it (gold sizes it)"
    else:
        size = memory.get("kv_cache_memory_bytes", 0) / GIB
        fix = (f"gold sized the KV cache at {size:.2f} GiB for generation_batch_size × num_generations sequences of "
               f"{memory.get('max_model_len')} tokens; set {CPU_KV_ENV}=GiB to choose it, or lower "
               "rollout.max_prompt_length / max_completion_length / vllm_max_model_length")  # fmt: skip
    return EngineStartError(f"the vLLM engine did not start: {reason}; {fix}")
