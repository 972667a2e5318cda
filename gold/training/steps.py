"""How :class:`gold.training.trainer.GoldTrainer` builds the slices of one optimizer step, a mixin: the student's
rollouts
for the on-policy slices (one vLLM call for the step, or HF ``generate`` slice by slice), the aligned batches, the
GRPO advantages, and the step's global counts, on which every process agrees (a process that fails building its
slices stops every process, :meth:`gold.training.guard.RunGuard.agreed_totals`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from gold.data.collate import Collator, Completion
from gold.data.examples import DataError, Example, TrainBatch
from gold.rollout import Rollout, rollout_seed
from gold.rollout.vllm import VLLMGenerator
from gold.training.sft_mix import sft_tokens


class StepBatches:
    """Needs the trainer's ``args``, ``state``, ``rollout_config``, ``loss_config``, ``reward_funcs``, ``_metrics``,
    ``student_generator``, ``slice_source``, ``_prompt``, ``_advantages``, ``agreed_totals``, and the teachers'
    ``pairs``, ``routing``, ``build_parts``, ``slice_parts`` and ``slice_items``
    (:class:`gold.training.teachers.TeacherRouting`)."""

    args: Any
    state: Any
    rollout_config: Any
    loss_config: Any
    reward_funcs: list[Any]
    student_tokenizer: Any
    pairs: Any
    routing: Any
    _metrics: Any

    def step_rollouts(self, slices: Sequence[Sequence[Example]], sources: Sequence[str]) -> dict[int, list[Rollout]]:
        """The student's samples for every on-policy slice of this optimizer step.

        vLLM gets every on-policy prompt of the step in one call, each prompt seeded by (seed, step, slice,
        process, row), after the weights are pushed when due; HF ``generate`` samples slice by slice (its batch
        stays one slice) from the global RNG seeded by (seed, step, slice, process). Either way a resumed run
        samples what the straight run did.
        """
        on_policy = [i for i, source in enumerate(sources) if source == "student"]
        if not on_policy:
            return {}
        generator, step, process = self.student_generator(), self.state.global_step, self.args.process_index
        if isinstance(generator, VLLMGenerator) and generator.needs_sync(step):
            start = time.perf_counter()
            generator.sync(self.student_state_dict, step)
            self._metrics["rollout/sync_s"].append(time.perf_counter() - start)
        calls = [on_policy] if isinstance(generator, VLLMGenerator) else [[i] for i in on_policy]
        out: dict[int, list[Rollout]] = {}
        start = time.perf_counter()
        for call in calls:
            owners = [(i, row) for i in call for row in range(len(slices[i]))]
            prompts = [self._prompt("student", self.student_tokenizer, slices[i][row].prompt) for i, row in owners]
            seeds = [rollout_seed(self.args.seed, step, i, process, row) for i, row in owners]
            with torch.random.fork_rng(devices=[self.args.device] if self.args.device.type == "cuda" else []):
                torch.manual_seed(rollout_seed(self.args.seed, step, call[0], process))  # HF generate's draws
                sampled = generator.rollout(prompts, seeds=seeds)
            copies = self.rollout_config.num_generations
            for k, (i, _) in enumerate(owners):
                out.setdefault(i, []).extend(sampled[k * copies : (k + 1) * copies])
        seconds = time.perf_counter() - start
        self._metrics["rollout/engine_s"].append(seconds)
        self._metrics["rollout/tokens_per_s"].append(sum(len(r.ids) for v in out.values() for r in v) / seconds)
        return out

    def _seeded(self, slice_index: int, build: Callable[..., Any], *args: Any) -> Any:
        """``build(*args)`` (:meth:`build_batch`, or the per-teacher parts) with sampling seeded by (seed, step, slice,
        process): teacher samples are reproducible and a resumed run samples what the uninterrupted one did
        (Trainer restores its RNG state only after fetching the first batches), while the global RNG is left
        untouched."""
        step_seed = hash((self.args.seed, self.state.global_step, slice_index, self.args.process_index)) % 2**63
        devices = [self.args.device] if self.args.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(step_seed)
            return build(*args)

    def get_batch_samples(
        self, epoch_iterator: Iterator[Any], num_batches: int, device: torch.device
    ) -> tuple[list[dict[str, TrainBatch]], torch.Tensor]:
        """All slices of one optimizer step, built, and the groups of the global batch."""
        raw = []
        for _ in range(num_batches):
            try:
                raw.append(next(epoch_iterator))
            except StopIteration:
                break
        start = time.perf_counter()
        sources = [self.slice_source(i) for i in range(len(raw))]
        # rollouts first, outside the agreement: vLLM's prompt exchange and weight push are collectives of their own
        rollouts = self.step_rollouts(raw, sources)
        failure: Exception | None = None
        inputs: list[dict[str, Any]] = []
        try:
            inputs = self._slice_inputs(raw, sources, rollouts)
        except Exception as error:  # agreed on below: no process may wait in a collective for one that failed
            failure = error
        self._metrics["time/rollout_and_alignment_s"].append(time.perf_counter() - start)
        batches = [part.batch for slice_inputs in inputs for part in self.slice_parts(slice_inputs)]
        mixed = sft_tokens(batches) if self.loss_config.sft_weight else 0  # tokens SFT mixing averages over
        # (weighted) groups and SFT-mixing tokens of the global step, summed over processes with whether any failed
        groups = sum(self.slice_items(slice_inputs) for slice_inputs in inputs)
        totals = self.agreed_totals([float(groups), float(mixed)], failure, device)
        items, sft_total = totals.clamp(min=1.0).unbind()
        for slice_inputs in inputs:
            slice_inputs["sft_tokens"] = sft_total
        return inputs, items

    def _slice_inputs(self, raw: Sequence[Sequence[Example]], sources: Sequence[str],
                      rollouts: dict[int, list[Rollout]]) -> list[dict[str, Any]]:  # fmt: skip
        """This process's slices of one optimizer step: aligned batches (teacher samples drawn here for ``seq_kd``
        slices) and, on rollouts with task rewards, the GRPO advantages. Nothing here is collective, except
        sampling from a teacher that is itself sharded (``self-dynamic`` under FSDP), which the agreement does not
        cover."""
        inputs: list[dict[str, Any]] = []
        for i, examples in enumerate(raw):
            if self.routing.several:  # one part per teacher that scores rows of the slice
                parts = self._seeded(i, self.build_parts, examples, sources[i], rollouts.get(i))
                if self.reward_funcs and sources[i] == "student":
                    parts = [dataclasses.replace(p, advantages=self._advantages(p.examples, p.batch)) for p in parts]
                inputs.append({"parts": parts})
                continue
            batch = self._seeded(i, self.build_batch, examples, sources[i], rollouts.get(i))
            slice_inputs: dict[str, Any] = {"batch": batch}
            if self.reward_funcs and batch.source == "student":
                slice_inputs["advantages"] = self._advantages(examples, batch)
            inputs.append(slice_inputs)
        return inputs

    def count_items(self, batch: TrainBatch) -> int:
        """What the loss of a step is a mean over: the scored groups (end groups included)."""
        return batch.aligned.num_groups

    def build_batch(self, examples: Sequence[Example], source: str, rollouts: Sequence[Rollout] | None = None, *,
                    teacher_id: str | None = None) -> TrainBatch:  # fmt: skip
        """Prompts on both sides, completions from ``source``, aligned into a :class:`TrainBatch` for the teacher
        ``teacher_id`` (default: the first; its own collator and prompts) (``rollouts``: the student's samples of
        these prompts when ``source`` is ``"student"``, else sampled here)."""
        pair = self.pairs[teacher_id or self.routing.teacher_ids[0]]
        collator = pair.collator
        student_prompts = [self._prompt("student", self.student_tokenizer, e.prompt) for e in examples]
        teacher_prompts = [self._prompt(pair.role, pair.teacher.tokenizer, e.prompt_for_teacher) for e in examples]
        if source == "dataset":
            completions = [collator.from_text(e.completion, index=i, ended=e.ended) for i, e in enumerate(examples)]
            return collator(student_prompts, teacher_prompts, completions, source=source)
        copies = self.rollout_config.num_generations
        engine_logprobs = None
        if source == "student":
            if rollouts is None:
                rollouts = self.student_generator().rollout(student_prompts)
            completions = [collator.from_rollout(r.ids) for r in rollouts]
            if all(r.logprobs is not None for r in rollouts):
                engine_logprobs = tuple(tuple(r.logprobs or ()) for r in rollouts)
        else:  # seq_kd: this teacher's own samples, kept in its own tokens and stop id
            sampled = pair.teacher.generator(self.rollout_config).rollout(teacher_prompts)
            completions = [self._teacher_sample(r.ids, i, collator) for i, r in enumerate(sampled)]
        student_prompts = [p for p in student_prompts for _ in range(copies)]
        teacher_prompts = [p for p in teacher_prompts for _ in range(copies)]
        batch = collator(student_prompts, teacher_prompts, completions, source=source)
        return dataclasses.replace(batch, engine_logprobs=engine_logprobs)

    def _teacher_sample(self, ids: Sequence[int], index: int, collator: Collator | None = None) -> Completion:
        """A teacher sample (``seq_kd``) as a completion: the teacher (``collator``'s; default the first) keeps its
        own tokens and stop id."""
        try:
            return (collator or self.pairs[self.routing.teacher_ids[0]].collator).from_teacher_sample(ids, index=index)
        except DataError as err:
            raise DataError(f"teacher sample {index} at step {self.state.global_step}: {err}") from None
