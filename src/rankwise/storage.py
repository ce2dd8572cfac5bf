"""Writing a file so that a crash, a full disk or a concurrent reader never sees half of it.

One recipe for every file rankwise replaces whole (exports, keys, references, sidecars, calibration
files, secrets): write a uniquely named temporary file in the same directory (``tempfile.mkstemp``:
created exclusively, owner-only unless asked otherwise, so two writers never share one), flush and fsync
it, rename it over the target (``os.replace``: atomic on POSIX and Windows), then fsync the directory so
the rename itself survives a power cut. On any error the temporary file is removed and the old file is
left whole. Append-only stores (SQLite, JSONL histories) do not go through here: they never replace a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_writer(path: str | Path, *, private: bool = False, binary: bool = False, encoding: str = "utf-8",
                  newline: str | None = None) -> Iterator[IO]:
    """A file handle whose content replaces ``path`` atomically when the block ends without an error.

    ``private``: the file is readable by its owner only (keys, secrets, users' queries); otherwise it gets
    the usual ``0o666`` less the umask, like any file the process creates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        text = {} if binary else {"encoding": encoding, "newline": newline}
        with os.fdopen(fd, "wb" if binary else "w", **text) as handle:
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
