"""Data and models from where users keep them: Parquet/CSV tables, hub ids (through their offline error: tests never
reach the hub), and streamed JSONL that never holds the file in memory (issue 13, item 4)."""

from __future__ import annotations

import json
import os

import pytest

from gold.cli import main
from gold.config import DataConfig, ModelConfig
from gold.data.examples import DataError
from gold.data.files import ExampleStream, read_rows, stream_examples
from gold.models.hub import HubError, is_hub_id
from tests.gold.cli.test_commands import _recipe
from tests.gold.conftest import ROWS

TEXT_ROWS = [row for row in ROWS if "prompt" in row]


@pytest.fixture
def offline(monkeypatch):
    """The hub is unreachable and transformers/datasets know it: any load of an uncached id fails at once."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_tables_read_as_rows(tmp_path, suffix) -> None:
    import datasets

    path = tmp_path / f"rows{suffix}"
    table = datasets.Dataset.from_list(TEXT_ROWS)
    table.to_parquet(str(path)) if suffix == ".parquet" else table.to_csv(str(path), index=False)
    rows = read_rows(path)
    assert [(r["prompt"], r["completion"]) for r in rows] == [(r["prompt"], r["completion"]) for r in TEXT_ROWS]
    assert rows.labels[2] == f"{path} row 3"  # 1-based, as lines are


def test_hub_ids_name_the_download_when_offline(offline) -> None:
    from gold.models.build import build_model
    from gold.models.zoo import load_tokenizer

    assert is_hub_id("Qwen/Qwen2.5-0.5B-Instruct") and not is_hub_id("smollm2") and not is_hub_id("../x/y")
    assert not is_hub_id("data/train.jsonl") and not is_hub_id("tests/missing")  # mistyped local paths
    with pytest.raises(HubError, match=r"tokenizer 'no-org/no-model' .* hf download no-org/no-model"):
        load_tokenizer("no-org/no-model")
    with pytest.raises(HubError, match=r"model 'no-org/no-model' .*could not be loaded .*cache"):
        build_model(ModelConfig(model="no-org/no-model", tokenizer="smollm2"), None, seed=0)
    with pytest.raises(HubError, match=r"dataset 'no-org/no-data' .*download --repo-type dataset no-org/no-data"):
        read_rows("no-org/no-data", split="train")


def test_gold_train_with_a_hub_id_offline_is_one_line(offline, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(_recipe(tmp_path)), "student.model=no-org/no-model", "student.tiny={}"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    (line,) = [text for text in lines if not text.startswith("gold train: [")]  # stage lines: the checks passed
    assert "model 'no-org/no-model'" in line and "hf download no-org/no-model" in line


def _jsonl(path, rows) -> str:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def test_streamed_rows_are_read_lazily_and_named_by_line(tmp_path) -> None:
    path = _jsonl(tmp_path / "rows.jsonl", [*TEXT_ROWS[:3], {"prompt": 5, "completion": "x"}])
    stream = stream_examples(DataConfig(path=path, streaming=True))
    assert isinstance(stream, ExampleStream)
    first = next(iter(stream))
    assert (first.prompt, first.completion) == (TEXT_ROWS[0]["prompt"], TEXT_ROWS[0]["completion"])
    with pytest.raises(DataError, match=r"rows.jsonl line 4: 'prompt' must be a string"):
        list(stream)  # the bad row fails when reached, not before


def test_gold_train_streams_its_data(tmp_path, capsys) -> None:
    recipe = str(_recipe(tmp_path))
    assert main(["train", recipe, "data.streaming=true", "training.max_steps=2"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    with pytest.raises(SystemExit, match=r"data\.streaming: true reads rows without counting them"):
        main(["train", recipe, "data.streaming=true", "training.max_steps=-1", "--overwrite"])


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident set from /proc")
def test_a_million_row_jsonl_streams_in_bounded_memory(tmp_path) -> None:
    """1 M rows (~70 MB on disk; read whole, the rows take well over 500 MB): streaming all of them grows the resident
    set by less than 40 MB."""
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for index in range(1_000_000):
            handle.write(
                json.dumps({"prompt": f"What is {index} plus 1?\n", "completion": f"It is {index + 1}."}) + "\n"
            )
    stream = stream_examples(DataConfig(path=str(path), streaming=True))
    before, peak, count = _rss_mb(), 0.0, 0
    for count, _example in enumerate(stream, start=1):
        if count % 100_000 == 0:
            peak = max(peak, _rss_mb())
    assert count == 1_000_000
    print(f"file {path.stat().st_size / 2**20:.0f} MB; resident set {before:.0f} MB before, {peak:.0f} MB at most")
    assert peak - before < 40, (before, peak)
