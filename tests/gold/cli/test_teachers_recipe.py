"""``teachers:`` and ``teacher_weights:`` in a recipe, ``data.teacher_field`` in rows, and ``gold train`` on two
teachers of different tokenizers (issue 31)."""

from __future__ import annotations

import json

import pytest
import yaml

from gold.cli import main
from gold.cli.recipe import config_from_dict, dump_recipe, load_recipe
from gold.data.files import examples_from_rows
from gold.teacher.config import TeacherConfig
from tests.gold.cli.bad_input import TINY, TWO_TEACHERS, _teachers
from tests.gold.conftest import ROWS

RAW = yaml.safe_load(f"student: {TINY % 'smollm2'}\n{TWO_TEACHERS}data: {{path: rows.jsonl}}\n")


def test_teachers_are_teacher_sections_and_round_trip(tmp_path) -> None:
    config = config_from_dict({**RAW, "teacher_weights": {"mistral": 1, "qwen": 0.5}})
    assert config.teacher is None and list(config.teachers) == ["mistral", "qwen"]
    assert all(isinstance(spec, TeacherConfig) for spec in config.teachers.values())
    assert config.teachers["qwen"].tokenizer == "qwen2.5" and config.teacher_weights == {"mistral": 1, "qwen": 0.5}
    dump_recipe(config, tmp_path / "r.yaml")
    assert load_recipe(tmp_path / "r.yaml") == config
    assert load_recipe(tmp_path / "r.yaml", ["teachers.qwen.device=cpu"]).teachers["qwen"].device == "cpu"


def test_a_one_teacher_recipe_keeps_its_form(tmp_path) -> None:
    raw = {"student": RAW["student"], "teacher": RAW["teachers"]["mistral"], "data": RAW["data"]}
    config = config_from_dict(raw)
    dump_recipe(config, tmp_path / "r.yaml")
    text = (tmp_path / "r.yaml").read_text(encoding="utf-8")
    assert "teachers" not in text and "teacher_weights" not in text and load_recipe(tmp_path / "r.yaml") == config


@pytest.mark.parametrize(
    ("teachers", "message"),
    [({"mistral": {"model": "tiny", "tokenizer": "mistral-v1", "peft": {"r": 4}}}, "teachers.mistral: teacher.peft"),
     ({"a/b": {"model": "tiny", "tokenizer": "mistral-v1"}}, "the id 'a/b' must be a non-empty string without '/'"),
     ({"mistral": {"modle": "tiny"}}, "unknown key 'modle' in teachers.mistral")],
)  # fmt: skip
def test_each_teacher_section_is_checked_as_teacher_is(teachers, message) -> None:
    from gold.config import RecipeError

    with pytest.raises(RecipeError, match=message):
        config_from_dict({**RAW, "teachers": teachers})


def test_rows_name_their_teacher_in_the_configured_column() -> None:
    from gold.config import DataConfig

    rows = [{**ROWS[0], "expert": "qwen"}, ROWS[1]]
    examples = examples_from_rows(rows, DataConfig(path="x", teacher_field="expert"))
    assert [e.teacher_id for e in examples] == ["qwen", None]
    assert "expert" not in examples[0].fields  # not a reward-function column


def test_gold_train_runs_two_teachers_of_different_tokenizers(tmp_path, capsys) -> None:
    argv = _teachers(tmp_path)
    assert main([*argv, "training.max_steps=2", "training.per_device_train_batch_size=2", "training.logging_steps=1",
                 "rollout.max_completion_length=6"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "loading teacher 'mistral'" in err and "loading teacher 'qwen'" in err
    state = tmp_path / "out" / "checkpoint-2" / "trainer_state.json"
    history = json.loads(state.read_text(encoding="utf-8"))["log_history"]
    logged = [e for e in history if "loss" in e]
    assert logged and all("teacher/qwen/group_fraction" in e for e in logged)
    assert load_recipe(tmp_path / "out" / "recipe.yaml").teachers.keys() == {"mistral", "qwen"}
