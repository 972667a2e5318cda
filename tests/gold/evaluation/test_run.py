"""``gold eval``: local folders and checkpoints scored against a teacher, JSON and plot, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from gold.cli import main
from gold.data.examples import Example
from gold.evaluation.bits_per_byte import distillation_gap
from gold.evaluation.run import EvalSet, ModelScore, contains_answer, format_table, score_model
from tests.gold.cli.test_commands import _recipe
from tests.gold.conftest import ROWS, tiny
from tests.gold.models.test_checkpoint import cut

HELD_OUT = [
    {"prompt": "What is 7 plus 1?\n", "completion": "It is 8. Café!", "answer": "8"},
    {"prompt": "Say hi\n", "completion": "Hi there 👋🏽", "answer": "hi"},
    {"text": "A plain text row, scored from its start."},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, student_tokenizer, teacher_tokenizer):
    """A tiny student and teacher saved as local model folders with their tokenizers."""
    root = tmp_path_factory.mktemp("models")
    for name, tokenizer, seed in (("student", student_tokenizer, 1), ("teacher", teacher_tokenizer, 2)):
        tiny(tokenizer, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    data = root / "held_out.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in HELD_OUT), encoding="utf-8")
    return root


def test_eval_scores_student_and_teacher_folders(folders, capsys) -> None:
    out = folders / "scores.json"
    argv = ["eval", "--data", str(folders / "held_out.jsonl"), "--teacher", str(folders / "teacher"),
            "--student", str(folders / "student"), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "KL(T‖S) b/B" in table and "3 examples" in table and "stops" in table
    scores = json.loads(out.read_text())
    assert all(0.0 <= m["stop_rate"] <= 1.0 for m in scores["models"])
    teacher, student = scores["models"]
    assert teacher["role"] == "teacher" and teacher["kl_bits_per_byte"] is None
    # a difference of two float32 sums of ~15 bits/byte each: compare to 1e-5 of their size
    expected = student["bits_per_byte"] - teacher["bits_per_byte"]
    assert student["kl_bits_per_byte"] == pytest.approx(expected, abs=1e-5 * student["bits_per_byte"])
    assert 0.0 <= student["next_byte_agreement"] <= 1.0
    assert scores["num_bytes"] == sum(len(r.get("completion", r.get("text", "")).encode()) for r in HELD_OUT)


def test_eval_kl_matches_the_sequence_level_gap(folders, student_tokenizer, teacher_tokenizer) -> None:
    from gold.evaluation.run import load_scored_model

    student, teacher = load_scored_model(str(folders / "student")), load_scored_model(str(folders / "teacher"))
    examples = [Example(r["prompt"], r["completion"]) for r in HELD_OUT[:2]]
    score = score_model("s", student, EvalSet(examples, None, "file"), role="student", teacher=teacher)
    gap = distillation_gap(student[0], student[1], teacher[0], teacher[1], examples)
    assert score.kl_bits_per_byte == pytest.approx(gap.kl_bits_per_byte, abs=1e-5 * gap.student_bits_per_byte)
    assert score.bits_per_byte == pytest.approx(gap.student_bits_per_byte, rel=1e-6)


def test_eval_samples_the_teacher_and_reports_accuracy(folders, capsys) -> None:
    rows = folders / "answers.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in HELD_OUT[:2]), encoding="utf-8")
    out = folders / "sampled.json"
    argv = ["eval", "--data", str(rows), "--teacher", str(folders / "teacher"),
            "--student", str(folders / "student"), "--sample-teacher", "2", "--max-new-tokens", "5",
            "--answer-field", "answer", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    scores = json.loads(out.read_text())
    assert scores["completions"] == "2 teacher sample(s) per prompt"
    assert 1 <= scores["num_examples"] <= 4
    assert all(m["accuracy"] is not None for m in scores["models"])


def test_eval_checkpoints_and_plot(tmp_path, folders, capsys) -> None:
    recipe = _recipe(tmp_path)
    assert main(["train", str(recipe), "training.max_steps=2", "training.save_steps=1"]) == 0
    plot, out = tmp_path / "steps.png", tmp_path / "steps.json"
    argv = ["eval", "--data", str(folders / "held_out.jsonl"), "--teacher", str(folders / "teacher"),
            "--checkpoints", str(tmp_path / "out"), "--plot", str(plot), "--json", str(out),
            "--sample-student", "2", "--max-new-tokens", "6"]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "KL(S‖T) b/B" in table and "T b/B of S" in table  # both directions
    models = json.loads(out.read_text())["models"]
    students = [m for m in models if m["role"] == "student"]
    assert [m["step"] for m in students] == [1, 2]
    assert all(m["reverse_kl_bits_per_byte"] is not None and m["teacher_bits_per_byte_on_student"] > 0
               for m in students)  # fmt: skip
    assert models[0]["role"] == "teacher" and models[0]["reverse_kl_bits_per_byte"] is None
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_eval_checkpoints_scores_the_whole_ones_and_names_the_others(tmp_path, folders, capsys) -> None:
    """A checkpoint cut short (issue 29, item 6) is named with what is wrong and skipped; the whole ones are scored."""
    assert main(["train", str(_recipe(tmp_path)), "training.save_strategy=steps", "training.save_steps=1"]) == 0
    cut(tmp_path / "out" / "checkpoint-1" / "model.safetensors")
    out = tmp_path / "scores.json"
    capsys.readouterr()
    assert main(["eval", "--data", str(folders / "held_out.jsonl"), "--checkpoints", str(tmp_path / "out"),
                 "--stop-samples", "0", "--json", str(out)]) == 0  # fmt: skip
    skipped = f"{tmp_path / 'out' / 'checkpoint-1'} (model.safetensors has"
    assert f"gold eval: skipping checkpoint {skipped}" in capsys.readouterr().err
    scores = json.loads(out.read_text())
    assert [m["step"] for m in scores["models"]] == [2] and scores["skipped_checkpoints"][0].startswith(skipped)


def test_eval_errors_name_the_fix(folders, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit, match="name at least one model"):
        main(["eval", "--data", str(folders / "held_out.jsonl")])
    with pytest.raises(SystemExit, match="no 'answer' field"):
        main(["eval", "--data", str(folders / "held_out.jsonl"), "--student", str(folders / "student"),
              "--answer-field", "answer"])  # fmt: skip
    with pytest.raises(SystemExit, match="holds no checkpoint-N folders"):
        main(["eval", "--data", str(folders / "held_out.jsonl"), "--checkpoints", str(tmp_path)])
    with pytest.raises(SystemExit, match="--sample-student scores the students' samples with the teacher"):
        main(["eval", "--data", str(folders / "held_out.jsonl"), "--student", str(folders / "student"),
              "--sample-student", "1"])  # fmt: skip
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(folders / "held_out.jsonl"), "--student", str(folders / "student"),
              "--stop-samples", "-1"])  # fmt: skip
    assert "argument --stop-samples: must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--sample-teacher needs --teacher"):
        main(["eval", "--data", str(folders / "held_out.jsonl"), "--student", str(folders / "student"),
              "--sample-teacher", "1"])  # fmt: skip


def test_contains_answer_and_table() -> None:
    assert contains_answer(" Moo ", "It says MOO.") and not contains_answer("baa", "moo")
    table = format_table([ModelScore("m", "student", 3, 1.5, 0.25, 0.5, 0.1, None)])
    assert "1.500" in table and "50.0%" in table and "—" in table
    assert len(ROWS) > 0


def test_stop_rate_is_the_share_of_samples_that_stop(student_tokenizer) -> None:
    """A model whose end token dominates stops every time; one that never gives it mass never stops."""
    from gold.evaluation.run import model_stop_rate

    prompts = ["Q:", ({"role": "user", "content": "hi"},)]
    rates = []
    for weight in (50.0, -50.0):
        model = tiny(student_tokenizer, seed=3)
        head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[student_tokenizer.eos_token_id] = weight  # end token far above (or below) every other
        model.lm_head = head
        rates.append(model_stop_rate(model, student_tokenizer, prompts, samples=3, max_new_tokens=4))
    assert rates == [1.0, 0.0]
