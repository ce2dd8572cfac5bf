"""Writing a file so that a crash, a full disk or a concurrent reader never sees half of it.

One recipe for every file rankwise replaces whole (exports, keys, references, sidecars, calibration
files, secrets): write a uniquely named temporary file in the same directory (created exclusively, so two
writers never share one; owner-only when asked, otherwise the usual mode under the process's umask, applied
by the kernel rather than read with ``os.umask``, which would briefly change it for every thread), flush and
fsync it, rename it over the target (``os.replace``: atomic on POSIX and Windows), then fsync the directory so
the rename itself survives a power cut. On any error the temporary file is removed and the old file is
left whole. Append-only stores (SQLite, JSONL histories) do not go through here: they never replace a file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_writer(path: str | Path, *, private: bool = False, encoding: str = "utf-8",
                  newline: str | None = None) -> Iterator[IO[str]]:
    """A text handle whose content replaces ``path`` atomically when the block ends without an error.

    ``private``: the file is readable by its owner only (keys, secrets, users' queries); otherwise it gets
    the usual ``0o666`` less the umask, like any file the process creates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_text(path: str | Path, text: str, *, private: bool = False) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically; see :func:`atomic_writer`."""
    with atomic_writer(path, private=private) as handle:
        handle.write(text)


def fsync_directory(directory: str | Path) -> None:
    """Make a rename or a new entry in ``directory`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def storable_text(value: object) -> object:
    """``value`` with NUL characters replaced by U+FFFD when it is a string, else as it is.

    PostgreSQL's text cannot hold NUL, and a client can put one in any string it sends (a user id, a model
    name an error message echoes): stored as it came, one such value would fail the whole batch of rows it
    was written with. Both stores store the replacement, so a row reads (and hashes) the same in either.
    """
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value
