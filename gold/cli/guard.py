"""Never clobber a run: ``gold train`` into a folder that holds one refuses unless told how to go on, and a resumed
run must have the recipe of the run it resumes (``gold_run.json`` in the output folder records it). Nor a model or a
data set: a folder that holds model weights, a tokenizer or the training data is not an output folder (the final
save would replace the weights the run started from)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from gold.cli.recipe import RecipeError
from gold.models.build import WEIGHT_FILES
from gold.models.zoo import TOKENIZER_FILES
from gold.training.guard import STAGING, CheckpointError, last_checkpoint

RUN_FILE = "gold_run.json"
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
        try:
            recorded = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))["recipe"]
        except (ValueError, KeyError, TypeError):
            raise RecipeError(f"{folder / RUN_FILE} is not a gold run record (no recipe in it); remove it to resume "
                              "without the recipe check") from None  # fmt: skip
        changed = differing_keys(recorded, recipe)
        if changed:
            raise RecipeError(f"--resume: the recipe differs from the run's in {', '.join(changed)}; resume with the "
                              "run's recipe (its recipe.yaml) or start a new run in another output_dir")  # fmt: skip


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
    """The checkpoint ``--resume`` names (``latest``: the highest whole one in ``folder``) and a note per incomplete
    checkpoint skipped on the way. Raises :class:`CheckpointError` naming the folder and what it lacks."""
    if resume is None:
        return None, []
    if resume != "latest":
        return str(check_checkpoint(Path(resume))), []
    skipped = [(path, "an interrupted save: it never got its name") for path in (folder / STAGING).glob("checkpoint-*")]
    skipped += [(path, "no trainer_state.json: an interrupted save") for path in folder.glob("checkpoint-*")
                if path.is_dir() and not (path / "trainer_state.json").is_file()]  # fmt: skip
    last = last_checkpoint(folder)
    notes = [f"{path} ({why})" for path, why in sorted(skipped) if last is None or _step(path) > _step(last)]
    if last is None:
        found = f"; skipped {', '.join(notes)}" if notes else ""
        raise CheckpointError(f"--resume latest: {folder} holds no whole checkpoint{found}; start without --resume "
                              "(with --overwrite if the folder holds a run)")  # fmt: skip
    return str(check_checkpoint(last)), notes


def check_checkpoint(path: Path) -> Path:
    """``path`` if it is a whole checkpoint folder: trainer state and weights (FSDP shards count)."""
    if not path.exists():
        raise CheckpointError(f"--resume {path}: no such folder; give a checkpoint-N folder or 'latest'")
    if not path.is_dir():
        raise CheckpointError(f"--resume {path}: not a folder; give a checkpoint-N folder or 'latest'")
    if not (path / "trainer_state.json").is_file():
        raise CheckpointError(f"--resume {path}: not a whole checkpoint (no trainer_state.json; an interrupted save, "
                              "or not a checkpoint); give another checkpoint-N folder or 'latest'")  # fmt: skip
    # FSDP shards, DeepSpeed's global_step* folders
    sharded = any(child.is_dir() and ("pytorch_model_fsdp" in child.name or child.name.startswith("global_step"))
                  for child in path.iterdir())  # fmt: skip
    if not sharded and not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"--resume {path}: the checkpoint holds no model weights ({', '.join(WEIGHT_FILES[:3])}"
                              ", ...); give another checkpoint-N folder or 'latest'")  # fmt: skip
    return path


def _step(path: Path) -> int:
    tail = path.name.removeprefix("checkpoint-")
    return int(tail) if tail.isdigit() else -1
