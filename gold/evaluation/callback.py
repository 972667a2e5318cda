"""Held-out evaluation during training, in both directions, logged beside the loss.

Every ``eval_steps`` the main process scores the student on a small held-out set:

* ``eval_forward_kl_bits_per_byte``: KL(teacher‖student) per byte on the set's completions (teacher samples
  or reference text), from exact group log-likelihoods (:func:`gold.evaluation.agreement.group_agreement`);
* ``eval_reverse_kl_bits_per_byte``, ``eval_teacher_bits_per_byte_on_student``, ``eval_stop_rate``: on the
  student's own samples for the set's prompts (:func:`gold.evaluation.own_samples.student_sample_scores`), what
  on-policy
  distillation targets.

So TensorBoard / W&B show both curves (under ``eval/``, as transformers files ``eval_*`` keys); off-policy forward
KL favours SFT by construction (DESIGN §4). The main process evaluates alone, so a sharded student (FSDP,
DeepSpeed ZeRO-3), whose forward needs every process, is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback

from gold.data.examples import Example, distinct_prompts
from gold.evaluation.agreement import AgreementCache, group_agreement
from gold.evaluation.own_samples import student_sample_scores


class HeldOutEvalCallback(TrainerCallback):
    """Scores the student of ``trainer`` every ``every`` optimizer steps and logs the figures.

    Args:
        trainer: a :class:`gold.training.trainer.GoldTrainer` with a local teacher.
        examples: held-out prompts and completions (each model renders its own prompt).
        every: evaluate every this many optimizer steps.
        samples_per_prompt: student samples per distinct prompt for the reverse direction.
        max_new_tokens: their length limit.
        seed: sampling seed (the same samples' seeds at every evaluation; the global RNG is left alone).
    """

    def __init__(self, trainer: Any, examples: Sequence[Example], *, every: int, samples_per_prompt: int = 1,
                 max_new_tokens: int = 64, seed: int = 0) -> None:  # fmt: skip
        if every < 1:
            raise ValueError(f"held-out evaluation needs eval_steps >= 1, got {every}")
        if not examples:
            raise ValueError("the held-out evaluation set is empty")
        self.trainer = trainer
        self.examples = list(examples)
        self.prompts = distinct_prompts(e.prompt for e in self.examples)
        self.every = every
        self.samples_per_prompt = samples_per_prompt
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.cache = AgreementCache()  # the teacher's forwards on the fixed set are computed once

    def scores(self) -> dict[str, float]:
        """Both directions for the student as it is now."""
        trainer = self.trainer
        student = trainer.accelerator.unwrap_model(trainer.model)
        teacher, teacher_tokenizer = trainer.teacher.model, trainer.teacher.tokenizer
        forward = group_agreement(student, trainer.student_tokenizer, teacher, teacher_tokenizer, self.examples,
                                  cache=self.cache)  # fmt: skip
        own = student_sample_scores(student, trainer.student_tokenizer, teacher, teacher_tokenizer, self.prompts,
                                    samples_per_prompt=self.samples_per_prompt, max_new_tokens=self.max_new_tokens,
                                    seed=self.seed)  # fmt: skip
        out = {"eval_forward_kl_bits_per_byte": forward.kl_bits_per_byte, "eval_stop_rate": own.stop_rate,
               "eval_student_bits_per_byte": forward.student_bits_per_byte}  # fmt: skip
        if own.reverse_kl_bits_per_byte is not None and own.teacher_bits_per_byte is not None:
            out["eval_reverse_kl_bits_per_byte"] = own.reverse_kl_bits_per_byte
            out["eval_teacher_bits_per_byte_on_student"] = own.teacher_bits_per_byte
        return out

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step % self.every == 0 and state.is_world_process_zero:
            self.trainer.log(self.scores())
