"""Who is looking at a console page, and what they may do: sessions, sign-in, CSRF and roles, decided in
one place for every page.

The rules are the API's: an open server (no keys) lets its caller do everything, a key needs the role a
route names (``admin`` may do everything). On top of them, what only a browser needs: a sign-in that
turns a key into a session cookie, a CSRF token on every form that changes something, and — on a server
without keys — pages answered only under a loopback host name, so a web page that rebinds its own DNS
name to 127.0.0.1 cannot drive the console of a local server.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from rankwise.serving.auth import ApiKey, KeyFileError
from rankwise.serving.console.sessions import COOKIE, LOGIN_COOKIE, Session, Sessions, same_token
from rankwise.serving.routes import Role
from rankwise.serving.state import ServingState

#: the host names a server without keys answers its console under
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
_VISIT = "rankwise.console.visit"  # the request scope's key for the worked-out viewer
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'")


@dataclass(slots=True)
class Visit:
    """One request's viewer: the session (None: not signed in), its key (None also on an open server), and
    the CSRF token its forms carry (the session's, or the sign-in form's own)."""

    session: Session | None
    key: ApiKey | None
    csrf: str
    #: cookies the response must set: (name, value)
    cookies: list[tuple[str, str]]
    #: the key store could not be read: the viewer is neither signed in nor out
    unavailable: bool = False


class Access:
    def __init__(self, state: ServingState, templates: Jinja2Templates) -> None:
        self.state = state
        self.templates = templates
        self.sessions = Sessions()

    @property
    def open_server(self) -> bool:
        return self.state.keys is None

    def visit(self, request: Request) -> Visit:
        """The viewer of ``request`` (worked out once per request)."""
        known: Visit | None = request.scope.get(_VISIT)
        if known is not None:
            return known
        session = self.sessions.get(request.cookies.get(COOKIE))
        visit = Visit(session, None, "", [])
        if self.open_server and session is None:
            visit.session = self.sessions.new()
            visit.cookies.append((COOKIE, visit.session.id))
        elif session is not None and session.token is not None and self.state.keys is not None:
            try:
                visit.key = self.state.keys.authenticate(session.token)
            except KeyFileError:
                visit.unavailable = True
            else:
                if visit.key is None:  # revoked (or the store lost it): signed out now
                    self.sessions.drop(session.id)
                    visit.session = None
        if visit.session is not None:
            visit.csrf = visit.session.csrf
        else:
            visit.csrf = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
            if visit.csrf != request.cookies.get(LOGIN_COOKIE):
                visit.cookies.append((LOGIN_COOKIE, visit.csrf))
        request.scope[_VISIT] = visit
        return visit

    def sign_in(self, request: Request, token: str, key: ApiKey) -> None:
        """A new session for ``key`` (a fresh id: no id seen before sign-in is ever a signed-in one)."""
        visit = self.visit(request)
        if visit.session is not None:
            self.sessions.drop(visit.session.id)
        visit.session, visit.key = self.sessions.new(token, key), key
        visit.cookies.append((COOKIE, visit.session.id))

    def sign_out(self, request: Request) -> None:
        visit = self.visit(request)
        if visit.session is not None:
            self.sessions.drop(visit.session.id)
        visit.session = visit.key = None

    # ------------------------------------------------------------------ answers
    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        visit = self.visit(request)
        page = self.templates.TemplateResponse(request, template, {
            "csrf": visit.csrf, "key": visit.key, "signed_in": visit.session is not None,
            "open_server": self.open_server, "has_index": self.state.index is not None, **context},
            status_code=status)
        return self.finish(request, page)

    def refuse(self, request: Request, status: int, title: str, message: str) -> Response:
        return self.render(request, "error.html", status, title=title, message=message)

    def redirect(self, request: Request, path: str, **query: str) -> Response:
        return self.finish(request, RedirectResponse(path + (f"?{urlencode(query)}" if query else ""),
                                                     status_code=303))

    def finish(self, request: Request, response: Response) -> Response:
        for name, value in self.visit(request).cookies:
            response.set_cookie(name, value, httponly=True, samesite="strict", path="/ui",
                                secure=request.url.scheme == "https")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Content-Security-Policy", _CSP)
        return response

    # ------------------------------------------------------------------ guards
    def allow(self, request: Request, role: Role | None, what: str = "this page") -> Visit | Response:
        """The signed-in viewer, when the key may do ``what`` (needs ``role``); else the answer saying why:
        the sign-in page, a 403 naming the role, or a 503 while the key store cannot be read."""
        if self.open_server and (request.url.hostname or "") not in LOOPBACK_HOSTS:
            return self.refuse(request, 403, "Refused", "a server without keys answers its console only on a "
                               "loopback name (127.0.0.1, localhost); start it with --keys to serve others")
        visit = self.visit(request)
        if visit.unavailable:
            return self.refuse(request, 503, "Unavailable", "the server cannot read its API key store right now; "
                               "retry shortly")
        if visit.session is None:
            return self.to_login(request)
        if role is not None and not allowed(visit.key, role):
            needs = "an admin key" if role == "admin" else f"a key with the {role} role (or an admin key)"
            return self.refuse(request, 403, "Refused", f"{what} needs {needs}")
        return visit

    async def allow_form(self, request: Request, role: Role | None,
                         what: str = "this") -> tuple[Visit, dict[str, str]] | Response:
        """A state-changing form's fields, once its CSRF token matched and the viewer may do ``what``."""
        form = await self.form(request)
        if isinstance(form, Response):
            return form
        allowed_visit = self.allow(request, role, what)
        if isinstance(allowed_visit, Response):
            return allowed_visit
        return allowed_visit, form

    async def form(self, request: Request) -> dict[str, str] | Response:
        """A posted form's fields once its CSRF token matched the viewer's (the sign-in form's own before a
        sign-in); else the 403 page."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not same_token(form.get("csrf_token"), self.visit(request).csrf):
            return self.refuse(request, 403, "Refused", "this form's security token is missing or stale; reload "
                               "the page and try again")
        return form

    def to_login(self, request: Request) -> Response:
        """The sign-in page, coming back here afterwards (a page, never a form's POST target)."""
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self.redirect(request, "/ui/login", next=target if request.method == "GET" else "/ui/search")


def allowed(key: ApiKey | None, role: Role) -> bool:
    """As the API decides: an open server allows everything, a key needs the role (or admin)."""
    return key is None or key.allows(role)


def local_target(target: str) -> str:
    """Only a page of this console as a sign-in's destination (no open redirect)."""
    return target if target.startswith("/ui/") and not target.startswith("//") and "\\" not in target else "/ui/search"
