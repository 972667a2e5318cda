"""What :class:`gold.training.trainer.GoldTrainer` minimises on a micro-batch, a mixin: the divergence terms
(:func:`gold.losses.cross_tokenizer_loss`), OPD-RL on student rollouts (:mod:`gold.losses.opd`, with GRPO advantages
from task rewards, :mod:`gold.training.rewards`) and SFT mixing on completions the student did not write
(:mod:`gold.training.sft_mix`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gold.config import LossConfig, RolloutConfig
from gold.data.examples import Example, TrainBatch
from gold.losses import cross_tokenizer_loss
from gold.losses.opd import opd_loss
from gold.training.rewards import compute_rewards, group_advantages
from gold.training.sft_mix import completion_cross_entropy


class Objectives:
    """Needs ``loss_config``, ``rollout_config``, ``reward_funcs`` and the metrics mixin's ``_record``/``_sums``."""

    loss_config: LossConfig
    rollout_config: RolloutConfig
    reward_funcs: list[Any]
    _metrics: Any
    _sums: Any

    def objective(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: TrainBatch,
                  inputs: dict[str, Any], num_items: Any, weight: float = 1.0,
                  ) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
        """``(loss, metrics)``: this slice's share of the step's mean, every configured term added; ``weight``: the
        teacher's mixing weight on the distillation terms (:mod:`gold.training.teachers`; SFT mixing has none)."""
        loss, metrics = self._distillation_loss(student_logits, teacher_logits, batch, num_items,
                                                inputs.get("advantages"))  # fmt: skip
        if weight != 1.0:
            loss = loss * weight
        self._record(metrics, batch, num_items, weight=weight)  # type: ignore[attr-defined]
        if self.loss_config.sft_weight > 0 and batch.source != "student":  # SFT mixing: never on rollouts
            total, tokens = completion_cross_entropy(student_logits, batch)
            loss = loss + self.loss_config.sft_weight * total / inputs["sft_tokens"]
            self._sums["sft_ce"] += float(total.detach())
            self._sums["sft_tokens"] += tokens
            metrics = {**metrics, "loss/sft": float(total.detach()) / max(tokens, 1)}
        return loss, metrics

    def _distillation_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: TrainBatch,
                           num_items: Any, advantages: torch.Tensor | None,
                           ) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
        """The divergence terms (:func:`cross_tokenizer_loss`, unchecked: checked on every process before the step)
        and, on rollouts, OPD-RL (:func:`gold.losses.opd.opd_loss`)."""
        config = self.loss_config
        terms = (config.hybrid_weight, config.uld_weight, config.span_weight, config.byte_marginal_weight,
                 config.projection_weight)  # fmt: skip
        if any(terms):
            loss, metrics = cross_tokenizer_loss(student_logits, teacher_logits, batch.aligned, config,
                                                 num_items_in_batch=num_items, check=False)  # fmt: skip
        else:  # OPD-RL alone: off-policy slices add nothing (a zero that keeps the graph)
            graph = student_logits if isinstance(student_logits, torch.Tensor) else student_logits.empty_view(
                torch.float32)  # fmt: skip
            loss, metrics = graph.sum() * 0.0, {}
        if config.opd_weight > 0 and batch.source == "student":
            opd, opd_metrics = opd_loss(student_logits, teacher_logits, batch.aligned, alpha=config.opd_alpha,
                                        base_advantages=advantages, num_items_in_batch=num_items)  # fmt: skip
            loss = loss + config.opd_weight * opd
            metrics = {**metrics, **opd_metrics, "loss/opd": float(opd.detach())}
        return loss, metrics

    def _advantages(self, examples: Sequence[Example], batch: TrainBatch) -> torch.Tensor:
        """GRPO advantages of one on-policy slice's completions from the task rewards (gold.training.rewards)."""
        copies = self.rollout_config.num_generations
        repeated = [e for e in examples for _ in range(copies)]
        keys = sorted({key for e in examples for key in e.fields})
        columns = {key: [e.fields.get(key) for e in repeated] for key in keys}
        rewards = compute_rewards(self.reward_funcs, [e.prompt for e in repeated], batch.completions, columns,
                                  labels=[e.label for e in repeated])  # fmt: skip
        for column, func in enumerate(self.reward_funcs):
            self._metrics[f"rewards/{getattr(func, '__name__', column)}"].append(float(rewards[:, column].nanmean()))
        advantages = group_advantages(rewards, copies, self.loss_config.reward_weights)
        # prompts whose completions all got the same reward: GRPO learns nothing from them
        tied = (advantages.view(-1, copies) == 0).all(dim=1)
        self._metrics["rewards/tied_groups"].append(float(tied.double().mean()))
        self._metrics["rewards/advantage_abs_mean"].append(float(advantages.abs().mean()))
        return advantages


def check_objectives(loss: LossConfig, rollout: RolloutConfig, reward_funcs: Sequence[Any], *, given: bool) -> None:
    """Refuse objective settings that would train on nothing or on the wrong samples (``given``: reward functions
    were passed to the trainer, not only named in the recipe)."""
    if reward_funcs and rollout.num_generations < 2:
        raise ValueError("reward functions give GRPO advantages within each prompt's completions: set "
                         f"rollout.num_generations >= 2 (got {rollout.num_generations})")  # fmt: skip
    if given and loss.opd_weight <= 0:
        raise ValueError("reward_funcs enter the loss through OPD-RL: set loss.opd_weight > 0")
    if loss.reward_weights is not None and len(loss.reward_weights) != len(reward_funcs):
        raise ValueError(f"loss.reward_weights has {len(loss.reward_weights)} weights for {len(reward_funcs)} reward "
                         "functions (recipe and reward_funcs= together); give one per function")  # fmt: skip
    if loss.opd_weight > 0 and rollout.lmbda == 0:
        raise ValueError("loss.opd_weight trains on student rollouts, and rollout.lmbda is 0 (none): set lmbda "
                         "> 0 (1 for OPD-RL alone)")  # fmt: skip
    if loss.opd_weight > 0 and rollout.use_vllm and rollout.vllm_sync_frequency > 1:
        raise ValueError(f"loss.opd_weight takes one update per generation with the sampling weights' ratio 1, but "
                         f"rollout.vllm_sync_frequency is {rollout.vllm_sync_frequency}: rollouts would come from "
                         "older weights; set it to 1")  # fmt: skip
    if loss.opd_weight > 0 and (rollout.temperature != 1 or rollout.top_p < 1 or rollout.top_k > 0):
        # REINFORCE's score function is ∇log p_S of the sampled sequence: samples from a tempered or truncated
        # policy make it a gradient of another objective, biased for the student's own
        raise ValueError("loss.opd_weight's policy gradient is unbiased only for samples of the student's own "
                         f"distribution, but rollout.temperature is {rollout.temperature}, top_p {rollout.top_p}, "
                         f"top_k {rollout.top_k}: set rollout.temperature: 1.0, top_p: 1.0, top_k: 0")  # fmt: skip
    if loss.sft_weight > 0 and rollout.lmbda >= 1 and not rollout.seq_kd:
        raise ValueError("loss.sft_weight trains on completions the student did not write, but with rollout.lmbda 1 "
                         "and no seq_kd every slice is a student rollout: lower lmbda or set seq_kd")  # fmt: skip
