"""The console's pages: server-rendered HTML over the same API the server answers programs with.

Why pages call the API instead of the services: a search or a thumbs click from the console goes through
the very route a program's request takes — admission, authentication with the signed-in key, its role
and rate limit, the audit row, the query log that feedback joins — so the console can never see or do
more than that key can through the API, and needs no rule of its own to stay in step. The only thing the
console adds is the session: a key sign-in, a cookie (HttpOnly, SameSite=Strict) and a CSRF token on
every form that changes something. Pages that are tables need no JavaScript; charts are SVG drawn here.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from rankwise.errors import RankwiseError
from rankwise.serving.auth import ApiKey, KeyFileError
from rankwise.serving.console.compare import PIPELINES, compare_rankings, pipeline_request
from rankwise.serving.console.labelling import LABELS, LabelDesk
from rankwise.serving.console.misranked import misranked_view, sheet_from_misranked
from rankwise.serving.console.quality import drift_view, quality_report, quality_view
from rankwise.serving.console.rollout import rollout_view
from rankwise.serving.console.sessions import COOKIE, Session, Sessions
from rankwise.serving.state import ServingState

HERE = Path(__file__).parent
_templates = Jinja2Templates(directory=HERE / "templates")
#: the API routes' budget for a console request (the browser waits for the page)
_API_TIMEOUT_S = 60.0


class Console:
    """The pages of one server, bound to its state and to the app whose API they call."""

    def __init__(self, app: FastAPI, state: ServingState) -> None:
        self.app = app
        self.state = state
        self.sessions = Sessions()
        self.desk = LabelDesk(state.config.label_dir) if state.config.label_dir is not None else None

    # ------------------------------------------------------------------ sessions
    def session(self, request: Request) -> Session:
        """The browser's session, or a new one (not signed in) whose cookie the response will set."""
        found = self.sessions.get(request.cookies.get(COOKIE))
        if found is None:
            found = self.sessions.new()
            request.state.new_session = found
        return found

    def viewer(self, request: Request) -> tuple[Session, ApiKey | None] | None:
        """The session and its key, checked against the key store now (a revoked key is signed out);
        None when the browser must sign in. An open server (no keys) needs no sign-in."""
        session = self.session(request)
        if self.state.keys is None:
            return session, None
        if session.token is None:
            return None
        try:
            key = self.state.keys.authenticate(session.token)
        except KeyFileError:
            key = None
        if key is None:
            session.token = session.key = None
            return None
        session.key = key
        return session, key

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        session = self.session(request)
        key = session.key if self.state.keys is not None else None
        page = _templates.TemplateResponse(request, template, {
            "csrf": session.csrf, "key": key, "open_server": self.state.keys is None,
            "has_index": self.state.index is not None, **context}, status_code=status)
        return self.finish(request, page)

    def finish(self, request: Request, response: Response) -> Response:
        new: Session | None = getattr(request.state, "new_session", None)
        if new is not None:
            response.set_cookie(COOKIE, new.id, httponly=True, samesite="strict", path="/ui",
                                secure=request.url.scheme == "https")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                       "style-src 'self'; script-src 'self'; frame-ancestors 'none'")
        return response

    def to_login(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self.finish(request, RedirectResponse(f"/ui/login?next={httpx.QueryParams({'n': target})['n']}",
                                                     status_code=303))

    async def checked_form(self, request: Request) -> tuple[Session, dict[str, str]] | Response:
        """A state-changing form's fields, once its CSRF token matched the session's (else a 403 page)."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None or not session.csrf_ok(form.get("csrf_token")):
            return self.render(request, "error.html", 403, title="Refused",
                               message="this form's security token is missing or stale; reload the page and try again")
        return session, form

    # ------------------------------------------------------------------ the API, as the signed-in key
    async def api(self, session: Session, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {session.token}"} if session.token else {}
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 0))
        async with httpx.AsyncClient(transport=transport, base_url="http://rankwise.console") as client:
            return await client.post(path, json=body, headers=headers, timeout=_API_TIMEOUT_S)


def mount_console(app: FastAPI, state: ServingState) -> None:
    """Add the console under ``/ui`` (``rankwise serve --ui``)."""
    console = Console(app, state)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    @app.get("/ui", include_in_schema=False)
    async def home(request: Request) -> Response:
        return RedirectResponse("/ui/search", status_code=303)

    @app.get("/ui/login", include_in_schema=False)
    async def login_page(request: Request, next: str = "/ui/search") -> Response:
        return console.render(request, "login.html", title="Sign in", next=_local(next), error=None)

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        checked = await console.checked_form(request)
        if isinstance(checked, Response):
            return checked
        old, form = checked
        token = form.get("key", "").strip()
        target = _local(form.get("next", "/ui/search"))
        key = None
        if state.keys is not None and token:
            with contextlib.suppress(KeyFileError):
                key = state.keys.authenticate(token)
        if key is None:
            return console.render(request, "login.html", 401, title="Sign in", next=target,
                                  error="that key is not valid (or was revoked)")
        console.sessions.drop(old.id)
        request.state.new_session = console.sessions.new(token, key)  # a fresh id: none planted before sign-in
        return console.finish(request, RedirectResponse(target, status_code=303))

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        checked = await console.checked_form(request)
        if isinstance(checked, Response):
            return checked
        console.sessions.drop(checked[0].id)
        request.state.new_session = console.sessions.new()
        return console.finish(request, RedirectResponse("/ui/login", status_code=303))

    @app.get("/ui/search", include_in_schema=False)
    async def search_page(request: Request, q: str = "", first_stage: str = "", k: int = 10) -> Response:
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        session, _ = who
        answer, error = None, None
        if q.strip():
            body: dict[str, Any] = {"query": q, "k": max(1, min(k, 100))}
            if first_stage in ("bm25", "dense", "hybrid"):
                body["first_stage"] = first_stage
            reply = await console.api(session, "/v1/search", body)
            answer, error = _answer(reply)
        return console.render(request, "search.html", title="Search", q=q, first_stage=first_stage, k=k,
                              answer=answer, error=error, sent=request.query_params.get("sent"))

    @app.post("/ui/feedback", include_in_schema=False)
    async def feedback(request: Request) -> Response:
        checked = await console.checked_form(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        if console.viewer(request) is None:
            return console.to_login(request)
        signal = form.get("signal")
        if signal not in ("thumbs_up", "thumbs_down"):
            return console.render(request, "error.html", 400, title="Refused", message="unknown feedback signal")
        reply = await console.api(session, "/v1/feedback", {
            "request_id": form.get("request_id", ""), "doc_id": form.get("doc_id", ""), "signal": signal,
            "event_id": f"ui-{secrets.token_hex(12)}"})
        if reply.status_code not in (200, 201):
            return console.render(request, "error.html", reply.status_code, title="Feedback not stored",
                                  message=_message(reply))
        back = httpx.QueryParams({"q": form.get("q", ""), "first_stage": form.get("first_stage", ""),
                                  "sent": f"{signal.replace('_', ' ')} on {form.get('doc_id', '')}"})
        return console.finish(request, RedirectResponse(f"/ui/search?{back}", status_code=303))

    @app.get("/ui/compare", include_in_schema=False)
    async def compare_page(request: Request, q: str = "", a: str = "hybrid+reranker", b: str = "hybrid",
                           k: int = 10) -> Response:
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        session, _ = who
        view, error = None, None
        if q.strip():
            try:
                bodies = [pipeline_request(spec, q, max(1, min(k, 50)), with_reranker=state.router is not None)
                          for spec in (a, b)]
            except RankwiseError as err:
                bodies, error = [], str(err)
            if bodies:
                replies = [await console.api(session, "/v1/search", body) for body in bodies]
                answers = [_answer(reply) for reply in replies]
                error = next((e for _, e in answers if e), None)
                if error is None:
                    view = compare_rankings(answers[0][0], answers[1][0])  # type: ignore[arg-type]
        return console.render(request, "compare.html", title="Compare", q=q, a=a, b=b, k=k, view=view, error=error,
                              pipelines=PIPELINES)

    @app.get("/ui/quality", include_in_schema=False)
    async def quality_page(request: Request, name: str | None = None, metric: str | None = None) -> Response:
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        if not _allowed(who[1], "admin"):
            return console.render(request, "error.html", 403, title="Refused",
                                  message="the quality pages need an admin key (as /metrics does)")
        view = await run_in_threadpool(quality_view, state, name, metric)
        drift = await run_in_threadpool(drift_view, state)
        return console.render(request, "quality.html", title="Quality", view=view, drift=drift)

    @app.get("/ui/quality/report", include_in_schema=False)
    async def quality_report_page(request: Request, name: str | None = None) -> Response:
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        if not _allowed(who[1], "admin"):
            return console.render(request, "error.html", 403, title="Refused",
                                  message="the quality pages need an admin key (as /metrics does)")
        try:
            page = await run_in_threadpool(quality_report, state, name)
        except RankwiseError as err:
            return console.render(request, "error.html", 409, title="No report", message=str(err))
        if page is None:
            return console.render(request, "error.html", 404, title="No report",
                                  message="no evaluation has been recorded yet")
        response = console.finish(request, HTMLResponse(page))
        # the report is self-contained: its own stylesheet inline, its plots as data: images, no script
        response.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'unsafe-inline'; "
                                                       "img-src data:; frame-ancestors 'none'")
        return response

    @app.get("/ui/rollout", include_in_schema=False)
    async def rollout_page(request: Request) -> Response:
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        if not _allowed(who[1], "admin"):
            return console.render(request, "error.html", 403, title="Refused",
                                  message="the rollout reports need an admin key")
        view = await run_in_threadpool(rollout_view, state)
        return console.render(request, "rollout.html", title="Rollout", view=view)

    @app.get("/ui/misranked", include_in_schema=False)
    async def misranked_page(request: Request) -> Response:
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        if not _allowed(who[1], "admin"):
            return console.render(request, "error.html", 403, title="Refused",
                                  message="the misranked pairs show users' queries: they need an admin key")
        view = await run_in_threadpool(misranked_view, state)
        return console.render(request, "misranked.html", title="Misranked", view=view,
                              can_label=console.desk is not None, done=request.query_params.get("done"))

    @app.post("/ui/misranked/sheet", include_in_schema=False)
    async def misranked_sheet(request: Request) -> Response:
        checked = await console.checked_form(request)
        if isinstance(checked, Response):
            return checked
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        if not _allowed(who[1], "admin"):
            return console.render(request, "error.html", 403, title="Refused",
                                  message="making a labelling sheet from users' queries needs an admin key")
        if state.config.label_dir is None:
            return console.render(request, "error.html", 404, title="No label directory",
                                  message="this server was started without --label-dir")
        try:
            name, rows = await run_in_threadpool(sheet_from_misranked, state, state.config.label_dir)
        except RankwiseError as err:
            return console.render(request, "error.html", 409, title="No sheet made", message=str(err))
        done = f"sheet {name} with {rows} rows is ready in Label"
        return console.finish(request, RedirectResponse(f"/ui/misranked?{httpx.QueryParams({'done': done})}",
                                                        status_code=303))

    @app.get("/ui/models", include_in_schema=False)
    async def models_page(request: Request) -> Response:
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        view = await run_in_threadpool(_models_view, state)
        return console.render(request, "models.html", title="Models", view=view, done=request.query_params.get("done"),
                              can_change=_allowed(who[1], "admin"))

    @app.post("/ui/models/gate", include_in_schema=False)
    async def gate(request: Request) -> Response:
        """Run the promotion gate for a version and show its result; a promotion can only follow a pass."""
        allowed = await admin_form(request, "running the promotion gate needs an admin key")
        if isinstance(allowed, Response):
            return allowed
        session, form, _ = allowed
        if state.config.monitor.goldset is None or state.index is None:
            return console.render(request, "error.html", 409, title="No gate",
                                  message="the gate evaluates on the server's gold set: start it with --index and "
                                          "--monitor-goldset (or run `rankwise models promote`)")
        version = form.get("version", "")
        try:
            decision = await run_in_threadpool(_run_gate, state, version)
        except RankwiseError as err:
            return console.render(request, "error.html", 409, title="Gate not run", message=str(err))
        session.gate = decision
        return console.render(request, "gate.html", title="Models", decision=decision)

    @app.post("/ui/models/promote", include_in_schema=False)
    async def promote(request: Request) -> Response:
        allowed = await admin_form(request, "promoting needs an admin key")
        if isinstance(allowed, Response):
            return allowed
        session, form, key = allowed
        decision = session.gate
        if decision is None or not decision["passed"] or decision["candidate"] != form.get("version"):
            return console.render(request, "error.html", 409, title="Not promoted",
                                  message="run the gate for this version first: only a version that passed it is "
                                          "promoted from the console")
        from rankwise.registry import Registry

        by = key.id if key is not None else "console (open server)"
        try:
            await run_in_threadpool(Registry(state.config.load.registry).promote, decision["candidate"],  # type: ignore[arg-type]
                                    gate=decision, by=by)
        except RankwiseError as err:
            return console.render(request, "error.html", 409, title="Not promoted", message=str(err))
        session.gate = None
        done = f"{decision['candidate']} promoted to production"
        return console.finish(request, RedirectResponse(f"/ui/models?{httpx.QueryParams({'done': done})}",
                                                        status_code=303))

    async def admin_form(request: Request, refusal: str) -> tuple[Session, dict[str, str], ApiKey | None] | Response:
        """A registry-changing form's fields: CSRF checked, signed in, an admin key, a registry."""
        checked = await console.checked_form(request)
        if isinstance(checked, Response):
            return checked
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        if not _allowed(who[1], "admin"):
            return console.render(request, "error.html", 403, title="Refused", message=refusal)
        if state.config.load.registry is None:
            return console.render(request, "error.html", 404, title="No registry",
                                  message="this server was started without --registry")
        return checked[0], checked[1], who[1]

    @app.post("/ui/models/rollback", include_in_schema=False)
    async def rollback(request: Request) -> Response:
        allowed = await admin_form(request, "rolling back production needs an admin key")
        if isinstance(allowed, Response):
            return allowed
        key = allowed[2]
        from rankwise.registry import Registry

        by = key.id if key is not None else "console (open server)"
        try:
            version = await run_in_threadpool(Registry(state.config.load.registry).rollback, by=by)  # type: ignore[arg-type]
        except RankwiseError as err:
            return console.render(request, "error.html", 409, title="Not rolled back", message=str(err))
        return console.finish(request, RedirectResponse(
            f"/ui/models?{httpx.QueryParams({'done': f'production rolled back to {version}'})}", status_code=303))

    mount_labelling(app, console)


def mount_labelling(app: FastAPI, console: Console) -> None:
    """The labelling pages: a list of sheets with this annotator's progress, and one row at a time (labels
    need the ``feedback`` role: judgements are feedback an expert gives on purpose)."""

    def refused(request: Request, key: ApiKey | None) -> Response | None:
        if console.desk is None:
            return console.render(request, "error.html", 404, title="No sheets",
                                  message="this server has no labelling sheets: start it with --label-dir DIR")
        if not _allowed(key, "feedback"):
            return console.render(request, "error.html", 403, title="Refused",
                                  message="labelling needs a key with the feedback role")
        return None

    @app.get("/ui/label", include_in_schema=False)
    async def sheets(request: Request) -> Response:
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        if (no := refused(request, who[1])) is not None:
            return no
        desk = console.desk
        assert desk is not None
        annotator = _annotator(who[1])
        try:
            progress = await run_in_threadpool(lambda: [desk.progress(s, annotator) for s in desk.sheets()])
        except RankwiseError as err:
            return console.render(request, "error.html", 500, title="Sheets unreadable", message=str(err))
        return console.render(request, "label_sheets.html", title="Label", sheets=progress, annotator=annotator)

    @app.get("/ui/label/{sheet}", include_in_schema=False)
    async def label_row(request: Request, sheet: str, row: int | None = None) -> Response:
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        if (no := refused(request, who[1])) is not None:
            return no
        desk = console.desk
        assert desk is not None
        annotator = _annotator(who[1])
        try:
            rows = await run_in_threadpool(desk.labelled, sheet, annotator)
        except RankwiseError as err:
            return console.render(request, "error.html", 404, title="No such sheet", message=str(err))
        done = sum(1 for r in rows if r.label is not None)
        if row is None:
            row = next((i for i, r in enumerate(rows) if r.label is None), None)
        elif not 0 <= row < len(rows):
            row = None
        return console.render(request, "label_row.html", title="Label", sheet=sheet, rows=rows, row=row,
                              current=rows[row] if row is not None else None, done=done, labels=LABELS,
                              annotator=annotator)

    @app.post("/ui/label/{sheet}", include_in_schema=False)
    async def save_label(request: Request, sheet: str) -> Response:
        checked = await console.checked_form(request)
        if isinstance(checked, Response):
            return checked
        who = console.viewer(request)
        if who is None:
            return console.to_login(request)
        if (no := refused(request, who[1])) is not None:
            return no
        desk = console.desk
        assert desk is not None
        form = checked[1]
        try:
            position, label = int(form.get("row", "")), int(form.get("label", ""))
            await run_in_threadpool(desk.save, sheet, _annotator(who[1]), position, label, form.get("notes"))
        except ValueError:
            return console.render(request, "error.html", 400, title="Not saved", message="row and label must be numbers")
        except RankwiseError as err:
            return console.render(request, "error.html", 400, title="Not saved", message=str(err))
        return console.finish(request, RedirectResponse(f"/ui/label/{quote(sheet, safe='')}", status_code=303))


def _run_gate(state: ServingState, version: str) -> dict[str, Any]:
    """The promotion gate of ``rankwise models promote`` on the server's index and gold set, with the
    server's first stage and model-loading settings."""
    from rankwise.evaluation.goldset import GoldSet
    from rankwise.registry import Registry
    from rankwise.training.promotion import check_promotion

    assert state.index is not None and state.config.monitor.goldset is not None
    registry = Registry(state.config.load.registry)
    prepared = GoldSet.load(state.config.monitor.goldset).prepare(known_documents=set(state.index.passage_doc_ids))
    load = state.config.load
    decision = check_promotion(registry, state.index, prepared, candidate=version,
                               first_stage=state.config.pipeline.first_stage or "hybrid", backend=load.backend,
                               device=load.device)
    return decision.to_dict()


def _annotator(key: ApiKey | None) -> str:
    """Whose labels these are: the signed-in key's name (an open server has one annotator)."""
    return key.name if key is not None else "console"


def _allowed(key: ApiKey | None, role: str) -> bool:
    """As the API decides: an open server allows everything, a key needs the role (or admin)."""
    return key is None or key.allows(role)


def _local(target: str) -> str:
    """Only a path on this server's console as a sign-in's destination (no open redirect)."""
    return target if target.startswith("/ui/") and not target.startswith("//") else "/ui/search"


def _message(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("message", reply.text))
    except ValueError:
        return reply.text[:300]


def _answer(reply: httpx.Response) -> tuple[dict[str, Any] | None, str | None]:
    if reply.status_code != 200:
        return None, f"{reply.status_code}: {_message(reply)}"
    return reply.json(), None


def _models_view(state: ServingState) -> dict[str, Any] | None:
    if state.config.load.registry is None:
        return None
    from rankwise.registry import Registry

    registry = Registry(state.config.load.registry)
    aliases = registry.aliases()
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    versions = [{"version": v.version, "aliases": by_version.get(v.version, []), "sha256": v.weights_sha256,
                 "probes": len(registry.probe_events(v.version)), **_card_summary(v.card.to_dict())}
                for v in reversed(registry.versions())]
    return {"versions": versions, "history": list(reversed(registry.history()))[:100],
            "problems": registry.problems(), "location": registry.history_location}


def _card_summary(card: dict[str, Any]) -> dict[str, Any]:
    """What the models table shows of a card: where the model came from, what it learned from, and how it
    did against the first stage it reranks on held-out queries."""
    data = card.get("training_data") or {}
    recipe = card.get("recipe") or {}
    validation = (card.get("metrics") or {}).get("validation") or {}
    verdict = validation.get("against_first_stage") or {}
    against = None
    if verdict:
        against = (f"{verdict.get('model_value', 0):.3f} vs {verdict.get('first_stage')} "
                   f"{verdict.get('first_stage_value', 0):.3f} (p {verdict.get('p_value', 1):.2g}, "
                   f"{verdict.get('queries')} queries)")
    return {"created": (card.get("created_at") or "")[:16].replace("T", " "),
            "kind": recipe.get("architecture") or ("added" if card.get("added_with") else ""),
            "origin": card.get("continued_from") or card.get("base_model") or card.get("source") or "",
            "data": data.get("dataset") or data.get("goldset") or "",
            "validation": validation.get("nDCG@10"), "against": against,
            "beats": verdict.get("beats_first_stage") if verdict else None}
