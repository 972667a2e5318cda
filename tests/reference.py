"""Slow, obviously-right references for the fast paths. Plain Python loops, no vectorization.

Each function states the definition it implements; tests compare the fast code against it on random
and awkward inputs.
"""

from __future__ import annotations

from transformers.convert_slow_tokenizer import bytes_to_unicode

_BYTE_DECODER = {char: byte for byte, char in bytes_to_unicode().items()}


def reference_piece_bytes(piece: str, kind: str) -> bytes:
    """The bytes one vocabulary piece spells, by the published definition of its family."""
    if kind == "byte_level":
        return bytes(_BYTE_DECODER[char] for char in piece)
    if kind == "sentencepiece":
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            return bytes([int(piece[3:5], 16)])
        return piece.replace("▁", " ").encode("utf-8")
    if piece.startswith("##"):
        return piece[2:].encode("utf-8")
    return (" " + piece).encode("utf-8")


def reference_spans(token_bytes: list[bytes]) -> list[tuple[int, int]]:
    """Token spans by walking the tokens and adding up their lengths."""
    spans, cursor = [], 0
    for piece in token_bytes:
        spans.append((cursor, cursor + len(piece)))
        cursor += len(piece)
    return spans


def reference_groups(
    student_spans: list[tuple[int, int]],
    student_special: list[bool],
    teacher_spans: list[tuple[int, int]],
    teacher_special: list[bool],
) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Groups by the byte-level definition.

    A byte position p > 0 is a boundary when some text token of each side ends exactly at p. Groups
    are the intervals between consecutive boundaries, starting at 0. A text token with bytes belongs
    to the group holding its first byte; a zero-width text token at position p to the group holding
    byte p - 1 (the first group when p is 0). Tokens not inside a group, and special tokens, get -1.
    """

    def ends(spans: list[tuple[int, int]], special: list[bool]) -> set[int]:
        return {end for (start, end), is_special in zip(spans, special, strict=True) if not is_special and end > 0}

    boundaries = sorted(ends(student_spans, student_special) & ends(teacher_spans, teacher_special))
    intervals, start = [], 0
    for boundary in boundaries:
        intervals.append((start, boundary))
        start = boundary

    def group_of(span: tuple[int, int], is_special: bool) -> int:
        if is_special:
            return -1
        byte = span[0] if span[1] > span[0] else max(span[0] - 1, 0)
        for index, (lo, hi) in enumerate(intervals):
            if lo <= byte < hi and span[1] <= hi:
                return index
        return -1

    student = [group_of(s, sp) for s, sp in zip(student_spans, student_special, strict=True)]
    teacher = [group_of(t, tp) for t, tp in zip(teacher_spans, teacher_special, strict=True)]
    return student, teacher, intervals
