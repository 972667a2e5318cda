"""Task rewards for OPD-RL (``loss.reward_funcs``): TRL GRPO's reward-function signature and group-normalised
advantages, so a reward written for TRL's standard (text) format works here unchanged; chat rows pass their prompt
as the tuple of turns and the completion as text (TRL's conversational format passes message lists instead).

A reward function is called once per on-policy slice as ``f(prompts=..., completions=..., **columns)``: the prompts
and the student's completion texts (one entry per completion, ``num_generations`` consecutive ones per prompt) and
every other column of the rows as a list. It returns one float (or None: "cannot score") per completion. The
advantage of a completion is its weighted reward minus its prompt group's mean, divided by the group's standard
deviation (Bessel-corrected) + 1e-4 (TRL 1.16's defaults: ``scale_rewards="group"``,
``multi_objective_aggregation="sum_then_normalize"``); a completion no function could score gets 0.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

RewardFunc = Callable[..., Sequence[float | None]]


class RewardError(ValueError):
    """A reward function that cannot be loaded or returned something unusable; the message names it."""


def load_reward_funcs(specs: Sequence[str | RewardFunc]) -> list[RewardFunc]:
    """Callables as they are; ``"package.module:function"`` strings imported, from the installed packages or the
    working directory (``examples.rewards:names_the_answer`` from the repository root), naming what is missing."""
    funcs = []
    for spec in specs:
        if callable(spec):
            funcs.append(spec)
            continue
        module_name, sep, name = str(spec).partition(":")
        if not sep or not module_name or not name:
            raise RewardError(f"reward function {spec!r} must look like 'package.module:function'")
        if os.getcwd() not in sys.path:  # a recipe's module next to it, as `python -m` would find it
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise RewardError(f"reward function {spec!r}: module {module_name!r} cannot be imported ({err})") from None
        func = getattr(module, name, None)
        if not callable(func):
            raise RewardError(f"reward function {spec!r}: {module_name!r} has no function {name!r}")
        funcs.append(func)
    return funcs


def _name(func: RewardFunc) -> str:
    return getattr(func, "__name__", type(func).__name__)


def compute_rewards(funcs: Sequence[RewardFunc], prompts: Sequence[Any], completions: Sequence[str],
                    columns: Mapping[str, Sequence[Any]]) -> torch.Tensor:  # fmt: skip
    """(N, F) float64 rewards, NaN where a function returned None; raises :class:`RewardError` naming the function
    on a wrong length, a non-number or a non-finite reward."""
    out = torch.full((len(completions), len(funcs)), math.nan, dtype=torch.float64)
    for column, func in enumerate(funcs):
        values = list(func(prompts=list(prompts), completions=list(completions), **columns))
        if len(values) != len(completions):
            raise RewardError(f"reward function {_name(func)!r} returned {len(values)} rewards for "
                              f"{len(completions)} completions; return one per completion")  # fmt: skip
        for row, value in enumerate(values):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RewardError(f"reward function {_name(func)!r} returned {value!r} for completion {row}; "
                                  "rewards are finite numbers (or None: cannot score)")  # fmt: skip
            out[row, column] = float(value)
    return out


def _nanstd(values: torch.Tensor) -> torch.Tensor:
    """Bessel-corrected standard deviation along the last dimension, ignoring NaNs (NaN below two values)."""
    mean = torch.nanmean(values, dim=-1, keepdim=True)
    count = (~values.isnan()).sum(dim=-1, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=-1, keepdim=True) * count / (count - 1)
    return torch.where(count > 1, variance, torch.full_like(variance, math.nan)).sqrt().squeeze(-1)


def group_advantages(rewards_per_func: torch.Tensor, num_generations: int,
                     weights: Sequence[float] | None = None) -> torch.Tensor:  # fmt: skip
    """(N,) advantages from (N, F) rewards: weighted sum, minus the prompt group's mean, over its std + 1e-4."""
    if rewards_per_func.shape[0] % num_generations:
        raise RewardError(f"{rewards_per_func.shape[0]} completions do not split into groups of {num_generations}")
    weight = torch.tensor(list(weights) if weights else [1.0] * rewards_per_func.shape[1], dtype=torch.float64)
    unscorable = rewards_per_func.isnan().all(dim=1)
    rewards = (rewards_per_func * weight).nansum(dim=1)
    rewards[unscorable] = math.nan
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    std = _nanstd(grouped).repeat_interleave(num_generations)
    return torch.nan_to_num((rewards - mean) / (std + 1e-4), nan=0.0)
