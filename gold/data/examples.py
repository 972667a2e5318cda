"""Examples, each model's own prompt, and the aligned training batch.

Shape legend: B batch, Ts / Tt student / teacher columns, Ls / Lt loss-view columns (the last prompt
token and the completion).

Layout of one side of a batch (each side pads on its own)::

    [pad … pad | prompt ids | completion ids | pad … pad]
                ^ P - 1      ^ P = prompt_width

Prompts are left-padded so every completion starts at column ``P``; the loss needs logits only for
columns ``P - 1 …`` (the last prompt token predicts the first completion token), which models return
cheaply through ``logits_to_keep`` without computing the prompt's logits.

Rules the batch keeps:

* each model renders its **own** prompt: its chat template for conversational prompts, or the plain
  format of :func:`plain_prompt` when it has none;
* a text prompt's trailing whitespace moves into the completion (:func:`move_seam_whitespace`);
* the completion is the student's token ids (given, sampled, or re-encoded from a teacher sample),
  cut to ``max_completion_length`` student tokens and at a trailing unfinished character, decoded to
  text **once** (interior invalid bytes read as U+FFFD and are counted, :func:`decode_completion`);
  the teacher tokenizes exactly that text, and :func:`check_same_bytes` raises when its tokens spell
  other bytes (beyond what its own normalizer rewrites);
* a completion that ended is followed by each side's end token, one zero-byte end group
  (:mod:`gold.models.stops`); no other special token appears inside a completion.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alignment import encode_text, normalized, text_stream, token_bytes_table
from gold.data.batch import AlignedBatch
from gold.models.stops import StopRule

Messages = tuple[Mapping[str, str], ...]


class DataError(ValueError):
    """A dataset row or prompt that cannot be trained on; the message names the row and the fix."""


class CompletionBytesError(ValueError):
    """The teacher's tokens do not spell the completion the student produced or was given."""


@dataclass(frozen=True)
class Example:
    """One training example: a prompt (text or chat messages) and a reference completion.

    ``ended`` says whether the completion is whole (a dataset row; a sample that produced a stop id) or
    was cut by a length limit: only a whole completion gets an end group (the model learns to stop there).
    """

    prompt: str | Messages
    completion: str
    ended: bool = True
    # the row's other columns (e.g. a reference answer), passed to reward functions (gold.training.rewards)
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # the teacher's own prompt (self-distillation with privileged information, e.g. the reference solution); the
    # student never sees it. None: the teacher gets ``prompt`` too
    teacher_prompt: str | Messages | None = None
    # where the row came from (``data.jsonl line 7``), named when a reward function fails on it; None: made in code
    label: str | None = field(default=None, compare=False, repr=False)
    # the id of the teacher that scores this row when a run has several (``GoldTrainer(teachers=...)``, routing);
    # None: the run's only teacher
    teacher_id: str | None = None

    def __post_init__(self) -> None:
        prompt, completion = move_seam_whitespace(self.prompt, self.completion)
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "completion", completion)
        if isinstance(self.teacher_prompt, str):  # its seam whitespace now starts the shared completion
            object.__setattr__(self, "teacher_prompt", self.teacher_prompt.rstrip(" \t"))

    @property
    def prompt_for_teacher(self) -> str | Messages:
        return self.prompt if self.teacher_prompt is None else self.teacher_prompt


def move_seam_whitespace(prompt: str | Messages, completion: str) -> tuple[str | Messages, str]:
    """Move a text prompt's trailing spaces and tabs to the front of the completion (every :class:`Example`).

    ``"Answer: "`` + ``"Paris"`` would give both models a split they never produce in running text
    (``Ġ`` then ``Paris``; SentencePiece ``▁`` then ``Paris``): their tokenizers attach a space to the word
    after it. Moved, both sides see ``"Answer:"`` and score ``" Paris"`` as they would tokenize it inside the
    whole text, identically on both sides (the completion bytes are shared), and a rollout starts where the
    model would write the space itself. A trailing newline stays: the pre-tokenizers of every supported
    family split before a word after a newline anyway, and many prompt formats end in one. Chat prompts are
    left alone: the template's own ending is part of the format the model was trained on.
    """
    if not isinstance(prompt, str):
        return prompt, completion
    stripped = prompt.rstrip(" \t")
    return stripped, prompt[len(stripped) :] + completion


def plain_prompt(prompt: str | Messages) -> str:
    """The documented format for a model without a chat template.

    A text prompt is used as is. Chat turns become ``"Role: content"`` paragraphs followed by
    ``"Assistant:"``, so the completion continues after a colon.
    """
    if isinstance(prompt, str):
        return prompt
    turns = [f"{str(m['role']).capitalize()}: {m['content']}" for m in prompt]
    return "\n\n".join([*turns, "Assistant:"])


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The special ids the tokenizer itself puts before a text (its BOS when it adds one; nothing for
    tokenizers that add none, such as SmolLM2's, whose ``bos_token`` is the chat marker ``<|im_start|>``)."""
    with_specials = list(tokenizer("x", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start : start + len(plain)] == plain:
            return with_specials[:start]
    return []


def prompt_ids(tokenizer: Any, prompt: str | Messages) -> list[int]:
    """One model's prompt ids: its chat template for chat turns when it has one, else the plain format
    after the special tokens its tokenizer adds in front of a text (:func:`leading_special_ids`). An empty
    prompt with no such token starts from EOS, the document separator, so a plain text can be scored
    from its first token."""
    if not isinstance(prompt, str) and tokenizer.chat_template:
        text = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = leading_special_ids(tokenizer) + encode_text(tokenizer, plain_prompt(prompt))
    if not ids:  # an empty prompt (plain text scored from its start) and no BOS: EOS separates documents
        if tokenizer.eos_token_id is None:
            raise DataError("the prompt is empty and the tokenizer has neither BOS nor EOS to start the text from")
        ids = [tokenizer.eos_token_id]
    return ids


@dataclass(frozen=True)
class DecodedCompletion:
    """A completion's tokens read as text, exactly.

    Attributes:
        ids: the tokens kept: all of them, less the trailing ones that spell an unfinished character.
        text: their bytes decoded; each interior invalid UTF-8 sequence reads as U+FFFD.
        invalid_bytes: bytes that read as U+FFFD (the student's tokens spell them, the text cannot).
        cut_tokens: trailing tokens dropped with an unfinished character (a length limit or a stop cut it).
    """

    ids: list[int]
    text: str
    invalid_bytes: int
    cut_tokens: int


def _decode_replacing(data: bytes) -> tuple[str, int]:
    """``data`` decoded with each invalid sequence as U+FFFD, and how many bytes were invalid."""
    parts, invalid, start = [], 0, 0
    while True:
        try:
            parts.append(data[start:].decode("utf-8"))
            return "".join(parts), invalid
        except UnicodeDecodeError as error:  # error positions are relative to data[start:]
            parts.append(data[start : start + error.start].decode("utf-8"))
            parts.append("\ufffd")
            invalid += error.end - error.start
            start += error.end


def _unfinished_tail(data: bytes) -> int:
    """Bytes at the end of ``data`` that begin a character without finishing it (0 if none)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    decoder.decode(data, final=False)
    return len(decoder.getstate()[0])


def seam_prompt(prompt: str | Messages) -> str | Messages:
    """The prompt a model is sampled from: :func:`move_seam_whitespace` applied (the model writes the space)."""
    return move_seam_whitespace(prompt, "")[0]


def distinct_prompts(prompts: Iterable[str | Messages]) -> list[str | Messages]:
    """Each prompt once, in order of first appearance."""
    seen: dict[str, str | Messages] = {}
    for prompt in prompts:
        seen.setdefault(repr(prompt), prompt)
    return list(seen.values())


def decode_completion(tokenizer: Any, ids: Sequence[int]) -> DecodedCompletion:
    """Read completion tokens as text: cut only a trailing unfinished character, keep everything else.

    The text is decoded from the exact bytes of the tokens (no clean-up), read as a continuation of the
    prompt: a SentencePiece ``▁`` on the first token is a real space (:func:`alignment.encode_continuation`
    gives the inverse). A trailing partial character (the length limit or a stop cut it) is dropped with the
    tokens that spell it; an invalid sequence inside keeps its tokens and reads as U+FFFD, so both sides
    score the same text, the student's tokens align to it approximately, and the bytes are counted.
    """
    table = token_bytes_table(tokenizer)
    kept = np.asarray(list(ids), dtype=np.int64)
    lengths = table.sequence_lengths(kept, starts_text=False)
    data = table.spell(kept, lengths)
    ends = np.cumsum(lengths)
    count = len(kept)
    # drop tokens while the bytes end inside a character; a token that spans a character boundary can leave
    # the token before it ending inside one too, so check again after each cut
    while count and _unfinished_tail(data[: int(ends[count - 1])]):
        count = int(np.searchsorted(ends, int(ends[count - 1]) - _unfinished_tail(data[: int(ends[count - 1])]),
                                    side="right"))  # fmt: skip
    data = data[: int(ends[count - 1])] if count else b""
    text, invalid = _decode_replacing(data)
    return DecodedCompletion(kept[:count].tolist(), text, invalid, len(kept) - count)


@dataclass(frozen=True)
class ReadSample:
    """A sampled id sequence read once: its text and the stop id it ended with.

    Attributes:
        decoded: the tokens before the stop id, read as text (:func:`gold.data.examples.decode_completion`).
        stop_id: the stop id the sample ended with; None when it did not end (the length limit cut it, or its
            bytes before the stop end inside a character, so the stop followed other bytes than those scored).
    """

    decoded: DecodedCompletion
    stop_id: int | None

    @property
    def ended(self) -> bool:
        return self.stop_id is not None


def read_sample(tokenizer: Any, rule: StopRule, ids: Sequence[int]) -> ReadSample:
    """Cut ``ids`` after the first stop id of ``rule`` and read the rest as text; the one rule for every sampler's
    output (rollouts, teacher samples, evaluation samples)."""
    body, stop = rule.split(ids)
    decoded = decode_completion(tokenizer, body)
    return ReadSample(decoded, stop if decoded.cut_tokens == 0 else None)


def check_same_bytes(tokenizer: Any, ids: Sequence[int], text: str, *, index: int, role: str = "teacher") -> None:
    """Raise :class:`CompletionBytesError` unless ``ids`` spell ``text`` (or its normalized form)."""
    reference = text.encode("utf-8")
    stream = text_stream(tokenizer, ids, reference)
    if stream == reference or stream == normalized(tokenizer, text):
        return
    first = next((i for i, (a, b) in enumerate(zip(stream, reference, strict=False)) if a != b),
                 min(len(stream), len(reference)))  # fmt: skip
    raise CompletionBytesError(
        f"example {index}: the {role}'s completion tokens spell {stream[first : first + 24]!r} at byte {first} "
        f"where the completion has {reference[first : first + 24]!r}; the {role} must score exactly the bytes "
        "the student produced: tokenize the decoded completion text with the teacher's own tokenizer"
    )


@dataclass(frozen=True)
class SideInputs:
    """One model's view of a batch.

    Attributes:
        input_ids: (B, T) int64, prompt left-padded to ``prompt_width``, completion, right padding.
        attention_mask: (B, T) int64.
        position_ids: (B, T) int64, counting from the first real token.
        prompt_width: P, the column where every completion starts.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_width: int

    @property
    def logits_to_keep(self) -> int:
        """Columns from ``P - 1`` to the end: the loss view."""
        return int(self.input_ids.shape[1]) - self.prompt_width + 1

    def logits(self, model: Any) -> torch.Tensor:
        """(B, L, V) logits of the loss-view columns only; the prompt's logits are never computed."""
        return model(input_ids=self.input_ids, attention_mask=self.attention_mask, position_ids=self.position_ids,
                     logits_to_keep=self.logits_to_keep).logits  # fmt: skip

    def completion_targets(self) -> torch.Tensor:
        """(B, L - 1) the completion ids that ``logits(model)[:, :-1]`` predict; -100 on padding."""
        completion = self.input_ids[:, self.prompt_width :]
        return completion.masked_fill(self.attention_mask[:, self.prompt_width :] == 0, -100)

    def to(self, device: torch.device | str) -> SideInputs:
        return SideInputs(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                          self.prompt_width)  # fmt: skip


@dataclass(frozen=True)
class TrainBatch:
    """Everything one training micro-batch needs: both sides' inputs and the aligned loss view.

    ``aligned`` holds ids and groups of the loss-view columns only, (B, Ls) and (B, Lt), matching
    the logits returned with ``logits_to_keep``. ``source`` says where the completions came from:
    ``"dataset"``, ``"student"`` (on-policy) or ``"teacher"`` (``seq_kd``). ``counts`` holds per-batch
    sums for the log (completions that ended, end groups, invalid bytes, groups dropped at a cut).
    """

    student: SideInputs
    teacher: SideInputs
    aligned: AlignedBatch
    completions: tuple[str, ...]
    source: str
    counts: Mapping[str, float] = field(default_factory=dict)
    # per row, the sampling engine's log-prob of each sampled student token (vLLM rollouts), else None
    engine_logprobs: tuple[tuple[float, ...], ...] | None = None

    def to(self, device: torch.device | str) -> TrainBatch:
        return dataclasses.replace(self, student=self.student.to(device), teacher=self.teacher.to(device),
                                   aligned=self.aligned.to(device))  # fmt: skip


def logit_rows(model: Any) -> int:
    """V of a causal LM's logits: its output-embedding rows (often more than its tokenizer has tokens)."""
    return int(model.get_output_embeddings().weight.shape[0])


def pad_id(tokenizer: Any) -> int:
    """The id padding uses: the tokenizer's pad token, else its EOS, else 0 (always masked out)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def side_inputs(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *, pad_id: int) -> SideInputs:
    """Left-pad prompts to a common width, append completions, right-pad."""
    width = max(len(p) for p in prompts)
    total = width + max((len(c) for c in completions), default=0)
    ids = torch.full((len(prompts), total), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(prompts), total), dtype=torch.int64)
    for b, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        start, end = width - len(prompt), width + len(completion)
        ids[b, start:end] = torch.tensor([*prompt, *completion], dtype=torch.int64)
        mask[b, start:end] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return SideInputs(ids, mask, positions, width)


def check_prompts(prompts: Sequence[Sequence[int]], *, role: str, limit: int | None) -> None:
    """Every prompt is non-empty and within ``limit`` tokens."""
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise DataError(f"example {index}: the {role} prompt has no tokens; give a prompt or a tokenizer with BOS")
        if limit is not None and len(prompt) > limit:
            raise DataError(
                f"example {index}: the {role} prompt has {len(prompt)} tokens, over rollout.max_prompt_length="
                f"{limit}; shorten the prompt or raise rollout.max_prompt_length"
            )
