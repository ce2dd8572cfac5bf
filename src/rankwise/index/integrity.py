"""Index file integrity: every file's size and sha256, recorded at build time and checked on opening.

Why: a few flipped bytes in ``vectors.npy``, an edited docstore row or a file copied in from another
build still parse, and would silently turn into wrong rankings. The manifest therefore records, for every
index file, its size, its sha256 and a digest of its first and last 4 KiB ("edges").

Why it stays fast: hashing means reading every byte, which for a multi-GB index costs seconds. So opening

* always checks each file's size and edges digest (a ``stat`` and 8 KiB read per file), and
* hashes a file in full only when its identity — ``(device, inode, size, mtime_ns, ctime_ns)`` — is not
  one already verified. Verified identities are remembered (by :mod:`rankwise.verified_files`) in this
  process and in a small sidecar, ``.verified.json`` in the index directory, written by the build (which
  hashes the files anyway) and refreshed best-effort by readers (on a read-only mount each process
  re-hashes once).

Any write to a file moves its mtime and ctime (ctime cannot be set back, not even with ``touch``), and a
file copied or moved in from elsewhere has another inode, so such a file is re-hashed on the next open.
This detects accidents (disk errors, partial copies, mistaken edits, mixed-up builds), not tampering:
whoever can rewrite the files can rewrite the manifest too.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from rankwise.errors import IndexNotFoundError
from rankwise.verified_files import VerifiedFiles, identity

SIDECAR = ".verified.json"
_EDGE = 4096
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def one_line(text: object) -> str:
    """``text`` with all whitespace runs (newlines included) folded to single spaces."""
    return " ".join(str(text).split())


def corrupt(file: Path, why: object) -> IndexNotFoundError:
    """The one error for a damaged index file: what is wrong, and that a rebuild fixes it."""
    return IndexNotFoundError(f"index file '{file}' is corrupt ({one_line(why)}); rebuild the index")


def record_files(directory: Path, *, exclude: set[str]) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256", "edges"}}`` of every file below ``directory``, each fsynced.

    Called by the build on its finished files; also writes the sidecar, so the first open is fast.
    """
    records: dict[str, dict[str, Any]] = {}
    verified = VerifiedFiles(directory, sidecar=SIDECAR)
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = file.relative_to(directory).as_posix()
        if name in exclude or name == SIDECAR:
            continue
        with open(file, "rb") as fh:
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
            os.fsync(fh.fileno())
        stat = file.stat()
        records[name] = {"size": stat.st_size, "sha256": sha, "edges": _edges(file, stat.st_size)}
        verified.record(name, identity(stat), sha)
    verified.save(set(records))
    return records


def valid_records(records: Any) -> str | None:
    """Why ``records`` (a manifest's ``files``) is malformed, or None when it is well formed."""
    if not isinstance(records, dict):
        return "'files' must be an object"
    for name, record in records.items():
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            return f"'files' names an invalid path '{name}'"
        if not (isinstance(record, dict) and set(record) == {"size", "sha256", "edges"}
                and type(record["size"]) is int and record["size"] >= 0
                and isinstance(record["sha256"], str) and _SHA256.match(record["sha256"])
                and isinstance(record["edges"], str) and _SHA256.match(record["edges"])):
            return f"'files' entry for '{name}' is malformed"
    return None


def verify_files(directory: Path, records: dict[str, dict[str, Any]]) -> None:
    """Check every recorded file: present, right size and edges, and right sha256 unless already verified.

    Raises:
        IndexNotFoundError: naming the first missing or damaged file.
    """
    verified = VerifiedFiles(directory, sidecar=SIDECAR)
    for name, record in sorted(records.items()):
        file = directory / name
        try:
            stat = file.stat()
        except FileNotFoundError:
            raise corrupt(file, "the file is missing") from None
        except OSError as err:
            raise IndexNotFoundError(f"cannot read index file '{file}' ({one_line(err.strerror or err)}); "
                                     "check its permissions") from None
        if not file.is_file():
            raise corrupt(file, "not a regular file")
        if stat.st_size != record["size"]:
            raise corrupt(file, f"{stat.st_size} bytes, the manifest records {record['size']}")
        if _edges(file, stat.st_size) != record["edges"]:
            raise corrupt(file, "its content differs from the sha256 in the manifest")
        try:
            intact = verified.verify(name, record["sha256"], stat=stat)
        except OSError as err:
            raise corrupt(file, f"cannot be read: {err.strerror or err}") from None
        if not intact:
            raise corrupt(file, "its content differs from the sha256 in the manifest")
    verified.save(set(records))


def _edges(file: Path, size: int) -> str:
    """sha256 of the first and last 4 KiB: catches a damaged header or tail even on a cached file."""
    try:
        with open(file, "rb") as fh:
            head = fh.read(_EDGE)
            fh.seek(max(size - _EDGE, 0))
            tail = fh.read(_EDGE)
    except OSError as err:
        raise corrupt(file, f"cannot be read: {err.strerror or err}") from None
    return hashlib.sha256(head + tail).hexdigest()
