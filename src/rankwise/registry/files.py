"""The files of a version: listed with size and sha256, made read-only, flushed, verified on every load.

A missing tokenizer or an edited config loads "successfully" and ranks garbage, so every file a version
holds is listed in :data:`MANIFEST` when it is registered (the register event pins the list's own sha256)
and all of it is checked before the version is used. Derived artifacts (:data:`DERIVED`: ONNX/OpenVINO
exports with their own verified sidecars) may appear later inside a version and are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rankwise.errors import ModelError
from rankwise.storage import atomic_write_text
from rankwise.verified_files import VerifiedFiles, sha256_of

#: per-version list of every file with its size and sha256 (written at registration)
MANIFEST = "rankwise-files.json"
#: derived-artifact cache inside a model dir (ONNX/OpenVINO exports with their own verified sidecars)
DERIVED = ".rankwise"


def _tree(directory: Path) -> dict[str, os.stat_result]:
    """Relative path → lstat of every file under ``directory``, except the file list and derived artifacts.

    Symlinks are listed as they are (not followed), so one pointing anywhere fails verification.
    """
    found: dict[str, os.stat_result] = {}
    for here, dirs, files in os.walk(directory):
        rel_dir = Path(here).relative_to(directory)
        if rel_dir == Path("."):
            dirs[:] = [d for d in dirs if d != DERIVED]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(here, d))]:
            rel = (rel_dir / name).as_posix()
            if rel != MANIFEST:
                found[rel] = os.lstat(os.path.join(here, name))
    return found


def write_manifest(directory: Path) -> str:
    """List every file of ``directory`` in its :data:`MANIFEST`; returns the list's sha256 (for the register
    event, which pins the list so that the list itself cannot be edited to match changed files)."""
    files = {rel: {"sha256": sha256_of(directory / rel), "size": st.st_size}
             for rel, st in sorted(_tree(directory).items())}
    text = json.dumps({"files": files}, indent=2, sort_keys=True)
    atomic_write_text(directory / MANIFEST, text)
    return hashlib.sha256(text.encode()).hexdigest()


def verify_files(path: Path, manifest_sha256: str, corrupt: Callable[..., ModelError]) -> None:
    """Check ``path`` against its file list, whose sha256 the register event recorded; raise ``corrupt(...)``.

    Every load checks the file list's sha256, that exactly the listed files exist, and their sizes; a
    file's sha256 is checked only when its identity is not verified already (:mod:`rankwise.verified_files`,
    in this process only: a version directory is read-only, so it holds no sidecar). Files are remembered
    only once settled, because a version is verified right after it is written (by its registration).
    """
    try:
        raw = (path / MANIFEST).read_bytes()
    except OSError as err:
        raise corrupt(f"its file list {MANIFEST} is unreadable ({err.strerror})") from err
    if hashlib.sha256(raw).hexdigest() != manifest_sha256:
        raise corrupt(f"its file list {MANIFEST} differs from the one recorded at registration")
    listed: dict[str, dict[str, Any]] = json.loads(raw)["files"]
    found = _tree(path)
    for rel in sorted(listed):
        if rel not in found:
            raise corrupt(f"{rel} is missing")
    for rel in sorted(found):
        if rel not in listed:
            raise corrupt(f"unexpected file {rel} (not in its file list)", f"remove {path / rel} or re-register the model")
        if not stat.S_ISREG(found[rel].st_mode):
            raise corrupt(f"{rel} is not a regular file")
        if found[rel].st_size != listed[rel]["size"]:
            raise corrupt(f"{rel} changed (size {found[rel].st_size}, registered {listed[rel]['size']})")
    verified = VerifiedFiles(path, settle=True)
    for rel in sorted(listed):
        if not verified.verify(rel, listed[rel]["sha256"], stat=found[rel]):
            raise corrupt(f"{rel} changed (sha256 differs from the one registered)")


def make_read_only(directory: Path) -> None:
    """Drop every write bit under ``directory``: a version is immutable, and an accidental edit should fail."""
    for path in [directory, *directory.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def fsync_dir(directory: Path) -> None:
    """Make a rename or new entry in ``directory`` durable; unlike :func:`rankwise.storage.fsync_directory`
    an error is raised, because a version must not be committed on a rename that may not survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Flush a version's files and dirs to disk before its register event can commit it."""
    for here, _dirs, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(here, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(here))


def remove_tree(directory: Path) -> None:
    """Delete a directory tree that may have been made read-only (a crashed writer's ``.tmp-*``)."""

    def writable_and_retry(func: Any, target: str, _exc: Any) -> None:
        parent = os.path.dirname(target)
        if Path(parent).is_relative_to(directory):
            os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IRWXU)
        func(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(directory, onexc=writable_and_retry)
    else:
        shutil.rmtree(directory, onerror=writable_and_retry)
