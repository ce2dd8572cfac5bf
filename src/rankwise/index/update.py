"""Live corpus updates: upsert and delete documents, and roll back to the version an update replaced.

An update is a rebuild with the index's own settings (chunking, BM25, embedding model and backend, read
from its manifest, never from command-line defaults) over the stored documents with the changes applied:
BM25's statistics are corpus-wide, so every passage's lexical scores move when documents come and go, but
the vectors of passages whose content is unchanged are reused, so only new and changed text is embedded.
Like every build it is written aside and swapped in atomically; the replaced version stays beside the index
as ``NAME.previous`` (:func:`~rankwise.index.swap.previous_version`) until the next build or update, and
:func:`rollback_index` swaps it back. An update that changes nothing writes nothing, so a nightly job that
sends the same documents again leaves the fingerprint (and every server's loaded version) as it is.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rankwise.corpus.chunking import ChunkingSettings
from rankwise.corpus.loaders import documents_of, validated
from rankwise.errors import CorpusError, IndexNotFoundError
from rankwise.index.index import EmbedPassages, Index, Progress, no_progress
from rankwise.index.lexical import BM25Settings
from rankwise.index.location import IndexLocation, build_index, exclusive, in_postgres, open_index, shown
from rankwise.index.manifest import MANIFEST_NAME
from rankwise.index.swap import previous_version, swap_with_previous
from rankwise.types import Document


@dataclass(frozen=True, slots=True)
class UpdateSummary:
    """What an update did, by document: ``not_found`` lists deletions of ids the index did not have."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    not_found: list[str] = field(default_factory=list)

    @property
    def changes_anything(self) -> bool:
        return bool(self.added or self.changed or self.deleted)


def read_deletions(file: str | Path) -> list[str]:
    """Document ids to delete, one per line; blank lines and ``#`` comments are skipped."""
    path = Path(file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CorpusError(f"cannot read the deletions file '{path}' ({err})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def update_index(path: IndexLocation, source: str | Path | Iterable[Document] | None = None, *,
                 delete: Collection[str] = (), progress: Progress = no_progress,
                 embed: EmbedPassages | None = None) -> tuple[Index, UpdateSummary]:
    """Upsert the documents of ``source`` (by id) and delete the ids in ``delete``; see the module docstring.

    ``path``: an index directory or a PostgreSQL index (``postgresql://...#NAME``). Returns the index (the
    new version, or the unchanged one when nothing changed) and what changed.
    """
    upserts = _read_upserts(source) if source is not None else {}
    with exclusive(path):
        return _update(path, upserts, set(delete), progress, embed)


def _update(path: IndexLocation, upserts: dict[str, Document], deletions: set[str],
            progress: Progress, embed: EmbedPassages | None) -> tuple[Index, UpdateSummary]:
    current = open_index(path)
    both = sorted(deletions & upserts.keys())
    if both:
        raise CorpusError(f"document '{both[0]}' is both in the update and in the deletions; send it in one of them")
    stored = set(current.passage_doc_ids)
    added = [doc_id for doc_id in upserts if doc_id not in stored]
    changed = [doc_id for doc_id in upserts if doc_id in stored and current.docstore.document(doc_id) != upserts[doc_id]]
    summary = UpdateSummary(added=len(added), changed=len(changed), unchanged=len(upserts) - len(added) - len(changed),
                            deleted=len(deletions & stored), not_found=sorted(deletions - stored))
    if not summary.changes_anything:
        return current, summary
    if summary.deleted == len(stored) and not added:
        raise CorpusError(f"the update would delete every document of '{shown(path)}'; an index needs at least one")
    m = current.manifest
    updated = build_index(_merged(current, upserts, deletions), path, label=m.source,
                          embedding_model=(m.embedding or {}).get("model") if current.has_dense else None,
                          embedder=current.embedder if current.has_dense else None,
                          chunking=ChunkingSettings(**m.chunking), bm25=BM25Settings(**m.bm25), progress=progress,
                          embed=embed)
    current.close()
    return updated, summary


def rollback_index(location: IndexLocation) -> Index:
    """Make the version the last build or update replaced live again (and the live one the previous)."""
    if in_postgres(location):
        from rankwise.index.postgres_index import PostgresIndexLocation, rollback_postgres_index

        with exclusive(location):  # not between an update's read of the current version and its swap
            return rollback_postgres_index(PostgresIndexLocation.parse(str(location)))
    path = Path(location)
    previous = previous_version(path)
    if not (previous / MANIFEST_NAME).is_file():
        raise IndexNotFoundError(f"'{path}' has no previous version to roll back to (one is kept from the "
                                 "first rebuild or update on)")
    if not path.is_dir():
        raise IndexNotFoundError(f"no index at '{path}'")
    with exclusive(path):
        Index(previous).close()  # a damaged previous version is refused before anything moves
        swap_with_previous(path)
    return Index(path)


def _read_upserts(source: str | Path | Iterable[Document]) -> dict[str, Document]:
    label, documents = documents_of(source)
    return {doc.id: doc for doc in validated(documents, label)}


def _merged(current: Index, upserts: dict[str, Document], deletions: set[str]) -> Iterator[Document]:
    """The stored documents in their order with the changes applied, then the new ones."""
    pending = dict(upserts)
    for doc in current.docstore.documents():
        if doc.id not in deletions:
            yield pending.pop(doc.id, doc)
    yield from pending.values()
