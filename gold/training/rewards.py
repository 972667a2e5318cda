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

import ast
import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any, cast

import torch

RewardFunc = Callable[..., Sequence[float | None]]


class RewardError(ValueError):
    """A reward function that cannot be loaded or returned something unusable; the message names it."""


def load_reward_funcs(specs: Sequence[str | RewardFunc]) -> list[RewardFunc]:
    """Callables as they are; ``"package.module:function"`` (or ``"package.module.function"``) strings imported, from
    the installed packages or the working directory (``examples.rewards:names_the_answer`` from the repository root),
    naming what is missing.

    Trust: importing a module runs its top-level code with your permissions, as ``trust_remote_code`` does for a
    model folder's code; a recipe's ``reward_funcs`` is code you choose to run. So that a typo or another's recipe
    does not run whatever module of that name is on the path (the working directory included), the module's source
    is found and parsed first, without running it or its packages, and it must define the function at its top
    level; only then is it imported. A module without Python source (an extension) can only be checked by importing
    it."""
    return [spec if callable(spec) else _import_reward(str(spec)) for spec in specs]


def _import_reward(spec: str) -> RewardFunc:
    module_name, sep, name = spec.partition(":")
    if not sep:  # package.module.function
        module_name, sep, name = spec.rpartition(".")
    if not sep or not module_name or not name.isidentifier():
        raise RewardError(f"reward function {spec!r} must look like 'package.module:function' (or "
                          "'package.module.function')")  # fmt: skip
    if os.getcwd() not in sys.path:  # a recipe's module next to it, as `python -m` would find it
        sys.path.append(os.getcwd())
    if module_name not in sys.modules:  # imported already: nothing of it runs again
        source = _module_source(spec, module_name)
        if source is not None and not _defines(spec, source, name):
            raise RewardError(f"reward function {spec!r}: {module_name!r} ({source}) defines no {name!r} at its top "
                              "level; name a function it defines (the module was not imported)")  # fmt: skip
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardError(f"reward function {spec!r}: module {module_name!r} cannot be imported ({err})") from None
    func = getattr(module, name, None)
    if not callable(func):
        raise RewardError(f"reward function {spec!r}: {module_name!r} has no function {name!r}")
    return cast(RewardFunc, func)


def _module_source(spec: str, module_name: str) -> Path | None:
    """The ``.py`` file the import system would load for ``module_name``, found without running any module: a top
    level name through the finders, each submodule in its parent's folders. None: no Python source to read."""
    parts = module_name.split(".")
    found = importlib.util.find_spec(parts[0]) if parts[0] not in sys.modules else sys.modules[parts[0]].__spec__
    for depth in range(1, len(parts)):
        if found is None or found.submodule_search_locations is None:
            break
        qualified = ".".join(parts[: depth + 1])
        loaded = sys.modules.get(qualified)
        found = loaded.__spec__ if loaded else PathFinder.find_spec(qualified, found.submodule_search_locations)
    if found is None:
        raise RewardError(f"reward function {spec!r}: no module {module_name!r} on the path (installed packages and "
                          f"the working directory {os.getcwd()}); check the name")  # fmt: skip
    origin = found.origin if found.has_location else None
    return Path(origin) if origin and origin.endswith(".py") else None


def _defines(spec: str, source: Path, name: str) -> bool:
    """Whether ``source`` binds ``name`` at module level (a def, a class, an assignment, an import; inside a top-level
    ``if`` or ``try`` too); True where it cannot tell (``from x import *``, a module ``__getattr__``)."""
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (SyntaxError, ValueError) as err:
        raise RewardError(f"reward function {spec!r}: {source} is not valid Python ({err})") from None
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name in (name, "__getattr__"):
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound = [alias.asname or alias.name.split(".")[0] for alias in node.names]
            if name in bound or "*" in bound:
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
                return True
        elif isinstance(node, (ast.If, ast.Try, ast.With)):  # conditional definitions
            pending += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
            handlers = node.handlers if isinstance(node, ast.Try) else []
            pending += [stmt for handler in handlers for stmt in handler.body]
    return False


def _name(func: RewardFunc) -> str:
    return getattr(func, "__name__", type(func).__name__)


def compute_rewards(funcs: Sequence[RewardFunc], prompts: Sequence[Any], completions: Sequence[str],
                    columns: Mapping[str, Sequence[Any]], *, labels: Sequence[str | None] | None = None,
                    ) -> torch.Tensor:  # fmt: skip
    """(N, F) float64 rewards, NaN where a function returned None; raises :class:`RewardError` naming the function
    and the row on an exception, a wrong length, a non-number or a non-finite reward. ``labels``: where each
    completion's row came from (``data.jsonl line 7``), None for rows made in code."""
    out = torch.full((len(completions), len(funcs)), math.nan, dtype=torch.float64)
    for column, func in enumerate(funcs):
        try:
            values = list(func(prompts=list(prompts), completions=list(completions), **columns))
        except Exception as err:  # the user's code: any error, named with the function and the row
            row = _failing_row(func, prompts, completions, columns)
            where = f" on {_row_name(row, len(completions), labels)}" if row is not None else ""
            raise RewardError(f"reward function {_name(func)!r} raised {type(err).__name__}: {err}{where}; fix it, or "
                              "return None for a completion it cannot score") from err  # fmt: skip
        if len(values) != len(completions):
            raise RewardError(f"reward function {_name(func)!r} returned {len(values)} rewards for "
                              f"{len(completions)} completions; return one per completion")  # fmt: skip
        for row, value in enumerate(values):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RewardError(f"reward function {_name(func)!r} returned {value!r} for "
                                  f"{_row_name(row, len(completions), labels)}; rewards are finite numbers (or None: "
                                  "cannot score)")  # fmt: skip
            out[row, column] = float(value)
    return out


def _failing_row(func: RewardFunc, prompts: Sequence[Any], completions: Sequence[str],
                 columns: Mapping[str, Sequence[Any]]) -> int | None:  # fmt: skip
    """The first completion that ``func`` raises on when called on it alone (None: it raises only on the whole
    batch). Run only after a failure: a function with side effects sees these calls too."""
    for row in range(len(completions)):
        try:
            func(prompts=[prompts[row]], completions=[completions[row]], **{k: [v[row]] for k, v in columns.items()})
        except Exception:
            return row
    return None


def _row_name(row: int, total: int, labels: Sequence[str | None] | None) -> str:
    """``completion 3 of 8 (data.jsonl line 7)``: counted from 1, as gold train counts rows."""
    label = labels[row] if labels is not None else None
    return f"completion {row + 1} of {total}" + (f" ({label})" if label else "")


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
