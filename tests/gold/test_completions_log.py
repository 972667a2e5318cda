"""See what the student writes (issue 13, item 5): completions with each model's top token per group, in the console
and in TensorBoard when the run reports there; `gold train` shows the first completion's alignment."""

from __future__ import annotations

from transformers import TrainerCallback

from gold import GoldTrainer
from gold.cli import main
from gold.config import RolloutConfig
from tests.gold.conftest import ROWS, tiny, training_args
from tests.gold.test_cli import _recipe


class FakeWriter:
    def __init__(self) -> None:
        self.texts: list[tuple[str, str, int]] = []

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.texts.append((tag, text, step))


class FakeTensorBoard(TrainerCallback):
    """Where transformers' TensorBoardCallback keeps its writer."""

    def __init__(self) -> None:
        self.tb_writer = FakeWriter()


def test_completions_are_logged_every_n_steps_with_top_tokens(tmp_path, student_tokenizer, teacher_tokenizer,
                                                             capsys) -> None:  # fmt: skip
    board = FakeTensorBoard()
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1),
                          args=training_args(tmp_path, max_steps=3, per_device_train_batch_size=2),
                          train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          rollout=RolloutConfig(lmbda=0.0, log_completions_steps=2, num_completions_to_print=2),
                          callbacks=[board])  # fmt: skip
    trainer.train()
    out = capsys.readouterr().out
    assert out.count("── completions at step") == 2  # steps 1 and 3
    assert "completions at step 1" in out and "completions at step 3" in out
    first = out.split("completions at step 1")[1].splitlines()
    assert first[1].startswith("[dataset] ") and "→" in first[1]
    assert "[" in first[2] and "|" in first[2]  # group cells: text[student top|teacher top]
    assert [(tag, step) for tag, _, step in board.tb_writer.texts] == [("completions", 1), ("completions", 3)]
    assert "completions at step 3" in board.tb_writer.texts[1][1]


def test_gold_train_shows_the_first_alignment(tmp_path, capsys) -> None:
    assert main(["train", str(_recipe(tmp_path)), "training.max_steps=1"]) == 0
    out = capsys.readouterr().out
    assert "the first completion, as each side tokenizes it" in out and "groups" in out
