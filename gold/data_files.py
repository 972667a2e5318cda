"""Rows from files: JSONL, JSON, or a folder saved with ``datasets``; every problem named by file and line.

JSONL is split on ``\\n`` alone (``str.splitlines`` would also split on U+2028 and other separators that are valid
inside JSON strings); a ``\\r`` before it is dropped. A UTF-8 byte-order mark is dropped with a warning; other bytes
that are not UTF-8 are refused with their offset.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from gold.data import DataError


class Rows(list[Any]):
    """Rows with a label each (``data.jsonl line 7``) that :func:`gold.data.examples_from_rows` names in errors."""

    labels: list[str]


def _rows(items: list[Any], labels: list[str]) -> Rows:
    rows = Rows(items)
    rows.labels = labels
    return rows


def read_rows(path: str | Path, *, what: str = "data.path") -> Rows:
    """Rows of a ``.jsonl`` / ``.json`` file or of a folder from ``Dataset.save_to_disk``; raises
    :class:`DataError` naming the file, the line and the fix (``what`` names the setting in messages)."""
    source = Path(path)
    if source.is_dir():
        return _dataset_folder(source, what)
    if not source.is_file():
        raise DataError(f"{what} {str(source)!r} does not exist")
    text = _utf8(source, what)
    if not text.strip():
        raise DataError(f"{what} {str(source)!r} is empty; it needs rows (one JSON object per line in .jsonl)")
    if source.suffix == ".jsonl":
        return _jsonl(text, source)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{source} line {err.lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(rows, list):
        raise DataError(f"{what} {str(source)!r}: a .json file must hold a list of rows (or use .jsonl, a row a line)")
    if not rows:
        raise DataError(f"{what} {str(source)!r} holds an empty list; it needs rows")
    return _rows(rows, [f"{source} row {index}" for index in range(len(rows))])


def _jsonl(text: str, source: Path) -> Rows:
    items, labels = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{source} line {number}: not valid JSON ({err.msg}, column {err.colno}); fix the line or "
                            "drop it") from None  # fmt: skip
        labels.append(f"{source} line {number}")
    return _rows(items, labels)


def _utf8(source: Path, what: str) -> str:
    data = source.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{what} {str(source)!r} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                        f"{err.start}); re-save it as UTF-8") from None  # fmt: skip
    if text.startswith("\ufeff"):
        warnings.warn(f"{what} {str(source)!r} starts with a UTF-8 byte-order mark; ignored", stacklevel=3)
        text = text[1:]
    return text


def _dataset_folder(source: Path, what: str) -> Rows:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(source))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"{what} {str(source)!r} is a folder but not a dataset saved with Dataset.save_to_disk "
                        f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None  # fmt: skip
    if isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"{what} {str(source)!r} holds splits ({', '.join(loaded)}); give the folder of one split")
    rows = list(loaded)
    if not rows:
        raise DataError(f"{what} {str(source)!r} holds no rows")
    return _rows(rows, [f"{source} row {index}" for index in range(len(rows))])
