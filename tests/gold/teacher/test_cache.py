"""The teacher cache: built once from a recipe, a cache-fed run equals the teacher-fed run step for step, one cache
serves a byte-level and a SentencePiece student, and a cache for another teacher, tokenizer or K is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gold.cli import main
from gold.cli.recipe import config_from_dict
from gold.cli.run import build_trainer
from gold.cli.teacher_cache import build_cache
from gold.teacher.cache import CachedTeacher, CacheError, TeacherCache, prompt_key
from tests.gold.conftest import ROWS
from tests.gold.small_vocab import small_vocab_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache")
    tokenizer_dir = root / "teacher-tokenizer"
    small_vocab_tokenizer().save_pretrained(tokenizer_dir)
    rows = root / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in ROWS), encoding="utf-8")
    return {"root": root, "tokenizer": tokenizer_dir, "rows": rows}


def recipe(folders, out: Path, *, student: str = "smollm2", **teacher) -> dict:
    return {
        "student": {"model": "tiny", "tokenizer": student, "tiny": {"hidden_size": 16, "layers": 1}},
        "teacher": {
            "model": "tiny",
            "tokenizer": str(folders["tokenizer"]),
            "tiny": {"hidden_size": 16, "layers": 1},
            **teacher,
        },
        "data": {"path": str(folders["rows"])},
        "rollout": {"lmbda": 0.0, "max_completion_length": 64},
        "training": {
            "output_dir": str(out),
            "max_steps": 3,
            "per_device_train_batch_size": 4,
            "use_cpu": True,
            "disable_tqdm": True,
            "report_to": [],
            "logging_steps": 1,
            "learning_rate": 1e-2,
        },
    }


@pytest.fixture(scope="module")
def full_cache(folders) -> Path:
    out = folders["root"] / "cache-all"
    build_cache(config_from_dict(recipe(folders, folders["root"] / "unused", top_k=-1)), out, progress=False)
    return out


def losses_and_weights(config: dict) -> tuple[list[float], dict[str, torch.Tensor]]:
    trainer = build_trainer(config_from_dict(config))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_a_cache_fed_run_equals_the_teacher_fed_run_step_for_step(folders, full_cache, tmp_path) -> None:
    live_losses, live_weights = losses_and_weights(recipe(folders, tmp_path / "live"))
    cached = recipe(folders, tmp_path / "cached", top_k=-1, cache=str(full_cache), cache_miss="error")
    cached_losses, cached_weights = losses_and_weights(cached)
    assert len(live_losses) == 3
    assert cached_losses == pytest.approx(live_losses, rel=1e-5)
    for name, weight in live_weights.items():
        torch.testing.assert_close(cached_weights[name], weight, rtol=1e-4, atol=1e-6)


def test_one_cache_serves_a_byte_level_and_a_sentencepiece_student(folders, full_cache, tmp_path) -> None:
    cache = TeacherCache(full_cache)
    live = build_trainer(config_from_dict(recipe(folders, tmp_path / "live")))
    assert (frozenset(cache.info.stop_ids), cache.info.end_id) == (live.teacher.stop.stop_ids, live.teacher.stop.end_id)
    for student in ("smollm2", "mistral-v1"):  # byte-level BPE, SentencePiece with byte fallback
        config = recipe(folders, tmp_path / student, student=student, top_k=-1, cache=str(full_cache),
                        cache_miss="error")  # fmt: skip
        trainer = build_trainer(config_from_dict(config))
        trainer.train()
        assert isinstance(trainer.teacher, CachedTeacher) and trainer.teacher.stop == live.teacher.stop
        assert trainer.teacher.hits == len(ROWS) and trainer.teacher.misses == 0  # one epoch: 4 + 4 + 2 rows
    assert len(cache) == len(ROWS)


def test_a_small_k_cache_is_compact_and_resumes(folders, tmp_path, capsys) -> None:
    out = tmp_path / "cache-k4"
    built = build_cache(config_from_dict(recipe(folders, tmp_path / "unused", top_k=4)), out, progress=False)
    assert len(built) == len(ROWS) and built.info.top_k == 4
    per_token = built.size_bytes() / built.tokens()
    assert per_token < 8 * (4 + 1) + 30  # ids and log-probs of ≤ K + 1 entries, plus Arrow's offsets
    shards = sorted(out.glob("shard-*.arrow"))
    (out / "shard-99999.arrow.partial").write_bytes(b"half a shard")  # an interrupted build
    again = build_cache(config_from_dict(recipe(folders, tmp_path / "unused", top_k=4)), out, progress=False)
    assert sorted(out.glob("shard-*.arrow")) == shards and len(again) == len(ROWS)
    assert not list(out.glob("*.partial"))
    assert main(["teacher-cache", "info", str(out)]) == 0
    assert f"{len(ROWS)} sequences" in capsys.readouterr().out


def test_a_cache_for_another_teacher_k_or_tokenizer_is_refused(folders, full_cache, tmp_path) -> None:
    cases = {
        "another teacher": dict(top_k=-1, tiny={"hidden_size": 32, "layers": 1}),
        "another K": dict(top_k=8),
    }
    for why, teacher in cases.items():
        config = recipe(folders, tmp_path / "out", cache=str(full_cache), **teacher)
        with pytest.raises(CacheError, match=why):
            build_trainer(config_from_dict(config))
    other = recipe(folders, tmp_path / "out", top_k=-1, cache=str(full_cache))
    other["teacher"]["tokenizer"] = "mistral-v1"
    with pytest.raises(CacheError, match="another teacher tokenizer"):
        build_trainer(config_from_dict(other))
    with pytest.raises(CacheError, match=r"no info\.json"):
        TeacherCache(tmp_path)


def test_a_miss_is_an_error_or_asks_the_teacher(folders, full_cache, tmp_path) -> None:
    config = recipe(folders, tmp_path / "miss", top_k=-1, cache=str(full_cache), cache_miss="error")
    config["data"]["path"] = str(tmp_path / "other.jsonl")
    Path(config["data"]["path"]).write_text(json.dumps({"prompt": "Unseen?\n", "completion": "Yes."}) + "\n")
    config["training"]["per_device_train_batch_size"] = 1
    trainer = build_trainer(config_from_dict(config))
    with pytest.raises(CacheError, match="not in the teacher cache"):
        trainer.train()
    config["teacher"]["cache_miss"] = "teacher"
    trainer = build_trainer(config_from_dict(config))
    trainer.train()
    assert trainer.teacher.misses == 3 and trainer.teacher.hits == 0


def test_the_build_command_names_a_bad_k(folders, tmp_path, capsys) -> None:
    path = tmp_path / "recipe.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe(folders, tmp_path / "out")))
    from gold.cli.checks import CommandError

    with pytest.raises(CommandError, match="--top-k must be -1"):
        main(["teacher-cache", "build", str(path), "--out", str(tmp_path / "c"), "--top-k", "0"])


def test_teacher_samples_drawn_once_feed_seq_kd(folders, tmp_path) -> None:
    out = tmp_path / "cache-samples"
    sampling = {"lmbda": 0.0, "seq_kd": True, "temperature": 1.0, "max_completion_length": 12, "num_generations": 2}
    config = recipe(folders, tmp_path / "unused", top_k=-1)
    config["rollout"] = sampling
    built = build_cache(config_from_dict(config), out, seq_kd_samples=2, progress=False)
    assert len(built.samples) == len(ROWS) and all(len(s) == 2 for s in built.samples.values())
    assert built.info.samples_per_prompt == 2 and built.info.sample_temperature == 1.0
    run = recipe(folders, tmp_path / "run", top_k=-1, cache=str(out), cache_miss="error")
    run["rollout"] = sampling
    trainer = build_trainer(config_from_dict(run))
    trainer.train()  # every sample and every row from the cache: the teacher model is never loaded
    assert trainer.teacher._fallback is None
    assert trainer.teacher.misses == 0 and trainer.teacher.hits == len(ROWS) * 2  # one epoch, 2 samples a prompt
    prompts = [trainer._prompt("teacher", trainer.teacher.tokenizer, e.prompt_for_teacher)
               for e in list(trainer.train_dataset)[:2]]  # fmt: skip
    rollouts = trainer.teacher.generator(trainer.rollout_config).rollout(prompts)
    for i, prompt in enumerate(prompts):  # the same samples every time: those drawn at build time
        assert [r.ids for r in rollouts[2 * i : 2 * i + 2]] == built.samples[prompt_key(built.info.teacher, prompt)]
    for name, value in (("temperature", 0.7), ("max_completion_length", 16), ("num_generations", 3)):
        other = {**sampling, name: value}
        run["rollout"] = other
        with pytest.raises(CacheError, match=f"drawn with {name}"):
            build_trainer(config_from_dict(run)).train()
