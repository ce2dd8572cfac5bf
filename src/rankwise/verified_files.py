"""Files checked against a known sha256, and remembered as checked for as long as they stay unchanged.

Why: index files, registered model versions and exported models are all verified by sha256 before use, and
hashing reads every byte, which for multi-GB files costs seconds on every open. A file's identity —
``(device, inode, size, mtime_ns, ctime_ns)`` — changes on any write (ctime cannot be set back, not even
with ``touch``) and on any copy or move in from elsewhere (another inode), so a file whose identity was
verified against a sha256 need not be hashed again while its identity is unchanged. Verified identities
live in this process (keyed by a root directory and a name below it) and, where the caller names one, in a
sidecar JSON file in the root directory, so another process need not re-hash either.

This detects accidents (disk errors, partial copies, mistaken edits, mixed-up files), not tampering:
whoever can rewrite the files can rewrite what they are checked against too.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from rankwise.storage import atomic_write_text

#: ``(device, inode, size, mtime_ns, ctime_ns)`` of a file; for a directory, those of each file below it,
#: each preceded by its relative name
Identity = tuple[Any, ...]

#: how much older than "now" a file's timestamps must be before :class:`VerifiedFiles` with ``settle=True``
#: remembers it: a write within the same filesystem timestamp tick as the verification would leave the
#: identity unchanged, and a file written a moment ago may still be written to
SETTLE_NS = 2_000_000_000

#: (resolved root, name) -> (identity, sha256) verified by this process
VERIFIED: dict[tuple[str, str], tuple[Identity, str]] = {}
_LIMIT = 16_384  # entries before the map is cleared: a long-lived process never grows it without bound


def identity(stat: os.stat_result) -> Identity:
    """What changes whenever a file's content can have changed (see the module docstring)."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def path_identity(path: Path) -> Identity:
    """:func:`identity` of a file, or of every file below a directory (so an added file changes it too)."""
    if not path.is_dir():
        return identity(path.stat())
    return tuple((str(f.relative_to(path)), *identity(f.stat())) for f in _files_below(path))


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory's files (each relative name, then its bytes, in name order).

    Raises:
        OSError: when a file cannot be read.
    """
    if not path.is_dir():
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    digest = hashlib.sha256()
    for file in _files_below(path):
        digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _files_below(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


class VerifiedFiles:
    """The files below ``root`` whose sha256 has been verified, with the identity each had when it was.

    ``sidecar``: a file name in ``root`` recording verified identities across processes (format
    ``{"version": 1, "files": {name: [device, inode, size, mtime_ns, ctime_ns, sha256]}}``); an absent,
    unreadable or malformed sidecar only costs a re-hash, and one that cannot be written (a read-only
    directory) is skipped, so each process then re-hashes once. Without it, verification is remembered in
    this process only.

    ``settle``: remember only files whose mtime and ctime are :data:`SETTLE_NS` in the past. Needed where
    files are verified right after being written (a registered version, an export built a moment ago),
    because a further write in the same timestamp tick would keep the identity and so hide the change;
    such files are hashed on every check until they settle. Without it, a file is remembered as soon as
    it is verified — right for files whose identity is recorded by the writer that just produced them
    and is always cross-checked by cheaper means as well (the index's sizes and edge digests).
    """

    def __init__(self, root: Path, *, sidecar: str | None = None, settle: bool = False) -> None:
        self.root = root
        self._key = str(root.resolve())
        self._sidecar = root / sidecar if sidecar else None
        self._settle = settle
        self._recorded = self._read_sidecar()
        self._changed = False

    def verify(self, name: str, sha256: str, *, stat: os.stat_result | None = None) -> bool:
        """Whether ``root/name`` has content ``sha256``, hashing it only when its identity is not verified.

        ``stat``: the file's stat when the caller already holds it (saves a call, and checks the very
        identity the caller checked the size of). Raises ``OSError`` when the file cannot be read.
        """
        path = self.root / name
        current = identity(stat) if stat is not None else path_identity(path)
        if VERIFIED.get((self._key, name)) == (current, sha256):
            return True
        if self._recorded.get(name) == [*current, sha256]:
            _remember((self._key, name), current, sha256)
            return True
        if sha256_of(path) != sha256:
            return False
        self.record(name, current, sha256)
        return True

    def record(self, name: str, verified: Identity, sha256: str) -> None:
        """Remember that the file ``name`` with identity ``verified`` was found to have content ``sha256``."""
        if self._settle and not _settled(verified):
            return
        _remember((self._key, name), verified, sha256)
        if self._sidecar is not None:
            self._recorded[name] = [*verified, sha256]
            self._changed = True

    def verified_identity(self, name: str) -> Identity | None:
        """The identity this process last verified ``root/name`` at, or None."""
        entry = VERIFIED.get((self._key, name))
        return entry[0] if entry else None

    def save(self, names: set[str] | None = None) -> None:
        """Write the sidecar when something new was verified, keeping only ``names`` (default: all)."""
        if self._sidecar is None or not self._changed:
            return
        files = {n: v for n, v in self._recorded.items() if names is None or n in names}
        try:
            atomic_write_text(self._sidecar, json.dumps({"version": 1, "files": files}, sort_keys=True))
        except OSError:  # a read-only directory: verified without a sidecar
            return
        self._changed = False

    def _read_sidecar(self) -> dict[str, list[Any]]:
        if self._sidecar is None:
            return {}
        try:
            data = json.loads(self._sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("version") == 1 else None
        return {k: v for k, v in files.items() if isinstance(v, list)} if isinstance(files, dict) else {}


def _settled(verified: Identity) -> bool:
    """Whether every file in ``verified`` was last written or changed :data:`SETTLE_NS` ago or earlier."""
    settled = time.time_ns() - SETTLE_NS
    stamps = [verified] if verified and isinstance(verified[0], int) else list(verified)
    return all(s[-2] < settled and s[-1] < settled for s in stamps)


def _remember(key: tuple[str, str], verified: Identity, sha256: str) -> None:
    if len(VERIFIED) >= _LIMIT and key not in VERIFIED:
        VERIFIED.clear()
    VERIFIED[key] = (verified, sha256)
