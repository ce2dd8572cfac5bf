"""The console's sessions: a browser signs in once with an API key and then carries only a session cookie.

Why server-side sessions rather than the key in a cookie: the key never reaches the browser's storage
(the cookie holds a random id that is worthless once the server restarts or the session ends), and
signing out or a revoked key ends the session at once — every page re-checks the key against the key
store. Each session also holds the CSRF token every state-changing form must send back. A session is
made only at sign-in (or, on a server without keys, at the first page), so visitors who never sign in
cannot fill the store and push signed-in users out; the sign-in form itself is protected by a
double-submit token in a cookie of its own. Sessions live in the process: behind several replicas, route
a browser to one replica (sticky sessions) or sign in again.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from rankwise.serving.auth import ApiKey

COOKIE = "rankwise_session"
#: the sign-in form's CSRF token (double submit: the cookie and the form must carry the same value)
LOGIN_COOKIE = "rankwise_login"
#: answers a session keeps, so a thumbs click shows the list it judged again instead of searching anew
KEPT_ANSWERS = 10
#: a signed-in session ends after this long without a page, and in any case after :data:`MAX_AGE_S`
IDLE_S = 2 * 3600
MAX_AGE_S = 12 * 3600


@dataclass(frozen=True, slots=True)
class GateRun:
    """A promotion gate run from the console: its decision (``PromotionDecision.to_dict()``), the production
    version it compared against, and when — a promotion must follow a fresh pass against today's production."""

    decision: dict[str, Any]
    production: str | None
    ran_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class Session:
    id: str
    csrf: str
    #: the key the browser signed in with (None: not signed in; or an open server, which has no keys)
    token: str | None = None
    key: ApiKey | None = None
    #: the latest promotion gate this session ran (what a promotion from the page must follow)
    gate: GateRun | None = None
    #: the latest search answers by request id (what a thumbs click redisplays)
    answers: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)

    def keep_answer(self, answer: dict[str, Any]) -> None:
        self.answers[str(answer["request_id"])] = answer
        while len(self.answers) > KEPT_ANSWERS:
            self.answers.popitem(last=False)


def same_token(sent: str | None, expected: str | None) -> bool:
    """Whether a form sent the expected CSRF token (compared in constant time)."""
    return bool(sent) and bool(expected) and hmac.compare_digest(str(sent).encode(), str(expected).encode())


class Sessions:
    """At most ``capacity`` sessions in memory; the least recently used one goes first when it is full."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def new(self, token: str | None = None, key: ApiKey | None = None) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), token, key)
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.seen > IDLE_S or now - session.created > MAX_AGE_S:
                del self._sessions[session_id]
                return None
            session.seen = now
            self._sessions.move_to_end(session_id)
            return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)
