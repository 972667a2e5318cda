"""What a whole training checkpoint is, checked before a checkpoint is resumed or scored.

Trainer's checkpoint folder holds the weights, ``trainer_state.json``, the optimizer, scheduler and RNG states.
A folder that has its name may still be damaged (a full disk, a copy cut short, an edited state file), and loading it
fails late, in a traceback. So gold writes ``gold_manifest.json`` into each checkpoint at save (the size of every
file and the run record, ``gold_run.json``, holding the run's recipe), and :func:`verify_checkpoint` checks, without
loading anything: ``trainer_state.json`` parses and names its step; the sizes match the manifest (a checkpoint of an
older run, without one, is checked on the rest); every ``*.safetensors`` header parses and its tensor data has the
length the header gives; each torch file (``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ...) ends in its
zip directory, which a cut file lacks.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

from gold.models.build import WEIGHT_FILES

MANIFEST = "gold_manifest.json"
RUN_FILE = "gold_run.json"  # the run record gold train keeps in the output folder: a run id and the recipe
TRAINER_STATE = "trainer_state.json"
CHECKPOINT = re.compile(r"checkpoint-(\d+)")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")  # written by torch.save: zip archives


def write_manifest(folder: Path, *, run_record: Path) -> None:
    """Writes ``folder/gold_manifest.json``: the size of every file in the checkpoint ``folder`` and the run record
    ``run_record`` holds (``null`` when there is none, e.g. a run started from Python). Call it last, once every
    process wrote its part and before the folder gets its final name."""
    files = {path.relative_to(folder).as_posix(): path.stat().st_size
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}  # fmt: skip
    run = json.loads(run_record.read_text(encoding="utf-8")) if run_record.is_file() else None
    (folder / MANIFEST).write_text(json.dumps({"files": files, "run": run}, indent=1), encoding="utf-8")


def checkpoint_run(folder: Path) -> dict[str, Any] | None:
    """The run record (``run_id``, ``recipe``) saved in the checkpoint's manifest; None for a checkpoint of a run
    without one (started from Python) or of an older gold."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    run = json.loads(path.read_text(encoding="utf-8"))["run"]
    return run if isinstance(run, dict) and isinstance(run.get("recipe"), dict) else None


def checkpoint_step(folder: Path) -> int:
    """``global_step`` of a checkpoint that :func:`verify_checkpoint` accepted."""
    return int(json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"])


def split_checkpoints(run_dir: Path) -> tuple[list[tuple[int, Path]], list[tuple[int, Path, str]]]:
    """The ``checkpoint-N`` folders of ``run_dir``, by step: ``(step, path)`` of the whole ones, and
    ``(step, path, reason)`` of the others."""
    whole, broken = [], []
    for path in run_dir.glob("checkpoint-*"):
        if (match := CHECKPOINT.fullmatch(path.name)) and path.is_dir():
            step, reason = int(match.group(1)), verify_checkpoint(path)
            if reason is None:
                whole.append((step, path))
            else:
                broken.append((step, path, reason))
    return sorted(whole), sorted(broken)


def verify_checkpoint(folder: Path) -> str | None:
    """None if the checkpoint ``folder`` is whole, else what is wrong with it (one phrase naming the file)."""
    return (_state_problem(folder) or _manifest_problem(folder) or _weights_problem(folder)
            or next(filter(None, map(_file_problem, sorted(folder.iterdir()))), None))  # fmt: skip


def _state_problem(folder: Path) -> str | None:
    path = folder / TRAINER_STATE
    if not path.is_file():
        return f"no {TRAINER_STATE}: an interrupted save"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        return f"{TRAINER_STATE} is not valid JSON ({err})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{TRAINER_STATE} names no global_step"
    return None


def _manifest_problem(folder: Path) -> str | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None  # a checkpoint of an older gold: checked on the rest
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        sizes = {str(name): int(size) for name, size in files.items()}
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is not a gold manifest (not JSON, or no file sizes in it)"
    for name, size in sizes.items():
        if not (folder / name).is_file():
            return f"{name} is missing (the save wrote {size} bytes)"
        if (actual := (folder / name).stat().st_size) != size:
            return f"{name} has {actual} bytes, the save wrote {size}"
    return None


def _weights_problem(folder: Path) -> str | None:
    # FSDP shards, DeepSpeed's global_step* folders
    sharded = any(child.is_dir() and ("pytorch_model_fsdp" in child.name or child.name.startswith("global_step"))
                  for child in folder.iterdir())  # fmt: skip
    if not sharded and not any((folder / name).is_file() for name in WEIGHT_FILES):
        return f"no model weights ({', '.join(WEIGHT_FILES[:3])}, ...)"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, UnicodeDecodeError, KeyError, AttributeError):
            return f"{index.name} is not a safetensors index (no weight_map)"
        missing = sorted(name for name in shards if not (folder / str(name)).is_file())
        if missing:
            return f"{missing[0]} is missing ({index.name} names it)"
    return None


def _file_problem(path: Path) -> str | None:
    if not path.is_file():
        return None
    if path.suffix == ".safetensors":
        return safetensors_problem(path)
    if path.suffix in TORCH_SUFFIXES and not zipfile.is_zipfile(path):
        return f"{path.name} is cut short or damaged (a torch file ends in a zip directory; this one has none)"
    return None


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a ``.safetensors`` file's layout: an 8-byte little-endian header length, a JSON header,
    then exactly as many bytes of tensor data as the header's largest end offset; None if nothing."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or 8 + length > size:
            return f"{path.name} is cut short inside its header ({size} bytes)"
        try:
            header = json.loads(handle.read(length))
            end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"),
                      default=0)  # fmt: skip
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
            return f"{path.name} has no valid safetensors header"
    if size - 8 - length != end:
        return f"{path.name} holds {size - 8 - length} bytes of tensor data, its header describes {end}: cut short"
    return None
