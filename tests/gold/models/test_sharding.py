"""Sharding a frozen teacher (gold.models.sharding, ``teacher.shard``): refused, by name, where it cannot work. The
sharded
runs themselves are in test_distributed.py (2 processes)."""

from __future__ import annotations

import pytest

from gold.models.sharding import is_sharded, local_parameter_count, shard_frozen
from gold.teacher import LocalTeacher
from gold.teacher.config import TeacherConfig
from tests.conftest import zoo
from tests.gold.conftest import tiny


def test_one_process_has_nothing_to_shard_over() -> None:
    model = tiny(zoo("smollm2"))
    assert not is_sharded(model) and local_parameter_count(model) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match=r"needs a multi-process launch \(accelerate launch --num_processes N"):
        shard_frozen(model)
    with pytest.raises(ValueError, match="this run has 1 process"):
        LocalTeacher(model, zoo("smollm2"), shard=True)


def test_only_a_local_teacher_model_can_be_sharded() -> None:
    assert TeacherConfig(model="tiny", tokenizer="smollm2", shard=True).shard
    for extra in ({"server_url": "http://localhost:8000"}, {"cache": "cache-folder"}):
        with pytest.raises(ValueError, match=r"teacher\.shard shards a local teacher model"):
            TeacherConfig(model="tiny", tokenizer="smollm2", shard=True, **extra)
    with pytest.raises(ValueError, match=r"teacher\.shard shards a local teacher model"):
        TeacherConfig(model="self-dynamic", shard=True)
