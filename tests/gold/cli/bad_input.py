"""What the CLI bad-input table (:mod:`tests.gold.cli.test_errors`) builds its cases from: bad recipes and data,
model and run folders, damaged checkpoints, unwritable paths, and the machine states (no wandb, no hub, an FSDP launch
without GPUs) a case needs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.gold.cli.test_commands import _recipe
from tests.gold.conftest import ROWS

BAD_RECIPES = {
    "yaml syntax": ("student: [1,\n", "line 2"),
    "python tag": ("student: !!python/object/apply:os.system ['echo hi']\n", "python/object/apply"),
    "duplicate section": ("loss: {beta: 0.1}\nloss: {beta: 0.2}\n", "'loss' appears twice"),
    "not utf-8": (b"student: caf\xe9\n", "not UTF-8"),
}

CSV_FIELDS = "prompt,completion\na,b\nc,d,e\n"  # line 3: a comma not quoted
CSV_QUOTE = 'prompt,completion\n"a"b,c\n'  # line 2: text after a closing quote


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _train(tmp: Path, *extra: str) -> list[str]:
    return ["train", str(_recipe(tmp)), *extra]


def _data(tmp: Path, content: str | bytes) -> list[str]:
    return _train(tmp, f"data.path={_write(tmp / 'bad.jsonl', content)}")


def _data_at(tmp: Path, name: str, content: str) -> list[str]:
    """``gold train`` on the data file ``name`` (any characters: given as a double-quoted YAML string)."""
    _write(tmp / name, content)
    quoted = json.dumps(f"{tmp}/{name}")  # JSON string escapes are YAML double-quoted escapes
    return _train(tmp, f"data.path={quoted}")


TINY = "{model: tiny, tokenizer: %s, tiny: {hidden_size: 16, layers: 1}}"
TWO_TEACHERS = f"teachers:\n  mistral: {TINY % 'mistral-v1'}\n  qwen: {TINY % 'qwen2.5'}\n"


def _teachers(tmp: Path, teachers: str = TWO_TEACHERS, *, routes: tuple[str | None, ...] = ("mistral", "qwen"),
              extra: str = "") -> list[str]:  # fmt: skip
    """``gold train`` on a recipe with ``teachers`` (YAML lines, ``extra`` after them) whose rows name the teachers
    ``routes`` in turn (None: no teacher_id)."""
    rows = [{**row, "teacher_id": routes[i % len(routes)]} for i, row in enumerate(ROWS[:4])]
    data = _write(tmp / "routed.jsonl", "\n".join(json.dumps({k: v for k, v in r.items() if v is not None})
                                                  for r in rows))  # fmt: skip
    recipe = (f"student: {TINY % 'smollm2'}\n{teachers}{extra}data: {{path: {data}}}\n"
              f"training: {{output_dir: {tmp / 'out'}, max_steps: 1, use_cpu: true}}\n")  # fmt: skip
    return ["train", str(_write(tmp / "teachers.yaml", recipe))]


def _folder(tmp: Path, *, weights: bool, tokenizer: bool) -> Path:
    """A model folder saved from a tiny model, then stripped of its weights or tokenizer files."""
    from gold.models.build import tiny_model
    from tests.conftest import zoo

    folder, tok = tmp / "model", zoo("smollm2")
    tiny_model(tok, seed=0, hidden_size=16, layers=1).save_pretrained(folder)
    tok.save_pretrained(folder)
    for pattern in ([] if weights else ["*.safetensors"]) + ([] if tokenizer else ["tokenizer*", "vocab*", "merges*"]):
        for path in folder.glob(pattern):
            path.unlink()
    return folder


def _own_folder(tmp: Path) -> Path:
    """A whole model folder (weights and tokenizer): the student starts from it."""
    return _folder(tmp, weights=True, tokenizer=True)


def _long_third_prompt(tmp: Path) -> Path:
    rows = [{"prompt": "Hi\n", "completion": "Hello."}] * 2 + [{"prompt": "word " * 40, "completion": "Done."}]
    return _write(tmp / "long.jsonl", "\n".join(json.dumps(r) for r in rows))


def _checkpoint(tmp: Path) -> Path:
    """An (empty) checkpoint folder of a run: ``gold eval --checkpoints`` accepts the run before anything loads."""
    folder = tmp / "run" / "checkpoint-1"
    folder.mkdir(parents=True)
    return folder


def _run(tmp: Path, *, step: int = 1, folder: str = "out", overrides: tuple[str, ...] = ()) -> Path:
    """A run folder as `gold train` leaves it for ``_recipe(tmp)`` with ``overrides`` (its run record and a
    checkpoint, built in milliseconds); returns the checkpoint."""
    from gold.cli.guard import record_run
    from gold.cli.recipe import config_to_dict, load_recipe
    from tests.gold.models.test_checkpoint import fake_checkpoint

    run = tmp / folder
    record_run(run, config_to_dict(load_recipe(_recipe(tmp), overrides)))
    return fake_checkpoint(run / f"checkpoint-{step}", step=step, run_record=run / "gold_run.json")


def _cut(checkpoint: Path, name: str) -> Path:
    """``checkpoint`` with its file ``name`` cut to half (a full disk), or its manifest and ``name`` gone (a save
    that never wrote it) when ``name`` starts with ``-``."""
    if name.startswith("-"):
        for gone in (name[1:], "gold_manifest.json"):
            (checkpoint / gone).unlink()
    else:
        (checkpoint / name).write_bytes((checkpoint / name).read_bytes()[: (checkpoint / name).stat().st_size // 2])
    return checkpoint


def _blocker(tmp: Path) -> Path:
    """A regular file: any path below it can be neither created nor written."""
    return _write(tmp / "blocker", "a file")


def _no_wandb(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as when not installed


def _hub(monkeypatch, *, token: str | None, endpoint: str = "http://127.0.0.1:9", offline: bool = False) -> None:
    """The hub as this process sees it: ``token`` in HF_TOKEN (no token file), ``endpoint``, offline or not."""
    import huggingface_hub.constants

    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", "/nonexistent/gold-test-token")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


def _fsdp_launch_on_cpu(monkeypatch) -> None:
    import torch

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets for distributed_type: FSDP
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
