"""The gold command line."""

from __future__ import annotations

import json
import sys

import pytest

from gold.cli import main
from gold.cli.recipe import load_recipe
from tests.gold.conftest import ROWS


def test_align_prints_groups_and_writes_html(tmp_path, capsys) -> None:
    page = tmp_path / "view.html"
    assert main(["align", "--student", "qwen2.5", "--teacher", "llama-3", "12345 apples", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "1:1 groups" in out and "123" in out
    assert page.read_text().startswith("<!doctype html>")


def test_align_reads_a_file(tmp_path, capsys) -> None:
    source = tmp_path / "t.txt"
    source.write_text("東京 👍🏽", encoding="utf-8")
    assert main(["align", "--student", "mistral-v1", "--teacher", "deepseek", "--file", str(source)]) == 0
    assert "groups" in capsys.readouterr().out


def test_unknown_tokenizer_exits_with_the_choices() -> None:
    with pytest.raises(SystemExit, match="unknown zoo tokenizer 'nope'"):
        main(["align", "--student", "nope", "--teacher", "llama-3", "x"])


def test_demo_aligns_two_families_and_writes_html(tmp_path, capsys) -> None:
    assert main(["demo", "--alignment-only", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vocabulary overlap" in out and "1:1 groups" in out
    assert (tmp_path / "alignment.html").exists()


def _recipe(tmp_path, **training):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in ROWS), encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "student: {model: tiny, tokenizer: smollm2, tiny: {hidden_size: 16, layers: 1}}\n"
        "teacher: {model: tiny, tokenizer: mistral-v1, tiny: {hidden_size: 16, layers: 1}}\n"
        f"data: {{path: {rows}}}\n"
        "rollout: {lmbda: 0.5, max_completion_length: 6}\n"
        f"training: {{output_dir: {tmp_path / 'out'}, max_steps: 2, per_device_train_batch_size: 2, use_cpu: true,"
        " disable_tqdm: true}\n",
        encoding="utf-8",
    )
    return recipe


def test_train_runs_a_recipe_and_saves_the_student(tmp_path, capsys) -> None:
    recipe = _recipe(tmp_path)
    assert main(["train", str(recipe), "loss.beta=0.0", "training.max_steps=1"]) == 0
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    saved = load_recipe(out / "recipe.yaml")
    assert saved.loss.beta == 0.0 and saved.training["max_steps"] == 1
    assert "student saved to" in capsys.readouterr().out


def test_train_names_an_unknown_key(tmp_path) -> None:
    recipe = _recipe(tmp_path)
    with pytest.raises(SystemExit, match="unknown key 'lmbd' in rollout \\(did you mean 'lmbda'\\?\\)"):
        main(["train", str(recipe), "rollout.lmbd=1"])
    with pytest.raises(SystemExit, match="unknown key 'learning_rat' in training"):
        main(["train", str(recipe), "training.learning_rat=1"])
    with pytest.raises(SystemExit, match=r"data\.path .* does not exist"):
        main(["train", str(recipe), "data.path=/nope.jsonl"])


def test_train_with_vllm_where_it_is_missing_says_what_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets where it is not installed
    with pytest.raises(SystemExit, match=r"gold train: rollout\.use_vllm needs vLLM, .* `make install-vllm`"):
        main(["train", str(_recipe(tmp_path)), "rollout.use_vllm=true"])


def test_train_refuses_a_model_folder_with_its_own_code(tmp_path) -> None:
    from gold.models.build import tiny_model
    from tests.conftest import zoo

    folder = tmp_path / "student"
    tiny_model(zoo("smollm2"), seed=0, hidden_size=16, layers=1).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"gold train: .*student holds its own code \(config.json names it"):
        main(["train", str(_recipe(tmp_path)), f"student.model={folder}", "student.tiny={}"])


def test_train_never_clobbers_a_run(tmp_path, capsys) -> None:
    """A second run into the same folder refuses (naming both ways on); --overwrite replaces the old run's
    checkpoints instead of mixing two runs in one folder; a resume must keep the recipe (it may run longer)."""
    recipe = str(_recipe(tmp_path))
    saving = ["training.save_strategy='steps'", "training.save_steps=1"]
    assert main(["train", recipe, "training.max_steps=3", *saving]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    with pytest.raises(SystemExit, match=r"already holds a run; continue it with --resume latest .* --overwrite"):
        main(["train", recipe, "training.max_steps=2", *saving])
    with pytest.raises(SystemExit, match=r"recipe differs from the run's in loss.beta \(0.5 → 0.2\)"):
        main(["train", recipe, "training.max_steps=4", *saving, "loss.beta=0.2", "--resume", "latest"])
    assert main(["train", recipe, "training.max_steps=4", *saving, "--resume", "latest"]) == 0  # longer: allowed
    assert (out / "checkpoint-4").is_dir()
    assert main(["train", recipe, "training.max_steps=2", *saving, "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    with pytest.raises(SystemExit, match="--resume and --overwrite contradict"):
        main(["train", recipe, "--resume", "latest", "--overwrite"])
