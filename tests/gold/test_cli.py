"""The gold command line."""

from __future__ import annotations

import pytest

from gold.cli import main


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
