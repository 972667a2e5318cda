"""What the ``gold`` command line checks before the expensive part, and how it fails: one line, exit code 2.

Every refusal is a :class:`CommandError` whose text is ``gold <command>: <what is wrong, and the fix>``; ``main``
prints it and exits 2 (argparse's own exit code for bad usage), with no traceback. Paths and names in it come from
the user, or from whoever named the files: control characters in them are printed escaped
(:func:`alignment.escape_controls`), so that a folder named with ESC or BEL cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


def escape_controls(text: str) -> str:
    """:func:`alignment.escape_controls`, imported on first use: ``alignment`` imports numpy, and the parser that
    ``gold --help`` builds imports this module."""
    from alignment import escape_controls as escape

    return escape(text)


class CommandError(SystemExit):
    """A refused command: ``str()`` is the one-line message; the exit code is 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return escape_controls(self.message)


def say(text: str, **print_options: Any) -> None:
    """``print`` for text holding paths and names: each line with its control characters escaped (the line breaks
    of ``text`` itself kept)."""
    print("\n".join(escape_controls(line) for line in text.split("\n")), **print_options)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``gold eval: argument --limit: must be >= 1, got 0``)."""

    def error(self, message: str) -> NoReturn:
        print(escape_controls(f"{self.prog}: {message} (see {self.prog} --help)"), file=sys.stderr)
        raise SystemExit(2)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum``, naming the value otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def writable_dir(path: Path, what: str) -> None:
    """Creates ``path`` if needed and proves a file can be written in it; raises ``OSError`` naming ``what``."""
    if path.exists() and not path.is_dir():
        raise OSError(f"{what} {str(path)!r} is a file, not a folder; choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gold-write-check-"):
            pass
    except OSError as err:
        reason = err.strerror or err
        raise OSError(f"{what} {str(path)!r} is not writable ({reason}); choose a writable folder") from None


def writable_file(path: Path, what: str) -> None:
    """Checks up front that ``path`` can be written (its folder created and writable, the path not a folder)."""
    if path.is_dir():
        raise OSError(f"{what} {str(path)!r} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OSError(f"{what} {str(path)!r} is not writable; choose another file")
    writable_dir(path.parent, f"the folder of {what}")


def read_utf8(path: Path, what: str) -> str:
    """The text of a UTF-8 file (:func:`gold.data.files.decode_utf8`); ``OSError`` for a missing file or a folder."""
    if not path.exists():
        raise OSError(f"{what} {str(path)!r} does not exist")
    if path.is_dir():
        raise OSError(f"{what} {str(path)!r} is a folder; give a file")
    from gold.data.files import decode_utf8

    return decode_utf8(path.read_bytes(), path, what)
