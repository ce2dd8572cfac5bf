"""The one clock every record is stamped with: UTC, ISO 8601 with its offset.

Stores sort and compare these strings (retention cut-offs, ``--since`` windows, history replay), so they
must all come from one place with one format. Request-level records (query log, feedback, audit) keep
milliseconds, since many land within a second and their order matters; everything else keeps seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal


def utc_now(timespec: Literal["seconds", "milliseconds"] = "seconds") -> str:
    """Now, in UTC, e.g. ``2026-12-07T09:41:07+00:00`` (or ``…07.123+00:00`` with milliseconds)."""
    return datetime.now(UTC).isoformat(timespec=timespec)
