"""Student rollouts on vLLM: an in-process engine per training process (``colocate``) or a server (``server``).

The facts behind each choice are in ``shared/VLLM.md``. In short:

* prompts go in as token ids (never text); ``allowed_token_ids`` = :func:`gold.rollout.spellable_ids` (text tokens
  and stop ids), so the engine never samples a padding row or a non-stop special; ``n = num_generations``; one
  seed per prompt from (seed, step, slice, process, row), so a resumed run samples what the straight run did;
  completions are cut by the student's :class:`gold.models.stops.StopRule`;
* the engine reports the raw log-probability of each sampled token (``logprobs_mode="raw_logprobs"``), which the
  trainer compares with the student's own (``rollout/engine_logprob_gap``): ~0 when the engine holds the
  current weights;
* weights are pushed with vLLM's worker ``reload_weights`` (in place, layer by layer, re-running the
  post-load processing), which also works on the CPU build, where ``load_weights`` leaves stale prepacked
  weights; then the prefix cache is reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from gold.config import RolloutConfig
from gold.data.examples import logit_rows
from gold.models.stops import StopRule, model_stop_rule
from gold.rollout.base import Rollout, spellable_ids
from gold.rollout.vllm_engine import EngineSample, StateDict, import_vllm


def check_vllm(config: RolloutConfig, *, device: torch.device, num_processes: int = 1,
               deepspeed_stage: int | None = None) -> None:  # fmt: skip
    """Refuses, before any training, a vLLM set-up that cannot run here, saying why."""
    if not config.use_vllm:
        return
    refuse_zero3(deepspeed_stage)
    if config.vllm_mode == "server":
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
    if num_processes > 1:
        raise ValueError(f"rollout.vllm_mode: colocate with {num_processes} processes: gold starts one in-process "
                         "engine for one training process (several colocated engines need vLLM's external launcher, "
                         "not built or tested yet); use vllm_mode: server")  # fmt: skip


def refuse_zero3(deepspeed_stage: int | None) -> None:
    """vLLM rollouts need the full student weights, which gold cannot gather from DeepSpeed ZeRO-3 partitions yet."""
    if deepspeed_stage == 3:
        raise ValueError("rollout.use_vllm with DeepSpeed ZeRO-3: gold cannot gather the partitioned student weights "
                         "to push into vLLM yet; use FSDP or ZeRO-2, or rollouts with HF generate")  # fmt: skip


class Engine(Protocol):
    """A vLLM engine as the generator needs it."""

    def sample(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int | None],
               args: dict[str, Any]) -> list[list[EngineSample]]:  # fmt: skip
        """For each prompt, its ``n`` samples (``seeds``: one per prompt; None draws fresh randomness)."""
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
        step: the optimizer step whose weights the engine holds when it is built from ``model`` (None: unknown,
            push before the first rollout).
        accelerator: with several processes in server mode, the main process sends every process's prompts and
            weights, and hands each its samples back.
        prompts_per_call: prompts of one engine call (one optimizer step's); a colocated CPU engine sizes its KV
            cache for them × ``num_generations``.
    """

    def __init__(self, model: Any, tokenizer: Any, config: RolloutConfig, stop: StopRule | None = None, *,
                 engine: Engine | None = None, step: int | None = 0, accelerator: Any = None,
                 prompts_per_call: int | None = None) -> None:  # fmt: skip
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
            from gold.rollout.vllm_colocate import ColocatedEngine

            prompts = prompts_per_call or config.generation_batch_size or 1
            engine = ColocatedEngine(model, tokenizer, config, prompts_per_call=prompts)
            self.synced_step = step
        self.engine = engine  # None on the other processes in server mode
        self.calls: list[int] = []  # prompts of each engine call (one call per optimizer step with on-policy slices)

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
        """``num_generations`` samples per prompt, in prompt order, in one engine call (``seeds``: one per prompt;
        None: unseeded, fresh samples on every call)."""
        chosen: list[int | None] = [None] * len(prompts) if seeds is None else list(seeds)
        if len(chosen) != len(prompts):
            raise ValueError(f"rollout got {len(prompts)} prompts but {len(chosen)} seeds; give one seed per prompt")
        samples = self._sample([list(p) for p in prompts], chosen)
        self.calls.append(len(prompts))
        return [self._cut(sample) for per_prompt in samples for sample in per_prompt]

    def _sample(self, prompts: list[list[int]], seeds: list[int | None]) -> list[list[EngineSample]]:
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

    def _cut(self, sample: EngineSample) -> Rollout:
        ids, logprobs = list(sample.ids), list(sample.logprobs)
        if len(logprobs) != len(ids):
            raise RuntimeError(f"the vLLM engine returned {len(ids)} sampled ids with {len(logprobs)} log-probs; "
                               "gold asks for logprobs=0 (start a server with `gold vllm-serve`)")  # fmt: skip
        if sample.stop_id is not None and (not ids or ids[-1] != sample.stop_id):  # a server may leave it out
            ids.append(sample.stop_id)
            logprobs.append(float("nan"))
        kept = self.stop.cut(ids)
        return Rollout(kept, logprobs[: len(kept)])

    def close(self) -> None:
        """Shuts a colocated engine down and frees its memory; the next rollout would need a new generator."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def needs_sync(self, step: int) -> bool:
        """Whether the engine's weights must be replaced before sampling at optimizer step ``step``: never pushed,
        or pushed ``vllm_sync_frequency`` or more steps ago (TRL's rule), so samples come from weights at most
        ``vllm_sync_frequency`` − 1 steps old. It is asked only at steps with an on-policy slice: ``step %
        frequency == 0`` skipped every push that fell on a step without one (weights up to 51 steps old at λ 0.5,
        frequency 4). A resumed run starts its engine from the current weights and counts from there: with a
        frequency above 1 it samples from other weights than the straight run did (with 1, the same)."""
        last = self.synced_step
        return last is None or step - last >= self.config.vllm_sync_frequency

    def sync(self, state: StateDict, step: int) -> None:
        """Pushes the student's weights (``state()``: a full state dict with Hugging Face names) into the engine."""
        if self.accelerator is None:
            assert self.engine is not None
            self.engine.load_weights(state)
        else:  # every process takes part in gathering the weights; the main one sends them
            weights = state()
            if self.engine is not None:
                self.engine.load_weights(lambda: weights)
            self.accelerator.wait_for_everyone()
        self.synced_step = step
