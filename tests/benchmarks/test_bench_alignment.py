"""The alignment benchmark runs end to end on a small batch and reports every key (no timing asserts)."""

from __future__ import annotations

import json

from benchmarks.bench_alignment import main


def test_benchmark_reports_all_keys(tmp_path) -> None:
    out = tmp_path / "bench.json"
    main(["--batch", "3", "--tokens", "60", "--repeats", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    for key in ("tokenize_s", "gold_align_s", "trl_align_s", "gold_ids_to_spans_s", "trl_ids_to_spans_s"):
        assert result[key] > 0, key
    assert result["groups"] > 0
