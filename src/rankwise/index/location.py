"""Where an index is: a directory (the embedded default) or ``postgresql://user@host/database#NAME``.

Everything that takes ``--index`` opens, builds, follows and locks an index through these functions, so
both kinds are accepted everywhere with the same flag and the same answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rankwise.index.index import Index
from rankwise.index.manifest import Manifest
from rankwise.postgres import is_postgres_url

#: an index directory, or a ``postgresql://...#NAME`` string
IndexLocation = str | Path


def in_postgres(location: IndexLocation) -> bool:
    return is_postgres_url(str(location))


def shown(location: IndexLocation) -> str:
    """``location`` for messages and logs: a PostgreSQL URL without its password."""
    if in_postgres(location):
        from rankwise.index.postgres_index import PostgresIndexLocation

        try:
            return str(PostgresIndexLocation.parse(str(location)))
        except Exception:  # noqa: BLE001 - a malformed URL: say nothing of it but its kind
            return "the PostgreSQL index given"
    return str(location)


def open_index(location: IndexLocation, *, exact: bool = False, **kwargs: Any) -> Index:
    """The index at ``location``, opened read-only. ``exact``: a PostgreSQL index searches its vectors exactly
    instead of through HNSW (the embedded index is always exact)."""
    if in_postgres(location):
        from rankwise.index.postgres_index import PostgresIndex

        return PostgresIndex(str(location), exact=exact, **kwargs)
    return Index(location, **kwargs)


def open_loaded(location: IndexLocation, **kwargs: Any) -> Index:
    """:meth:`Index.open_loaded` for either kind: every lazily read part read now, from one version."""
    if in_postgres(location):
        from rankwise.index.postgres_index import PostgresIndex

        return PostgresIndex.open_loaded(str(location), **kwargs)
    return Index.open_loaded(location, **kwargs)


def read_manifest(location: IndexLocation) -> Manifest:
    """The manifest of the version at ``location`` now: what a following server compares fingerprints of."""
    if in_postgres(location):
        from rankwise.index.postgres_index import PostgresIndexLocation, read_postgres_manifest

        return read_postgres_manifest(PostgresIndexLocation.parse(str(location)))
    return Manifest.read(Path(location))


def build_index(source: Any, location: IndexLocation, **kwargs: Any) -> Index:
    """:meth:`Index.build` into ``location``, a directory or a PostgreSQL index."""
    if in_postgres(location):
        from rankwise.index.postgres_index import PostgresIndex

        return PostgresIndex.build(source, str(location), **kwargs)
    return Index.build(source, location, **kwargs)


@contextlib.contextmanager
def exclusive(location: IndexLocation) -> Iterator[None]:
    """One update or rollback of ``location`` at a time (see :func:`rankwise.index.update.exclusive_directory`)."""
    if in_postgres(location):
        from rankwise.index.postgres_index import IndexLock, PostgresIndexLocation

        with IndexLock(PostgresIndexLocation.parse(str(location))):
            yield
        return
    from rankwise.index.swap import exclusive_directory

    with exclusive_directory(Path(location)):
        yield
