"""The embedded demo's task and tiny models: animal sounds, asked four ways, answered four ways.

A verifiable task (does the answer name the right sound?) whose answers are also *distributions*
(four phrasings with fixed odds), so a teacher fitted to it has something beyond its argmax to teach.
Held-out prompts pair each animal with a question form it was never trained on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from alignment import encode_continuation
from gold.config import RolloutConfig
from gold.data.examples import Example, prompt_ids, side_inputs
from gold.models.stops import model_stop_rule
from gold.rollout import sample_completions, sample_texts

SOUNDS = {
    "cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "pig": "oink", "horse": "neigh",
    "lion": "roar", "owl": "hoot", "snake": "hiss", "bee": "buzz", "frog": "croak", "mouse": "squeak", "wolf": "howl",
    "crow": "caw", "donkey": "bray", "goose": "honk", "chick": "cheep", "dove": "coo", "turkey": "gobble",
}  # fmt: skip
QUESTIONS = ("What does the {a} say?", "Which sound does a {a} make?", "Tell me what a {a} says.",
             "How does the {a} sound?")  # fmt: skip
ANSWERS = ("It says {s}.", "{S}!", "The {a} says {s}.", "Usually {s}, sometimes {s} {s}.")
ANSWER_ODDS = (4, 3, 2, 1)


@dataclass(frozen=True)
class Prompt:
    """One question: about an animal (the demo), or with a known answer (``answer``: other tasks, such as the
    arithmetic of ``benchmarks/bench_arithmetic.py``)."""

    animal: str
    text: str
    answer: str = ""


def task_prompts() -> tuple[list[Prompt], list[Prompt]]:
    """(train, held-out): every animal appears in both, held-out with a question form unseen for it."""
    train, held_out = [], []
    for i, animal in enumerate(SOUNDS):
        for j, question in enumerate(QUESTIONS):
            prompt = Prompt(animal, question.format(a=animal) + "\n")
            (held_out if j == i % len(QUESTIONS) else train).append(prompt)
    return train, held_out


SUM_QUESTIONS = ("What is {a} + {b}?", "Add {a} and {b}.", "How much is {a} plus {b}?", "Compute {a} + {b}.")
SUM_OPERANDS = range(10, 15)


def sum_prompts() -> tuple[list[Prompt], list[Prompt]]:
    """(train, held-out) two-digit sums of ``SUM_OPERANDS`` asked four ways, as the animals are ("Add 13 and 15." →
    "28."): every pair appears in both, held out with a question form unseen for it. A table small enough that a
    tiny student learns it in minutes (``benchmarks/bench_arithmetic.py`` asks for sums of unseen pairs)."""
    train, held_out = [], []
    pairs = [(a, b) for a in SUM_OPERANDS for b in SUM_OPERANDS]
    for i, (a, b) in enumerate(pairs):
        for j, question in enumerate(SUM_QUESTIONS):
            prompt = Prompt("", question.format(a=a, b=b) + "\n", answer=f"{a + b}.")
            (held_out if j == (i + i // len(SUM_QUESTIONS)) % len(SUM_QUESTIONS) else train).append(prompt)
    return train, held_out


def true_answer(prompt: Prompt, rng: random.Random) -> str:
    """A sample from the task's answer distribution (a prompt's own ``answer`` when it has one)."""
    if prompt.answer:
        return prompt.answer
    sound = SOUNDS[prompt.animal]
    template = rng.choices(ANSWERS, weights=ANSWER_ODDS)[0]
    return template.format(a=prompt.animal, s=sound, S=sound.capitalize())


def is_correct(prompt: Prompt, completion: str) -> bool:
    """The answer names the animal's sound (a prompt with its own ``answer``: the completion starts with it)."""
    if prompt.answer:
        return completion.strip().startswith(prompt.answer.strip())
    return SOUNDS[prompt.animal] in completion.lower()


def fit_to_task(
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
    progress: str | None = None,
) -> list[float]:
    """Maximum likelihood on task answers (completion tokens only); returns the loss per step. ``progress``: the
    label of a progress bar on stderr (the demo's teacher fit is minutes on 2 cores); None: quiet."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    cached: dict[str, list[int]] = {}
    end_id = model_stop_rule(model, tokenizer).end_id  # the teacher learns to stop after its answer
    losses = []
    model.train()
    bar = tqdm(total=steps, desc=progress, disable=progress is None, leave=False, dynamic_ncols=True)
    for _ in range(steps):
        chosen = [rng.choice(prompts) for _ in range(batch_size)]
        prompt_batch = [cached.setdefault(p.text, prompt_ids(tokenizer, p.text)) for p in chosen]
        answers = [[*encode_continuation(tokenizer, true_answer(p, rng)), end_id] for p in chosen]
        side = side_inputs(prompt_batch, answers, pad_id=0)
        logits = side.logits(model)[:, :-1]  # (B, L - 1, V)
        targets = side.completion_targets()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        bar.update()
    bar.close()
    model.eval()
    return losses


def sample_answers(
    model: Any, tokenizer: Any, prompts: list[Prompt], *, temperature: float, max_new_tokens: int = 16
) -> list[str]:
    """One completion per prompt (greedy at temperature 0), decoded exactly and cut at EOS."""
    config = RolloutConfig(temperature=temperature, top_p=1.0, top_k=0, max_completion_length=max_new_tokens)
    return sample_texts(model, tokenizer, [p.text for p in prompts], config, batch_size=len(prompts) or 1)


def accuracy(model: Any, tokenizer: Any, prompts: list[Prompt]) -> float:
    """Share of greedy answers that name the right sound."""
    answers = sample_answers(model, tokenizer, prompts, temperature=0.0)
    return sum(is_correct(p, a) for p, a in zip(prompts, answers, strict=True)) / len(prompts)


def teacher_examples(model: Any, tokenizer: Any, prompts: list[Prompt], *, copies: int) -> list[Example]:
    """``copies`` teacher samples (temperature 1) per prompt, as training or evaluation examples; a sample the
    length limit cut is marked as not ended (it gets no end group)."""
    repeated = [p for p in prompts for _ in range(copies)]
    config = RolloutConfig(temperature=1.0, top_p=1.0, top_k=0, max_completion_length=16)
    samples = sample_completions(model, tokenizer, [p.text for p in repeated], config, batch_size=len(repeated) or 1)
    return [Example(p.text, s.text, ended=s.ended) for p, s in zip(repeated, samples, strict=True) if s.text]
