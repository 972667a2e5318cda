"""Which side of a training step takes its loss from hidden states (the GPU path, :mod:`gold.losses.hidden`), and
running a model for them.

A model runs as usual (through its DDP wrapper, so gradient hooks stay in place) but with ``logits_to_keep=1``: its
output layer makes one (B, 1, V) column that nobody reads, and a forward hook on its decoder takes the last hidden
states, exactly what the output layer would have read. The loss then applies the layer
(:func:`gold.losses.head.output_head`) to the rows each chunk of groups needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gold.data.examples import SideInputs
from gold.losses.head import OutputHead, output_head
from gold.losses.hidden import HiddenLogits
from gold.models.sharding import is_sharded
from gold.teacher.local import DynamicSelfTeacher, LocalTeacher


@dataclass(frozen=True)
class HiddenPlan:
    """The output layers the loss applies itself (None: that side takes its model's logits), and why a side that was
    asked to cannot."""

    student: OutputHead | None
    teacher: OutputHead | None
    notes: tuple[str, ...] = ()


def hidden_plan(mode: str, *, student_model: Any, teacher: Any, device: torch.device, sharded: str | None = None,
                replicated: str | None = None) -> HiddenPlan:  # fmt: skip
    """The plan for ``LossConfig.hidden_states`` = ``mode`` ("auto": on CUDA only; "always"; "never").

    Args:
        student_model: the student, unwrapped (its parameters are the ones being trained).
        teacher: the run's teacher (:class:`LocalTeacher` on the student's device, or anything else: logits).
        device: where the student runs.
        sharded: how the student's parameters are sharded (e.g. "FSDP"), if they are: the output layer's weight is
            then not whole outside the model's forward.
        replicated: why a forward hook cannot take the hidden states (``nn.DataParallel`` runs the decoder once per
            GPU; ``torch.compile`` would recompile for each step's hook), if so: both sides take their logits.
    """
    if mode == "never" or (mode == "auto" and device.type != "cuda"):
        return HiddenPlan(None, None)
    if replicated is not None:
        return HiddenPlan(None, None, (f"student and teacher: {replicated}",))
    notes = []
    if sharded is None and is_sharded(student_model):  # sharded by hand (fully_shard), not by the launcher
        sharded = "FSDP2"
    if sharded is not None:
        student_head, why = None, f"its output layer is sharded ({sharded})"
    else:
        student_head, why = output_head(student_model)
    if student_head is None:
        notes.append(f"student: {why}")
    teacher_head, why = _teacher_head(teacher, device, sharded)
    if teacher_head is None:
        notes.append(f"teacher: {why}")
    return HiddenPlan(student_head, teacher_head, tuple(notes))


def _teacher_head(teacher: Any, device: torch.device, sharded: str | None) -> tuple[OutputHead | None, str]:
    if not isinstance(teacher, LocalTeacher):
        return None, f"it is a {type(teacher).__name__}: its rows are not a model's hidden states"
    if isinstance(teacher, DynamicSelfTeacher) and sharded is not None:
        return None, f"it is the student, whose output layer is sharded ({sharded})"
    if teacher.sharded is not None:
        return None, f"its output layer is sharded ({teacher.sharded}, teacher.shard)"
    if not _same_device(teacher.device, device):
        return None, f"it runs on {teacher.device} and the student on {device}"
    head, why = output_head(teacher.model)
    return (None, why) if head is None else (head.detach(), "")


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cpu`` is ``cpu:0``, and ``cuda`` the current CUDA device."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def hidden_logits(model: Any, inputs: SideInputs, head: OutputHead, *, module: Any = None) -> HiddenLogits:
    """The loss view's :class:`HiddenLogits` of ``model`` (called as it is, e.g. DDP-wrapped; ``module``: the
    unwrapped model whose decoder is hooked, default ``model``)."""
    decoder = (module if module is not None else model).get_decoder()
    captured: list[torch.Tensor] = []
    autocasts: list[torch.dtype | None] = []

    def keep(_module: Any, _args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)
        # mixed precision: accelerate runs the model's forward under autocast; the loss applies the head outside it
        kind = captured[-1].device.type
        autocasts.append(torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None)

    handle = decoder.register_forward_hook(keep)
    try:
        model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, position_ids=inputs.position_ids,
              logits_to_keep=1)  # fmt: skip
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the decoder ({type(decoder).__name__}) ran {len(captured)} times in one forward; gold "
                           "expects once: set loss.hidden_states: off")  # fmt: skip
    return HiddenLogits(captured[0][:, -inputs.logits_to_keep :], head, autocast=autocasts[0])


def teacher_hidden_logits(teacher: LocalTeacher, inputs: SideInputs, head: OutputHead) -> HiddenLogits:
    """:func:`hidden_logits` of a local teacher, without gradients and in eval mode (the student itself when
    ``self-dynamic``, put back in its own mode after)."""
    training = teacher.model.training
    teacher.model.eval()
    try:
        with torch.no_grad():
            return hidden_logits(teacher.model, inputs.to(teacher.device), head)
    finally:
        teacher.model.train(training)
