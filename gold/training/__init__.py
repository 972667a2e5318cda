"""``GoldTrainer`` and its parts.

The trainer (:mod:`gold.training.trainer`) and what it is made of: the per-step slices and rollouts
(:mod:`gold.training.steps`), several teachers routed or mixed per row (:mod:`gold.training.teachers`), the
objectives (:mod:`gold.training.objectives`: distillation, OPD-RL, SFT mixing in
:mod:`gold.training.sft_mix`, rewards in :mod:`gold.training.rewards`), the logged metrics
(:mod:`gold.training.metrics`), the non-finite and checkpoint guards (:mod:`gold.training.guard`), which side runs
from hidden states (:mod:`gold.training.hidden_states`), the completion logs (:mod:`gold.training.completions_log`)
and the SFT baseline on the same data path (:mod:`gold.training.baselines`).

Imports: every wing below it (alignment, models, data, losses, rollout, teacher, evaluation) and this wing; never
``gold.cli``.
"""
