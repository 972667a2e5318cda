"""The teacher: log-probabilities over its own vocabulary for the loss view of a batch.

:class:`Teacher` is what the trainer needs; :class:`LocalTeacher` wraps a local ``transformers`` model: frozen, in
eval mode, optionally on its own device and dtype. A served teacher (:mod:`gold.teacher.served`) and a teacher cache
(:mod:`gold.teacher.cache`) implement it with sparse rows (:mod:`gold.teacher.sparse`).
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import torch

from gold.config import RolloutConfig
from gold.data.examples import SideInputs, logit_rows
from gold.models.sharding import shard_frozen
from gold.models.stops import StopRule, model_stop_rule
from gold.rollout import Generator, HFGenerator


class Teacher(Protocol):
    """What the trainer needs from a teacher."""

    tokenizer: Any

    @property
    def num_rows(self) -> int:
        """Vt, the size of the teacher's logit rows (may exceed the tokenizer's vocabulary)."""
        ...

    @property
    def stop(self) -> StopRule:
        """The teacher's stop ids and end token (:mod:`gold.models.stops`)."""
        ...

    @property
    def tail_column(self) -> int | None:
        """The column of the tail bucket when :meth:`logits` returns sparse rows (:mod:`gold.teacher.sparse`);
        None for dense logits."""
        ...

    def logits(self, inputs: SideInputs) -> torch.Tensor:
        """(B, Lt, Vt) logits of the loss-view columns (``inputs.logits_to_keep`` last columns), or the log-probability
        rows of :func:`gold.teacher.sparse.dense_rows` (Vt = vocabulary + 1) when :attr:`tail_column` is set."""
        ...

    def generator(self, config: RolloutConfig) -> Generator:
        """A sampler of teacher completions (``seq_kd``)."""
        ...


class LocalTeacher:
    """A local causal LM used as teacher.

    Args:
        model: the teacher model; its parameters are frozen and it is put in eval mode.
        tokenizer: the teacher's fast tokenizer.
        device: where the teacher runs (default: where it is); logits come back on the caller's device.
        dtype: cast the teacher to this dtype (default: leave it).
        shard: shard its weights over the run's processes (FSDP2, :func:`gold.models.sharding.shard_frozen`; a teacher
            too big for one device); every process must then ask it for rows at the same steps, as the trainer does.
    """

    def __init__(self, model: Any, tokenizer: Any, *, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, shard: bool = False) -> None:  # fmt: skip
        if device is not None:
            model = model.to(device)
        if dtype is not None:
            model = model.to(dtype)
        model.eval()
        model.requires_grad_(False)
        # FSDP2 over every process of the run (gold.models.sharding): each keeps 1/N of the weights
        self.sharded = "FSDP2" if shard else None
        self.model = shard_frozen(model) if shard else model
        self.tokenizer = tokenizer
        self._stop = model_stop_rule(model, tokenizer)

    @property
    def num_rows(self) -> int:
        return logit_rows(self.model)

    @property
    def stop(self) -> StopRule:
        return self._stop

    @property
    def tail_column(self) -> int | None:
        return None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def logits(self, inputs: SideInputs) -> torch.Tensor:
        caller = inputs.input_ids.device
        return inputs.to(self.device).logits(self.model).to(caller)

    def generator(self, config: RolloutConfig) -> Generator:
        return HFGenerator(self.model, self.tokenizer, config, self._stop)


SELF_TEACHERS = ("self", "self-dynamic")


class DynamicSelfTeacher(LocalTeacher):
    """The student as its own teacher as it trains (``teacher.model: self-dynamic``, ms-swift's dynamic teacher): its
    logits under ``no_grad``, with no second copy of the weights; it is not frozen (it is the model being trained),
    and it teaches in eval mode (no dropout in the teacher's rows), going back to the student's mode after. Pair it
    with a privileged ``teacher_prompt`` (OPSD): otherwise it teaches itself."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.sharded = None  # sharded as the student is, if it is (the trainer knows)
        self.tokenizer = tokenizer
        self._stop = model_stop_rule(model, tokenizer)

    @torch.no_grad()
    def logits(self, inputs: SideInputs) -> torch.Tensor:
        training = self.model.training
        self.model.eval()
        try:
            return super().logits(inputs)
        finally:
            self.model.train(training)


def self_teacher(kind: str, student: Any, tokenizer: Any, *, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> LocalTeacher:  # fmt: skip
    """``self``: a frozen copy of the student as it starts (on ``device``, in ``dtype``); ``self-dynamic``: the
    student itself (no copy; it runs where the student runs)."""
    if kind == "self":
        return LocalTeacher(copy.deepcopy(student), tokenizer, device=device, dtype=dtype)
    if kind == "self-dynamic":
        return DynamicSelfTeacher(student, tokenizer)
    raise ValueError(f"teacher kind {kind!r} is not one of {', '.join(SELF_TEACHERS)}")
