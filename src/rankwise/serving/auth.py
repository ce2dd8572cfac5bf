"""API keys, roles and per-key rate limits.

A key looks like ``rk_<id>_<secret>``. The keys file (JSON) stores only ``sha256(secret)``: the secret is
printed once by ``rankwise keys add`` and never written anywhere. sha256 rather than a slow KDF (scrypt)
because secrets are 256-bit random strings, not passwords: nobody can brute-force them, and a slow hash
would add milliseconds to every request. Comparison is constant-time (:func:`hmac.compare_digest`).

Roles: ``search`` may call ``/v1/search``, ``rerank`` may call ``/v1/rerank``, ``feedback`` may post to
``/v1/feedback`` (a front end that reports clicks needs no right to query), ``admin`` may call all.
The server re-reads the file when its modification time changes (the PostgreSQL store: at most a second
after the change), so adding or revoking a key takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rankwise.clock import utc_now
from rankwise.errors import RankwiseError
from rankwise.serving.config import RateLimit
from rankwise.storage import atomic_write_text

ROLES: tuple[str, ...] = ("search", "rerank", "feedback", "admin")
_TOKEN = re.compile(r"^rk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")


class KeyFileError(RankwiseError):
    """The keys file is missing, unreadable or malformed, or a key option is invalid."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    roles: tuple[str, ...]
    sha256: str
    created: str
    rate_per_s: float | None = None
    burst: int | None = None
    #: the application the key belongs to: keys of one tenant (a backend's search key, its front end's
    #: feedback key) may send feedback on each other's requests; a key without one, only on its own
    tenant: str | None = None
    #: the groups whose documents the key may search (with public documents); None: every document
    groups: tuple[str, ...] | None = None

    def allows(self, role: str) -> bool:
        return role in self.roles or "admin" in self.roles

    def shares_requests_with(self, other: ApiKey | None) -> bool:
        """Whether feedback from this key may concern a request ``other`` made."""
        return other is not None and (other.id == self.id or (self.tenant is not None and other.tenant == self.tenant))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(roles: list[str], *, name: str = "", rate_per_s: float | None = None, burst: int | None = None,
            tenant: str | None = None, groups: list[str] | None = None) -> tuple[ApiKey, str]:
    """A new key, and its full token (shown once; only the hash of its secret is stored)."""
    unknown = sorted(set(roles) - set(ROLES))
    if not roles or unknown:
        raise KeyFileError(f"give at least one --role from {', '.join(ROLES)}"
                           + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    if (rate_per_s is not None and rate_per_s <= 0) or (burst is not None and burst < 1):
        raise KeyFileError("--rate must be > 0 requests per second and --burst >= 1")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(id=key_id, name=name, roles=tuple(dict.fromkeys(roles)), sha256=_hash(secret),
                 created=utc_now(), rate_per_s=rate_per_s, burst=burst,
                 tenant=tenant or None, groups=tuple(dict.fromkeys(groups)) if groups is not None else None)
    return key, f"rk_{key_id}_{secret}"


def key_from_record(record: dict[str, Any]) -> ApiKey:
    return ApiKey(**{**record, "roles": tuple(record["roles"]),
                     "groups": tuple(record["groups"]) if record.get("groups") is not None else None})


class Keys(ABC):
    """Where the keys are: a JSON file (:class:`KeyStore`) or the shared PostgreSQL store
    (:class:`~rankwise.serving.auth_postgres.PostgresKeyStore`). A server re-reads them when they change, so
    adding or revoking a key takes effect without a restart; with no key left, every request is refused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp: object = None
        self._keys: dict[str, ApiKey] = {}

    # ------------------------------------------------------------------ admin (CLI)
    def add(self, roles: list[str], *, name: str = "", rate_per_s: float | None = None,
            burst: int | None = None, tenant: str | None = None,
            groups: list[str] | None = None) -> tuple[ApiKey, str]:
        """Create a key; returns it and the full token (show it once, it is not stored)."""
        key, token = new_key(roles, name=name, rate_per_s=rate_per_s, burst=burst, tenant=tenant, groups=groups)
        self._insert(key)
        return key, token

    def revoke(self, key_id: str) -> ApiKey:
        removed = self._remove(key_id)
        if removed is None:
            raise KeyFileError(f"no key with id '{key_id}' in {self}; list them with `rankwise keys list`")
        return removed

    def list(self) -> list[ApiKey]:
        return sorted(self._read().values(), key=lambda k: k.created)

    # ------------------------------------------------------------------ server
    def authenticate(self, token: str) -> ApiKey | None:
        """The key a bearer token belongs to, or ``None`` (unknown, revoked or malformed)."""
        match = _TOKEN.match(token)
        if not match:
            return None
        key = self._current().get(match.group(1))
        if key is None or not hmac.compare_digest(key.sha256, _hash(match.group(2))):
            return None
        return key

    def get(self, key_id: str) -> ApiKey | None:
        """The current key with this id (None once revoked)."""
        return self._current().get(key_id)

    def check(self) -> int:
        """Load the keys now (server start), so a broken keys store stops the server with one line."""
        return len(self._current())

    def _current(self) -> dict[str, ApiKey]:
        stamp = self._changed()
        with self._lock:
            if stamp is None or stamp != self._stamp:
                self._keys, self._stamp = self._read(), stamp
            return self._keys

    def close(self) -> None:
        return None

    # ------------------------------------------------------------------ the store
    @abstractmethod
    def _changed(self) -> object:
        """A value that changes whenever the keys do (None: read them again)."""

    @abstractmethod
    def _read(self) -> dict[str, ApiKey]:
        """The current keys by id."""

    @abstractmethod
    def _insert(self, key: ApiKey) -> None: ...

    @abstractmethod
    def _remove(self, key_id: str) -> ApiKey | None:
        """Revoke ``key_id``; the key revoked, or None when there was none."""


class KeyStore(Keys):
    """The keys file: ``{"keys": [ApiKey, ...]}``, rewritten atomically (temp file + rename)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def _changed(self) -> object:
        try:
            return self.path.stat().st_mtime_ns
        except OSError as err:
            raise KeyFileError(f"keys file '{self.path}' is not readable ({err}); "
                               "create it with `rankwise keys add --keys FILE --role ...`") from err

    def _insert(self, key: ApiKey) -> None:
        keys = self._read() if self.path.exists() else {}
        keys[key.id] = key
        self._write(keys)

    def _remove(self, key_id: str) -> ApiKey | None:
        keys = self._read()
        removed = keys.pop(key_id, None)
        if removed is not None:
            self._write(keys)
        return removed

    def _read(self) -> dict[str, ApiKey]:
        try:
            data = json.loads(self.path.read_text())
            keys = [key_from_record(k) for k in data["keys"]]
        except FileNotFoundError as err:
            raise KeyFileError(f"keys file '{self.path}' does not exist; create a key with "
                               f"`rankwise keys add --keys {self.path} --role rerank`") from err
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise KeyFileError(f"keys file '{self.path}' is malformed ({type(err).__name__}: {err}); "
                               "recreate it with `rankwise keys add`") from err
        return {k.id: k for k in keys}

    def _write(self, keys: dict[str, ApiKey]) -> None:
        # hashes only, but still private
        atomic_write_text(self.path, json.dumps({"keys": [asdict(k) for k in keys.values()]}, indent=2), private=True)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class RateLimiter:
    """Per-key token buckets, in process.

    Hand-written because it is a dozen lines and needs no storage; a multi-replica deployment would move
    the buckets to Redis (the cache's server), which this interface allows without touching callers.
    """

    def __init__(self, default: RateLimit) -> None:
        self.default = default
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str, limit: RateLimit | None = None) -> float:
        """Take one token; returns 0 if allowed, else the seconds until a token is available."""
        limit = limit or self.default
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key_id, _Bucket(float(limit.burst), now))
            bucket.tokens = min(float(limit.burst), bucket.tokens + (now - bucket.updated) * limit.per_second)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / limit.per_second


def key_rate_limit(key: ApiKey, default: RateLimit) -> RateLimit:
    """A key's own limit where it has one, the server default otherwise."""
    if key.rate_per_s is None and key.burst is None:
        return default
    return RateLimit(key.rate_per_s or default.per_second, key.burst or default.burst)
