"""What a whole checkpoint is (gold.models.checkpoint, issue 29 item 6): each kind of damage a full disk or a cut
copy leaves is named, by file, with a manifest and without one (a checkpoint of an older gold)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gold.models.checkpoint import MANIFEST, checkpoint_run, split_checkpoints, verify_checkpoint, write_manifest


def fake_checkpoint(folder: Path, *, step: int, run_record: Path | None = None, manifest: bool = True) -> Path:
    """A checkpoint folder laid out as Trainer saves one (tiny weights, torch-saved states), built in milliseconds;
    with ``manifest`` its ``gold_manifest.json`` as gold writes it at save, holding the run record ``run_record``."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": step}), encoding="utf-8")
    (folder / "config.json").write_text("{}", encoding="utf-8")
    save_file({"weight": torch.ones(8, 8), "bias": torch.zeros(8)}, str(folder / "model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save({"state": torch.arange(64.0)}, folder / name)
    if manifest:
        write_manifest(folder, run_record=run_record or folder / "no-record")
    return folder


def cut(path: Path, keep: float = 0.5) -> None:
    """Truncates ``path`` to a share of its bytes: what a full disk or an interrupted copy leaves."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGES: dict[str, tuple[Callable[[Path], None], bool, str]] = {
    # name: (damage, with a manifest, what the reason says)
    "weights cut, manifest": (lambda f: cut(f / "model.safetensors"), True, "model.safetensors has"),
    "weights cut, no manifest": (lambda f: cut(f / "model.safetensors", 0.9), False, "bytes of tensor data, its"),
    "weights header cut": (lambda f: cut(f / "model.safetensors", 0.01), False, "cut short inside its header"),
    "weights header garbage": (
        lambda f: (f / "model.safetensors").write_bytes((7).to_bytes(8, "little") + b"{nope!}"),
        False,
        "model.safetensors has no valid safetensors header",
    ),
    "optimizer cut, manifest": (lambda f: cut(f / "optimizer.pt"), True, "optimizer.pt has"),
    "optimizer cut, no manifest": (lambda f: cut(f / "optimizer.pt", 0.9), False, "optimizer.pt is cut short"),
    "rng state cut, no manifest": (lambda f: cut(f / "rng_state.pth"), False, "rng_state.pth is cut short"),
    "file gone": (lambda f: (f / "scheduler.pt").unlink(), True, "scheduler.pt is missing (the save wrote"),
    "trainer state not json": (
        lambda f: (f / "trainer_state.json").write_text('{"global_step": 2', encoding="utf-8"),
        False,
        "trainer_state.json is not valid JSON",
    ),
    "trainer state without step": (
        lambda f: (f / "trainer_state.json").write_text("{}", encoding="utf-8"),
        False,
        "trainer_state.json names no global_step",
    ),
    "no trainer state": (lambda f: (f / "trainer_state.json").unlink(), True, "no trainer_state.json"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), False, "no model weights"),
    "manifest not json": (lambda f: (f / MANIFEST).write_text("{", encoding="utf-8"), True, "not a gold manifest"),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_each_damage_is_named(tmp_path, name) -> None:
    damage, manifest, expected = DAMAGES[name]
    folder = fake_checkpoint(tmp_path / "checkpoint-2", step=2, manifest=manifest)
    assert verify_checkpoint(folder) is None
    damage(folder)
    reason = verify_checkpoint(folder)
    assert reason is not None and expected in reason, reason


def test_the_manifest_holds_every_file_and_the_run_record(tmp_path) -> None:
    record = tmp_path / "gold_run.json"
    record.write_text(json.dumps({"run_id": "abc", "recipe": {"loss": {"beta": 0.5}}}), encoding="utf-8")
    folder = fake_checkpoint(tmp_path / "checkpoint-3", step=3, run_record=record)
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert files == {p.name: p.stat().st_size for p in folder.iterdir() if p.name != MANIFEST}
    assert checkpoint_run(folder) == {"run_id": "abc", "recipe": {"loss": {"beta": 0.5}}}
    assert checkpoint_run(fake_checkpoint(tmp_path / "checkpoint-4", step=4)) is None  # no record: run from Python


def test_split_checkpoints_orders_by_step_and_gives_reasons(tmp_path) -> None:
    for step in (1, 2, 10):
        fake_checkpoint(tmp_path / f"checkpoint-{step}", step=step)
    cut(tmp_path / "checkpoint-10" / "model.safetensors")
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name: ignored
    whole, broken = split_checkpoints(tmp_path)
    assert whole == [(1, tmp_path / "checkpoint-1"), (2, tmp_path / "checkpoint-2")]
    assert [(step, path) for step, path, _ in broken] == [(10, tmp_path / "checkpoint-10")]
