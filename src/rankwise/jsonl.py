"""Reading user text files line by line: JSONL records and UTF-8 lines with errors that name ``file:line``.

Shared by every reader of user files (corpora, queries, gold sets), so that a bad byte, a binary file or
a truncated ``.gz`` is one actionable line wherever it is read, never a ``UnicodeDecodeError`` traceback
(or, for a truncated gzip, Click's bare ``Aborted.``: it swallows the ``EOFError`` gzip raises).
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rankwise.errors import RankwiseError

#: a carriage return not followed by a line feed: a line end in old Mac files (text mode splits there too)
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def parse_json_object(line: str, where: str, error: type[RankwiseError]) -> dict[str, Any]:
    """Parse ``line`` (read at ``where``, e.g. ``corpus.jsonl:12``) or raise ``error`` saying how to fix it."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise error(f"{where}: malformed JSON ({err.msg}); fix or remove that line") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply; fix or remove that line") from None
    if not isinstance(record, dict):
        raise error(f"{where}: expected one JSON object per line")
    return record


def read_lines(path: str | Path, error: type[RankwiseError]) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for each line of a UTF-8 text file (``.gz``: decompressed), line ends kept.

    Lines are decoded one at a time so that invalid UTF-8 is reported with its file and line number; a
    UTF-8 byte-order mark (Excel and Notepad write one) is dropped; ``\\r\\n``, ``\\n`` and a lone ``\\r``
    all end a line, as in text mode. A NUL byte, UTF-16 text, a truncated or corrupt gzip stream and an
    unreadable file each raise ``error`` with one line saying what to do.
    """
    path = Path(path)
    compressed = path.suffix.lower() == ".gz"
    lineno = 0
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as fh:
            for raw in fh:
                if lineno == 0:
                    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                        raise error(f"{path}: the file is UTF-16 text; save it as UTF-8")
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                text = _decoded(raw, path, lineno + 1, error)
                for part in _LONE_CR.split(text) if "\r" in text else (text,):
                    if part:
                        lineno += 1
                        yield lineno, part
    except (EOFError, zlib.error, OSError) as err:
        if isinstance(err, OSError) and err.errno is not None:  # the file itself: missing, unreadable, ...
            raise error(f"cannot read '{path}' ({err.strerror or err})") from None
        if isinstance(err, gzip.BadGzipFile) and lineno == 0:
            raise error(f"{path}: not a gzip file ({err}); compress it with gzip or drop the .gz suffix") from None
        raise error(f"{path}: the compressed data is truncated or corrupt after line {lineno} ({err}); "
                    "re-create or re-download the file") from None


def _decoded(raw: bytes, path: Path, lineno: int, error: type[RankwiseError]) -> str:
    if b"\0" in raw:
        raise error(f"{path}:{lineno}: binary data (a NUL byte) in a text file; is this the right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        column = len(raw[:err.start].decode("utf-8", "replace")) + 1
        raise error(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {column}); "
                    "save the file as UTF-8") from None
