"""python -m gold.cli train examples/opd_rl_gemma3-270m_to_smollm2-135m.yaml  (reward functions for OPD-RL recipes)

Reward functions take TRL GRPO's signature: ``f(prompts, completions, **columns) -> list[float | None]``, one reward
per completion; ``columns`` holds every other column of the rows as a list (here ``answer``). Name them in a recipe
as ``examples.rewards:function`` (run from the repository root, so that ``examples`` imports).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def names_the_answer(prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[str] | None = None,
                     **columns: Any) -> list[float | None]:  # fmt: skip
    """1 when the completion's first word (full stops dropped) is the row's ``answer``, else 0; None (cannot score)
    without one."""
    rewards: list[float | None] = []
    for index, completion in enumerate(completions):
        expected = answer[index] if answer is not None else None
        if expected is None:
            rewards.append(None)
            continue
        words = completion.replace(".", " ").split()
        rewards.append(1.0 if words and words[0] == str(expected) else 0.0)
    return rewards


def short_enough(prompts: Sequence[Any], completions: Sequence[str], **columns: Any) -> list[float]:
    """A mild length penalty: 1 for a non-empty completion of up to 16 words, falling to 0 at 64 (an empty one: 0)."""
    return [max(0.0, min(1.0, (64 - len(c.split())) / 48)) if c.strip() else 0.0 for c in completions]


def names_the_sound(prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[str],
                    **columns: Any) -> list[float]:  # fmt: skip
    """The demo task's verifiable reward (``gold demo``'s animal sounds): 1 when the completion names the row's
    ``answer`` (the sound), case-insensitive, else 0 — ``gold eval``'s accuracy check."""
    from gold.evaluation.bits_per_byte import contains_answer

    return [float(contains_answer(a, c)) for a, c in zip(answer, completions, strict=True)]
