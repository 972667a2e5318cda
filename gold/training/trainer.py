"""``GoldTrainer``: on-/off-policy cross-tokenizer distillation on top of ``transformers.Trainer``.

Per optimizer step the trainer fetches every gradient-accumulation slice first
(:meth:`GoldTrainer.get_batch_samples`), decides for each slice where its completions come from
(student rollout with probability ``lmbda``; else the teacher's samples when ``seq_kd``, else the
dataset), builds the aligned batches, and counts the groups of the whole global batch so the loss is
a mean over all of them however it is split across slices and processes. ``compute_loss`` then reads
as one line per stage: forwards → ``cross_tokenizer_loss`` → metrics.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from gold.config import AlignmentConfig, LossConfig, RolloutConfig
from gold.data.examples import (
    Example,
    Messages,
    TrainBatch,
    prompt_ids,
)
from gold.data.files import check_prompt_lengths, examples_from_rows
from gold.data.rendering import unequal_rendering
from gold.evaluation.callback import HeldOutEvalCallback
from gold.models.lora import peft_student, student_weights
from gold.models.stops import model_stop_rule
from gold.rollout import Generator, HFGenerator, logprob_gap
from gold.rollout.vllm import VLLMGenerator, check_vllm, refuse_zero3
from gold.teacher import LocalTeacher, Teacher
from gold.training.call_shapes import resolve_models
from gold.training.completions_log import completion_views
from gold.training.completions_log import report as report_completions
from gold.training.console import use_console_line
from gold.training.guard import RunGuard
from gold.training.hidden_states import HiddenPlan, hidden_logits, hidden_plan, teacher_hidden_logits
from gold.training.metrics import StepMetrics
from gold.training.objectives import Objectives, check_objectives
from gold.training.rewards import load_reward_funcs
from gold.training.steps import StepBatches
from gold.training.teachers import Routing, TeacherPart, TeacherRouting, build_pair, shared_logits, teacher_models
from gold.training.trl_args import from_trl_config

logger = logging.getLogger(__name__)

# TRL's keyword arguments for models and tokenizers (gold.training.call_shapes)
TRL_KEYWORDS = ("teacher_model", "processing_class", "teacher_processing_class", "model_init_kwargs",
                "teacher_model_init_kwargs")  # fmt: skip


class UnequalRenderingWarning(UserWarning):
    """Chat prompts reach one model in its chat template and the other in gold's plain format."""


def _examples(dataset: Any) -> list[Example]:
    rows = list(dataset)
    if rows and all(isinstance(row, Example) for row in rows):
        return rows
    return examples_from_rows(rows)


class GoldTrainer(StepBatches, Objectives, TeacherRouting, RunGuard, StepMetrics, Trainer):
    """Distils ``teacher`` (or several ``teachers``, each with its own tokenizer) into ``model`` (the student) across
    tokenizers.

    Args:
        model: the student causal LM.
        teacher: a :class:`gold.teacher.Teacher`, or a causal LM (wrapped in :class:`LocalTeacher`
            on the training device).
        args: ``transformers.TrainingArguments``.
        train_dataset: :class:`gold.data.examples.Example` items, or rows with ``prompt``/``completion`` or
            ``messages`` (validated up front).
        student_tokenizer: the student's fast tokenizer (saved with checkpoints).
        teacher_tokenizer: the teacher's; needed when ``teacher`` is a bare model.
        loss: loss terms and weights. rollout: ``lmbda``, ``seq_kd``, sampling. alignment: tolerances.
        student_generator: replaces the HF ``generate`` sampler (e.g. a vLLM engine).
        held_out: examples or rows scored every ``args.eval_steps`` in both directions and logged as ``eval_*``
            (:class:`gold.evaluation.callback.HeldOutEvalCallback`); ``held_out_samples`` student samples per prompt.
        peft_config: a ``peft.PeftConfig`` or a ``student.peft`` dict (``{r, alpha, dropout, target_modules}``):
            the student is wrapped in those adapters and only they train (:func:`gold.models.lora.peft_student`).
        teachers: several teachers instead of ``teacher``: ``{id: teacher}``, each a :class:`gold.teacher.Teacher` or a
            ``(causal_lm, tokenizer)`` tuple; each row's ``teacher_id`` routes it to one (gold.training.teachers).
        teacher_weights: with ``teachers``, ``{id: w}`` (w ≥ 0, one > 0): every row is scored by every teacher of
            weight > 0 and their losses are added with those weights (mixing) instead of routed.
        **kwargs: passed to ``transformers.Trainer`` (callbacks, optimizers, ...).
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the global group count itself

    def __init__(
        self,
        model: Any,
        teacher: Teacher | Any = None,
        *,
        args: TrainingArguments,
        train_dataset: Sequence[Any],
        student_tokenizer: Any = None,
        teacher_tokenizer: Any | None = None,
        loss: LossConfig | None = None,
        rollout: RolloutConfig | None = None,
        alignment: AlignmentConfig | None = None,
        student_generator: Generator | None = None,
        held_out: Sequence[Any] | None = None,
        held_out_samples: int = 1,
        reward_funcs: Sequence[Any] = (),
        eval_dataset: Sequence[Any] | None = None,
        peft_config: Any = None,
        teachers: Mapping[str, Any] | None = None,
        teacher_weights: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        loss, rollout = from_trl_config(args, loss, rollout)  # a TRL GOLDConfig / GKDConfig / DistillationConfig
        given = {key: kwargs.pop(key, None) for key in TRL_KEYWORDS}
        given.update(student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer)
        several = teachers is not None
        model, teacher, student_tokenizer, teacher_tokenizer = resolve_models(model, teacher, args, given, several)
        self.loss_config = loss or LossConfig()
        self.rollout_config = rollout or RolloutConfig()
        check_vllm(self.rollout_config, device=args.device, num_processes=args.world_size)  # before any loading
        self.reward_funcs = load_reward_funcs([*reward_funcs, *self.loss_config.reward_funcs])
        check_objectives(self.loss_config, self.rollout_config, self.reward_funcs, given=bool(reward_funcs))
        alignment_config = alignment or AlignmentConfig()
        if peft_config is not None:
            model = peft_student(model, peft_config)
        models = teacher_models(teacher, teachers, teacher_tokenizer=teacher_tokenizer, device=args.device)
        self.routing = Routing(tuple(models), teacher_weights, several=several)
        if self.routing.weights is not None and self.loss_config.sft_weight > 0:
            raise ValueError("loss.sft_weight with teacher_weights (mixing) would count each row once per teacher: "
                             "mix without SFT, or route rows (no teacher_weights)")  # fmt: skip
        self.student_tokenizer = student_tokenizer
        self.student_stop = model_stop_rule(model, student_tokenizer)
        # one pair per teacher, built once: its pair tables, collator and stop rules serve every step
        self.pairs = {teacher_id: build_pair(teacher_id, one, student_model=model, student_tokenizer=student_tokenizer,
                                             student_stop=self.student_stop, loss=self.loss_config,
                                             rollout=self.rollout_config, alignment=alignment_config,
                                             role=f"teacher/{teacher_id}" if several else "teacher")
                      for teacher_id, one in models.items()}  # fmt: skip
        first = self.pairs[self.routing.teacher_ids[0]]
        self.teacher: Teacher = first.teacher  # the one teacher (with several: the first)
        self.collator = first.collator
        self._prompt_cache: dict[tuple[str, str], list[int]] = {}
        self.streaming = isinstance(train_dataset, torch.utils.data.IterableDataset)
        if self.streaming:  # rows are read as batches need them: checked then (gold.data.files.ExampleStream)
            examples: Any = train_dataset
            # every process reads the stream and keeps its share of each batch (accelerate's IterableDatasetShard);
            # dispatching from the main process would broadcast tensors, and a batch here is a list of examples
            args.accelerator_config.dispatch_batches = False
            warning = unequal_rendering(student_tokenizer, self.teacher.tokenizer,
                                        list(itertools.islice(examples, 64)))  # fmt: skip
        else:
            examples = _examples(train_dataset)
            self.routing.check_rows(examples)
            for index, example in enumerate(examples):  # fail before training, naming the row
                for teacher_id, _ in self.routing.routes(example, index):
                    self.pairs[teacher_id].collator.from_text(example.completion, index=index, ended=example.ended)
            if getattr(train_dataset, "checked_prompt_limit", "unchecked") != self.rollout_config.max_prompt_length:
                self._check_prompt_lengths(examples, getattr(train_dataset, "labels", None))
            warning = next(filter(None, (unequal_rendering(student_tokenizer, pair.teacher.tokenizer, examples)
                                         for pair in self.pairs.values())), None)  # fmt: skip
        if warning is not None:
            warnings.warn(warning, UnequalRenderingWarning, stacklevel=2)
        self._student_generator, self._given_generator = student_generator, student_generator
        self._init_metrics()
        self._completions_logged = -1
        self._hidden_plans: dict[str, HiddenPlan] = {}
        self._shared_student: tuple[Any, Any] | None = None  # a slice's student inputs and logits (compute_loss)
        self._eval_examples = _examples(eval_dataset) if eval_dataset is not None else None
        super().__init__(model=model, args=args, train_dataset=examples,  # type: ignore[arg-type]
                         eval_dataset=self._eval_examples, data_collator=list, processing_class=student_tokenizer,
                         **kwargs)  # fmt: skip
        use_console_line(self)  # one compact line per log on the console; the whole dict in log_history
        if held_out is not None:
            self._add_held_out_eval(_examples(held_out), held_out_samples)
        self._held_out_scorer = None if self._eval_examples is None else self._scorer(self._eval_examples, 1)
        self._check_rollout_batches()

    def _check_prompt_lengths(self, examples: Sequence[Example], labels: Sequence[str] | None) -> None:
        """Every row's prompt, in the student's tokenization and in that of each teacher that scores it."""
        for pair in self.pairs.values():
            rows = [i for i, e in enumerate(examples) if pair.teacher_id in dict(self.routing.routes(e, i))]
            sides = {"student": self.student_tokenizer, "teacher": pair.teacher.tokenizer}
            check_prompt_lengths([examples[i] for i in rows], sides, limit=self.rollout_config.max_prompt_length,
                                 labels=[labels[i] if labels else f"row {i}" for i in rows],
                                 encode=lambda role, tokenizer, prompt, pair=pair: self._prompt(
                                     pair.role if role == "teacher" else role, tokenizer, prompt))  # fmt: skip

    def _check_rollout_batches(self) -> None:
        config, args = self.rollout_config, self.args
        if config.use_vllm and self.is_deepspeed_enabled:  # known only once accelerate has read its config
            refuse_zero3(self.accelerator.state.deepspeed_plugin.zero_stage)
        prompts = args.per_device_train_batch_size * args.gradient_accumulation_steps
        if config.generation_batch_size is not None and config.generation_batch_size != prompts:
            raise ValueError(
                f"rollout.generation_batch_size={config.generation_batch_size}: one optimizer step sends "
                f"per_device_train_batch_size × gradient_accumulation_steps = {prompts} prompts per process to the "
                f"engine (gold's batch counts prompts; each on-policy prompt gives num_generations rows); set it to "
                f"{prompts} or leave it unset"
            )

    def _add_held_out_eval(self, examples: list[Example], samples_per_prompt: int) -> None:
        if self.args.eval_steps is None:
            raise ValueError("held_out needs args.eval_steps (training.eval_steps in a recipe): how often to score")
        self.add_callback(self._scorer(examples, samples_per_prompt, every=int(self.args.eval_steps)))

    def _scorer(self, examples: list[Example], samples_per_prompt: int, every: int = 1) -> HeldOutEvalCallback:
        """Held-out scoring in both directions (``held_out=`` every ``eval_steps``, ``eval_dataset=`` in
        :meth:`evaluate`)."""
        if self.routing.several:
            raise ValueError("held-out evaluation scores against one teacher; with teachers= evaluate checkpoints "
                             "with `gold eval` instead")  # fmt: skip
        if not isinstance(self.teacher, LocalTeacher):
            raise ValueError("held-out evaluation needs a local teacher model (LocalTeacher), not a served or cached "
                             "one")  # fmt: skip
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or self.teacher.sharded is not None:
            raise ValueError("held-out evaluation runs on the main process alone and cannot run a sharded student "
                             "or teacher (FSDP / DeepSpeed / teacher.shard); evaluate checkpoints with `gold eval` "
                             "instead")  # fmt: skip
        limit = self.rollout_config.max_completion_length
        return HeldOutEvalCallback(self, examples, every=every, samples_per_prompt=samples_per_prompt,
                                   seed=self.args.seed, max_new_tokens=limit)  # fmt: skip

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:  # fmt: skip
        """gold's held-out metrics on ``eval_dataset`` (the constructor's, or one given here): KL(teacher‖student)
        bits per byte on its completions, and on the student's own samples the reverse KL, the teacher's bits per
        byte and the stop rate (:class:`gold.evaluation.callback.HeldOutEvalCallback`); logged and returned."""
        scorer = self._held_out_scorer if eval_dataset is None else self._scorer(_examples(eval_dataset), 1)
        if scorer is None:
            raise ValueError("evaluate() needs held-out rows: pass eval_dataset= to GoldTrainer or to evaluate()")
        was_training = self.model.training
        metrics = {key.replace("eval_", f"{metric_key_prefix}_", 1): value for key, value in scorer.scores().items()}
        self.model.train(was_training)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ---- batches: sources, rollouts, alignment, global group count ----

    def slice_source(self, slice_index: int) -> str:
        """Where slice ``slice_index`` of this optimizer step takes its completions; the same on every
        process and after a resume (seeded by the seed, the step and the slice)."""
        draw = random.Random(f"{self.args.seed}/{self.state.global_step}/{slice_index}").random()
        if draw < self.rollout_config.lmbda:
            return "student"
        return "teacher" if self.rollout_config.seq_kd else "dataset"

    def _prompt(self, role: str, tokenizer: Any, prompt: str | Messages) -> list[int]:
        if self.streaming:  # a stream's prompts are not kept: memory stays bounded however long it runs
            return prompt_ids(tokenizer, prompt)
        key = (role, prompt if isinstance(prompt, str) else repr(prompt))
        if key not in self._prompt_cache:
            self._prompt_cache[key] = prompt_ids(tokenizer, prompt)
        return self._prompt_cache[key]

    def student_generator(self) -> Generator:
        """The student's sampler: the one passed in, else vLLM (``rollout.use_vllm``), else HF ``generate``."""
        if self._student_generator is None:
            model = self.accelerator.unwrap_model(self.model)
            if self.rollout_config.use_vllm:
                step = None if self.is_fsdp_enabled else self.state.global_step  # a shard is not the weights
                prompts = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
                self._student_generator = VLLMGenerator(model, self.student_tokenizer, self.rollout_config,
                                                        self.student_stop, step=step, accelerator=self.accelerator,
                                                        prompts_per_call=prompts)  # fmt: skip
            else:
                self._student_generator = HFGenerator(model, self.student_tokenizer, self.rollout_config,
                                                      self.student_stop)  # fmt: skip
        return self._student_generator

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; a colocated vLLM engine is shut down at the end (a later call starts a new one)."""
        try:
            return super().train(*args, **kwargs)
        finally:
            built = self._student_generator
            if isinstance(built, VLLMGenerator) and built is not self._given_generator:
                built.close()
                self._student_generator = None

    def student_state_dict(self) -> dict[str, torch.Tensor]:
        """The student's full state dict with Hugging Face names: DDP unwrapped, FSDP shards gathered (to the
        host), a PEFT student's adapters merged under its base model's names; what a weight push sends to vLLM."""
        if self.is_fsdp_enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_model_state_dict(self.model, options=options)
        return student_weights(self.accelerator.unwrap_model(self.model))

    # ---- loss ----

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:  # fmt: skip
        loss, self._shared_student = None, None
        for part in self.slice_parts(inputs):  # one per teacher that scores rows of this slice
            part_loss = self._part_loss(model, part, inputs, num_items_in_batch)
            loss = part_loss if loss is None else loss + part_loss
        self._shared_student = None
        # each process holds its share of the global mean; DDP averages gradients over processes
        loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def _part_loss(self, model: Any, part: TeacherPart, inputs: dict[str, Any], num_items: Any) -> torch.Tensor:
        """One teacher's rows of a slice: forwards → ``cross_tokenizer_loss`` (weighted by the part's weight) →
        metrics."""
        batch: TrainBatch = part.batch.to(self.args.device)
        teacher = self.pairs[part.teacher_id].teacher
        plan = self.hidden_plan(part.teacher_id)
        if plan.student is None:  # mixing: the parts' student rows are often the same, one forward serves them all
            student_logits: Any = shared_logits(self._shared_student, batch.student)
            if student_logits is None:
                student_logits = batch.student.logits(model)
                self._shared_student = (batch.student, student_logits)
        else:  # the GPU path: hidden states and the output layer, no (B, T, V) logits (gold.losses.hidden)
            student_logits = hidden_logits(model, batch.student, plan.student,
                                           module=self.accelerator.unwrap_model(model))  # fmt: skip
        began, hits = time.perf_counter(), getattr(teacher, "hits", None)
        if plan.teacher is None:
            teacher_logits: Any = teacher.logits(batch.teacher)
        else:
            teacher_logits = teacher_hidden_logits(teacher, batch.teacher, plan.teacher)  # type: ignore[arg-type]
        self._sums["teacher_s"] += time.perf_counter() - began
        if hits is not None:  # a teacher cache: the rows it had (the others came from the teacher)
            self._sums["teacher_cache_hits"] += teacher.hits - hits  # type: ignore[attr-defined]
            self._sums["teacher_cache_rows"] += batch.teacher.input_ids.shape[0]
        part_inputs = {**inputs, "advantages": part.advantages}
        loss, metrics = self.objective(student_logits, teacher_logits, batch, part_inputs, num_items,
                                       weight=part.weight)  # fmt: skip
        self._record_part(part, batch, metrics, num_items)
        self._note_loss_terms(loss, metrics)
        self._maybe_log_completions(batch, student_logits, teacher_logits, teacher.tokenizer,
                                    part.teacher_id if self.routing.several else None)  # fmt: skip
        if batch.engine_logprobs is not None and self.rollout_config.vllm_structured_outputs_regex is None:
            # does the engine hold the weights being trained? (a grammar reshapes the engine's log-probs)
            gap, tokens = logprob_gap(student_logits, batch.student.completion_targets(), batch.engine_logprobs)
            self._sums["engine_gap"] += gap
            self._sums["engine_gap_tokens"] += tokens
        return loss

    def hidden_plan(self, teacher_id: str | None = None) -> HiddenPlan:
        """Which side's loss runs from hidden states (``loss.hidden_states``) with the teacher ``teacher_id``
        (default: the first), decided at the first step (when the model is placed and wrapped); a side asked for
        that cannot is logged once, with the reason."""
        teacher_id = teacher_id or self.routing.teacher_ids[0]
        if teacher_id not in self._hidden_plans:
            zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
            sharded = "FSDP" if self.is_fsdp_enabled else ("DeepSpeed ZeRO-3" if zero3 else None)
            replicated = ("nn.DataParallel runs the decoder once per GPU (launch one process per GPU instead)"
                          if self.args.n_gpu > 1 else "training.torch_compile would recompile for every step's hook"
                          if self.args.torch_compile else None)  # fmt: skip
            plan = hidden_plan(self.loss_config.hidden_states, device=self.args.device, sharded=sharded,
                               student_model=self.accelerator.unwrap_model(self.model),
                               teacher=self.pairs[teacher_id].teacher, replicated=replicated)  # fmt: skip
            self._hidden_plans[teacher_id] = plan
            for note in plan.notes:
                logger.warning("loss.hidden_states=%s: the %s; that side takes its logits",
                               self.loss_config.hidden_states, note)  # fmt: skip
        return self._hidden_plans[teacher_id]

    def _maybe_log_completions(self, batch: TrainBatch, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                               teacher_tokenizer: Any, teacher_id: str | None) -> None:  # fmt: skip
        """The first slice of every ``rollout.log_completions_steps``-th step (and the first step), main process;
        ``teacher_id``: the teacher of these rows, named in the log (several teachers)."""
        every, step = self.rollout_config.log_completions_steps, self.state.global_step
        if every is None or step % every or self._completions_logged == step or not self.is_world_process_zero():
            return
        self._completions_logged = step
        with torch.no_grad():
            views = completion_views(batch, student_logits.detach(), teacher_logits.detach(),
                                     student_tokenizer=self.student_tokenizer,
                                     teacher_tokenizer=teacher_tokenizer,
                                     rows=self.rollout_config.num_completions_to_print)  # fmt: skip
        if teacher_id is not None:
            views = [dataclasses.replace(view, source=f"{view.source}, teacher {teacher_id}") for view in views]
        report_completions(self, views, step + 1)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._metrics["time/train_s"].append(time.perf_counter() - start)
        return loss
