"""See what the student writes: a few rows of a training batch with, per aligned group, the text and each model's most
likely token at the group's first position (``rollout.log_completions_steps``; printed, and sent to TensorBoard as
text and to W&B as a table when those reporters are on). TRL's ``log_completions`` shows samples; this also shows
where the two models disagree, group by group, across tokenizers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gold.data.examples import TrainBatch


@dataclass(frozen=True)
class GroupView:
    text: str
    student_top: str
    teacher_top: str

    @property
    def agree(self) -> bool:
        return self.student_top == self.teacher_top


@dataclass(frozen=True)
class CompletionView:
    source: str
    prompt: str
    completion: str
    groups: tuple[GroupView, ...]


def _first_columns(groups: torch.Tensor, count: int) -> list[int]:
    """Column of the first token of each group 0..count-1 in one row of ``*_groups``."""
    columns = []
    for group in range(count):
        found = (groups == group).nonzero()
        columns.append(int(found[0, 0]) if found.numel() else -1)
    return columns


def completion_views(batch: TrainBatch, student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                     student_tokenizer: Any, teacher_tokenizer: Any, rows: int = 3,
                     max_groups: int = 16) -> list[CompletionView]:  # fmt: skip
    """The first ``rows`` rows of ``batch``; logits are the loss view's (column c − 1 predicts ``*_ids[:, c]``)."""
    aligned, views = batch.aligned, []
    # hidden states (gold.losses.hidden): the logits of the rows shown only
    student_logits, teacher_logits = (x if isinstance(x, torch.Tensor) else x.dense(rows)  # type: ignore[attr-defined]
                                      for x in (student_logits, teacher_logits))  # fmt: skip
    if aligned.tables.teacher_tail is not None:  # sparse teacher rows: the tail bucket is no token
        teacher_logits = teacher_logits[..., : aligned.tables.teacher_tail]
    for b in range(min(rows, len(batch.completions))):
        student_groups, teacher_groups = aligned.student_groups[b].cpu(), aligned.teacher_groups[b].cpu()
        count = min(int(student_groups.max()) + 1, max_groups)
        s_cols, t_cols = _first_columns(student_groups, count), _first_columns(teacher_groups, count)
        groups = []
        for g, (sc, tc) in enumerate(zip(s_cols, t_cols, strict=True)):
            if sc < 1 or tc < 1:
                continue
            ids = aligned.student_ids[b][student_groups == g].tolist()
            student_top = int(student_logits[b, sc - 1].argmax())  # column c − 1 predicts the token at c
            teacher_top = int(teacher_logits[b, tc - 1].argmax())
            groups.append(GroupView(student_tokenizer.decode(ids), student_tokenizer.decode([student_top]),
                                    teacher_tokenizer.decode([teacher_top])))  # fmt: skip
        side = batch.student
        prompt_ids = side.input_ids[b, : side.prompt_width][side.attention_mask[b, : side.prompt_width].bool()]
        prompt = student_tokenizer.decode(prompt_ids.tolist(), skip_special_tokens=True)
        views.append(CompletionView(batch.source, prompt, batch.completions[b], tuple(groups)))
    return views


def format_views(views: list[CompletionView], step: int) -> str:
    """Plain text: per row, the prompt's end, the completion, and ``group text [student top | teacher top]``."""
    lines = [f"── completions at step {step} (per group: text [student's top | teacher's top], * where they differ) ──"]
    for view in views:
        lines.append(f"[{view.source}] …{view.prompt[-60:]!r} → {view.completion[:160]!r}")
        cells = [f"{g.text!r}[{g.student_top!r}|{g.teacher_top!r}]{'' if g.agree else '*'}" for g in view.groups]
        lines.append("   " + " ".join(cells))
    return "\n".join(lines)


def report(trainer: Any, views: list[CompletionView], step: int) -> None:
    """Prints the views (main process) and sends them to TensorBoard / W&B when the run reports there."""
    text = format_views(views, step)
    print(text, flush=True)
    for callback in trainer.callback_handler.callbacks:
        writer = getattr(callback, "tb_writer", None)
        if writer is not None:
            writer.add_text("completions", "```\n" + text + "\n```", step)
    if "wandb" in (trainer.args.report_to or []):
        import wandb

        if wandb.run is not None:
            rows = [[v.source, v.prompt, v.completion, " ".join(f"{g.text}[{g.student_top}|{g.teacher_top}]"
                                                                for g in v.groups)] for v in views]  # fmt: skip
            table = wandb.Table(columns=["source", "prompt", "completion", "groups"], data=rows)
            wandb.log({"completions": table, "train/global_step": step})  # WandbCallback's step axis
