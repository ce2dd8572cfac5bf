"""A versioned, append-only model registry in a plain directory.

Layout::

    <root>/versions/v1/            immutable Hugging Face model dir + model_card.json + rankwise-files.json
    <root>/versions/v2/ ...
    <root>/history.jsonl           append-only events: register, promote, rollback, alias, probe
    <root>/.lock                   serialises writers (flock)

Aliases (``production``, ``candidate``) are not stored as mutable pointers: they are derived by
replaying ``history.jsonl``, so every change of what serves traffic — including forced promotions — is
on record and a rollback is just another event.

Names are closed sets, so a name can never reach outside the registry: a version id is ``v`` and a
number without leading zeros (``v1``, ``v12``; ``v01`` and ``v0`` are refused, so each number has exactly
one spelling), an alias is one of :data:`ALIASES`, and a version resolves only to a direct child of
``<root>/versions/``. History events naming anything else are not replayed.

Crash safety: a version is written under ``versions/.tmp-*``, made read-only, renamed to ``versions/vN``
and then committed by appending its ``register`` event; that event is the commit point. Readers ignore
``.tmp-*`` dirs and version dirs without a ``register`` event; the next write (under the lock, so no live
writer can own them) deletes the former and sets the latter aside as ``versions/.orphan-vN-*``. A history
line counts once its newline is written: a torn last line is ignored by readers and cut off before the
next append. A corrupt line anywhere else is an error naming the line — history is never guessed at.

Integrity: every file of a version is listed with its size and sha256 in ``rankwise-files.json``, whose own
sha256 is recorded in the ``register`` event, and all of it is checked on every load (see
:meth:`Registry.get`), because a missing tokenizer or changed config loads "successfully" and ranks
garbage.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rankwise.errors import ModelError
from rankwise.faults import checkpoint
from rankwise.models import weights_sha256

ALIASES = ("production", "candidate")
CARD = "model_card.json"
#: per-version list of every file with its size and sha256 (written at registration)
MANIFEST = "rankwise-files.json"
#: derived-artifact cache inside a model dir (ONNX/OpenVINO exports with their own verified sidecars)
DERIVED = ".rankwise"
VERSION_ID = re.compile(r"v[1-9][0-9]*")
#: a file's timestamps must be this much older than "now" before its verified hash is cached: a write in
#: the same filesystem timestamp tick as the verification would otherwise leave the cache key unchanged
_SETTLE_NS = 2_000_000_000


def default_registry_root() -> Path:
    """``$RANKWISE_REGISTRY`` or the user's data dir (e.g. ``~/.local/share/rankwise/registry``)."""
    env = os.environ.get("RANKWISE_REGISTRY")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("rankwise")) / "registry"


#: anything shaped like a version id names the registry, which then refuses non-canonical ones (``v01``)
_VERSION_LIKE = re.compile(r"v\d+")


def names_registry(spec: str) -> bool:
    """Whether a model spec names a registry entry (an alias, or anything shaped like a version id) rather
    than a directory or hub id; such names always mean the registry, whatever the working directory holds."""
    return spec in ALIASES or _VERSION_LIKE.fullmatch(spec) is not None


def check_name(name: str) -> str:
    """``name`` if it is a version id or an alias, else a one-line :class:`ModelError`.

    Only these two closed forms exist so that no name (``../x``, ``v1/../v2``, ``/abs``) can point outside
    ``<root>/versions/``; ``v01`` is refused rather than read as ``v1`` so a version has one spelling.
    """
    if name in ALIASES or VERSION_ID.fullmatch(name):
        return name
    hint = f"; did you mean v{int(name[1:])}?" if re.fullmatch(r"v0[0-9]*[1-9][0-9]*", name) else ""
    raise ModelError(f"'{name}' is not a registry name: use a version id (v1, v2, … — 'v' and a number without "
                     f"leading zeros) or an alias ({', '.join(ALIASES)}){hint}")


@dataclass(frozen=True, slots=True)
class ModelVersion:
    version: str
    path: Path
    card: dict[str, Any]

    @property
    def weights_sha256(self) -> str:
        return str(self.card["weights_sha256"])


@dataclass(slots=True)
class _Replay:
    """What the history says: committed versions, current aliases, and events that were not replayed."""

    events: list[dict[str, Any]] = field(default_factory=list)
    registered: dict[str, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    #: alias → one-line error, for an alias whose latest event names an invalid version
    broken: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Registry:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_registry_root()
        self.versions_dir = self.root / "versions"
        self.history_file = self.root / "history.jsonl"

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def _writing(self) -> Iterator[_Replay]:
        """The lock, with the leftovers of crashed writers repaired: every write starts from a clean state."""
        with self._locked():
            self._repair_history_tail()
            replay = self._replay()
            self._set_aside_uncommitted(replay)
            yield replay

    # ------------------------------------------------------------------ history
    def _read_history(self) -> tuple[list[tuple[int, dict[str, Any]]], int | None]:
        """Committed events with their line numbers, and the byte offset of a torn last line (or None).

        A line is committed once its newline is on disk (each event is one write of line + newline). A last
        line without its newline that still parses as an event lost only the newline and is kept.
        """
        try:
            data = self.history_file.read_bytes()
        except FileNotFoundError:
            return [], None
        except OSError as err:
            raise ModelError(f"cannot read registry history {self.history_file} ({err.strerror}); "
                             "check its permissions") from err
        torn_at = None
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        events: list[tuple[int, dict[str, Any]]] = []
        for lineno, line in enumerate(lines, 1):
            if line.strip():
                event = _parse_event(line)
                if event is None:
                    raise ModelError(f"registry history {self.history_file}:{lineno} is corrupt (not a JSON event); "
                                     "restore the file from backup — only a torn last line is repaired automatically")
                events.append((lineno, event))
        if tail.strip():
            event = _parse_event(tail)
            if event is None:
                torn_at = len(data) - len(tail)
            else:
                events.append((len(lines) + 1, event))
        return events, torn_at

    def _repair_history_tail(self) -> None:
        """Cut a torn last line (a crash mid-append), or end a complete one with its newline (call locked)."""
        if not self.history_file.is_file():
            return
        _, torn_at = self._read_history()
        with open(self.history_file, "r+b") as fh:
            if torn_at is not None:
                fh.truncate(torn_at)
            else:
                fh.seek(0, os.SEEK_END)
                if fh.tell() == 0:
                    return
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) == b"\n":
                    return
                fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def history(self) -> list[dict[str, Any]]:
        """Every committed event, oldest first (a torn last line is not an event)."""
        return [event for _, event in self._read_history()[0]]

    def _replay(self) -> _Replay:
        replay = _Replay()
        name = self.history_file.name
        for lineno, event in self._read_history()[0]:
            replay.events.append(event)
            version = event.get("version")
            if event.get("event") == "register":
                if not isinstance(version, str) or not VERSION_ID.fullmatch(version):
                    replay.notes.append(f"{name}:{lineno} registers an invalid version {version!r}; not replayed")
                elif version not in replay.registered:
                    replay.registered[version] = event
                continue
            alias = event.get("alias")
            if not alias:
                continue
            if alias not in ALIASES:
                replay.notes.append(f"{name}:{lineno} sets unknown alias {alias!r}; not replayed")
            elif not version:
                replay.aliases.pop(alias, None)
                replay.broken.pop(alias, None)
            elif isinstance(version, str) and VERSION_ID.fullmatch(version):
                replay.aliases[alias] = version
                replay.broken.pop(alias, None)
            else:
                replay.aliases.pop(alias, None)
                replay.broken[alias] = (f"alias '{alias}' was last set to the invalid version {version!r} "
                                        f"({name}:{lineno}); promote a valid version (rankwise models promote vN)")
                replay.notes.append(replay.broken[alias])
        return replay

    def _append(self, event: dict[str, Any]) -> None:
        """One event as one line in one write, fsynced (call locked, after :meth:`_repair_history_tail`)."""
        line = json.dumps({"at": _now(), **event}, sort_keys=True) + "\n"
        with open(self.history_file, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def aliases(self) -> dict[str, str]:
        """Current alias → version, by replaying the history (aliases set to an invalid name are left out)."""
        return dict(self._replay().aliases)

    # ------------------------------------------------------------------ versions
    def register(self, model_dir: str | Path, card: dict[str, Any], *, version: str | None = None,
                 alias: str | None = "candidate") -> ModelVersion:
        """Copy ``model_dir`` in as a new immutable version; by default it becomes the ``candidate``.

        Steps (each a named crash point for fault-injection tests): copy + card + file list into
        ``.tmp-*`` (``registry:copied``), rename to ``vN`` (``registry:renamed``), append the ``register``
        event — the commit (``registry:event-written``) — then the alias event (``registry:aliased``).
        """
        source = Path(model_dir)
        if not (source / "config.json").is_file():
            raise ModelError(f"'{source}' is not a Hugging Face model directory (no config.json)")
        if version is not None and not VERSION_ID.fullmatch(version):
            check_name(version)
            raise ModelError(f"'{version}' is an alias, not a version id; register under a version id like v7")
        if alias is not None and alias not in ALIASES:
            raise ModelError(f"unknown registry alias '{alias}'; use one of {', '.join(ALIASES)} (or none)")
        with self._writing() as replay:
            if version is None:
                version = f"v{max((int(v[1:]) for v in replay.registered), default=0) + 1}"
            elif version in replay.registered:
                raise ModelError(f"model version '{version}' already exists and versions are immutable; "
                                 "register under a new version")
            tmp = self.versions_dir / f".tmp-{uuid.uuid4().hex[:8]}"
            try:
                shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("checkpoints", DERIVED, CARD, MANIFEST))
                tmp.chmod(tmp.stat().st_mode | stat.S_IWUSR)  # a read-only source (a version dir) copies read-only
                full_card = {**card, "version": version, "created_at": _now(),
                             "weights_sha256": weights_sha256(tmp)}
                (tmp / CARD).write_text(json.dumps(full_card, indent=2, sort_keys=True))
                manifest = json.dumps({"files": _hash_tree(tmp)}, indent=2, sort_keys=True).encode()
                (tmp / MANIFEST).write_bytes(manifest)
                _make_read_only(tmp)
                _fsync_tree(tmp)
                checkpoint("registry:copied")
                tmp.rename(self.versions_dir / version)
                _fsync_dir(self.versions_dir)
            except BaseException:
                if tmp.exists():  # a failure (not a crash) cleans up at once; a crash is repaired by the next write
                    _remove_tree(tmp)
                raise
            checkpoint("registry:renamed")
            self._append({"event": "register", "version": version, "parent": card.get("parent"),
                          "files_sha256": hashlib.sha256(manifest).hexdigest()})
            checkpoint("registry:event-written")
            if alias:
                self._append({"event": "alias", "alias": alias, "version": version})
                checkpoint("registry:aliased")
        return self.get(version)

    def _set_aside_uncommitted(self, replay: _Replay) -> None:
        """Delete ``.tmp-*`` dirs and set aside version dirs without a register event (call locked).

        Under the lock no live writer owns either, so both are leftovers of a crashed writer. An uncommitted
        version dir is renamed to ``.orphan-vN-*`` rather than deleted: if ``history.jsonl`` itself was lost,
        the models are still there to recover by hand.
        """
        for entry in list(self.versions_dir.iterdir()):
            if entry.name.startswith(".tmp-"):
                _remove_tree(entry)
            elif VERSION_ID.fullmatch(entry.name) and entry.name not in replay.registered:
                entry.rename(self.versions_dir / f".orphan-{entry.name}-{uuid.uuid4().hex[:8]}")

    def _uncommitted(self, replay: _Replay) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted((p.name for p in self.versions_dir.iterdir()
                       if VERSION_ID.fullmatch(p.name) and p.name not in replay.registered), key=_number)

    def _scan(self) -> tuple[list[ModelVersion], list[str]]:
        replay = self._replay()
        good: list[ModelVersion] = []
        problems = list(replay.notes)
        for version in sorted(replay.registered, key=_number):
            try:
                good.append(self._load(version, replay.registered[version]))
            except ModelError as err:
                problems.append(str(err))
        problems += [f"registry dir versions/{v} has no register event (an interrupted registration); ignored, "
                     "and set aside by the next registry write" for v in self._uncommitted(replay)]
        return good, problems

    def versions(self) -> list[ModelVersion]:
        """Every committed version that verifies; the others are left out and reported by :meth:`problems`.

        One corrupt version must not hide the rest (``rankwise models list`` is how one finds it).
        """
        return self._scan()[0]

    def problems(self) -> list[str]:
        """One line per thing :meth:`versions` left out or history events not replayed (empty when healthy)."""
        return self._scan()[1]

    def get(self, name: str) -> ModelVersion:
        """A version by id (``v3``) or alias (``production``), verified file by file before it is used.

        Versions registered with a file list are checked against it: a missing, extra or changed file is a
        :class:`ModelError` naming the file. Versions registered before file lists existed can only be
        checked on their weights (``weights_sha256`` of the card): a lost tokenizer or an edited config of
        such a version goes unnoticed — re-register it to get the full check. Hashes are cached within the
        process by each file's (size, mtime, ctime, inode), so repeated loads do not re-read the files.
        """
        check_name(name)
        replay = self._replay()
        version = name
        if name in ALIASES:
            if name in replay.broken:
                raise ModelError(replay.broken[name])
            if name not in replay.aliases:
                raise ModelError(f"no model is aliased '{name}' in the registry at {self.root}; "
                                 "train one (rankwise train) and promote it (rankwise models promote)")
            version = replay.aliases[name]
        if version not in replay.registered:
            if version in self._uncommitted(replay):
                raise ModelError(f"model version '{version}' in {self.root} was never committed (no register event: "
                                 "an interrupted registration); register the model again")
            known = ", ".join(sorted(replay.registered, key=_number))
            raise ModelError(f"no model version '{version}' in the registry at {self.root} (known: {known or 'none'})")
        return self._load(version, replay.registered[version])

    def _load(self, version: str, event: dict[str, Any]) -> ModelVersion:
        def corrupt(what: str, fix: str = "re-register the model as a new version") -> ModelError:
            return ModelError(f"registry entry '{version}' is corrupt: {what}; {fix}")

        path = self.versions_dir / version
        if path.is_symlink() or not path.is_dir():
            raise corrupt(f"{path} is missing or not a directory")
        if path.resolve().parent != self.versions_dir.resolve():
            raise corrupt(f"{path} resolves outside {self.versions_dir}")
        expected_manifest = event.get("files_sha256")
        if expected_manifest:
            _verify_files(path, str(expected_manifest), corrupt)
        try:
            card = json.loads((path / CARD).read_text())
        except (OSError, ValueError) as err:
            raise corrupt(f"{CARD} unreadable ({type(err).__name__})") from err
        if not isinstance(card, dict) or card.get("version") not in (None, version):
            raise corrupt(f"{CARD} describes {card.get('version') if isinstance(card, dict) else 'nothing'!r}")
        if not expected_manifest:  # registered before file lists: the weights are all that can be checked
            actual = weights_sha256(path)
            if actual != card.get("weights_sha256"):
                raise corrupt(f"weights sha256 {actual[:12]} does not match its card "
                              f"({str(card.get('weights_sha256'))[:12]})")
        return ModelVersion(version, path, card)

    # ------------------------------------------------------------------ lifecycle
    def promote(self, version: str, *, forced: bool = False, gate: dict[str, Any] | None = None) -> None:
        """Make ``version`` production (call only after the gate passed, or with ``forced=True``).

        Crash points: ``registry:promote-verified`` (locked, before the event) and ``registry:promoted``.
        """
        target = self.get(version)
        with self._writing() as replay:
            checkpoint("registry:promote-verified")
            self._append({"event": "promote", "alias": "production", "version": target.version,
                          "previous": replay.aliases.get("production"), "forced": forced, "gate": gate})
            checkpoint("registry:promoted")

    def rollback(self) -> str:
        """Point production back at the version it had before the latest promotion."""
        with self._writing() as replay:
            promotions = [e for e in replay.events if e.get("alias") == "production"]
            if not promotions or not promotions[-1].get("previous"):
                raise ModelError("nothing to roll back to: production has no previous version")
            previous = str(promotions[-1]["previous"])
            self.get(previous)
            self._append({"event": "rollback", "alias": "production", "version": previous,
                          "previous": promotions[-1]["version"]})
            checkpoint("registry:rolled-back")
        return previous

    # ------------------------------------------------------------------ measurements
    def record_probe(self, name: str, results: dict[str, Any]) -> str:
        """Append behaviour-probe results for a version (id or alias) as a ``probe`` event; returns its id.

        Versions are immutable, so what is measured after registration is history, not a card edit: each
        run is one event, the latest is what ``rankwise models show`` displays, and earlier runs stay on
        record. A ``probe`` event names no alias, so replaying the history never moves one.
        """
        target = self.get(name)
        with self._writing():
            self._append({"event": "probe", "version": target.version, "results": results})
        return target.version

    def probe_events(self, name: str) -> list[dict[str, Any]]:
        """Every ``probe`` event of a version (id or alias), oldest first; empty when it was never probed."""
        check_name(name)
        replay = self._replay()
        version = replay.aliases.get(name) if name in ALIASES else name
        return [event for event in replay.events if event.get("event") == "probe"
                and event.get("version") == version and isinstance(event.get("results"), dict)]

    def diff(self, a: str, b: str) -> dict[str, tuple[Any, Any]]:
        """Card fields that differ between two versions (hyperparameters, metrics, data, lineage)."""
        left, right = _flatten(self.get(a).card), _flatten(self.get(b).card)
        return {k: (left.get(k), right.get(k)) for k in sorted(set(left) | set(right))
                if left.get(k) != right.get(k)}


def _number(version: str) -> int:
    return int(version[1:])


def _parse_event(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return event if isinstance(event, dict) else None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# ---------------------------------------------------------------------- files of a version
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


def _sha256(file: Path) -> str:
    with open(file, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _hash_tree(directory: Path) -> dict[str, dict[str, Any]]:
    return {rel: {"sha256": _sha256(directory / rel), "size": st.st_size}
            for rel, st in sorted(_tree(directory).items())}


#: verification results already established in this process: (dir, file-list sha256, file stamps)
_VERIFIED: set[tuple[Any, ...]] = set()


def _verify_files(path: Path, manifest_sha256: str, corrupt: Callable[..., ModelError]) -> None:
    """Check ``path`` against its file list, whose sha256 the register event recorded; raise ``corrupt(...)``."""
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
    stamps = tuple((rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for rel, st in sorted(found.items()))
    key = (str(path.resolve()), manifest_sha256, stamps)
    if key in _VERIFIED:
        return
    for rel in sorted(listed):
        if _sha256(path / rel) != listed[rel]["sha256"]:
            raise corrupt(f"{rel} changed (sha256 differs from the one registered)")
    settled = time.time_ns() - _SETTLE_NS
    if all(st.st_mtime_ns < settled and st.st_ctime_ns < settled for st in found.values()):
        if len(_VERIFIED) > 1024:
            _VERIFIED.clear()
        _VERIFIED.add(key)


def _make_read_only(directory: Path) -> None:
    for path in [directory, *directory.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    """Flush a version's files and dirs to disk before its register event can commit it."""
    for here, _dirs, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(here, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(here))


def _remove_tree(directory: Path) -> None:
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
