"""The :class:`Index`: one directory holding a docstore, a BM25 index, passage vectors and a manifest.

Builds are atomic: everything is written to a sibling temporary directory and swapped into place with
renames only once complete, so a crash, Ctrl-C or bad input half-way leaves the previous index intact.
Re-indexing reuses the vectors of passages whose content hash is unchanged (same embedding weights),
so updating a few documents re-embeds only those.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.corpus.chunking import ChunkingSettings, PassageSplitter
from rankwise.corpus.loaders import load_documents, validated
from rankwise.errors import CorpusError, IndexNotFoundError, QueryError
from rankwise.index.dense import Embedder, VectorIndex
from rankwise.index.docstore import DocStore
from rankwise.index.lexical import BM25Index, BM25Settings
from rankwise.index.manifest import MANIFEST_NAME, Manifest
from rankwise.models import bundled_minilm_dir
from rankwise.types import Document

DOCSTORE = "docstore.sqlite"
BM25_DIR = "bm25"
VECTORS = "vectors.npy"

#: ``progress(stage, done, total)`` — lets the CLI draw progress bars without the library knowing rich.
Progress = Callable[[str, int, int | None], None]


def _no_progress(stage: str, done: int, total: int | None) -> None:
    return None


class Index:
    """A built index, opened read-only. Use :meth:`build` to create or update one."""

    def __init__(self, path: str | Path, *, embedder: Embedder | None = None) -> None:
        self.path = Path(path)
        self.manifest = Manifest.read(self.path)
        self.docstore = DocStore(self.path / DOCSTORE)
        self._embedder = embedder

    def __repr__(self) -> str:
        m = self.manifest
        return f"Index({str(self.path)!r}, documents={m.num_documents}, passages={m.num_passages})"

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

    @cached_property
    def bm25(self) -> BM25Index:
        return BM25Index.load(self.path / BM25_DIR, BM25Settings(**self.manifest.bm25))

    @cached_property
    def vectors(self) -> VectorIndex:
        self._require_dense()
        return VectorIndex.load(self.path / VECTORS, int(self.manifest.embedding["dim"]))  # type: ignore[index]

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
            raise QueryError(f"index '{self.path}' was built without dense vectors (--no-dense); "
                             "use --first-stage bm25 or rebuild with dense vectors")

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
        progress: Progress = _no_progress,
        embedder: Embedder | None = None,
    ) -> Index:
        """Build (or rebuild) the index at ``path`` from a corpus source or an iterable of documents.

        ``embedding_model=None`` builds a lexical-only index (no vectors, ``dense``/``hybrid`` refused).
        """
        path = Path(path)
        started = time.perf_counter()
        if path.exists() and (not path.is_dir() or (not (path / MANIFEST_NAME).is_file() and any(path.iterdir()))):
            raise IndexNotFoundError(f"'{path}' exists and is not a rankwise index; refusing to overwrite it, "
                                     "choose an empty or new directory")
        label = str(source) if isinstance(source, (str, Path)) else "<documents>"
        documents = load_documents(source) if isinstance(source, (str, Path)) else iter(source)
        if embedder is None and embedding_model is not None:
            embedder = Embedder(embedding_model)
        tokenizer_dir = Path(embedder.info.path) if embedder else bundled_minilm_dir()
        chunking = chunking or ChunkingSettings()
        bm25 = bm25 or BM25Settings()
        previous = _previous_vectors(path, embedder)

        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_builds(path)
        tmp = path.parent / f".{path.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            manifest = _write_index(tmp, label, documents, PassageSplitter(tokenizer_dir, chunking), chunking,
                                    bm25, embedder, previous, progress)
            manifest.stats["build_seconds"] = round(time.perf_counter() - started, 2)
            manifest.write(tmp)
            _fsync_dir(tmp)
            _swap_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(path, embedder=embedder)


def _remove_abandoned_builds(path: Path) -> None:
    """Delete build dirs of ``path`` left by a process that no longer runs (killed with SIGKILL, power loss).

    A build dir is named after its builder's pid, so a concurrent build by a live process is left alone.
    """
    for stale in path.parent.glob(f".{path.name}.building-*"):
        pid = stale.name.rsplit(".building-", 1)[1].split("-", 1)[0]
        if not pid.isdigit() or not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _previous_vectors(path: Path, embedder: Embedder | None) -> dict[str, np.ndarray]:
    """Vectors of the index being replaced, by content hash — only if built with the same weights."""
    if embedder is None or not (path / MANIFEST_NAME).is_file():
        return {}
    try:
        old = Index(path)
        emb = old.manifest.embedding or {}
        if emb.get("sha256") != embedder.info.sha256 or emb.get("backend", "torch") != embedder.info.backend:
            return {}
        hashes = old.docstore.passage_hashes()
        vectors = old.vectors.vectors
        old.close()
    except Exception:  # noqa: BLE001 - an unreadable old index just means nothing to reuse
        return {}
    return dict(zip(hashes, vectors, strict=False))


def _write_index(tmp: Path, label: str, documents: Iterable[Document], splitter: PassageSplitter,
                 chunking: ChunkingSettings, bm25: BM25Settings, embedder: Embedder | None,
                 previous: dict[str, np.ndarray], progress: Progress) -> Manifest:
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
        step = 256
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            vectors[chunk] = embedder.encode([texts[i] for i in chunk])
            progress("embedding", min(start + step, len(todo)), len(todo))
        seconds = time.perf_counter() - t0
        stats.update(embedded=len(todo), reused=len(texts) - len(todo), embed_seconds=round(seconds, 2),
                     passages_per_second=round(len(todo) / seconds, 1) if todo else None)
        np.save(tmp / VECTORS, vectors)
    return Manifest(
        source=label,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        corpus_fingerprint=corpus_digest.hexdigest()[:16],
        num_documents=n_docs,
        num_passages=len(texts),
        chunking=asdict(chunking),
        bm25=bm25.to_dict(),
        embedding=asdict(embedder.info) if embedder else None,
        stats=stats,
    )


def _fsync_dir(directory: Path) -> None:
    for file in directory.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Replace ``path`` by ``tmp`` with renames; the old index is removed only after the swap."""
    if not path.exists():
        tmp.rename(path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    path.rename(old)
    try:
        tmp.rename(path)
    except BaseException:
        old.rename(path)
        raise
    shutil.rmtree(old, ignore_errors=True)

