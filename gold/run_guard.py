"""Never clobber a run: ``gold train`` into a folder that holds one refuses unless told how to go on, and a resumed
run must have the recipe of the run it resumes (``gold_run.json`` in the output folder records it)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from gold.recipe import RecipeError

RUN_FILE = "gold_run.json"
# training keys a resumed run may change: how long it runs, how often it logs, saves and evaluates, where it reports
RESUMABLE = {"max_steps", "num_train_epochs", "save_steps", "save_total_limit", "logging_steps", "eval_steps",
             "report_to", "logging_dir", "run_name", "disable_tqdm", "output_dir"}  # fmt: skip


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a training run: gold's run record, a checkpoint or a saved model."""
    if not folder.is_dir():
        return False
    return (
        (folder / RUN_FILE).is_file() or any(folder.glob("checkpoint-*")) or (folder / "trainer_state.json").is_file()
    )


def prepare_output_dir(folder: Path, recipe: dict[str, Any], *, resume: str | None, overwrite: bool) -> None:
    """Refuses to train into a folder holding a run unless ``resume`` or ``overwrite`` says how; with ``overwrite``
    removes the old run's checkpoints and record; with ``resume`` checks the recipe against the recorded one."""
    if resume is not None and overwrite:
        raise RecipeError("--resume and --overwrite contradict each other: resume the run, or replace it")
    if resume is None and holds_run(folder) and not overwrite:
        raise RecipeError(f"training.output_dir {str(folder)!r} already holds a run; continue it with --resume latest "
                          "(or --resume CHECKPOINT_DIR), replace it with --overwrite, or choose another "
                          "training.output_dir")  # fmt: skip
    if overwrite and folder.is_dir():
        for old in folder.glob("checkpoint-*"):
            shutil.rmtree(old)
        (folder / RUN_FILE).unlink(missing_ok=True)
    if resume is not None and (folder / RUN_FILE).is_file():
        recorded = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))["recipe"]
        changed = differing_keys(recorded, recipe)
        if changed:
            raise RecipeError(f"--resume: the recipe differs from the run's in {', '.join(changed)}; resume with the "
                              "run's recipe (its recipe.yaml) or start a new run in another output_dir")  # fmt: skip


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
