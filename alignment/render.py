"""Views of an alignment: a terminal table and an HTML page for notebooks.

Each group shows its bytes and the student and teacher tokens it pairs; approximate groups are
flagged, and bytes that are not valid UTF-8 on their own (half of an emoji) are shown escaped.
"""

from __future__ import annotations

import html
import unicodedata
from typing import Any, Protocol

from alignment.stats import AlignmentStats


class AlignmentView(Protocol):
    """What the views read of an alignment (:class:`alignment.Alignment` has it). A protocol, not the class, so that
    ``alignment.align`` can use the views (its notebook display) without the two modules importing each other."""

    @property
    def text_bytes(self) -> bytes: ...

    @property
    def student_ids(self) -> Any: ...  # (Ls,) int64

    @property
    def teacher_ids(self) -> Any: ...  # (Lt,) int64

    @property
    def student_spans(self) -> Any: ...  # (Ls, 2) byte [start, end)

    @property
    def teacher_spans(self) -> Any: ...  # (Lt, 2)

    @property
    def approximate(self) -> Any: ...  # (G,) bool

    @property
    def stats(self) -> AlignmentStats: ...

    @property
    def num_groups(self) -> int: ...

    def group_text(self, group: int) -> bytes: ...

    def student_positions(self, group: int) -> Any: ...

    def teacher_positions(self, group: int) -> Any: ...


_VISIBLE = {"\r": "\\r", "\n": "\\n", "\t": "\\t", " ": "·", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _show(data: bytes) -> str:
    """Bytes as readable text: valid UTF-8 decoded with whitespace made visible, the rest escaped. Control
    characters (ESC, BEL, NUL, DEL, C1) are escaped too: raw, they would drive the terminal that shows the table."""
    text = data.decode("utf-8", errors="backslashreplace")
    return "".join(_VISIBLE.get(ch) or _escape_char(ch) for ch in text)


def escape_controls(text: str) -> str:
    """``text`` safe to print on a terminal, for a path or a name someone else chose: control characters (ESC would
    recolour the terminal or set its title, BEL ring it, a newline split a one-line message), line separators and
    lone surrogates (the undecodable bytes of a file name) are written as backslash escapes; the rest is unchanged."""
    return "".join(_NAMED.get(ch) or _escape_char(ch) for ch in text)


_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    kind = unicodedata.category(ch)
    if kind == "Cc":
        return f"\\x{ord(ch):02x}"
    if kind == "Cs":  # os.fsdecode's surrogateescape: U+DC80 + the byte
        return f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF else f"\\u{ord(ch):04x}"
    if kind in ("Zl", "Zp"):
        return f"\\u{ord(ch):04x}"
    return ch


def _token_texts(alignment: AlignmentView, group: int, side: str) -> list[str]:
    if side == "student":
        positions, spans = alignment.student_positions(group), alignment.student_spans
    else:
        positions, spans = alignment.teacher_positions(group), alignment.teacher_spans
    return [_show(alignment.text_bytes[spans[p, 0] : spans[p, 1]]) for p in positions.tolist()]


def format_stats(stats: AlignmentStats) -> str:
    """The statistics as aligned ``name: value`` lines."""
    rows = [
        ("groups", f"{stats.num_groups}"),
        ("1:1 groups", f"{stats.one_to_one_fraction:.1%}"),
        ("max group size", f"{stats.max_group_size}"),
        ("student tokens / group", f"{stats.student_tokens_per_group:.3f}"),
        ("teacher tokens / group", f"{stats.teacher_tokens_per_group:.3f}"),
        ("aligned bytes", f"{stats.aligned_bytes}"),
        ("approximate bytes", f"{stats.approximate_bytes} ({stats.approximate_fraction:.1%})"),
        ("ungrouped student tokens", f"{stats.student_tokens - stats.student_grouped}"),
        ("ungrouped teacher tokens", f"{stats.teacher_tokens - stats.teacher_grouped}"),
        ("group sizes (s:t)", ", ".join(f"{k}×{v}" for k, v in sorted(stats.size_histogram.items()))),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def render_text(alignment: AlignmentView, *, max_groups: int = 200) -> str:
    """A terminal table, one line per group: bytes | student tokens | teacher tokens.

    Args:
        alignment: the alignment to show.
        max_groups: groups shown before the table is cut (the count of the rest is printed).
    """
    lines = [f"{'#':>4}  {'bytes':<24} {'student':<36} teacher"]
    for group in range(min(alignment.num_groups, max_groups)):
        flag = "~" if alignment.approximate[group] else " "
        student = " | ".join(_token_texts(alignment, group, "student"))
        teacher = " | ".join(_token_texts(alignment, group, "teacher"))
        lines.append(f"{group:>4}{flag} {_show(alignment.group_text(group)):<24} {student:<36} {teacher}")
    if alignment.num_groups > max_groups:
        lines.append(f"… {alignment.num_groups - max_groups} more groups")
    return "\n".join(lines)


_STYLE = """
<style>
.gold-align { font-family: ui-monospace, monospace; line-height: 2.1; }
.gold-align .g { display: inline-block; margin: 1px; padding: 0 3px; border-radius: 4px; }
.gold-align .g0 { background: #e3f2fd; } .gold-align .g1 { background: #fff3e0; }
.gold-align .one { outline: 1px solid #90caf9; } .gold-align .many { outline: 2px solid #ef6c00; }
.gold-align .approx { background: #ffcdd2 !important; outline: 2px dashed #c62828; }
.gold-align .tok { border-right: 1px dotted #888; }
.gold-align table { border-collapse: collapse; } .gold-align td { padding: 2px 8px; }
</style>
"""


def render_html(alignment: AlignmentView, *, title: str = "", student_name: str = "student",
                teacher_name: str = "teacher") -> str:  # fmt: skip
    """A self-contained HTML fragment: the text coloured by group, token splits on hover.

    Groups alternate colours; a thick outline marks groups that are not 1:1, a dashed red one marks
    approximate groups. Hovering a group shows both sides' tokens and ids.
    """
    cells = []
    for group in range(alignment.num_groups):
        student = _token_texts(alignment, group, "student")
        teacher = _token_texts(alignment, group, "teacher")
        s_ids = alignment.student_ids[alignment.student_positions(group)].tolist()
        t_ids = alignment.teacher_ids[alignment.teacher_positions(group)].tolist()
        classes = ["g", f"g{group % 2}", "one" if len(student) == len(teacher) == 1 else "many"]
        if alignment.approximate[group]:
            classes.append("approx")
        tip = f"{student_name}: {' | '.join(student)} {s_ids}\n{teacher_name}: {' | '.join(teacher)} {t_ids}"
        cells.append(
            f'<span class="{" ".join(classes)}" title="{html.escape(tip)}">'
            f"{html.escape(_show(alignment.group_text(group)))}</span>"
        )
    rows = [line.split("  ", 1) for line in format_stats(alignment.stats).splitlines()]
    stats_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(value.strip())}</td></tr>" for name, value in rows
    )
    heading = f"<h3>{html.escape(title)}</h3>" if title else ""
    return (
        f'{_STYLE}<div class="gold-align">{heading}'
        f"<p><b>{html.escape(student_name)}</b> vs <b>{html.escape(teacher_name)}</b></p>"
        f"<div>{''.join(cells)}</div><table>{stats_rows}</table></div>"
    )


def html_page(fragments: list[str], *, title: str = "gold alignment") -> str:
    """A complete HTML document around one or more :func:`render_html` fragments."""
    body = "<hr>".join(fragments)
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title>'
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"
