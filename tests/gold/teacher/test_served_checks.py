"""What a served teacher checks at start, without vLLM (tests/gold/teacher/fake_server.py answers as vLLM does): a
missing server or host is named at once, another tokenizer and NaN rows are named as the server's, ``seq_kd`` is
refused before training, and where rows come from when a recipe names several sources is said. The same checks
against a real vLLM server are in test_served.py."""

from __future__ import annotations

import logging
import time

import pytest

from gold.config import RecipeError, RolloutConfig
from gold.rollout.vllm_server import ServerError
from gold.teacher.build import build_teacher, check_served_seq_kd, teacher_sources
from gold.teacher.config import TeacherConfig
from gold.teacher.served import ServedTeacher, position_entries
from gold.training.trainer import GoldTrainer
from tests.conftest import zoo
from tests.gold.conftest import ROWS, tiny, training_args
from tests.gold.teacher.fake_server import closed_port, fake_teacher_url


def test_no_server_is_named_at_once_with_how_to_start_one() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    began = time.monotonic()
    with pytest.raises(ServerError, match=rf"no vLLM server answered at {url}/health \(.*gold vllm-serve"):
        ServedTeacher(url, zoo("mistral-v1"))  # the default: one try, no wait
    assert time.monotonic() - began < 6
    began = time.monotonic()
    with pytest.raises(ServerError, match=r"gold-no-such-host.invalid:8002/health \(<urlopen error \[Errno"):
        ServedTeacher("http://gold-no-such-host.invalid:8002", zoo("mistral-v1"), wait=60)  # not waited for
    assert time.monotonic() - began < 6


def test_a_server_still_starting_is_waited_for_as_told() -> None:
    began = time.monotonic()
    with pytest.raises(ServerError, match=r"within 2 s"):
        ServedTeacher(f"http://127.0.0.1:{closed_port()}", zoo("mistral-v1"), wait=2)
    assert 2 <= time.monotonic() - began < 8


def test_a_server_with_another_tokenizer_is_refused_naming_it() -> None:
    url = fake_teacher_url("mismatch")
    with pytest.raises(ServerError, match=rf"{url} serves 'fake-teacher', whose tokenizer encodes a probe text diff"):
        ServedTeacher(url, zoo("mistral-v1"))
    served = ServedTeacher(fake_teacher_url("good"), zoo("mistral-v1"), top_k=1)
    assert served.model == "fake-teacher" and served.requests == 0  # the start checks are not counted as rows


def test_nan_rows_name_the_server_at_start_and_later() -> None:
    url = fake_teacher_url("nan")
    with pytest.raises(ServerError, match=rf"teacher server {url} answered log-probability nan .*not from training"):
        ServedTeacher(url, zoo("mistral-v1"))
    answer = {"choices": [{"prompt_logprobs": [None, {"5": {"logprob": -0.5}}, {"6": {"logprob": None}}]}]}
    with pytest.raises(ServerError, match=r"http://x answered log-probability nan for token 6 at position 2"):
        position_entries(answer, [4, 5, 6], 1, 2, "http://x")
    answer["choices"][0]["prompt_logprobs"][2] = {"6": {"logprob": float("-inf")}, "7": {"logprob": -1.0}}
    ids, logprobs = position_entries(answer, [4, 5, 6], 1, 2, "http://x")  # -inf: a masked id, not broken
    assert ids.tolist() == [[5, -1], [6, 7]] and logprobs[1, 1] == -1.0


def test_seq_kd_with_a_served_teacher_is_refused_before_training(tmp_path) -> None:
    spec = TeacherConfig(tokenizer="mistral-v1", server_url="http://127.0.0.1:9")
    with pytest.raises(RecipeError, match=r"rollout.seq_kd samples from the teacher, and the teacher at http://127"):
        check_served_seq_kd(spec, RolloutConfig(seq_kd=True, lmbda=0.5))
    check_served_seq_kd(spec, RolloutConfig(seq_kd=True, lmbda=1.0))  # never off-policy: never samples the teacher
    served = ServedTeacher(fake_teacher_url("good"), zoo("mistral-v1"))
    student_tokenizer = zoo("smollm2")
    with pytest.raises(ValueError, match=r"rollout\.seq_kd samples from the teacher"):
        GoldTrainer(tiny(student_tokenizer), served, args=training_args(tmp_path), train_dataset=ROWS,
                    student_tokenizer=student_tokenizer, rollout=RolloutConfig(seq_kd=True, lmbda=0.5))  # fmt: skip


def test_where_rows_come_from_is_said_when_a_recipe_names_several_sources() -> None:
    url = "http://127.0.0.1:9"
    served = TeacherConfig(model="tiny", tokenizer="mistral-v1", server_url=url)
    assert teacher_sources(served) == (f"gold: teacher rows come from the served teacher at {url}; teacher.model "
                                       "'tiny' is not loaded (teacher.server_url wins)")  # fmt: skip
    both = TeacherConfig(tokenizer="mistral-v1", server_url=url, cache="out/cache")
    assert (
        teacher_sources(both)
        == f"gold: teacher rows come from the cache out/cache; a miss asks the served teacher at {url}"
    )
    strict = TeacherConfig(tokenizer="mistral-v1", server_url=url, cache="c", cache_miss="error")
    assert (
        teacher_sources(strict)
        == "gold: teacher rows come from the cache c; a miss is an error (teacher.cache_miss: error)"
    )
    local = TeacherConfig(model="m", cache="c")
    assert teacher_sources(local) == "gold: teacher rows come from the cache c; a miss loads 'm'"
    for single in (TeacherConfig(tokenizer="t", server_url=url), TeacherConfig(tokenizer="t", cache="c"),
                   TeacherConfig(model="m")):  # fmt: skip
        assert teacher_sources(single) is None


def test_a_served_teacher_beside_a_model_logs_that_the_model_is_not_loaded(caplog) -> None:
    spec = TeacherConfig(model="tiny", tokenizer="mistral-v1", server_url=fake_teacher_url("good"))
    with caplog.at_level(logging.WARNING, logger="gold.teacher.build"):
        teacher = build_teacher(spec, zoo("mistral-v1"), device=None, seed=0)
    assert isinstance(teacher, ServedTeacher)
    assert "teacher.model 'tiny' is not loaded (teacher.server_url wins)" in caplog.text
