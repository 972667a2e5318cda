"""Runs that never lose work: atomic checkpoints and a non-finite guard, a mixin of
:class:`gold.training.trainer.GoldTrainer`.

- A checkpoint is written to ``output_dir/.partial/checkpoint-N`` and renamed to ``output_dir/checkpoint-N`` only when
  every process has written its part, so a folder named ``checkpoint-N`` is always whole; a save cut by SIGTERM, SIGINT
  or a crash leaves only the staging folder, which ``--resume latest`` skips, saying so (:mod:`gold.cli.guard`), and
  the next whole save clears. ``push_to_hub`` pushes the checkpoint under its final name.
- Each checkpoint carries ``gold_manifest.json`` (its files' sizes and the run record, :mod:`gold.models.checkpoint`),
  written last in the staging folder: a checkpoint damaged afterwards (a full disk, a cut copy) is found and skipped.
- Before each optimizer step the loss of every slice and the gradient norm must be finite, and before each save the
  weights: a run stops with the step, the non-finite terms and the last checkpoint (all saved checkpoints are finite,
  so ``save_total_limit`` rotation can never leave only a broken one). A gradient norm of exactly zero warns. Under
  DeepSpeed the engine steps inside ``backward``, so there the gradient check comes after the step (the loss and
  weight checks still hold).
"""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import rotate_checkpoints

from gold.losses.reduce import loss_is_finite
from gold.models.checkpoint import RUN_FILE, split_checkpoints, write_manifest

STAGING = ".partial"


class NonFiniteError(RuntimeError):
    """Training stopped before a non-finite loss, gradient or weight could reach the optimizer or a checkpoint."""


class PeerFailure(RuntimeError):
    """Another process failed while building its share of a step; this one stops with it instead of waiting."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: missing, incomplete, damaged, or of another model's shape or recipe."""


class ZeroGradientWarning(UserWarning):
    """The gradient norm is exactly zero: the student learns nothing from this step."""


def last_checkpoint(folder: Path) -> Path | None:
    """The highest-step whole ``checkpoint-N`` in ``folder``: it has its name (a gold save is whole once it has) and
    :func:`gold.models.checkpoint.verify_checkpoint` finds nothing wrong with it since."""
    whole, _ = split_checkpoints(folder)
    return whole[-1][1] if whole else None


class RunGuard:
    """The mixin: ``_note_loss_terms`` from ``compute_loss``; Trainer's grad-norm, save and load hooks wrapped."""

    _nonfinite_terms: set[str]
    _staging_save = False
    _warned_zero_norm = False

    def _note_loss_terms(self, loss: torch.Tensor, metrics: dict[str, float]) -> None:
        """Remembers this slice's non-finite loss terms; checked (on every process at once) before the step."""
        if not hasattr(self, "_nonfinite_terms"):
            self._nonfinite_terms = set()
        if not loss_is_finite(loss):
            bad = [key for key, value in metrics.items() if key.startswith("loss/") and not loss_is_finite(value)]
            self._nonfinite_terms.update(bad or ["loss"])

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)  # type: ignore[misc]
        terms = sorted(getattr(self, "_nonfinite_terms", set()))
        self._nonfinite_terms = set()
        bad_loss = self._any_process(bool(terms))
        value = float(norm) if norm is not None else 0.0
        bad_norm = not math.isfinite(value) and not self.args.fp16  # type: ignore[attr-defined]  # fp16: the scaler skips
        if bad_loss or bad_norm:
            what = f"the loss is not finite ({', '.join(terms) or 'on another process'})" if bad_loss else ""
            raise self.nonfinite_stop(what or f"the gradient norm is {value}")
        if value == 0.0 and norm is not None and not self._warned_zero_norm:
            self._warned_zero_norm = True
            warnings.warn(f"step {self.state.global_step + 1}: the gradient norm is 0, the student learns nothing "  # type: ignore[attr-defined]
                          "(all-zero or saturated logits after a too-high learning rate? a frozen model? or, with "
                          "task rewards alone, every completion of each prompt got the same reward)",
                          ZeroGradientWarning, stacklevel=2)  # fmt: skip
        return norm

    def nonfinite_stop(self, what: str) -> NonFiniteError:
        """The error that ends a run before the optimizer step: the step, what is not finite, the last checkpoint."""
        step = self.state.global_step + 1  # type: ignore[attr-defined]
        hint = self._last_checkpoint_hint()
        return NonFiniteError(f"stopped before the optimizer step of step {step}: {what}; {hint}")

    def _any_process(self, flag: bool) -> bool:
        accelerator = self.accelerator  # type: ignore[attr-defined]
        if accelerator.num_processes == 1:
            return flag
        return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0)

    def agreed_totals(self, counts: list[float], failure: Exception | None, device: torch.device) -> torch.Tensor:
        """``counts`` summed over processes in the one collective of a step's batch building, together with
        whether any process failed building its slices: the failing process raises its own error, every other
        raises :class:`PeerFailure`, and none waits in a collective for a process that left."""
        accelerator = self.accelerator  # type: ignore[attr-defined]
        totals = torch.tensor([*counts, float(failure is not None)], device=device)
        if accelerator.num_processes > 1:
            totals = accelerator.reduce(totals, reduction="sum")
        if failure is not None:
            raise failure
        if totals[-1] > 0:
            step = self.state.global_step + 1  # type: ignore[attr-defined]
            last = last_checkpoint(Path(self.args.output_dir))  # type: ignore[attr-defined]
            where = f"the last whole checkpoint is {last}" if last else "no checkpoint was saved"
            raise PeerFailure(f"another process failed while building the batches of step {step} (it prints its "
                              f"error); this one stops with it; {where}")  # fmt: skip
        return totals[:-1]

    def _last_checkpoint_hint(self) -> str:
        last = last_checkpoint(Path(self.args.output_dir))  # type: ignore[attr-defined]
        if last is None:
            return "no checkpoint was saved; lower training.learning_rate (or check the data) and start again"
        return (f"the last checkpoint, {last}, holds finite weights: lower training.learning_rate (or check the data) "
                "and continue it with --resume latest")  # fmt: skip

    # ---- saves ----

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``, refusing non-finite weights (the last checkpoint stays the last finite one)."""
        model = self.model  # type: ignore[attr-defined]
        local_bad = any(not bool(torch.isfinite(p.detach()).all()) for p in model.parameters() if p.is_floating_point())
        if self._any_process(local_bad):
            raise NonFiniteError(f"the student's weights are not finite at step {self.state.global_step}; not saved. "  # type: ignore[attr-defined]
                                 + self._last_checkpoint_hint())  # fmt: skip
        super().save_model(output_dir, _internal_call=_internal_call)  # type: ignore[misc]

    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)  # type: ignore[misc]
        return str(Path(run_dir) / STAGING) if self._staging_save else run_dir

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Trainer's checkpoint, written under ``.partial/`` and renamed into place once whole; then rotation."""
        args, state = self.args, self.state  # type: ignore[attr-defined]
        run_dir = Path(self._get_output_dir(trial))
        name = f"checkpoint-{state.global_step}"
        staged, final = run_dir / STAGING / name, run_dir / name
        if args.should_save and staged.exists():
            shutil.rmtree(staged)  # a save of this step cut short earlier
        self._staging_save = True
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            self._staging_save = False
        if state.best_model_checkpoint == str(staged):  # every process: each may load the best model at the end
            state.best_model_checkpoint = str(final)
        self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]  # every process wrote its part
        if args.should_save:
            state.save_to_json(str(staged / "trainer_state.json"))
            write_manifest(staged, run_record=run_dir / RUN_FILE)
            _swap_in(staged, final)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=args.save_total_limit,
                               best_model_checkpoint=state.best_model_checkpoint, use_mtime=True)  # fmt: skip
            if args.push_to_hub:
                super()._push_from_checkpoint(str(final))  # type: ignore[misc]
        self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer pushes from inside its save; gold pushes once the checkpoint has its final name."""
        if not self._staging_save:
            super()._push_from_checkpoint(checkpoint_folder)  # type: ignore[misc]

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]
        except RuntimeError as err:
            if "size mismatch" not in str(err):
                raise
            first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), "")
            raise CheckpointError(f"checkpoint {resume_from_checkpoint} holds a model of another shape ({first}); "
                                  "resume a checkpoint of this recipe's student") from None  # fmt: skip


def _swap_in(staged: Path, final: Path) -> None:
    """Renames the whole ``staged`` checkpoint to ``final``; an older ``final`` (a step saved again after a resume)
    is moved aside first and deleted last, so at every instant ``final`` is absent or whole. Then ``.partial/``,
    holding only leftovers of cut saves, is cleared."""
    aside = staged.parent / f"replaced-{final.name}"
    if final.exists():
        if aside.exists():
            shutil.rmtree(aside)
        final.rename(aside)
    staged.rename(final)
    shutil.rmtree(staged.parent, ignore_errors=True)
