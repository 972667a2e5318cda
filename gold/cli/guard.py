"""Never clobber a run: ``gold train`` into a folder that holds one refuses unless told how to go on, and a resumed
run must continue its checkpoint: a whole one (:func:`gold.models.checkpoint.verify_checkpoint`), of the same recipe
(the one saved in the checkpoint, else the run record ``gold_run.json`` beside it or in the output folder), with its
optimizer and scheduler state, and ``training.max_steps`` beyond its step. Nor a model or a data set: a folder that
holds model weights, a tokenizer or the training data is not an output folder (the final save would replace the
weights the run started from)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from gold.cli.recipe import RecipeError
from gold.models.build import WEIGHT_FILES
from gold.models.checkpoint import RUN_FILE, checkpoint_run, checkpoint_step, split_checkpoints, verify_checkpoint
from gold.models.zoo import TOKENIZER_FILES
from gold.training.guard import STAGING, CheckpointError

# training keys a resumed run may change: how long it runs, how often it logs, saves and evaluates, where it reports
RESUMABLE = {"max_steps", "num_train_epochs", "save_steps", "save_total_limit", "logging_steps", "eval_steps",
             "report_to", "logging_dir", "run_name", "disable_tqdm", "output_dir"}  # fmt: skip


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a training run: gold's run record, a checkpoint or a saved model."""
    if not folder.is_dir():
        return False
    marks = (folder / RUN_FILE, folder / "trainer_state.json", folder / STAGING)
    return any(mark.exists() for mark in marks) or any(folder.glob("checkpoint-*"))


def foreign_files(folder: Path, recipe: dict[str, Any]) -> list[str]:
    """What in ``folder`` is not a gold run's and a save would replace or mix with: model weights, a tokenizer, the
    recipe's data files (anywhere below the folder), each as ``what (path)``."""
    if not folder.is_dir():
        return []
    found = [f"model weights ({folder / name})" for name in WEIGHT_FILES if (folder / name).is_file()]
    found += [f"a tokenizer ({folder / name})" for name in TOKENIZER_FILES if (folder / name).is_file()]
    inside = folder.resolve()
    for key in ("path", "eval_path"):
        data = recipe["data"][key]
        if data and Path(data).exists() and Path(data).resolve().is_relative_to(inside):
            found.append(f"data.{key} ({data})")
    return found


def prepare_output_dir(folder: Path, recipe: dict[str, Any], *, resume: str | None, overwrite: bool) -> None:
    """Refuses to train into a folder holding a run unless ``resume`` or ``overwrite`` says how, or into a folder
    holding a model, a tokenizer or the data (:func:`foreign_files`) unless ``overwrite``; with ``overwrite`` removes
    the old run's checkpoints and record; with ``resume`` checks the recipe against the recorded one."""
    if resume is not None and overwrite:
        raise RecipeError("--resume and --overwrite contradict each other: resume the run, or replace it")
    if resume is None and holds_run(folder) and not overwrite:
        raise RecipeError(f"training.output_dir {str(folder)!r} already holds a run; continue it with --resume latest "
                          "(or --resume CHECKPOINT_DIR), replace it with --overwrite, or choose another "
                          "training.output_dir")  # fmt: skip
    foreign = [] if overwrite or holds_run(folder) else foreign_files(folder, recipe)
    if foreign:
        raise RecipeError(f"training.output_dir {str(folder)!r} holds {foreign[0]}, not a gold run: the trained "
                          "student would be saved over it or beside it; choose another training.output_dir (or save "
                          "over it with --overwrite)")  # fmt: skip
    if resume is not None and (folder / RUN_FILE).is_file():
        changed = differing_keys(recorded_recipe(folder / RUN_FILE), recipe)
        if changed:
            raise RecipeError(f"--resume: the recipe differs from the run's in {', '.join(changed)}; resume with the "
                              "run's recipe (its recipe.yaml) or start a new run in another output_dir")  # fmt: skip


def recorded_recipe(record: Path) -> dict[str, Any]:
    """The recipe in the run record ``record`` (a ``gold_run.json``); :class:`RecipeError` if it holds none."""
    try:
        recipe = json.loads(record.read_text(encoding="utf-8"))["recipe"]
    except (ValueError, KeyError, TypeError):
        recipe = None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{record} is not a gold run record (no recipe in it); remove it to resume without the "
                          "recipe check")  # fmt: skip
    return recipe


def clear_run(folder: Path) -> None:
    """``--overwrite``: removes the old run's checkpoints and record, on the main process only (under ``accelerate
    launch`` every process runs ``gold train``), after everything else was checked."""
    if not is_main_process() or not folder.is_dir():
        return
    for old in [*folder.glob("checkpoint-*"), folder / STAGING]:
        shutil.rmtree(old, ignore_errors=True)
    (folder / RUN_FILE).unlink(missing_ok=True)


def is_main_process() -> bool:
    """Rank 0 of an ``accelerate launch`` / ``torchrun`` run (known from the environment before accelerate starts)."""
    return int(os.environ.get("RANK", "0")) == 0


def record_run(folder: Path, recipe: dict[str, Any]) -> None:
    """Writes the run record (a run id and the recipe) unless the folder already has one (a resumed run)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RUN_FILE
    if not path.is_file():
        path.write_text(json.dumps({"run_id": uuid.uuid4().hex, "recipe": recipe}, indent=2, default=str),
                        encoding="utf-8")  # fmt: skip


def differing_keys(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``section.key (old → new)`` for every key whose value differs, except the training keys in RESUMABLE."""
    old, new = _flat(json.loads(json.dumps(recorded, default=str))), _flat(json.loads(json.dumps(current, default=str)))
    out = []
    for key in sorted(set(old) | set(new)):
        if key.startswith("training.") and key.split(".")[1] in RESUMABLE:
            continue
        if old.get(key) != new.get(key):
            out.append(f"{key} ({old.get(key)!r} → {new.get(key)!r})")
    return out


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolve_resume(folder: Path, resume: str | None) -> tuple[str | None, list[str]]:
    """The checkpoint ``--resume`` names (``latest``: the highest whole one in ``folder``) and a note per incomplete or
    damaged checkpoint skipped on the way. Raises :class:`CheckpointError` naming the folder and what is wrong."""
    if resume is None:
        return None, []
    if resume != "latest":
        return str(check_checkpoint(Path(resume))), []
    skipped = [(_step(path), path, "an interrupted save: it never got its name")
               for path in (folder / STAGING).glob("checkpoint-*")]  # fmt: skip
    whole, broken = split_checkpoints(folder)
    last = whole[-1][1] if whole else None
    notes = [f"{path} ({why})" for step, path, why in sorted(skipped + broken) if last is None or step > _step(last)]
    if last is None:
        found = f"; skipped {', '.join(notes)}" if notes else ""
        raise CheckpointError(f"--resume latest: {folder} holds no whole checkpoint{found}; start without --resume "
                              "(with --overwrite if the folder holds a run)")  # fmt: skip
    return str(last), [f"skipping incomplete checkpoint {note}; resuming {last}" for note in notes]


def check_checkpoint(path: Path) -> Path:
    """``path`` if it is a whole checkpoint folder (:func:`gold.models.checkpoint.verify_checkpoint`)."""
    if not path.exists():
        raise CheckpointError(f"--resume {path}: no such folder; give a checkpoint-N folder or 'latest'")
    if not path.is_dir():
        raise CheckpointError(f"--resume {path}: not a folder; give a checkpoint-N folder or 'latest'")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"--resume {path}: not a whole checkpoint ({problem}); give another checkpoint-N folder "
                              "or 'latest' (which skips damaged ones)")  # fmt: skip
    return path


def check_resume(checkpoint: Path, recipe: dict[str, Any]) -> list[str]:
    """Refuses a whole ``checkpoint`` that this ``recipe`` would not continue: another recipe, ``training.max_steps``
    not beyond its step, no optimizer or scheduler state. Returns a warning per thing the resumed run cannot check or
    will not reproduce (no recipe recorded for the checkpoint, no RNG state)."""
    return [note for note in (_recipe_note(checkpoint, recipe), *_state_notes(checkpoint, recipe)) if note]


def _recipe_note(checkpoint: Path, recipe: dict[str, Any]) -> str | None:
    recorded, source = _checkpoint_recipe(checkpoint)
    if recorded is None:
        return (f"--resume {checkpoint}: no recipe is recorded for this checkpoint (no run record in it or {RUN_FILE} "
                "beside it: a run started from Python, or by an older gold), so this recipe cannot be checked against "
                "its run's; make sure it is the same")  # fmt: skip
    changed = differing_keys(recorded, recipe)
    if changed:
        raise RecipeError(f"--resume {checkpoint}: the recipe differs from the checkpoint's ({source}) in "
                          f"{', '.join(changed)}; resume with that run's recipe (its recipe.yaml) or start a new run "
                          "in another output_dir")  # fmt: skip
    return None


def _state_notes(checkpoint: Path, recipe: dict[str, Any]) -> list[str]:
    step, max_steps = checkpoint_step(checkpoint), int(recipe["training"].get("max_steps", -1))
    if 0 < max_steps <= step:
        raise CheckpointError(f"--resume {checkpoint}: the checkpoint is at step {step} and training.max_steps is "
                              f"{max_steps}: no step would be trained; raise training.max_steps above "
                              f"{step}")  # fmt: skip
    # Trainer loads the optimizer only together with scheduler.pt and silently starts both afresh without it (Adam's
    # moments gone, warmup again): refused, not warned. DeepSpeed keeps both in its global_step* folder.
    wanted = {"optimizer.pt": "optimizer*", "scheduler.pt": "scheduler.pt"}
    missing = [] if _has(checkpoint, "global_step*/") else [n for n, p in wanted.items() if not _has(checkpoint, p)]
    if missing:
        raise CheckpointError(f"--resume {checkpoint}: the checkpoint has no {' or '.join(missing)} (saved with "
                              "save_only_model?); Trainer would restart the optimizer and the learning-rate schedule "
                              f"at step {step}; resume a checkpoint that has them, or start a new run from its "
                              f"weights with student.model={checkpoint}")  # fmt: skip
    if _has(checkpoint, "rng_state*.pth"):
        return []
    return [f"--resume {checkpoint}: the checkpoint has no rng_state.pth: dropout and other draws from the global "
            "random generators will not reproduce the uninterrupted run's (gold's rollouts and source choices are "
            "seeded by step and still do)"]  # fmt: skip


def _checkpoint_recipe(checkpoint: Path) -> tuple[dict[str, Any] | None, str]:
    """The recipe saved in the checkpoint, else the one in the run record beside it; with where it came from."""
    saved = checkpoint_run(checkpoint)
    if saved is not None:
        return saved["recipe"], "saved in it"
    beside = checkpoint.parent / RUN_FILE
    return (recorded_recipe(beside), str(beside)) if beside.is_file() else (None, "")


def _has(folder: Path, pattern: str) -> bool:
    return any(folder.glob(pattern))


def _step(path: Path) -> int:
    tail = path.name.removeprefix("checkpoint-")
    return int(tail) if tail.isdigit() else -1
