"""The console's pages: server-rendered HTML over the same API the server answers programs with.

Why pages call the API instead of the services: a search or a thumbs click from the console goes through
the very route a program's request takes — admission, authentication with the signed-in key, its role
and rate limit, the audit row, the query log that feedback joins — so the console can never see or do
more than that key can through the API, and needs no rule of its own to stay in step. Pages that read
stores directly (labelling sheets, misranked pairs) filter by the key's groups as its searches are
filtered. Who may see what is decided in :mod:`rankwise.serving.console.access`.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from rankwise.errors import QueryError, RankwiseError
from rankwise.options import FIRST_STAGE_METHODS
from rankwise.serving.auth import ApiKey, KeyFileError
from rankwise.serving.console.access import Access, Visit, allowed, local_target
from rankwise.serving.console.compare import (
    PIPELINES,
    VersionRankings,
    compare_rankings,
    pipeline_request,
    version_of,
)
from rankwise.serving.console.labelling import LABELS, Annotator, LabelDesk
from rankwise.serving.console.misranked import misranked_view, sheet_from_misranked
from rankwise.serving.console.models_view import Gatekeeper, models_view
from rankwise.serving.console.quality import drift_view, quality_report, quality_view
from rankwise.serving.console.rollout import rollout_view
from rankwise.serving.state import ServingState

HERE = Path(__file__).parent
#: the API routes' budget for a console request (the browser waits for the page)
_API_TIMEOUT_S = 60.0
#: the most results a console search or comparison asks for
_MAX_K = 50

Page = Callable[..., Awaitable[Response]]


def mount_console(app: FastAPI, state: ServingState) -> None:
    """Add the console under ``/ui`` (``rankwise serve --ui``)."""
    access = Access(state, Jinja2Templates(directory=HERE / "templates"))
    desk = LabelDesk(state.config.label_dir) if state.config.label_dir is not None else None
    gatekeeper = Gatekeeper(state)
    versions = VersionRankings(state)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    def page(path: str, method: str = "GET") -> Callable[[Page], Page]:
        """Register a console page; a RankwiseError it raises is shown as a page with its one line (not the
        API's JSON, and not counted as a fault of the server's data)."""
        def register(handler: Page) -> Page:
            @functools.wraps(handler)
            async def shown(request: Request, *args: Any, **kwargs: Any) -> Response:
                try:
                    return await handler(request, *args, **kwargs)
                except RankwiseError as err:
                    return access.refuse(request, 409, "Cannot do that", str(err))

            app.add_api_route(path, shown, methods=[method], include_in_schema=False)
            return shown
        return register

    async def api(visit: Visit, path: str, body: dict[str, Any]) -> httpx.Response:
        """``POST path`` on this server's own API as the signed-in key, in process (no socket): the request
        passes the admission guard, authentication, role, rate limit, audit and query log like any other."""
        session = visit.session
        headers = {"Authorization": f"Bearer {session.token}"} if session is not None and session.token else {}
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 0))
        async with httpx.AsyncClient(transport=transport, base_url="http://rankwise.console") as client:
            return await client.post(path, json=body, headers=headers, timeout=_API_TIMEOUT_S)

    # ------------------------------------------------------------------ sign-in
    @page("/ui")
    async def home(request: Request) -> Response:
        return access.redirect(request, "/ui/search")

    @page("/ui/login")
    async def login_page(request: Request, next: str = "/ui/search") -> Response:
        return access.render(request, "login.html", title="Sign in", next=local_target(next), error=None)

    @page("/ui/login", "POST")
    async def login(request: Request) -> Response:
        form = await access.form(request)
        if isinstance(form, Response):
            return form
        target = local_target(form.get("next", "/ui/search"))
        token = form.get("key", "").strip()
        key: ApiKey | None = None
        if state.keys is not None and token:
            try:
                key = state.keys.authenticate(token)
            except KeyFileError:
                return access.refuse(request, 503, "Unavailable", "the server cannot read its API key store right "
                                     "now; retry shortly")
        if key is None:
            return access.render(request, "login.html", 401, title="Sign in", next=target,
                                 error="that key is not valid (or was revoked)")
        access.sign_in(request, token, key)
        return access.redirect(request, target)

    @page("/ui/logout", "POST")
    async def logout(request: Request) -> Response:
        checked = await access.allow_form(request, None)
        if isinstance(checked, Response):
            return checked
        access.sign_out(request)
        return access.redirect(request, "/ui/login")

    # ------------------------------------------------------------------ search, feedback, compare
    @page("/ui/search")
    async def search_page(request: Request, q: str = "", first_stage: str = "", k: str = "10",
                          shown: str = "", sent: str = "") -> Response:
        visit = access.allow(request, "search", "searching")
        if isinstance(visit, Response):
            return visit
        assert visit.session is not None
        answer, error = visit.session.answers.get(shown) if shown else None, None
        if answer is None and q.strip():
            body: dict[str, Any] = {"query": q, "k": _count(k, "k", 1, _MAX_K)}
            if first_stage in FIRST_STAGE_METHODS:
                body["first_stage"] = first_stage
            answer, error = _answer(await api(visit, "/v1/search", body))
            if answer is not None:
                visit.session.keep_answer(answer)
        if answer is not None and shown:
            q = str(answer.get("query", q))
        return access.render(request, "search.html", title="Search", q=q, first_stage=first_stage, k=k,
                             answer=answer, error=error, sent=sent)

    @page("/ui/feedback", "POST")
    async def feedback(request: Request) -> Response:
        checked = await access.allow_form(request, "feedback", "giving feedback")
        if isinstance(checked, Response):
            return checked
        visit, form = checked
        signal = form.get("signal")
        if signal not in ("thumbs_up", "thumbs_down"):
            return access.refuse(request, 400, "Refused", "unknown feedback signal")
        reply = await api(visit, "/v1/feedback", {
            "request_id": form.get("request_id", ""), "doc_id": form.get("doc_id", ""), "signal": signal,
            "event_id": f"ui-{secrets.token_hex(12)}"})
        if reply.status_code not in (200, 201):
            return access.refuse(request, reply.status_code, "Feedback not stored", _message(reply))
        # the list the user judged, shown again — not a new search, which would log a second, click-less one
        return access.redirect(request, "/ui/search", shown=form.get("request_id", ""),
                               sent=f"{signal.replace('_', ' ')} on {form.get('doc_id', '')}")

    @page("/ui/compare")
    async def compare_page(request: Request, q: str = "", a: str = "", b: str = "", k: str = "10") -> Response:
        visit = access.allow(request, "search", "comparing")
        if isinstance(visit, Response):
            return visit
        with_reranker = state.router is not None
        a = a or ("hybrid+reranker" if with_reranker else "hybrid")
        b = b or ("hybrid" if with_reranker else "bm25")
        admin = allowed(visit.key, "admin")
        offered = list(PIPELINES) + ([f"hybrid+{v}" for v in await run_in_threadpool(_versions, state)]
                                     if admin and state.config.load.registry is not None else [])
        view, error = None, None
        if q.strip():
            count = _count(k, "k", 1, _MAX_K)
            answers = []
            for spec in (a, b):
                if version_of(spec) is not None:  # a version the server does not serve: loaded here
                    if not admin:
                        raise QueryError("comparing a registry version loads it on the server: that needs an admin key")
                    groups = visit.key.groups if visit.key is not None else None
                    answers.append((await run_in_threadpool(versions.search, spec, q, count, groups), None))
                else:
                    body = pipeline_request(spec, q, count, with_reranker=with_reranker)
                    answers.append(_answer(await api(visit, "/v1/search", body)))
            error = next((e for _, e in answers if e), None)
            if error is None:
                view = compare_rankings(answers[0][0], answers[1][0])  # type: ignore[arg-type]
        return access.render(request, "compare.html", title="Compare", q=q, a=a, b=b, k=k, view=view, error=error,
                             pipelines=offered)

    # ------------------------------------------------------------------ quality, rollout, misranked
    @page("/ui/quality")
    async def quality_page(request: Request, name: str | None = None, metric: str | None = None,
                           part: str = "", value: str = "") -> Response:
        visit = access.allow(request, "admin", "the quality pages")
        if isinstance(visit, Response):
            return visit
        view = await run_in_threadpool(quality_view, state, name, metric, (part, value) if part else None)
        drift = await run_in_threadpool(drift_view, state)
        return access.render(request, "quality.html", title="Quality", view=view, drift=drift)

    @page("/ui/quality/report")
    async def quality_report_page(request: Request, name: str | None = None) -> Response:
        visit = access.allow(request, "admin", "the quality pages")
        if isinstance(visit, Response):
            return visit
        report = await run_in_threadpool(quality_report, state, name)
        if report is None:
            return access.refuse(request, 404, "No report", "no evaluation has been recorded yet")
        response = HTMLResponse(report)
        # the report is self-contained: its own stylesheet inline, its plots as data: images, no script
        response.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'unsafe-inline'; "
                                                       "img-src data:; frame-ancestors 'none'")
        return access.finish(request, response)

    @page("/ui/rollout")
    async def rollout_page(request: Request) -> Response:
        visit = access.allow(request, "admin", "the rollout reports")
        if isinstance(visit, Response):
            return visit
        return access.render(request, "rollout.html", title="Rollout",
                             view=await run_in_threadpool(rollout_view, state))

    @page("/ui/misranked")
    async def misranked_page(request: Request, done: str = "") -> Response:
        visit = access.allow(request, "admin", "reading the whole query log")
        if isinstance(visit, Response):
            return visit
        view = await run_in_threadpool(misranked_view, state, visible_documents(state, visit.key))
        return access.render(request, "misranked.html", title="Misranked", view=view, can_label=desk is not None,
                             done=done)

    @page("/ui/misranked/sheet", "POST")
    async def misranked_sheet(request: Request) -> Response:
        checked = await access.allow_form(request, "admin", "making a labelling sheet from the query log")
        if isinstance(checked, Response):
            return checked
        if state.config.label_dir is None:
            return access.refuse(request, 404, "No label directory", "this server was started without --label-dir")
        label_dir = state.config.label_dir

        def make() -> tuple[str, int]:
            return sheet_from_misranked(misranked_view(state, visible_documents(state, checked[0].key)), label_dir)

        name, rows = await run_in_threadpool(make)
        return access.redirect(request, "/ui/misranked", done=f"sheet {name} with {rows} rows is ready in Label")

    # ------------------------------------------------------------------ models
    @page("/ui/models")
    async def models_page(request: Request, done: str = "") -> Response:
        visit = access.allow(request, None)
        if isinstance(visit, Response):
            return visit
        admin = allowed(visit.key, "admin")
        registry = state.config.load.registry
        view = await run_in_threadpool(functools.partial(models_view, registry, admin=admin)) if registry else None
        return access.render(request, "models.html", title="Models", view=view, done=done, can_change=admin)

    async def registry_form(request: Request, what: str) -> tuple[Visit, dict[str, str]] | Response:
        checked = await access.allow_form(request, "admin", what)
        if not isinstance(checked, Response) and state.config.load.registry is None:
            return access.refuse(request, 404, "No registry", "this server was started without --registry")
        return checked

    @page("/ui/models/gate", "POST")
    async def gate(request: Request) -> Response:
        checked = await registry_form(request, "running the promotion gate")
        if isinstance(checked, Response):
            return checked
        visit, form = checked
        run = await run_in_threadpool(gatekeeper.run, form.get("version", ""))
        assert visit.session is not None
        visit.session.gate = run
        return access.render(request, "gate.html", title="Models", decision=run.decision)

    @page("/ui/models/promote", "POST")
    async def promote(request: Request) -> Response:
        checked = await registry_form(request, "promoting")
        if isinstance(checked, Response):
            return checked
        visit, form = checked
        assert visit.session is not None
        version = await run_in_threadpool(gatekeeper.promote, visit.session.gate, form.get("version", ""),
                                          _who(visit.key))
        visit.session.gate = None
        return access.redirect(request, "/ui/models", done=f"{version} promoted to production")

    @page("/ui/models/rollback", "POST")
    async def rollback(request: Request) -> Response:
        checked = await registry_form(request, "rolling back production")
        if isinstance(checked, Response):
            return checked
        version = await run_in_threadpool(gatekeeper.rollback, _who(checked[0].key))
        return access.redirect(request, "/ui/models", done=f"production rolled back to {version}")

    # ------------------------------------------------------------------ labelling
    def labelling(request: Request, visit: Visit | None = None
                  ) -> tuple[LabelDesk, Annotator, frozenset[str] | None] | Response:
        """The sheets, who labels and what they may see; ``visit``: a form's already checked viewer."""
        if visit is None:
            allowed_visit = access.allow(request, "feedback", "labelling")
            if isinstance(allowed_visit, Response):
                return allowed_visit
            visit = allowed_visit
        if desk is None:
            return access.refuse(request, 404, "No sheets", "this server has no labelling sheets: start it with "
                                 "--label-dir DIR")
        key = visit.key
        annotator = Annotator.of_key(key.name, key.id) if key is not None else Annotator("console", "console")
        return desk, annotator, visible_documents(state, key)

    @page("/ui/label")
    async def sheets(request: Request) -> Response:
        found = labelling(request)
        if isinstance(found, Response):
            return found
        sheets_desk, annotator, visible = found
        progress = await run_in_threadpool(lambda: [sheets_desk.progress(s, annotator, visible)
                                                    for s in sheets_desk.sheets()])
        return access.render(request, "label_sheets.html", title="Label", sheets=progress, annotator=annotator.name)

    @page("/ui/label/{sheet}")
    async def label_row(request: Request, sheet: str, row: str = "") -> Response:
        found = labelling(request)
        if isinstance(found, Response):
            return found
        sheet_desk, annotator, visible = found
        rows = await run_in_threadpool(sheet_desk.labelled, sheet, annotator, visible)
        position = _count(row, "row", 0, max(len(rows) - 1, 0)) if row else next(
            (i for i, r in enumerate(rows) if r.label is None), None)
        return access.render(request, "label_row.html", title="Label", sheet=sheet, rows=rows, row=position,
                             current=rows[position] if position is not None and rows else None,
                             done=sum(1 for r in rows if r.label is not None), labels=LABELS, annotator=annotator.name)

    @page("/ui/label/{sheet}", "POST")
    async def save_label(request: Request, sheet: str) -> Response:
        checked = await access.allow_form(request, "feedback", "labelling")
        if isinstance(checked, Response):
            return checked
        visit, form = checked
        found = labelling(request, visit)
        if isinstance(found, Response):
            return found
        sheet_desk, annotator, visible = found
        label = _count(form.get("label", ""), "label", min(LABELS), max(LABELS))
        pair = (form.get("query_id", ""), form.get("document_id", ""))
        await run_in_threadpool(sheet_desk.save, sheet, annotator, pair, label, form.get("notes"), visible)
        return access.redirect(request, f"/ui/label/{quote(sheet, safe='')}")


def visible_documents(state: ServingState, key: ApiKey | None) -> frozenset[str] | None:
    """The documents a key with groups may see (None: every document), for pages that read stores directly."""
    if key is None or key.groups is None:
        return None
    if state.index is None:
        raise QueryError("this key sees only its groups' documents, and without --index the server cannot tell "
                         "which those are")
    return state.index.documents_visible_to(key.groups)


def _versions(state: ServingState) -> list[str]:
    """The registry's versions, newest first (what the compare page offers an admin)."""
    from rankwise.registry import Registry

    return [v.version for v in reversed(Registry(state.config.load.registry).versions())]


def _who(key: ApiKey | None) -> str:
    """Who asked, as the registry's history records it."""
    return key.id if key is not None else "console (server without keys)"


def _count(value: str, what: str, low: int, high: int) -> int:
    """A whole number from a page's query or form, within [low, high]."""
    try:
        number = int(value)
    except ValueError:
        raise QueryError(f"{what} must be a whole number (got {value[:40]!r})") from None
    if not low <= number <= high:
        raise QueryError(f"{what} must be between {low} and {high} (got {number})")
    return number


def _message(reply: httpx.Response) -> str:
    """The API's one-line error message of ``reply``."""
    try:
        return str(reply.json().get("message", reply.text))
    except ValueError:
        return reply.text[:300]


def _answer(reply: httpx.Response) -> tuple[dict[str, Any] | None, str | None]:
    """A search's answer, or the API's refusal as the page shows it."""
    if reply.status_code != 200:
        return None, f"{reply.status_code}: {_message(reply)}"
    return reply.json(), None
