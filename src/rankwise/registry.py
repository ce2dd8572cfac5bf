"""A versioned, append-only model registry in a plain directory.

Layout::

    <root>/versions/v1/            immutable Hugging Face model dir + model_card.json (files read-only)
    <root>/versions/v2/ ...
    <root>/history.jsonl           append-only events: register, promote, rollback, alias

Aliases (``production``, ``candidate``) are not stored as mutable pointers: they are derived by
replaying ``history.jsonl``, so every change of what serves traffic — including forced promotions — is
on record and a rollback is just another event. Versions are written aside and renamed into place,
never overwritten, and their weights sha256 is checked on every load.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rankwise.errors import ModelError
from rankwise.models import weights_sha256

ALIASES = ("production", "candidate")
CARD = "model_card.json"


def default_registry_root() -> Path:
    """``$RANKWISE_REGISTRY`` or the user's data dir (e.g. ``~/.local/share/rankwise/registry``)."""
    env = os.environ.get("RANKWISE_REGISTRY")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("rankwise")) / "registry"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    version: str
    path: Path
    card: dict[str, Any]

    @property
    def weights_sha256(self) -> str:
        return str(self.card["weights_sha256"])


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

    # ------------------------------------------------------------------ history
    def history(self) -> list[dict[str, Any]]:
        if not self.history_file.is_file():
            return []
        events = []
        for lineno, line in enumerate(self.history_file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ModelError(f"registry history {self.history_file}:{lineno} is corrupt ({err.msg}); "
                                     "restore it from backup — it is append-only and never rewritten") from err
        return events

    def _append(self, event: dict[str, Any]) -> None:
        with open(self.history_file, "a") as fh:
            fh.write(json.dumps({"at": _now(), **event}, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def aliases(self) -> dict[str, str]:
        """Current alias → version, by replaying the history."""
        current: dict[str, str] = {}
        for event in self.history():
            if event.get("alias"):
                if event.get("version"):
                    current[event["alias"]] = event["version"]
                else:
                    current.pop(event["alias"], None)
        return current

    # ------------------------------------------------------------------ versions
    def register(self, model_dir: str | Path, card: dict[str, Any], *, version: str | None = None,
                 alias: str | None = "candidate") -> ModelVersion:
        """Copy ``model_dir`` in as a new immutable version; by default it becomes the ``candidate``."""
        source = Path(model_dir)
        if not (source / "config.json").is_file():
            raise ModelError(f"'{source}' is not a Hugging Face model directory (no config.json)")
        with self._locked():
            existing = {p.name for p in self.versions_dir.iterdir() if not p.name.startswith(".")}
            if version is None:
                numbers = [int(v[1:]) for v in existing if v.startswith("v") and v[1:].isdigit()]
                version = f"v{max(numbers, default=0) + 1}"
            if version in existing:
                raise ModelError(f"model version '{version}' already exists and versions are immutable; "
                                 "register under a new version")
            tmp = self.versions_dir / f".tmp-{uuid.uuid4().hex[:8]}"
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("checkpoints", ".rankwise"))
            full_card = {**card, "version": version, "created_at": _now(), "weights_sha256": weights_sha256(tmp)}
            (tmp / CARD).write_text(json.dumps(full_card, indent=2, sort_keys=True))
            tmp.rename(self.versions_dir / version)
            _make_read_only(self.versions_dir / version)
            self._append({"event": "register", "version": version, "parent": card.get("parent")})
            if alias:
                self._append({"event": "alias", "alias": alias, "version": version})
        return self.get(version)

    def versions(self) -> list[ModelVersion]:
        if not self.versions_dir.is_dir():
            return []
        names = sorted((p.name for p in self.versions_dir.iterdir() if not p.name.startswith(".")),
                       key=lambda v: (len(v), v))
        return [self.get(v) for v in names]

    def get(self, name: str) -> ModelVersion:
        """A version by id (``v3``) or alias (``production``), verified against its recorded sha256."""
        aliases = self.aliases()
        version = aliases.get(name, name)
        if name in ALIASES and name not in aliases:
            raise ModelError(f"no model is aliased '{name}' in the registry at {self.root}; "
                             "train one (rankwise train) and promote it (rankwise models promote)")
        path = self.versions_dir / version
        if not path.is_dir():
            known = ", ".join(v.name for v in sorted(self.versions_dir.glob("v*"))) if self.versions_dir.is_dir() else ""
            raise ModelError(f"no model version '{name}' in the registry at {self.root} (known: {known or 'none'})")
        try:
            card = json.loads((path / CARD).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ModelError(f"registry entry '{version}' is corrupt: {CARD} unreadable ({err}); "
                             "re-register the model under a new version") from err
        actual = weights_sha256(path)
        if actual != card.get("weights_sha256"):
            raise ModelError(f"registry entry '{version}' is corrupt: weights sha256 {actual[:12]} does not match "
                             f"its card ({str(card.get('weights_sha256'))[:12]}); re-register the model")
        return ModelVersion(version, path, card)

    # ------------------------------------------------------------------ lifecycle
    def promote(self, version: str, *, forced: bool = False, gate: dict[str, Any] | None = None) -> None:
        """Make ``version`` production (call only after the gate passed, or with ``forced=True``)."""
        target = self.get(version)
        with self._locked():
            self._append({"event": "promote", "alias": "production", "version": target.version,
                          "previous": self.aliases().get("production"), "forced": forced, "gate": gate})

    def rollback(self) -> str:
        """Point production back at the version it had before the latest promotion."""
        promotions = [e for e in self.history() if e.get("alias") == "production"]
        if not promotions or not promotions[-1].get("previous"):
            raise ModelError("nothing to roll back to: production has no previous version")
        previous = promotions[-1]["previous"]
        self.get(previous)
        with self._locked():
            self._append({"event": "rollback", "alias": "production", "version": previous,
                          "previous": promotions[-1]["version"]})
        return str(previous)

    def diff(self, a: str, b: str) -> dict[str, tuple[Any, Any]]:
        """Card fields that differ between two versions (hyperparameters, metrics, data, lineage)."""
        left, right = _flatten(self.get(a).card), _flatten(self.get(b).card)
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


def _make_read_only(directory: Path) -> None:
    for path in [directory, *directory.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
