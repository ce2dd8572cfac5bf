"""The :class:`Index`: one directory holding a docstore, a BM25 index, passage vectors and a manifest.

Builds are atomic: everything is written to a sibling temporary directory and swapped into place only
once complete (:mod:`rankwise.index.swap`: one atomic exchange on Linux), so a crash, kill -9, Ctrl-C or
bad input at any point leaves the previous or the new index, complete, and the next open or build tidies up.
Opening verifies the files against the sizes and sha256 digests the manifest recorded
(:mod:`rankwise.index.integrity`) and that passages, vector rows and BM25 documents agree in number, so a
damaged index is refused with one line instead of answering wrongly.
Re-indexing reuses the vectors of passages whose content hash is unchanged (same embedding weights),
so updating a few documents re-embeds only those.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.clock import utc_now
from rankwise.corpus.chunking import ChunkingSettings, PassageSplitter
from rankwise.corpus.loaders import documents_of, validated
from rankwise.errors import CorpusError, IndexNotFoundError, QueryError
from rankwise.index.dense import Embedder, VectorIndex, check_vector_shape
from rankwise.index.docstore import DocStore
from rankwise.index.integrity import corrupt, one_line, record_files, verify_files
from rankwise.index.lexical import BM25Index, BM25Settings
from rankwise.index.manifest import INDEX_ENTRIES, MANIFEST_NAME, Manifest, looks_like_index
from rankwise.index.swap import (
    build_directory,
    recover_interrupted_swap,
    remove_abandoned_builds,
    replace_directory,
)
from rankwise.models import bundled_minilm_dir
from rankwise.types import Document

DOCSTORE, BM25_DIR, VECTORS = INDEX_ENTRIES

#: ``progress(stage, done, total)`` — lets the CLI draw progress bars without the library knowing rich.
Progress = Callable[[str, int, int | None], None]


def no_progress(stage: str, done: int, total: int | None) -> None:
    return None


#: ``embed(embedder, texts, progress)``: the unit vectors of ``texts``, in order, reporting ``"embedding"`` progress
EmbedPassages = Callable[["Embedder", list[str], Progress], np.ndarray]


def embed_here(embedder: Embedder, texts: list[str], progress: Progress, step: int = 256) -> np.ndarray:
    """Embed in this process, ``step`` passages at a time (the progress bar's granularity)."""
    vectors = np.empty((len(texts), embedder.info.dim), dtype=np.float32)
    for start in range(0, len(texts), step):
        vectors[start:start + step] = embedder.encode(texts[start:start + step])
        progress("embedding", min(start + step, len(texts)), len(texts))
    return vectors


class Index:
    """A built index, opened read-only. Use :meth:`build` to create or update one."""

    def __init__(self, path: str | Path, *, embedder: Embedder | None = None) -> None:
        """Open the index at ``path``, refusing it (one line) if any file is missing, damaged or inconsistent.

        Finishes or undoes a swap a crashed build left half-done first, so an interrupted rebuild never
        leaves "no index". The full sha256 of a file is computed only when it is not known to be verified
        already (see :mod:`rankwise.index.integrity`), so opening a large index stays fast.
        """
        self.path = Path(path)
        recover_interrupted_swap(self.path)
        self.manifest = Manifest.read(self.path)
        self._check_files()
        try:
            self._bm25_settings = BM25Settings(**self.manifest.bm25)
        except (TypeError, ValueError) as err:
            raise corrupt(self.path / MANIFEST_NAME, f"invalid bm25 settings: {err}") from None
        self.docstore = DocStore(self.path / DOCSTORE)
        try:
            self._check_counts()
        except BaseException:
            self.docstore.close()
            raise
        self._embedder = embedder

    def _check_files(self) -> None:
        """Every file the index needs is recorded in the manifest and matches its record."""
        files = self.manifest.files
        if self.manifest.format_version >= 2:
            needed = [DOCSTORE, f"{BM25_DIR}/params.index.json"] + ([VECTORS] if self.has_dense else [])
            for name in needed:
                if name not in files:
                    raise corrupt(self.path / MANIFEST_NAME, f"it records no '{name}'")
            if not self.has_dense and VECTORS in files:
                raise corrupt(self.path / MANIFEST_NAME, f"it records '{VECTORS}' but no embedding model")
        verify_files(self.path, files)

    def _check_counts(self) -> None:
        """Passages in the docstore, BM25 documents and vector rows all equal the manifest's passage count.

        Cheap (row counts, a JSON parameter file and a .npy header), and it is what keeps vectors or BM25
        files of another build from mapping hits onto the wrong passages.
        """
        m = self.manifest
        self.docstore.check_counts(m.num_documents, m.num_passages)
        size = BM25Index.stored_size(self.path / BM25_DIR)
        if size != m.num_passages:
            raise corrupt(self.path / BM25_DIR, f"the BM25 index covers {size} passages, the manifest records "
                                                f"{m.num_passages}")
        if self.has_dense:
            shape, dtype = VectorIndex.stored_shape(self.path / VECTORS)
            check_vector_shape(self.path / VECTORS, shape, dtype, int(m.embedding["dim"]),  # type: ignore[index]
                               m.num_passages)

    def damage(self) -> str | None:
        """Why the files on disk no longer match what this index was opened with, or None when they do.

        The opening checks again (sizes and edges always, a full hash only of a file that changed since it
        was last verified), so a server can ask it each time it is probed once a request failed on its data.
        """
        try:
            self._check_files()
        except IndexNotFoundError as err:
            return str(err)
        return None

    def __repr__(self) -> str:
        m = self.manifest
        return f"Index({str(self.path)!r}, documents={m.num_documents}, passages={m.num_passages})"

    @property
    def location(self) -> str:
        """Where the index is, as ``--index`` takes it (a directory, or ``postgresql://...#NAME``)."""
        return str(self.path)

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def has_dense(self) -> bool:
        return self.manifest.embedding is not None

    @cached_property
    def passage_doc_ids(self) -> list[str]:
        """Document id of each passage row, held in memory to collapse hits to documents cheaply."""
        return self.docstore.passage_doc_ids()

    def documents_visible_to(self, groups: Collection[str]) -> frozenset[str]:
        """The ids of the documents a caller in ``groups`` may see (public ones and its groups'): what paths
        that read documents outside a search (gold sets, label sheets, feedback exports) filter by."""
        doc_ids = self.passage_doc_ids
        return frozenset(doc_ids[row] for row in self.docstore.rows_visible_to(frozenset(groups)))

    @cached_property
    def bm25(self) -> BM25Index:
        return BM25Index.load(self.path / BM25_DIR, self._bm25_settings, self.manifest.num_passages)

    @cached_property
    def vectors(self) -> VectorIndex:
        self._require_dense()
        return VectorIndex.load(self.path / VECTORS, int(self.manifest.embedding["dim"]),  # type: ignore[index]
                                self.manifest.num_passages)

    @property
    def embedder(self) -> Embedder:
        self._require_dense()
        if self._embedder is None:
            emb = self.manifest.embedding or {}
            # queries must be encoded exactly like the corpus was (same backend, e.g. onnx-int8)
            self._embedder = Embedder(emb["path"], backend=emb.get("backend", "torch"))
            if self._embedder.info.sha256 != self.manifest.embedding["sha256"]:  # type: ignore[index]
                raise IndexNotFoundError(
                    f"the embedding model at {self._embedder.info.path} changed since the index was built "
                    "(weights sha256 differs); rebuild the index")
        return self._embedder

    def _require_dense(self) -> None:
        if not self.has_dense:
            raise QueryError(f"index '{self.location}' was built without dense vectors (--no-dense); "
                             "use --first-stage bm25 or rebuild with dense vectors")

    @classmethod
    def open_loaded(cls, path: str | Path, *, embedder: Embedder | None = None, attempts: int = 3) -> Index:
        """Open the index at ``path`` and :meth:`preload` it, as one version: when a swap replaced the
        directory meanwhile (its inode changed), the parts may come from two versions, so it starts again."""
        path = Path(path)
        for _ in range(attempts):
            before = _inode(path)
            index = cls(path, embedder=embedder).preload()
            if _inode(path) == before:
                return index
            index.close()
        raise IndexNotFoundError(f"the index at '{path}' kept changing while it was opened; retry when the "
                                 "updates stop")

    def preload(self) -> Index:
        """Read every part that is read lazily from the index directory now (BM25, vectors).

        A server swapping in a new version calls it first: those parts are read by path, and once a later
        update has renamed this version's directory a lazy read would find the next version's files. The
        query encoder is loaded from the model's own directory (and checked against this manifest), so it
        may stay lazy.
        """
        _ = self.passage_doc_ids, self.bm25
        if self.has_dense:
            _ = self.vectors
        return self

    def close(self) -> None:
        self.docstore.close()

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        source: str | Path | Iterable[Document],
        path: str | Path,
        *,
        embedding_model: str | None = "minilm",
        chunking: ChunkingSettings | None = None,
        bm25: BM25Settings | None = None,
        progress: Progress = no_progress,
        embedder: Embedder | None = None,
        label: str | None = None,
        reuse: Mapping[str, np.ndarray] | None = None,
        embed: EmbedPassages | None = None,
    ) -> Index:
        """Build (or rebuild) the index at ``path`` from a corpus source or an iterable of documents.

        ``embedding_model=None`` builds a lexical-only index (no vectors, ``dense``/``hybrid`` refused).
        ``label`` names the source in the manifest (default: the path, or ``<documents>``). The index this
        build replaces is kept as ``NAME.previous`` (see :mod:`rankwise.index.update`). ``reuse``: vectors by
        passage content hash to take instead of embedding again (default: those of the index at ``path``
        when it was built with the same weights). ``embed``: how passages are embedded (default: here, in
        batches; :func:`rankwise.index.ray_embedding.embed_with_ray` spreads them over a Ray cluster).
        """
        path = Path(path)
        started = time.perf_counter()
        recover_interrupted_swap(path)  # a crashed earlier build: put its previous index back first
        if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not looks_like_index(path))):
            raise IndexNotFoundError(f"'{path}' exists and is not a rankwise index; refusing to overwrite it, "
                                     "choose an empty or new directory")
        name, documents = documents_of(source)
        label = label or name
        if embedder is None and embedding_model is not None:
            embedder = Embedder(embedding_model)
        tokenizer_dir = Path(embedder.info.path) if embedder else bundled_minilm_dir()
        chunking = chunking or ChunkingSettings()
        bm25 = bm25 or BM25Settings()
        previous = _previous_vectors(path, embedder) if reuse is None else reuse
        embed = embed or embed_here

        tmp = build_directory(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_abandoned_builds(path)
            tmp.mkdir()
            manifest = _write_index(tmp, label, documents, PassageSplitter(tokenizer_dir, chunking), chunking,
                                    bm25, embedder, previous, progress, embed)
            manifest.stats["build_seconds"] = round(time.perf_counter() - started, 2)
            manifest.files = record_files(tmp, exclude={MANIFEST_NAME})  # fsyncs every file as it hashes it
            manifest.write(tmp)
            _fsync_directories(tmp)
            replace_directory(tmp, path)
        except (OSError, sqlite3.Error) as err:  # disk full, permissions, a read-only location
            shutil.rmtree(tmp, ignore_errors=True)
            why = one_line(getattr(err, "strerror", None) or err)
            raise IndexNotFoundError(f"cannot write the index at '{path}' ({why}); "
                                     "the previous index, if any, is unchanged") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(path, embedder=embedder)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _previous_vectors(path: Path, embedder: Embedder | None) -> dict[str, np.ndarray]:
    """Vectors of the index being replaced, by content hash — only if built with the same weights."""
    if embedder is None or not (path / MANIFEST_NAME).is_file():
        return {}
    try:
        old = Index(path)
    except Exception:  # noqa: BLE001 - an unreadable old index just means nothing to reuse
        return {}
    try:
        return reusable_vectors(old, embedder)
    finally:
        old.close()


def reusable_vectors(old: Index, embedder: Embedder | None) -> dict[str, np.ndarray]:
    """``old``'s passage vectors by content hash, when ``embedder`` has the weights and backend they came from."""
    emb = old.manifest.embedding or {}
    if embedder is None or emb.get("sha256") != embedder.info.sha256 or emb.get("backend", "torch") != embedder.info.backend:
        return {}
    try:
        return dict(zip(old.docstore.passage_hashes(), old.vectors.vectors, strict=False))
    except Exception:  # noqa: BLE001 - an unreadable old index just means nothing to reuse
        return {}


def _write_index(tmp: Path, label: str, documents: Iterable[Document], splitter: PassageSplitter,
                 chunking: ChunkingSettings, bm25: BM25Settings, embedder: Embedder | None,
                 previous: Mapping[str, np.ndarray], progress: Progress, embed: EmbedPassages) -> Manifest:
    store = DocStore(tmp / DOCSTORE, create=True)
    texts: list[str] = []
    hashes: list[str] = []
    corpus_digest = hashlib.sha256()
    n_docs = 0
    for doc, passages in splitter.split_all(validated(documents, label)):
        store.add(doc, passages, first_row=len(texts))
        corpus_digest.update(f"{doc.id}\x1e{doc.title}\x1e{doc.text}\x1e{sorted(doc.metadata.items())}\x1d".encode())
        texts.extend(p.full_text for p in passages)
        hashes.extend(p.content_hash for p in passages)
        n_docs += 1
        if n_docs % 500 == 0:
            progress("reading", n_docs, None)
    store.commit()
    store.close()
    if not texts:
        raise CorpusError(f"{label}: no passages to index (all documents are empty)")
    progress("bm25", 0, 1)
    BM25Index.build(texts, bm25).save(tmp / BM25_DIR)
    progress("bm25", 1, 1)

    stats: dict[str, Any] = {"embedded": 0, "reused": 0}
    if embedder is not None:
        vectors = np.zeros((len(texts), embedder.info.dim), dtype=np.float32)
        todo = [i for i, h in enumerate(hashes) if h not in previous]
        for i, h in enumerate(hashes):
            if h in previous:
                vectors[i] = previous[h]
        t0 = time.perf_counter()
        if todo:
            vectors[todo] = embed(embedder, [texts[i] for i in todo], progress)
        seconds = time.perf_counter() - t0
        stats.update(embedded=len(todo), reused=len(texts) - len(todo), embed_seconds=round(seconds, 2),
                     passages_per_second=round(len(todo) / seconds, 1) if todo else None)
        np.save(tmp / VECTORS, vectors)
    return Manifest(
        source=label,
        created_at=utc_now(),
        corpus_fingerprint=corpus_digest.hexdigest()[:16],
        num_documents=n_docs,
        num_passages=len(texts),
        chunking=asdict(chunking),
        bm25=bm25.to_dict(),
        embedding=asdict(embedder.info) if embedder else None,
        stats=stats,
    )


def _fsync_directories(directory: Path) -> None:
    """Make the directory entries of a finished build durable before it is swapped in (POSIX)."""
    for folder in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return  # a platform that cannot open directories (Windows): nothing to sync
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

