"""The registry's history: an append-only log of events, one JSON object per line, and its replay.

Aliases are not stored as mutable pointers: they are derived by replaying the events, so every change of
what serves traffic (forced promotions included) is on record and a rollback is just another event.

A line counts once its newline is written: a torn last line is ignored by readers and cut off before the
next append. A corrupt line anywhere else is an error naming the line — history is never guessed at.
Events naming an invalid version or an unknown alias are not replayed, and reported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankwise.clock import utc_now
from rankwise.errors import ModelError
from rankwise.registry.names import ALIASES, is_version_id


@dataclass(slots=True)
class Replay:
    """What the history says: committed versions, current aliases, and events that were not replayed."""

    events: list[dict[str, Any]] = field(default_factory=list)
    registered: dict[str, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    #: alias → one-line error, for an alias whose latest event names an invalid version
    broken: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class History:
    """The event log at ``path``. Reading needs no lock; :meth:`repair_tail` and :meth:`append` must be
    called under the registry's lock, so that no live writer is mid-append when a tail is cut."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def label(self) -> str:
        """How notes about its events name the history (a line number follows)."""
        return self.path.name

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Held by the registry's writers besides its directory lock (the file needs nothing more)."""
        yield

    def read(self) -> tuple[list[tuple[int, dict[str, Any]]], int | None]:
        """Committed events with their line numbers, and the byte offset of a torn last line (or None).

        A line is committed once its newline is on disk (each event is one write of line + newline). A last
        line without its newline that still parses as an event lost only the newline and is kept.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], None
        except OSError as err:
            raise ModelError(f"cannot read registry history {self.path} ({err.strerror}); "
                             "check its permissions") from err
        torn_at = None
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        events: list[tuple[int, dict[str, Any]]] = []
        for lineno, line in enumerate(lines, 1):
            if line.strip():
                event = _parse_event(line)
                if event is None:
                    raise ModelError(f"registry history {self.path}:{lineno} is corrupt (not a JSON event); "
                                     "restore the file from backup — only a torn last line is repaired automatically")
                events.append((lineno, event))
        if tail.strip():
            event = _parse_event(tail)
            if event is None:
                torn_at = len(data) - len(tail)
            else:
                events.append((len(lines) + 1, event))
        return events, torn_at

    def events(self) -> list[dict[str, Any]]:
        """Every committed event, oldest first (a torn last line is not an event)."""
        return [event for _, event in self.read()[0]]

    def repair_tail(self) -> None:
        """Cut a torn last line (a crash mid-append), or end a complete one with its newline (call locked)."""
        if not self.path.is_file():
            return
        _, torn_at = self.read()
        with open(self.path, "r+b") as fh:
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

    def append(self, event: dict[str, Any]) -> None:
        """One event as one line in one write, fsynced (call locked, after :meth:`repair_tail`)."""
        line = json.dumps({"at": utc_now(), **event}, sort_keys=True) + "\n"
        with open(self.path, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def replay(self) -> Replay:
        """Committed versions and current aliases, by replaying every event in order."""
        replay = Replay()
        name = self.label
        for lineno, event in self.read()[0]:
            replay.events.append(event)
            version = event.get("version")
            if event.get("event") == "register":
                if not is_version_id(version):
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
            elif is_version_id(version):
                replay.aliases[alias] = version
                replay.broken.pop(alias, None)
            else:
                replay.aliases.pop(alias, None)
                replay.broken[alias] = (f"alias '{alias}' was last set to the invalid version {version!r} "
                                        f"({name}:{lineno}); promote a valid version (rankwise models promote vN)")
                replay.notes.append(replay.broken[alias])
        return replay


def _parse_event(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return event if isinstance(event, dict) else None
