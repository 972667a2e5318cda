"""The other direction: the student's own samples scored by both models (KL(S‖T) per byte, teacher's bits per
byte, stop rate), from Python, from ``gold eval --sample-student`` and during training."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import gold.data.collate
from gold.config import RolloutConfig
from gold.data.examples import CompletionBytesError
from gold.evaluation.bits_per_byte import completion_logprobs
from gold.evaluation.own_samples import student_sample_scores
from gold.rollout import sample_completions, seeded_samples
from gold.training.trainer import GoldTrainer
from tests.gold.conftest import ROWS, tiny, training_args

PROMPTS = ["What is 2 plus 2?\n", ({"role": "user", "content": "Say hi"},), "Count:"]


def _perturbed(model, seed: int = 11, scale: float = 0.3):
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=gen))
    return other


def test_a_model_against_itself_has_zero_reverse_kl(student_tokenizer) -> None:
    model = tiny(student_tokenizer, seed=4)
    scores = student_sample_scores(model, student_tokenizer, model, student_tokenizer, PROMPTS, samples_per_prompt=3,
                                   max_new_tokens=8)  # fmt: skip
    assert scores.num_samples == 9 and scores.num_bytes > 0
    assert scores.reverse_kl_bits_per_byte == pytest.approx(0.0, abs=1e-9)
    assert scores.teacher_bits_per_byte == pytest.approx(scores.student_bits_per_byte, rel=1e-9)


def test_reverse_kl_equals_a_per_sequence_loop(student_tokenizer) -> None:
    """Against a perturbed copy: Σ_y (log p_S(y) − log p_T(y)) / bytes, one sequence at a time."""
    student = tiny(student_tokenizer, seed=4)
    teacher = _perturbed(student)
    scores = student_sample_scores(student, student_tokenizer, teacher, student_tokenizer, PROMPTS,
                                   samples_per_prompt=2, max_new_tokens=8, seed=3)  # fmt: skip
    config = RolloutConfig(temperature=1.0, top_p=1.0, top_k=0, max_completion_length=8, num_generations=2)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        samples = sample_completions(student, student_tokenizer, PROMPTS, config)
    gap, teacher_total, num_bytes = 0.0, 0.0, 0
    for prompt, sample in zip([p for p in PROMPTS for _ in range(2)], samples, strict=True):
        if not (sample.text or sample.ended):
            continue
        ended = [sample.ended]
        s = float(completion_logprobs(student, student_tokenizer, [prompt], [sample.text], ended=ended)[0])
        t = float(completion_logprobs(teacher, student_tokenizer, [prompt], [sample.text], ended=ended)[0])
        gap, teacher_total, num_bytes = gap + s - t, teacher_total - t, num_bytes + len(sample.text.encode())
    assert scores.num_bytes == num_bytes and scores.stop_rate == sum(s.ended for s in samples) / len(samples)
    assert scores.reverse_kl_bits_per_byte == pytest.approx(gap / num_bytes / math.log(2), rel=1e-4)
    assert scores.teacher_bits_per_byte == pytest.approx(teacher_total / num_bytes / math.log(2), rel=1e-5)
    assert scores.reverse_kl_bits_per_byte > 0


def test_identical_seeds_give_identical_figures(student_tokenizer, teacher_tokenizer) -> None:
    student, teacher = tiny(student_tokenizer, seed=4), tiny(teacher_tokenizer, seed=5)
    runs = [student_sample_scores(student, student_tokenizer, teacher, teacher_tokenizer, PROMPTS,
                                  samples_per_prompt=2, max_new_tokens=8, seed=seed) for seed in (7, 7, 8)]  # fmt: skip
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_a_student_of_another_family_is_scored_on_the_same_bytes(student_tokenizer, teacher_tokenizer,
                                                                 monkeypatch) -> None:  # fmt: skip
    """The teacher (SentencePiece) re-tokenizes the student's (byte BPE) text; other bytes raise."""
    student, teacher = tiny(student_tokenizer, seed=4), tiny(teacher_tokenizer, seed=5)
    scores = student_sample_scores(student, student_tokenizer, teacher, teacher_tokenizer, PROMPTS,
                                   samples_per_prompt=2, max_new_tokens=8)  # fmt: skip
    assert scores.reverse_kl_bits_per_byte is not None and scores.num_bytes > 0
    real = gold.data.collate.encode_continuation

    def other_bytes(tokenizer, text):
        return real(tokenizer, text + "x" if tokenizer is teacher_tokenizer else text)

    monkeypatch.setattr(gold.data.collate, "encode_continuation", other_bytes)
    with pytest.raises(CompletionBytesError, match="the teacher's completion tokens spell"):
        student_sample_scores(student, student_tokenizer, teacher, teacher_tokenizer, PROMPTS, max_new_tokens=8)


def test_empty_samples_are_counted_not_divided_by(student_tokenizer) -> None:
    """A student that stops at once writes no bytes: no per-byte figure, every sample counted as empty."""
    student = tiny(student_tokenizer, seed=4)
    head = torch.nn.Linear(student.lm_head.in_features, student.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(student.lm_head.weight)
        head.bias.zero_()
        head.bias[student_tokenizer.eos_token_id] = 80.0
    student.lm_head = head
    scores = student_sample_scores(student, student_tokenizer, tiny(student_tokenizer, seed=9), student_tokenizer,
                                   PROMPTS, samples_per_prompt=2, max_new_tokens=8)  # fmt: skip
    assert scores.num_empty == scores.num_samples == 6 and scores.num_bytes == 0 and scores.stop_rate == 1.0
    assert scores.reverse_kl_bits_per_byte is None and scores.teacher_bits_per_byte is None


def test_training_logs_both_directions_every_eval_steps(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    trainer = GoldTrainer(
        tiny(student_tokenizer, seed=0), tiny(teacher_tokenizer, seed=1),
        args=training_args(tmp_path, max_steps=4, eval_steps=2, report_to=["tensorboard"]), train_dataset=ROWS,
        student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer, held_out=ROWS[:3],
        rollout=RolloutConfig(lmbda=0.0, max_completion_length=8),
    )  # fmt: skip
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_forward_kl_bits_per_byte" in e]
    assert [e["step"] for e in evals] == [2, 4]
    for logged in evals:
        assert math.isfinite(logged["eval_reverse_kl_bits_per_byte"]) and logged["eval_forward_kl_bits_per_byte"] > 0
        assert 0 <= logged["eval_stop_rate"] <= 1 and logged["eval_teacher_bits_per_byte_on_student"] > 0
        assert "loss" not in logged  # the training metrics stay in the training log
    events = b"".join(path.read_bytes() for path in (tmp_path / "run").rglob("events.out.tfevents*"))
    for tag in (b"eval/forward_kl_bits_per_byte", b"eval/reverse_kl_bits_per_byte"):
        assert tag in events, tag
    with pytest.raises(ValueError, match=r"held_out needs args\.eval_steps"):
        GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=training_args(tmp_path / "b"),
                    train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                    held_out=ROWS[:2])  # fmt: skip


def test_a_trailing_space_prompt_is_sampled_and_scored_after_the_same_context(student_tokenizer) -> None:
    """'Answer: ' is sampled from 'Answer:' (the model writes the space), and each sample is scored exactly as
    written: the bytes scored are the bytes sampled, with no second space moved in front of them."""
    student = tiny(student_tokenizer, seed=4)
    scores = student_sample_scores(student, student_tokenizer, student, student_tokenizer, ["Answer: ", "Q: "],
                                   samples_per_prompt=3, max_new_tokens=8, seed=5)  # fmt: skip
    samples = seeded_samples(student, student_tokenizer, ["Answer:", "Q:"], samples_per_prompt=3, max_new_tokens=8,
                             seed=5, batch_size=8)  # fmt: skip
    assert scores.num_bytes == sum(len(s.text.encode()) for s in samples)
    assert scores.reverse_kl_bits_per_byte == pytest.approx(0.0, abs=1e-9)
