"""Following the index on disk: a rebuilt, updated or rolled-back index is served without a restart.

``rankwise index`` (a rebuild, ``--update``, ``--delete``, ``--rollback``) swaps directories atomically, so the
index path always holds one complete version. The server reads that version's fingerprint from its manifest
every ``--follow-interval`` on a thread of its own; when it moves, the new version is opened (its files
verified), every lazily read part is loaded (BM25, vectors, and the query encoder, shared with the loaded
version when the embedding weights are the same) and a warm-up search runs — all off the request path —
and only then is it handed to the server. A request holds the version it started with until it answers, so
requests in flight finish on the old one and the next ones get the new. Scores in the score cache are keyed
by passage text and passage ids (``doc#n``) do not change for unchanged documents, so the cache and the
feedback of unchanged passages keep working across versions.

A version that fails to open (damaged, copied in by hand) is counted
(``rankwise_index_swaps_total{outcome="failed"}``), logged once and not retried until the fingerprint moves
again; the loaded version keeps answering.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from rankwise.errors import RankwiseError
from rankwise.index import Index, IndexLocation, open_loaded, read_manifest
from rankwise.index.location import shown
from rankwise.index.manifest import Manifest
from rankwise.serving.metrics import ServingMetrics

log = logging.getLogger("rankwise.serving")


class IndexFollower:
    """Polls the index path and calls ``use(index)`` with each new version, opened and loaded."""

    def __init__(self, path: IndexLocation, current: Index, interval_s: float, metrics: ServingMetrics,
                 use: Callable[[Index], None]) -> None:
        self.path = path
        self.current = current
        self.interval_s = interval_s
        self.metrics = metrics
        self.use = use
        self._failed: str | None = None  # the fingerprint that failed to load, not retried until it moves
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rankwise-index-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def check(self) -> str | None:
        """Swap in the version on disk when it is new: ``"swapped"``, ``"failed"``, or None when unchanged."""
        try:
            manifest: Manifest | None = read_manifest(self.path)
        except RankwiseError:
            manifest = None  # mid-swap on a system without atomic exchange, or damaged: opening says which
        fingerprint = manifest.fingerprint if manifest is not None else None
        if fingerprint == self.current.fingerprint or (fingerprint is not None and fingerprint == self._failed):
            return None
        index: Index | None = None
        try:
            index = self._open(manifest)
            if index.fingerprint == self.current.fingerprint:  # swapped back before we looked again
                index.close()
                return None
            self.use(index)
        except Exception as error:  # noqa: BLE001 - whatever broke, the loaded version keeps answering
            if index is not None:
                index.close()
            if fingerprint != self._failed or fingerprint is None:
                log.error("index at %s changed but the new version cannot be served (%s); still serving %s",
                          shown(self.path), error, self.current.fingerprint)
            self._failed = fingerprint
            self.metrics.index_swaps.labels("failed").inc()
            return "failed"
        log.warning("index at %s: now serving %s (was %s)", shown(self.path), index.fingerprint, self.current.fingerprint)
        self.current, self._failed = index, None
        self.metrics.index_swaps.labels("swapped").inc()
        return "swapped"

    def _open(self, manifest: Manifest | None) -> Index:
        """The version on disk, every part loaded; the query encoder shared when ``manifest`` (as read just
        before, if it could be) says its weights are the same."""
        current = self.current
        share = (current.has_dense and manifest is not None
                 and _encoder_of(manifest) == _encoder_of(current.manifest))
        index = open_loaded(self.path, embedder=current.embedder if share else None)
        if share and _encoder_of(index.manifest) != _encoder_of(current.manifest):  # swapped again meanwhile
            index.close()
            index = open_loaded(self.path)
        return index


def _encoder_of(manifest: Manifest) -> tuple[object, object]:
    emb = manifest.embedding or {}
    return emb.get("sha256"), emb.get("backend", "torch")
