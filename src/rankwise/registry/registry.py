"""The :class:`Registry`: versions in, verified versions out, and the lifecycle of what serves traffic.

Crash safety: a version is written under ``versions/.tmp-*``, made read-only, renamed to ``versions/vN``
and then committed by appending its ``register`` event; that event is the commit point. Readers ignore
``.tmp-*`` dirs and version dirs without a ``register`` event; the next write (under the lock, so no live
writer can own them) deletes the former and sets the latter aside as ``versions/.orphan-vN-*``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankwise.clock import utc_now
from rankwise.errors import ModelError
from rankwise.faults import checkpoint
from rankwise.models import weights_sha256
from rankwise.postgres import PostgresStore
from rankwise.registry.card import CARD, ModelCard, read_card
from rankwise.registry.files import (
    DERIVED,
    MANIFEST,
    fsync_dir,
    fsync_tree,
    make_read_only,
    remove_tree,
    verify_files,
    write_manifest,
)
from rankwise.registry.history import History, Replay
from rankwise.registry.history_postgres import PostgresHistory, move_history, read_store_file
from rankwise.registry.names import ALIASES, VERSION_ID, check_name, version_number
from rankwise.storage import atomic_write_text


def default_registry_root() -> Path:
    """``$RANKWISE_REGISTRY`` or the user's data dir (e.g. ``~/.local/share/rankwise/registry``)."""
    env = os.environ.get("RANKWISE_REGISTRY")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("rankwise")) / "registry"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A committed version whose files were verified when it was loaded."""

    version: str
    path: Path
    card: ModelCard

    @property
    def weights_sha256(self) -> str:
        return self.card.weights_sha256 or ""  # a loaded version's card always records it (checked on load)


class Registry:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_registry_root()
        self.versions_dir = self.root / "versions"
        self.history_file = self.root / "history.jsonl"
        self._file_history = History(self.history_file)
        self._shared_history: PostgresHistory | None = None

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    @property
    def _history(self) -> History:
        """The history file, or the shared store once ``store.json`` names one — looked for on every use, so a
        process that opened the registry before ``models share`` moved its history follows it there."""
        if self._shared_history is None:
            shared = read_store_file(self.root)
            if shared is None:
                return self._file_history
            self._shared_history = PostgresHistory(*shared)
        return self._shared_history

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock, self._history.locked():
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def _writing(self) -> Iterator[Replay]:
        """The lock, with the leftovers of crashed writers repaired: every write starts from a clean state."""
        with self._locked():
            self._history.repair_tail()
            replay = self._history.replay()
            self._set_aside_uncommitted(replay)
            yield replay

    # ------------------------------------------------------------------ history
    def history(self) -> list[dict[str, Any]]:
        """Every committed event, oldest first (a torn last line is not an event)."""
        return self._history.events()

    def share(self, store: PostgresStore, name: str | None = None) -> int:
        """Move the history (events, hence aliases) into ``store``, where every replica reads it; the
        versions stay in this directory. Returns the number of events moved."""
        if isinstance(self._history, PostgresHistory):
            raise ModelError(f"the history of {self.root} is already in {self._history.store}")
        with self._writing():
            return move_history(self.root, self._history, store, name or self.root.resolve().name)

    @property
    def history_location(self) -> str:
        """Where the history is: ``history.jsonl`` in the directory, or the shared store."""
        return self._history.label if isinstance(self._history, PostgresHistory) else str(self.history_file)

    def aliases(self) -> dict[str, str]:
        """Current alias → version, by replaying the history (aliases set to an invalid name are left out)."""
        return dict(self._history.replay().aliases)

    # ------------------------------------------------------------------ versions
    def register(self, model_dir: str | Path, card: ModelCard | Mapping[str, Any], *, version: str | None = None,
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
        if not isinstance(card, ModelCard):
            card = ModelCard.from_dict(card)
        with self._writing() as replay:
            if version is None:
                version = f"v{max((version_number(v) for v in replay.registered), default=0) + 1}"
            elif version in replay.registered:
                raise ModelError(f"model version '{version}' already exists and versions are immutable; "
                                 "register under a new version")
            tmp = self.versions_dir / f".tmp-{uuid.uuid4().hex[:8]}"
            try:
                shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("checkpoints", DERIVED, CARD, MANIFEST))
                tmp.chmod(tmp.stat().st_mode | stat.S_IWUSR)  # a read-only source (a version dir) copies read-only
                full_card = dataclasses.replace(card, version=version, created_at=utc_now(),
                                                weights_sha256=weights_sha256(tmp))
                atomic_write_text(tmp / CARD, full_card.to_json())
                files_sha256 = write_manifest(tmp)
                make_read_only(tmp)
                fsync_tree(tmp)
                checkpoint("registry:copied")
                tmp.rename(self.versions_dir / version)
                fsync_dir(self.versions_dir)
            except BaseException:
                if tmp.exists():  # a failure (not a crash) cleans up at once; a crash is repaired by the next write
                    remove_tree(tmp)
                raise
            checkpoint("registry:renamed")
            self._history.append({"event": "register", "version": version, "parent": card.parent,
                                  "files_sha256": files_sha256})
            checkpoint("registry:event-written")
            if alias:
                self._history.append({"event": "alias", "alias": alias, "version": version})
                checkpoint("registry:aliased")
        return self.get(version)

    def _set_aside_uncommitted(self, replay: Replay) -> None:
        """Delete ``.tmp-*`` dirs and set aside version dirs without a register event (call locked).

        Under the lock no live writer owns either, so both are leftovers of a crashed writer. An uncommitted
        version dir is renamed to ``.orphan-vN-*`` rather than deleted: if ``history.jsonl`` itself was lost,
        the models are still there to recover by hand.
        """
        for entry in list(self.versions_dir.iterdir()):
            if entry.name.startswith(".tmp-"):
                remove_tree(entry)
            elif VERSION_ID.fullmatch(entry.name) and entry.name not in replay.registered:
                entry.rename(self.versions_dir / f".orphan-{entry.name}-{uuid.uuid4().hex[:8]}")

    def _uncommitted(self, replay: Replay) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted((p.name for p in self.versions_dir.iterdir()
                       if VERSION_ID.fullmatch(p.name) and p.name not in replay.registered), key=version_number)

    def _scan(self) -> tuple[list[ModelVersion], list[str]]:
        replay = self._history.replay()
        good: list[ModelVersion] = []
        problems = list(replay.notes)
        for version in sorted(replay.registered, key=version_number):
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
        replay = self._history.replay()
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
            known = ", ".join(sorted(replay.registered, key=version_number))
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
            verify_files(path, str(expected_manifest), corrupt)
        try:
            card = read_card(path / CARD)
        except ModelError as err:
            raise corrupt(str(err)) from err
        if card.version not in (None, version):
            raise corrupt(f"{CARD} describes {card.version!r}")
        if card.weights_sha256 is None:
            raise corrupt(f"{CARD} records no weights_sha256")
        if not expected_manifest:  # registered before file lists: the weights are all that can be checked
            actual = weights_sha256(path)
            if actual != card.weights_sha256:
                raise corrupt(f"weights sha256 {actual[:12]} does not match its card ({card.weights_sha256[:12]})")
        return ModelVersion(version, path, card)

    # ------------------------------------------------------------------ lifecycle
    def promote(self, version: str, *, forced: bool = False, gate: dict[str, Any] | None = None,
                by: str | None = None) -> None:
        """Make ``version`` production (call only after the gate passed, or with ``forced=True``); ``by``:
        who asked (e.g. the console's signed-in key), recorded in the event.

        Crash points: ``registry:promote-verified`` (locked, before the event) and ``registry:promoted``.
        """
        target = self.get(version)
        with self._writing() as replay:
            checkpoint("registry:promote-verified")
            event = {"event": "promote", "alias": "production", "version": target.version,
                     "previous": replay.aliases.get("production"), "forced": forced, "gate": gate}
            self._history.append({**event, "by": by} if by is not None else event)
            checkpoint("registry:promoted")

    def rollback(self, *, by: str | None = None) -> str:
        """Point production back at the version it had before the latest promotion (``by``: who asked, e.g.
        the console's signed-in key, recorded in the event)."""
        with self._writing() as replay:
            promotions = [e for e in replay.events if e.get("alias") == "production"]
            if not promotions or not promotions[-1].get("previous"):
                raise ModelError("nothing to roll back to: production has no previous version")
            previous = str(promotions[-1]["previous"])
            self.get(previous)
            event = {"event": "rollback", "alias": "production", "version": previous,
                     "previous": promotions[-1]["version"]}
            self._history.append({**event, "by": by} if by is not None else event)
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
            self._history.append({"event": "probe", "version": target.version, "results": results})
        return target.version

    def probe_events(self, name: str) -> list[dict[str, Any]]:
        """Every ``probe`` event of a version (id or alias), oldest first; empty when it was never probed."""
        check_name(name)
        replay = self._history.replay()
        version = replay.aliases.get(name) if name in ALIASES else name
        return [event for event in replay.events if event.get("event") == "probe"
                and event.get("version") == version and isinstance(event.get("results"), dict)]

    def diff(self, a: str, b: str) -> dict[str, tuple[Any, Any]]:
        """Card fields that differ between two versions (hyperparameters, metrics, data, lineage)."""
        left, right = _flatten(self.get(a).card.to_dict()), _flatten(self.get(b).card.to_dict())
        return {k: (left.get(k), right.get(k)) for k in sorted(set(left) | set(right))
                if left.get(k) != right.get(k)}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
