"""Terminal and HTML views."""

from __future__ import annotations

import unicodedata

from alignment import align_texts, format_stats, html_page, render_html, render_text


def test_text_view_lists_groups_and_flags_approximate(qwen, llama) -> None:
    alignment = align_texts(qwen, llama, unicodedata.normalize("NFD", "é 12345"))
    view = render_text(alignment)
    assert "123" in view and "~" in view
    assert "groups" in format_stats(alignment.stats)


def test_html_view_escapes_and_marks_groups(qwen, llama) -> None:
    alignment = align_texts(qwen, llama, "<b>x</b> 👍🏽")
    fragment = render_html(alignment, student_name="qwen", teacher_name="llama")
    assert "&lt;" in fragment and "&gt;" in fragment and "x</b>" not in fragment
    assert fragment.count('class="g ') == alignment.num_groups
    assert html_page([fragment]).startswith("<!doctype html>")
    assert alignment._repr_html_() == render_html(alignment)


def test_terminal_view_escapes_control_characters(qwen) -> None:
    """ESC, BEL, NUL, DEL and C1 controls would drive the terminal showing the table: escaped; text left as it is."""
    tokenizer = qwen
    text = "red\x1b[31m bell\x07 nul\x00 del\x7f c1\u0085 👩‍💻 line\u2028end"
    table = render_text(align_texts(tokenizer, tokenizer, text))
    assert not any(ch in table for ch in "\x1b\x07\x00\x7f\u0085\u2028")
    for escaped in ("\\x1b", "\\x07", "\\x00", "\\x7f", "\\x85"):
        assert escaped in table
    assert "red" in table and "bell" in table and "end" in table
