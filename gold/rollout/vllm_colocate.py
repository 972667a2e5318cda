"""The colocated engine: an in-process ``vllm.LLM`` beside the trainer (``rollout.vllm_mode: colocate``)."""

from __future__ import annotations

import gc
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from gold.config import RolloutConfig
from gold.models.lora import save_student
from gold.rollout.vllm_engine import EngineSample, StateDict, checkpoint_tensors, import_vllm
from gold.rollout.vllm_memory import cpu_engine_memory, start_failure


class ColocatedEngine:
    """An in-process ``vllm.LLM`` started from the student's current weights (saved to a temporary folder).

    The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weights are pushed as tensors
    through the worker's ``reload_weights``, without a copy on disk. Eager mode on CPU (start-up in seconds);
    CUDA graphs on GPUs. Sleep mode (CUDA): the engine frees its memory after sampling and takes it back before.
    On CPU the KV cache is sized for ``prompts_per_call`` prompts (:mod:`gold.rollout.vllm_memory`); a start that
    fails raises :class:`gold.rollout.vllm_memory.EngineStartError`, one line naming the option to change.
    """

    def __init__(self, model: Any, tokenizer: Any, config: RolloutConfig, *, prompts_per_call: int = 1) -> None:
        vllm = import_vllm()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: weights are pushed as tensors
        device = next(model.parameters()).device
        _check_head_size(model, device)
        self.folder = tempfile.TemporaryDirectory(prefix="gold-vllm-")
        save_student(model, self.folder.name)  # a PEFT student: its merged weights, a plain model for vLLM
        tokenizer.save_pretrained(self.folder.name)
        self.sleep, self.asleep = config.vllm_enable_sleep_mode, False
        _tolerate_foreign_namespaces()
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        on_cpu = device.type == "cpu"
        memory = cpu_engine_memory(model, config, prompts_per_call=prompts_per_call) if on_cpu else {}
        try:
            with warnings.catch_warnings():  # vLLM's start-up scan touches deprecated torch names
                warnings.simplefilter("ignore", FutureWarning)
                self.llm = self._start(vllm, config, dtype, on_cpu, memory)
        except (ValueError, RuntimeError, MemoryError, OSError) as err:
            self.folder.cleanup()
            raise start_failure(err, on_cpu=on_cpu, memory=memory) from err
        self._rest()

    def _start(self, vllm: Any, config: RolloutConfig, dtype: str, on_cpu: bool, memory: dict[str, int]) -> Any:
        """``vllm.LLM``; on CPU with ``memory``'s context and KV cache size (so vLLM skips its check of
        ``gpu_memory_utilization`` against the host memory free now)."""
        return vllm.LLM(
            model=self.folder.name, dtype=dtype, **{"max_model_len": config.vllm_max_model_length, **memory},
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            tensor_parallel_size=config.vllm_tensor_parallel_size, enable_sleep_mode=self.sleep,
            enforce_eager=on_cpu, logprobs_mode="raw_logprobs", seed=0,
        )  # fmt: skip

    def _rest(self) -> None:
        """Sleep mode: free the engine's memory (weights kept in host memory) while the trainer works."""
        if self.sleep and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def sample(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int | None],
               args: dict[str, Any]) -> list[list[EngineSample]]:  # fmt: skip
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        args = dict(args)
        regex = args.pop("regex", None)
        structured = StructuredOutputsParams(regex=regex) if regex is not None else None
        params = [SamplingParams(seed=seed, structured_outputs=structured, **args) for seed in seeds]
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        self._wake()
        try:
            outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        finally:
            self._rest()
        return [[_sample_of(out) for out in output.outputs] for output in outputs]

    def load_weights(self, state: StateDict) -> None:
        self._wake()  # sampling follows at once: the engine rests after it
        tensors = checkpoint_tensors(state())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.folder.cleanup()


def _sample_of(out: Any) -> EngineSample:
    ids = list(out.token_ids)
    logprobs = [float(step[token].logprob) for step, token in zip(out.logprobs, ids, strict=True)]
    return EngineSample(ids, logprobs, out.stop_reason if isinstance(out.stop_reason, int) else None)


def _tolerate_foreign_namespaces() -> None:
    """vLLM's CPU start-up scans every loaded module for Triton kernels and reads ``vars(value).get`` of each
    attribute; llvmlite's function wrappers (numba: gold's fused kernels) answer ``vars`` with an object that has
    no ``get``, and the scan raises. Give that scan a ``vars`` that reads such objects as empty."""
    try:
        from vllm.triton_utils import dispatcher
    except ImportError:
        return

    def tolerant_vars(value: Any) -> Any:
        namespace = vars(value)
        return namespace if hasattr(namespace, "get") else {}

    dispatcher.vars = tolerant_vars  # type: ignore[attr-defined]


def _check_head_size(model: Any, device: torch.device) -> None:
    """vLLM's CPU attention runs a fixed set of head sizes; say so before the engine fails mid-start."""
    if device.type != "cpu":
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    config = model.config
    head = config.to_dict().get("head_dim") or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head not in supported:
        raise ValueError(f"vLLM's CPU attention does not run head size {head} (the student's hidden_size / "
                         f"num_attention_heads); it runs {supported}")  # fmt: skip
