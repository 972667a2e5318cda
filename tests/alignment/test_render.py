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
