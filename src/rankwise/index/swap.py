"""Putting a finished build in place of the live index without a moment where a crash leaves no index.

A build writes a complete index into a sibling ``.NAME.building-PID-HEX`` directory; :func:`replace_directory`
then makes it the live ``NAME``:

* On Linux, ``renameat2(RENAME_EXCHANGE)`` (called through ``ctypes``) swaps the two directories in one
  atomic step: at every instant ``NAME`` is either the complete old index or the complete new one. The old
  index, now under the build's name, becomes ``NAME.previous`` (what a rollback returns to), and the one
  before it is deleted.
* Where the exchange is unavailable (another OS, an old C library, a filesystem that refuses it) two
  renames do the job: ``NAME`` → ``.NAME.old-PID-HEX``, then the build → ``NAME``. A crash between them
  leaves no ``NAME``; :func:`recover_interrupted_swap` puts the old index back.

:func:`swap_with_previous` exchanges ``NAME`` and ``NAME.previous`` the same way, so a rollback is as atomic
as a build, and a second one returns to the version rolled back from. The version kept before is deleted
*before* a swap, so a crash after the swap but before the replaced index is renamed ``NAME.previous``
leaves no rollback target at all (a rollback is refused) rather than an older one, and never loses the
live index.

Recovery runs when an index is opened and when a build starts. Every leftover name carries the pid of the
process that made it (and, on Linux, that process's start time, so that after a reboot or a container
restart an unrelated process that got the same pid is not mistaken for it), so recovery only touches
leftovers of processes that no longer run: a swap in progress in another live process is never undone
under its feet. Opening only restores or deletes ``.old-*`` directories (complete indexes nobody writes);
unfinished ``.building-*`` directories are deleted only when a build starts, because a build running in
another pid namespace (another container on the same volume) would look dead to a reader.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from rankwise.faults import checkpoint
from rankwise.storage import fsync_directory

log = logging.getLogger("rankwise.index")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: errno values meaning "this system or filesystem cannot exchange": use the two-rename fallback instead
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
#: how long an opener waits for another live process to finish a two-rename swap (it takes milliseconds)
_SWAP_WAIT_SECONDS = 2.0


def _load_renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2`` (glibc >= 2.28, musl >= 1.2.4), or None where there is no such function."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


#: None selects the portable two-rename swap (set to None to exercise that path on Linux)
RENAMEAT2: Callable[..., int] | None = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap the directory entries ``a`` and ``b``; False when this system cannot (nothing moved)."""
    if RENAMEAT2 is None:
        return False
    if RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(b))


def previous_version(path: Path) -> Path:
    """Where the index a build replaced is kept: ``NAME.previous``, beside it and visible (it takes disk)."""
    return path.with_name(f"{path.name}.previous")


def replace_directory(new: Path, path: Path) -> None:
    """Make the complete directory ``new`` the live ``path``; the replaced ``path`` becomes its previous version.

    ``new`` must be a sibling of ``path``. On return ``new`` no longer exists. On an exception the previous
    ``path`` is still in place (or, for a crash, is put back by :func:`recover_interrupted_swap`).
    """
    checkpoint("index:built")
    if not path.exists():
        os.rename(new, path)
        fsync_directory(path.parent)
        checkpoint("index:swapped")
        return
    stale = _discard_previous(path)  # first: a crash after the swap must not leave an older version to roll back to
    replaced = _put_in_place(new, path)
    checkpoint("index:swapped")
    try:  # the new version is live now: nothing after this point may report the build as failed
        if stale:
            os.rename(replaced, previous_version(path))
            fsync_directory(path.parent)
        else:
            shutil.rmtree(replaced, ignore_errors=True)
    except OSError as err:
        log.warning("the index at %s was replaced, but the replaced version could not be kept as %s (%s); "
                    "there is nothing to roll back to", path, previous_version(path), err)
        shutil.rmtree(replaced, ignore_errors=True)


def swap_with_previous(path: Path) -> None:
    """Exchange the live ``path`` and ``NAME.previous`` (a rollback; once more, a roll forward)."""
    previous = previous_version(path)
    replaced = _put_in_place(previous, path)
    if replaced != previous:
        os.rename(replaced, previous)
        fsync_directory(path.parent)


def _put_in_place(new: Path, path: Path) -> Path:
    """Make ``new`` the live ``path`` (one exchange, or two renames); returns where the replaced one is now.

    Between the two renames ``path`` does not exist: a crash there leaves the replaced index under a
    ``.NAME.old-*`` name, which the next open renames back.
    """
    if exchange(new, path):
        fsync_directory(path.parent)
        return new
    old = path.parent / f".{path.name}.old-{_owner()}-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    try:
        checkpoint("index:old-moved")
        os.rename(new, path)
    except BaseException:
        if not path.exists():
            os.rename(old, path)
        raise
    fsync_directory(path.parent)
    return old


def _discard_previous(path: Path) -> bool:
    """Delete the version kept before (renamed to a ``.NAME.old-*`` leftover first, so a crash while
    deleting it leaves something the next open removes); False when ``NAME.previous`` exists but is not an
    index (a directory of the user's, left alone — the replaced version is then not kept)."""
    previous = previous_version(path)
    if previous.exists():
        if not (previous / "manifest.json").is_file():  # MANIFEST_NAME: manifest.py imports this module
            log.warning("%s is not a rankwise index; leaving it alone, so the replaced version is not kept", previous)
            return False
        discard = path.parent / f".{path.name}.old-{_owner()}-{uuid.uuid4().hex[:8]}"
        os.rename(previous, discard)
        fsync_directory(path.parent)
        shutil.rmtree(discard, ignore_errors=True)
    return True


def recover_interrupted_swap(path: Path) -> None:
    """Undo or finish a swap of ``path`` cut short by a crash.

    * ``path`` missing and a dead process's ``.NAME.old-*`` present: the crash fell between the two
      renames; the old index is renamed back (the finished build is left to :func:`remove_abandoned_builds`).
    * ``path`` present: dead processes' ``.NAME.old-*`` (a previous index whose deletion never ran or
      never finished) are deleted.

    Best effort: on a read-only location nothing changes and opening reports what it finds.
    """
    parent = path.parent
    if not parent.is_dir():
        return
    olds = _leftovers(path, "old")
    if not path.exists():
        if any(alive for _, alive in olds):
            _wait_for(path)  # another process is between its two renames
        dead = sorted((d for d, alive in olds if not alive), key=_mtime, reverse=True)
        if dead and not path.exists():
            with contextlib.suppress(OSError):  # another opener may have restored it first
                os.rename(dead[0], path)
                fsync_directory(parent)
    if not path.exists():
        return
    for leftover, alive in olds:
        if not alive and leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)


def remove_abandoned_builds(path: Path) -> None:
    """Delete build dirs of ``path`` left by a process that no longer runs (killed with SIGKILL, power loss).

    A build dir is named after its builder's pid, so a concurrent build by a live process is left alone.
    """
    for stale, alive in _leftovers(path, "building"):
        if not alive:
            shutil.rmtree(stale, ignore_errors=True)


def build_directory(path: Path) -> Path:
    """A fresh name for a build of ``path``: a hidden sibling carrying this process's pid."""
    return path.parent / f".{path.name}.building-{_owner()}-{uuid.uuid4().hex[:8]}"


def _leftovers(path: Path, kind: str) -> list[tuple[Path, bool]]:
    """``(directory, owner still running)`` for each ``.NAME.<kind>-PID-HEX`` beside ``path``."""
    prefix = f".{path.name}.{kind}-"
    found: list[tuple[Path, bool]] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith(prefix):
            parts = entry.name[len(prefix):].split("-")
            # a name without a pid (older rankwise versions) has no owner to wait for
            alive = parts[0].isdigit() and _process_alive(int(parts[0]))
            if alive and len(parts) == 3 and parts[1].isdigit():  # PID-STARTTIME-HEX: check it is that process
                started = _start_time(int(parts[0]))
                alive = started is None or started == int(parts[1])
            found.append((entry, alive))
    return found


def _owner() -> str:
    """``PID`` or ``PID-STARTTIME``: who made a leftover, robust to pid reuse where the OS tells start times."""
    started = _start_time(os.getpid())
    return str(os.getpid()) if started is None else f"{os.getpid()}-{started}"


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, OverflowError):
        return False
    return True


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + _SWAP_WAIT_SECONDS
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _mtime(directory: Path) -> float:
    try:
        return directory.stat().st_mtime
    except OSError:
        return 0.0


@contextlib.contextmanager
def exclusive_directory(path: Path) -> Iterator[None]:
    """One update or rollback at a time per directory of indexes: without it, two updates that both read
    version 1 would each swap in their own version 2, and the first one's changes (a deletion) would be
    lost. An advisory ``flock`` on the parent directory (no lock file to leave behind); where there is
    none (not POSIX), updates are not serialised."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # no such directory: opening the index says so in one line
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
