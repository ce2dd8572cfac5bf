"""Score cache: skip the model for (query, passage) pairs it has already scored.

The key is ``sha256(scoring key, query, sha256(passage))``. The *scoring key* is what the reranker
declares can change a score (:func:`rankwise.rerank.base.scoring_key`: kind, weights sha256, backend,
lengths, windowing, aggregation) plus the request's ``max_tokens_per_doc``, so a new model or new
preprocessing can never be answered with old scores: it simply looks up different keys. Values are what
the reranker returned for the pair — raw score, calibrated score, and whether the passage was split into
windows — so a cached answer is the fresh one, whatever calibration the reranker uses.

Backends: an in-process LRU (default) or Redis (shared by server replicas, survives restarts). A Redis
failure while serving is logged, counted and treated as a miss: the cache may make requests faster,
never make them fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from rankwise.serving.config import CacheSettings, ServeConfigError

log = logging.getLogger("rankwise.serving")

#: a cached score: (raw score, calibrated score, passage was split into windows)
Entry = tuple[float, float, bool]
#: the entry layout's version is part of every Redis key, so a server never reads another layout's values
_KEY_PREFIX = "rankwise:score:v2:"


def score_keys(fingerprint: str, query: str, texts: Sequence[str], *, max_tokens_per_doc: int | None = None) -> list[str]:
    """One key per text: (reranker's scoring key, request preprocessing, query, sha256 of the text)."""
    base = hashlib.sha256(f"{fingerprint}\x00{max_tokens_per_doc}\x00{query}\x00".encode())
    keys = []
    for text in texts:
        h = base.copy()
        h.update(hashlib.sha256(text.encode()).digest())
        keys.append(h.hexdigest())
    return keys


class ScoreCache(Protocol):
    backend: str

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]: ...

    async def set_many(self, entries: dict[str, Entry]) -> None: ...

    async def close(self) -> None: ...


class MemoryScoreCache:
    """A bounded LRU in this process. Plain OrderedDict: lookups are O(1) and never leave the event loop
    for long, so a library (cachetools) would add a dependency for ~15 lines."""

    backend = "memory"

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        out: list[Entry | None] = []
        with self._lock:
            for key in keys:
                entry = self._data.get(key)
                if entry is not None:
                    self._data.move_to_end(key)
                out.append(entry)
        return out

    async def set_many(self, entries: dict[str, Entry]) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._data.update(entries)
            for key in entries:
                self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    async def close(self) -> None:
        return None


class CircuitBreaker:
    """Stop calling a dependency that keeps failing, and try it again after a cool-down.

    Why: a Redis that hangs (stopped, partitioned, swapping) makes every call wait its full socket timeout,
    so every request pays it twice (read + write) and the latency budget is spent waiting for a cache.
    After ``failures`` consecutive errors the breaker opens and calls are skipped (a cache miss / no write)
    for ``cooldown_s``; then one call is let through (half-open) and its outcome closes or re-opens it.
    """

    def __init__(self, failures: int = 3, cooldown_s: float = 5.0) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._consecutive = 0
        self._open_until = 0.0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._consecutive < self.failures:
                return True
            if now >= self._open_until:  # half-open: one probe, the others keep skipping until it reports
                self._open_until = now + self.cooldown_s
                return True
            return False

    def succeeded(self) -> None:
        with self._lock:
            self._consecutive = 0

    def failed(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._consecutive >= self.failures:
                self._open_until = time.monotonic() + self.cooldown_s


class CacheUnavailable(Exception):
    """The cache was skipped because its circuit breaker is open (answered as a miss / no write)."""


class RedisScoreCache:
    """Scores in Redis (``redis.asyncio``), with a TTL so an abandoned model's keys age out.

    Calls time out after ``timeout_s`` (a cache hit takes about a millisecond on a healthy Redis, so a
    call that takes longer is not going to be worth its wait) and go through a :class:`CircuitBreaker`.
    """

    backend = "redis"

    def __init__(self, url: str, ttl_s: int, *, timeout_s: float = 0.1, breaker: CircuitBreaker | None = None) -> None:
        import redis
        import redis.asyncio

        try:  # fail at startup with one line, not on the first request
            redis.Redis.from_url(url, socket_connect_timeout=3).ping()
        except (redis.RedisError, ValueError) as err:
            raise ServeConfigError(f"cannot reach Redis at {url} ({err}); start it or use --cache memory") from err
        self._client = redis.asyncio.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.breaker = breaker or CircuitBreaker()

    async def _guarded(self, call: Any) -> Any:
        if not self.breaker.allow():
            call.close()  # the coroutine is never awaited
            raise CacheUnavailable("Redis circuit breaker is open; skipping the cache")
        try:
            result = await asyncio.wait_for(call, self.timeout_s * 2)
        except Exception:
            self.breaker.failed()
            raise
        self.breaker.succeeded()
        return result

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        if not keys:
            return []
        values = await self._guarded(self._client.mget([_KEY_PREFIX + k for k in keys]))
        return [None if v is None else _decode(v) for v in values]

    async def set_many(self, entries: dict[str, Entry]) -> None:
        if not entries:
            return
        await self._guarded(self._write(entries))

    async def _write(self, entries: dict[str, Entry]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for key, (raw, calibrated, split) in entries.items():
                pipe.set(_KEY_PREFIX + key, f"{raw!r} {calibrated!r} {int(split)}", ex=self.ttl_s)
            await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()


def _decode(value: bytes) -> Entry:
    raw, calibrated, split = value.split()
    return float(raw), float(calibrated), split == b"1"


def open_score_cache(settings: CacheSettings) -> ScoreCache:
    """``memory`` → in-process LRU of ``settings.size`` entries; ``redis://...`` → Redis (checked now)."""
    if settings.url == "memory":
        return MemoryScoreCache(settings.size)
    return RedisScoreCache(settings.url, settings.ttl_s)
