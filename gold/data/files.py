"""Rows from files: JSONL, JSON, or a folder saved with ``datasets``; every problem named by file and line.

JSONL is split on ``\\n`` alone (``str.splitlines`` would also split on U+2028 and other separators that are valid
inside JSON strings); a ``\\r`` before it is dropped. A UTF-8 byte-order mark is dropped with a warning; other bytes
that are not UTF-8 are refused with their offset.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from gold.config import DataConfig, GoldConfig, RecipeError
from gold.data.examples import DataError, Example, Messages, check_prompts, prompt_ids
from gold.models.hub import hub_dataset, is_hub_id

ROLES = ("system", "user", "assistant", "tool")


def example_from_row(row: Mapping[str, Any], *, index: int, config: DataConfig, label: str | None = None) -> Example:
    """Read ``prompt``/``completion`` strings, or ``messages`` whose last turn is the assistant's.

    ``label`` names the row in errors (``rows.jsonl line 7``); default ``row <index>``."""
    where = label or f"row {index}"
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: a row must be an object with fields, got {type(row).__name__} {row!r:.60}")
    if config.messages_field in row and row[config.messages_field] is not None:
        messages = _messages(row[config.messages_field], where)
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message must be the assistant's completion, got {messages[-1:]}")
        prompt: str | Messages = messages[:-1]
        completion = messages[-1]["content"]
    elif config.prompt_field in row and config.completion_field in row:
        prompt, completion = _prompt_completion(row[config.prompt_field], row[config.completion_field], config, where)
    else:
        raise DataError(
            f"{where} has fields {sorted(row)}; it needs {config.prompt_field!r} and {config.completion_field!r} "
            f"(strings) or {config.messages_field!r} (chat turns); set data.prompt_field / data.completion_field "
            "/ data.messages_field to your column names"
        )
    if not isinstance(completion, str) or not completion:
        raise DataError(f"{where}: the completion is empty or not a string ({completion!r:.60}); drop the row")
    if not prompt:
        raise DataError(f"{where}: the prompt is empty; the first completion token needs a context to predict it")
    ended = row.get(config.ended_field, True)
    if not isinstance(ended, bool):
        raise DataError(f"{where}: {config.ended_field!r} must be true or false (was the completion cut?), "
                        f"got {ended!r}")  # fmt: skip
    teacher_prompt = _teacher_prompt(row, where)
    teacher_id = row.get(config.teacher_field)
    if teacher_id is not None and (not isinstance(teacher_id, str) or not teacher_id):
        raise DataError(f"{where}: {config.teacher_field!r} must name a teacher (a non-empty string), got "
                        f"{teacher_id!r:.60}")  # fmt: skip
    used = (config.prompt_field, config.completion_field, config.messages_field, config.ended_field,
            config.teacher_field)  # fmt: skip
    fields = {key: value for key, value in row.items() if key not in used}
    return Example(prompt=prompt, completion=completion, ended=ended, fields=fields, teacher_prompt=teacher_prompt,
                   label=label, teacher_id=teacher_id)  # fmt: skip


def _prompt_completion(prompt: Any, completion: Any, config: DataConfig, where: str) -> tuple[str | Messages, Any]:
    """A prompt–completion row: strings, or TRL's conversational form (``prompt`` a list of turns, ``completion`` one
    assistant turn ``[{"role": "assistant", "content": ...}]``)."""
    if isinstance(prompt, (list, tuple)):
        prompt = _messages(prompt, where)
    elif not isinstance(prompt, str):
        raise DataError(f"{where}: {config.prompt_field!r} must be a string or a list of chat turns, got "
                        f"{type(prompt).__name__} {prompt!r:.60}")  # fmt: skip
    if isinstance(completion, (list, tuple)):
        turns = _messages(completion, where) if completion else []
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise DataError(f"{where}: a conversational {config.completion_field!r} must be one assistant turn "
                            f"[{{'role': 'assistant', 'content': ...}}], got {completion!r:.80}")  # fmt: skip
        if isinstance(prompt, str):
            raise DataError(f"{where}: the completion is a chat turn but {config.prompt_field!r} is a string; give "
                            "the prompt as chat turns too, or the completion as a string")  # fmt: skip
        completion = turns[0]["content"]
    return prompt, completion


def _teacher_prompt(row: Mapping[str, Any], where: str) -> str | Messages | None:
    """``teacher_prompt`` (text) or ``teacher_messages`` (chat turns before the completion) of a row, if any."""
    if row.get("teacher_messages") is not None:
        return _messages(row["teacher_messages"], where)
    text = row.get("teacher_prompt")
    if text is not None and (not isinstance(text, str) or not text):
        raise DataError(f"{where}: 'teacher_prompt' must be a non-empty string, got {text!r:.60}")
    return text


def _messages(value: Any, where: str) -> Messages:
    """Chat turns: a non-empty list of ``{"role": one of ROLES, "content": str}``."""
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}} turns, got {value!r:.60}")
    for turn, message in enumerate(value):
        if not isinstance(message, Mapping) or "role" not in message:
            raise DataError(f"{where}: message {turn} has no role ({message!r:.60}); give each turn a role "
                            f"({', '.join(ROLES)}) and a content string")  # fmt: skip
        if message["role"] not in ROLES:
            raise DataError(f"{where}: message {turn} has role {message['role']!r}; roles are {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {turn} ({message['role']}) needs a content string, got "
                            f"{message.get('content')!r:.60}")  # fmt: skip
    return tuple(value)


def examples_from_rows(rows: Iterable[Mapping[str, Any]], config: DataConfig | None = None) -> list[Example]:
    """Validate every row once, up front, so a bad row fails before training starts (rows read by
    :func:`gold.data.files.read_rows` are named by file and line in errors)."""
    data_config = config or DataConfig(path="<in memory>")
    labels = getattr(rows, "labels", None)
    return [example_from_row(row, index=i, config=data_config, label=labels[i] if labels else None)
            for i, row in enumerate(rows)]  # fmt: skip


class Rows(list[Any]):
    """Rows with a label each (``data.jsonl line 7``) that :func:`gold.data.examples.examples_from_rows` names in
    errors."""

    labels: list[str]
    # set by gold.cli.run.build_trainer: the rollout.max_prompt_length every prompt was checked against
    checked_prompt_limit: int | None


def _rows(items: list[Any], labels: list[str]) -> Rows:
    rows = Rows(items)
    rows.labels = labels
    return rows


TABLES = {".parquet": "parquet", ".csv": "csv"}


def read_rows(path: str | Path, *, what: str = "data.path", name: str | None = None, split: str = "train") -> Rows:
    """Rows of a ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, a folder from ``Dataset.save_to_disk``, or a
    hub dataset id (``name``: its configuration, ``split``); raises :class:`DataError` naming the file, the line and
    the fix (``what`` names the setting in messages)."""
    source = Path(path)
    if source.is_dir():
        return _dataset_folder(source, what)
    if not source.is_file() and is_hub_id(str(path)):
        rows = list(hub_dataset(str(path), config=name, split=split, streaming=False))
        return _rows(rows, [f"{path} [{split}] row {index + 1}" for index in range(len(rows))])
    if not source.is_file():
        raise DataError(f"{what} {str(source)!r} does not exist")
    if source.suffix in TABLES:
        return _table(source, what)
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
    return _rows(rows, [f"{source} row {index + 1}" for index in range(len(rows))])


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
    return decode_utf8(source.read_bytes(), source, what)


def decode_utf8(data: bytes, source: Path, what: str) -> str:
    """``data`` as UTF-8 text (a byte-order mark dropped with a warning), or :class:`DataError` naming the file, the
    byte and its offset; ``what`` names the setting or flag that gave the file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{what} {str(source)!r} line {line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
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
    return _rows(rows, [f"{source} row {index + 1}" for index in range(len(rows))])


def _table(source: Path, what: str) -> Rows:
    import datasets
    from datasets.exceptions import DatasetGenerationError

    if source.suffix == ".csv":
        _check_csv(source, what)
    try:
        loaded = datasets.load_dataset(TABLES[source.suffix], data_files=str(source), split="train")
    except (ValueError, OSError, DatasetGenerationError) as err:
        cause = err.__cause__ or err.__context__ or err  # datasets wraps the parser's error
        raise DataError(f"{what} {str(source)!r}: not a readable {source.suffix[1:]} table ({cause})") from None
    rows = list(loaded)
    if not rows:
        raise DataError(f"{what} {str(source)!r} holds no rows")
    return _rows(rows, [f"{source} row {index + 1}" for index in range(len(rows))])


def _check_csv(source: Path, what: str) -> None:
    """Every CSV record has the header's number of fields and every quote is closed, or :class:`DataError` naming
    the file and the line (``datasets``' parser names neither)."""
    reader = csv.reader(io.StringIO(_utf8(source, what), newline=""), strict=True)
    try:
        header = next(reader, None)
        for record in reader:
            if record and len(record) != len(header or ()):
                raise DataError(f"{source} line {reader.line_num}: {len(record)} fields, the header has "
                                f"{len(header or ())}; quote a field that holds a comma (\"a, b\")")  # fmt: skip
    except csv.Error as err:
        raise DataError(f"{source} line {reader.line_num}: not valid CSV ({err}); close the quote or escape it "
                        "(\"\" inside a quoted field)") from None  # fmt: skip


class ExampleStream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Training examples read as they are needed (``data.streaming: true``): no row is held longer than its batch.
    Each pass reads the source again from its start; a bad row fails when it is reached, named by file and line."""

    def __init__(self, rows: Callable[[], Iterable[tuple[str, Any]]], config: DataConfig) -> None:
        self.rows, self.config = rows, config

    def __iter__(self) -> Iterator[Example]:
        for index, (label, row) in enumerate(self.rows()):
            yield example_from_row(row, index=index, config=self.config, label=label)


def stream_examples(config: DataConfig) -> ExampleStream:
    """:class:`ExampleStream` over ``config.path``: a JSONL file line by line (our reader: errors name the line), any
    other file, folder or hub id through ``datasets``' streaming mode."""
    source = Path(config.path)
    if source.is_file() and source.suffix == ".jsonl":
        return ExampleStream(lambda: _jsonl_lines(source), config)
    if source.is_dir():
        raise DataError(f"data.path {config.path!r}: a save_to_disk folder is read whole; data.streaming takes a "
                        "file or a hub dataset id")  # fmt: skip
    if not source.is_file() and not is_hub_id(config.path):
        raise DataError(f"data.path {config.path!r} does not exist")
    return ExampleStream(lambda: _datasets_stream(config), config)


def _jsonl_lines(source: Path) -> Iterator[tuple[str, Any]]:
    with source.open("rb") as handle:  # bytes: "\n" is the only line break
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").removeprefix("\ufeff" if number == 1 else "").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataError(f"{source} line {number}: not UTF-8 text (byte 0x{raw[err.start]:02x})") from None
            if not line.strip():
                continue
            try:
                yield f"{source} line {number}", json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{source} line {number}: not valid JSON ({err.msg}, column {err.colno})") from None


def _datasets_stream(config: DataConfig) -> Iterator[tuple[str, Any]]:
    source = Path(config.path)
    if source.is_file():
        import datasets

        kind = TABLES.get(source.suffix, "json")
        stream = datasets.load_dataset(kind, data_files=str(source), split="train", streaming=True)
    else:
        stream = hub_dataset(config.path, config=config.name, split=config.split, streaming=True)
    for index, row in enumerate(stream):
        yield f"{config.path} row {index + 1}", row


def check_prompt_lengths(
    examples: Sequence[Example], tokenizers: dict[str, Any], *, limit: int | None,
    labels: Sequence[str] | None = None, encode: Callable[[str, Any, Any], list[int]] | None = None,
) -> None:  # fmt: skip
    """Every prompt in each side's tokenization (``tokenizers``: role → tokenizer) is non-empty and within
    rollout.max_prompt_length, checked before training (naming the row: ``labels``, else its index) rather than
    when its batch comes up. ``encode(role, tokenizer, prompt)``: default :func:`gold.data.examples.prompt_ids`."""
    for index, example in enumerate(examples):
        for role, tokenizer in tokenizers.items():
            prompt = example.prompt_for_teacher if role == "teacher" else example.prompt
            ids = encode(role, tokenizer, prompt) if encode else prompt_ids(tokenizer, prompt)
            try:
                check_prompts([ids], role=role, limit=limit)
            except DataError as err:
                where = labels[index] if labels else f"row {index}"
                raise DataError(f"{where}: {str(err).removeprefix('example 0: ')}") from None


def training_examples(config: GoldConfig) -> Rows | ExampleStream:
    """Every training example, validated up front (labelled by file and line), or a stream (``data.streaming``)."""
    if config.data.streaming:
        if config.training.get("max_steps", -1) <= 0:
            raise RecipeError("data.streaming: true reads rows without counting them: give training.max_steps")
        return stream_examples(config.data)
    rows = read_rows(config.data.path, name=config.data.name, split=config.data.split)
    examples = Rows(examples_from_rows(rows, config.data))
    examples.labels = rows.labels  # the trainer names a too-long prompt by file and line
    return examples
