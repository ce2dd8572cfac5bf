"""One background writer thread per store: callers queue rows and return at once; the thread commits
whatever queued up together in one transaction (one fsync per batch, not per row).

The query log, shadow records and the audit log all need this shape — the request path must never wait
for a disk — and all need the same three guarantees, so they live here once: :meth:`BatchedWriter.flush`
returns when everything queued before it is committed (readers and tests wait on it, never on a sleep);
:meth:`BatchedWriter.close` commits what is queued, then stops; and a failing write never kills the
thread (the store's ``write`` decides what to log and count), so later rows are stored once the disk
recovers.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger("rankwise.storage")

T = TypeVar("T")


class _Stop:
    """Queue marker: commit what is queued, then end the thread."""


class WriterTimeout(Exception):
    """The writer did not commit within the time a caller was willing to wait."""


class BatchedWriter(Generic[T]):
    """A daemon thread that passes queued items to ``write`` in batches of at most ``max_batch``."""

    def __init__(self, write: Callable[[Sequence[T]], None], *, name: str, max_batch: int = 1_000) -> None:
        self._write = write
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[T | threading.Event | _Stop] = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        """Queue ``item`` for the next batch (never blocks)."""
        self._queue.put(item)

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every item queued before the call has been passed to ``write``.

        Raises:
            WriterTimeout: the thread did not get there within ``timeout`` seconds (a stalled disk).
        """
        if self._stopped:
            return
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(timeout):
            raise WriterTimeout(f"queued rows were not written within {timeout:g}s")

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued and stop the thread (idempotent); False when it did not stop in time."""
        if not self._stopped:
            self._stopped = True
            self._queue.put(_Stop())
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [item for item in batch if not isinstance(item, threading.Event | _Stop)]
            if items:
                try:
                    self._write(items)
                except Exception:  # the thread must survive to commit later rows
                    log.exception("%s: a batch of %d rows could not be written", self._thread.name, len(items))
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            stop = any(isinstance(item, _Stop) for item in batch)
