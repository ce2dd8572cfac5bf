"""``rankwise serve``, ``rankwise keys add|list|revoke`` and ``rankwise audit``: the HTTP service and its keys
and audit log. The heavy serving imports (FastAPI, uvicorn, torch) happen only when a command runs.
"""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box

from rankwise.cli.common import (
    DEFAULT_STORE,
    FEEDBACK_DB,
    MONITOR_DB,
    AllowDownload,
    AllowUnknownFilters,
    BackendOpt,
    DeviceOpt,
    FeedbackDbOpt,
    FirstStageOpt,
    GroupsOpt,
    MaxLength,
    RayOpt,
    RegistryOpt,
    RerankerOpt,
    RerankFusionOpt,
    RerankK,
    RetentionOpt,
    RetrieveK,
    StoreOpt,
    audit_location,
    err,
    friendly_errors,
    out,
    prelude,
    store_location,
)
from rankwise.postgres import PostgresStore

app = typer.Typer()






@app.command()
@friendly_errors
def serve(
    index_dir: Annotated[str | None, typer.Option("--index", "-i", help="Index for /v1/search.")] = None,
    reranker: RerankerOpt = "none",
    host: Annotated[str, typer.Option(help="Address to bind (non-loopback needs --keys).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    first_stage: FirstStageOpt = "hybrid",
    retrieve_k: RetrieveK = 100,
    rerank_k: RerankK = 100,
    rerank_fusion: RerankFusionOpt = None,
    max_length: MaxLength = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "cpu",
    registry: RegistryOpt = None,
    cache: Annotated[str, typer.Option(help="Score cache: memory | redis://host:port/db")] = "memory",
    cache_size: Annotated[int, typer.Option(help="In-process cache entries (0 disables it).")] = 100_000,
    cache_ttl: Annotated[int, typer.Option(help="Redis entry lifetime, seconds.")] = 7 * 24 * 3600,
    keys: Annotated[str | None, typer.Option(help="API keys file (from `rankwise keys add`), or postgresql://... (shared by replicas); "
                                                   "without it the server is open, loopback only.")] = None,
    audit: Annotated[str, typer.Option(help="Audit SQLite path, 'default' (user data dir; with --store: the "
                                                "store) or 'none'.")] = DEFAULT_STORE,
    store: StoreOpt = None,
    timeout_ms: Annotated[int, typer.Option(help="Default latency budget per request.")] = 30_000,
    batching: Annotated[bool, typer.Option("--batching/--no-batching", help="Cross-request micro-batching.")] = True,
    batch_wait_ms: Annotated[float, typer.Option(help="Longest a round waits for more requests.")] = 2.0,
    batch_tokens: Annotated[int, typer.Option(help="Token budget of one batching round.")] = 65_536,
    batch_requests: Annotated[int, typer.Option(help="Most requests in one round.")] = 64,
    max_documents: Annotated[int, typer.Option(help="Documents per /v1/rerank request.")] = 1000,
    max_document_chars: Annotated[int, typer.Option(help="Characters per document.")] = 20_000,
    max_query_chars: Annotated[int, typer.Option(help="Characters per query (at most 2000).")] = 2000,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (counted as it streams in).")] = 16 * 1024 * 1024,
    max_in_flight: Annotated[int, typer.Option(help="API requests inside the server at once; more get 503 + "
                                                    "Retry-After at once.")] = 16,
    max_feedback_in_flight: Annotated[int, typer.Option(help="Feedback requests inside the server at once, "
                                                             "apart from search and rerank's.")] = 4,
    max_request_tokens: Annotated[int, typer.Option(help="Tokens one request may send through the model once "
                                                         "windowed; more is refused before any forward pass.")] = 524_288,
    open_metrics: Annotated[bool, typer.Option("--open-metrics", help="Serve /metrics without an admin key "
                                                                      "even when --keys is on.")] = False,
    ui: Annotated[bool, typer.Option("--ui", help="Serve the web console at /ui: search with every score, "
                                                  "compare, feedback, quality, models (signed in with a key).")] = False,
    label_dir: Annotated[Path | None, typer.Option(help="Labelling sheets (`rankwise label --out-dir DIR/NAME`) "
                                                        "the console's annotators work through (with --ui).")] = None,
    served_model_name: Annotated[list[str], typer.Option(
        help="Another name the reranker answers to in a request's `model` (repeatable), e.g. the name a "
             "Cohere client sends.")] = [],  # noqa: B006
    allow_unknown_filters: AllowUnknownFilters = False,
    accept_any_model_name: Annotated[bool, typer.Option(
        "--accept-any-model-name", help="Answer any `model` name with the served reranker (default: unknown "
                                        "names get a 404 listing the served ones).")] = False,
    log_queries: Annotated[str, typer.Option(help="What the query log keeps of each query: none | hash (keyed, "
                                                  "joinable) | text (needed to turn feedback into gold sets).")] = "hash",
    feedback_db: FeedbackDbOpt = DEFAULT_STORE,
    retention: RetentionOpt = None,
    shadow: Annotated[str | None, typer.Option(help="A second reranker (registry name or path) that scores "
                                                    "sampled requests off the critical path; without --reranker, it "
                                                    "is compared with the first stage.")] = None,
    shadow_share: Annotated[str, typer.Option(help="Share of requests offered to the shadow, e.g. 25%.")] = "100%",
    shadow_chunk: Annotated[int, typer.Option(help="Documents the shadow scores between checks for production "
                                                   "work (bounds the delay it can add).")] = 2,
    canary: Annotated[str, typer.Option(help="Share of callers (sticky per user or key) served by "
                                             "--canary-model instead of production, e.g. 10%.")] = "0%",
    canary_model: Annotated[str, typer.Option(help="What the canary share is served with.")] = "candidate",
    experiment: Annotated[Path | None, typer.Option(help="Experiment file (TOML/JSON): A/B arms with traffic "
                                                         "shares, or team-draft interleaving of two arms.")] = None,
    follow_interval: Annotated[str, typer.Option(help="How often registry aliases and the index are re-read, so "
                                                      "promote, rollback and index updates take effect without a "
                                                      "restart; 0 pins.")] = "2s",
    drift_reference: Annotated[Path | None, typer.Option(help="Reference window of traffic signals (from "
                                                              "`rankwise monitor drift --save-reference`): "
                                                              "exports drift gauges.")] = None,
    drift_window: Annotated[int, typer.Option(help="Recent searches compared with --drift-reference.")] = 500,
    monitor_every: Annotated[str | None, typer.Option(help="Evaluate the served configuration on "
                                                           "--monitor-goldset this often (e.g. 24h), off the "
                                                           "request path; results and alarm in /metrics.")] = None,
    monitor_goldset: Annotated[Path | None, typer.Option(help="Gold set JSONL for --monitor-every.")] = None,
    monitor_history: Annotated[str, typer.Option(help="Monitoring history for --monitor-every: a path or "
                                                      "'default' (what `rankwise monitor check` reads).")] = DEFAULT_STORE,
    rate_limit: Annotated[float, typer.Option(help="Default requests/second per key.")] = 20.0,
    burst: Annotated[int, typer.Option(help="Default burst per key.")] = 40,
    ray: RayOpt = None,
    replicas: Annotated[int, typer.Option(help="With --ray: Ray Serve replicas of the whole server.", min=1)] = 1,
    allow_download: AllowDownload = False,
) -> None:
    """Serve /v1/rerank (Cohere-compatible) and /v1/search over HTTP, with /metrics and /docs."""
    prelude(allow_download)
    import uvicorn

    from rankwise.index.location import shown
    from rankwise.options import PipelineSettings, no_reranker, parse_duration, parse_share
    from rankwise.rerank.loading import LoadOptions
    from rankwise.serving.app import create_app
    from rankwise.serving.config import (
        BatchingSettings,
        CacheSettings,
        Limits,
        LoopSettings,
        MonitorSettings,
        RateLimit,
        RolloutSettings,
        ServeConfig,
        ShadowSettings,
    )
    from rankwise.serving.state import load_state

    # made (and so checked) without --shadow too: a mistyped --shadow-share is an error, not ignored
    shadowing = ShadowSettings(model=shadow or "", share=parse_share(shadow_share, "--shadow-share"),
                               chunk=shadow_chunk)
    config = ServeConfig(
        index=index_dir, reranker=None if no_reranker(reranker) else reranker, host=host,
        port=port, keys=keys, audit=audit_location(audit, store), timeout_ms=timeout_ms, open_metrics=open_metrics,
        ui=ui, label_dir=label_dir, served_model_names=tuple(served_model_name), accept_any_model_name=accept_any_model_name,
        allow_unknown_filters=allow_unknown_filters,
        pipeline=PipelineSettings(first_stage, retrieve_k, rerank_k, rerank_fusion),  # type: ignore[arg-type]
        load=LoadOptions(backend=backend, device=device, max_length=max_length, registry=registry),  # type: ignore[arg-type]
        cache=CacheSettings(url=cache, size=cache_size, ttl_s=cache_ttl),
        loop=LoopSettings(feedback=store_location(feedback_db, store, "--feedback-db", FEEDBACK_DB), log_queries=log_queries,  # type: ignore[arg-type]
                          retention_s=parse_duration(retention, "--retention") if retention else None),
        shadow=shadowing if shadow is not None else None,
        rollout=RolloutSettings(
            canary=canary_model, canary_share=parse_share(canary, "--canary"), experiment=experiment,
            follow_interval_s=0.0 if follow_interval.strip() in ("0", "0s") else parse_duration(follow_interval,
                                                                                                 "--follow-interval")),
        monitor=MonitorSettings(
            drift_reference=drift_reference, drift_window=drift_window,
            every_s=parse_duration(monitor_every, "--monitor-every") if monitor_every else None,
            goldset=monitor_goldset,
            history=store_location(monitor_history, store, "--monitor-history", MONITOR_DB)),
        batching=BatchingSettings(enabled=batching, max_wait_ms=batch_wait_ms, max_tokens=batch_tokens,
                                  max_requests=batch_requests),
        limits=Limits(max_documents=max_documents, max_document_chars=max_document_chars,
                      max_query_chars=max_query_chars, max_body_bytes=max_body_bytes, max_in_flight=max_in_flight,
                      max_feedback_in_flight=max_feedback_in_flight, max_request_tokens=max_request_tokens),
        rate_limit=RateLimit(per_second=rate_limit, burst=burst),
    )
    if ray is not None:
        from rankwise.serving.ray_serve import serve_on_ray

        err.print(f"rankwise serving on http://{host}:{port} with {replicas} Ray Serve replica(s) on {ray} · index "
                  f"{shown(index_dir) if index_dir else 'none'} · reranker {reranker}", highlight=False, soft_wrap=True)
        serve_on_ray(config, ray, replicas)
        return
    state = load_state(config)
    err.print(f"rankwise serving on http://{host}:{port} (docs at /docs) · reranker "
              f"{state.router.production.name if state.router and state.router.production else 'none'} · index {shown(index_dir) if index_dir else 'none'} · cache "
              f"{state.cache.backend} · auth {'on' if keys else 'off (loopback only)'} · audit "
              f"{config.audit or 'off'} · query log {config.loop.feedback or 'off'} ({config.loop.log_queries})"
              + (f" · shadow {state.shadow.name or 'failed'}" if state.shadow else "")
              + (f" · experiment {state.experiment.name} ({state.experiment.mode})" if state.experiment else "")
              + (f" · canary {config.rollout.canary} {config.rollout.canary_share:.0%}" if config.rollout.canary_share
                 else ""),
              highlight=False, soft_wrap=True)
    uvicorn.run(create_app(state), host=host, port=port, log_level="warning", access_log=False)

keys_app = typer.Typer(help="Create, list and revoke API keys (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
KeysFile = Annotated[str, typer.Option("--keys", help="The keys the server is started with: a file, or postgresql://... .")]

@keys_app.command("add")
@friendly_errors
def keys_add(
    keys_file: KeysFile,
    role: Annotated[list[str], typer.Option("--role", help="search | rerank | feedback | admin (repeatable).")],
    name: Annotated[str, typer.Option(help="Who or what the key is for.")] = "",
    rate: Annotated[float | None, typer.Option(help="Requests/second for this key (default: server's).")] = None,
    burst: Annotated[int | None, typer.Option(help="Burst for this key (default: server's).")] = None,
    tenant: Annotated[str | None, typer.Option(help="The application the key belongs to: keys of one tenant "
                                                    "may send feedback on each other's requests (a front end's "
                                                    "feedback key on its backend's searches).")] = None,
    group: GroupsOpt = None,
) -> None:
    """Create a key and print its secret once (only a hash is stored)."""
    from rankwise.serving.key_stores import open_keys

    key, token = open_keys(keys_file, create=True).add(role, name=name, rate_per_s=rate, burst=burst, tenant=tenant, groups=group)
    err.print(f"created key {key.id} with role(s) {', '.join(key.roles)}; the secret is shown only now:",
              highlight=False)
    typer.echo(token)

@keys_app.command("list")
@friendly_errors
def keys_list(keys_file: KeysFile) -> None:
    """List keys (ids, roles, limits; never secrets)."""
    from rankwise.serving.key_stores import open_keys

    for key in open_keys(keys_file).list():
        limit = f"{key.rate_per_s or 'default'}/s burst {key.burst or 'default'}"
        tenant = f"  tenant {key.tenant}" if key.tenant else ""
        groups = f"  groups {','.join(key.groups)}" if key.groups is not None else ""
        out.print(f"{key.id}  {','.join(key.roles):<18} {limit:<28} {key.created}  {key.name}{tenant}{groups}",
                  highlight=False)

@keys_app.command("revoke")
@friendly_errors
def keys_revoke(keys_file: KeysFile, key_id: Annotated[str, typer.Argument(help="Key id.")]) -> None:
    """Revoke a key (a running server notices within a request)."""
    from rankwise.serving.key_stores import open_keys

    removed = open_keys(keys_file).revoke(key_id)
    err.print(f"revoked key {removed.id}", highlight=False)

audit_app = typer.Typer(help="The service's audit log: show rows, or verify its hash chain.",
                        invoke_without_command=True)
app.add_typer(audit_app, name="audit")
AuditOpt = Annotated[str, typer.Option(help="Audit SQLite path, or 'default'.")]


def _existing_audit(audit: str, store: str | None) -> Path | PostgresStore:
    from rankwise.serving.audit import AuditError

    where = audit_location(audit, store)
    if where is None:
        raise AuditError("--audit none has nothing to show; pass the --audit path the server was started with")
    return where


def _read_audit(where: Path | PostgresStore, **options: Any) -> list[dict[str, Any]]:
    if isinstance(where, PostgresStore):
        from rankwise.serving.audit_postgres import read_audit_postgres

        return read_audit_postgres(where, **options)
    from rankwise.serving.audit import read_audit

    return read_audit(where, **options)


@audit_app.callback()
@friendly_errors
def audit_cmd(
    ctx: typer.Context,
    audit: AuditOpt = DEFAULT_STORE,
    store: StoreOpt = None,
    since: Annotated[str | None, typer.Option(help="Only newer rows: 30m, 2h, 7d or an ISO time.")] = None,
    key: Annotated[str | None, typer.Option(help="Only this key id.")] = None,
    limit: Annotated[int, typer.Option(help="Most rows, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """Show the service's audit log: who asked what, which model versions answered, what was returned."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    path = _existing_audit(audit, store)
    rows = _read_audit(path, since=since, key_id=key, limit=limit)
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    # fits 80 columns: fixed-width cells never wrap, the free-text ones fold
    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
                  title=f"{len(rows)} newest audit rows in {path}")
    for column in ("time (UTC)", "request", "key", "endpoint", "status", "reranker", "index", "top results", "ms"):
        table.add_column(column, overflow="fold",
                         no_wrap=column in ("time (UTC)", "request", "endpoint", "reranker", "index", "ms"))
    for r in rows:
        top = ", ".join(str(x.get("doc_id", x.get("index"))) for x in r["results"][:3])
        who = (r["key_id"] or "—") + (f" as {','.join(r['groups']) or 'public'}" if r["groups"] is not None else "")
        table.add_row(r["time"][5:19].replace("T", " "), r["request_id"][:8], who,
                      r["endpoint"].removeprefix("/v1/"), str(r["status"]) + (" degraded" if r["degraded"] else ""),
                      (r["reranker_sha256"] or "—")[:8], (r["index_fingerprint"] or "—")[:8],
                      top + ("…" if len(r["results"]) > 3 else ""), f"{r['latency_ms']:.0f}")
    out.print(table)


@audit_app.command("verify")
@friendly_errors
def audit_verify(audit: AuditOpt = DEFAULT_STORE, store: StoreOpt = None) -> None:
    """Recompute the log's hash chain: exit 0 if every row follows from the one before, 1 at the first break."""
    where = _existing_audit(audit, store)
    if isinstance(where, PostgresStore):
        from rankwise.serving.audit_postgres import verify_chain_postgres

        report = verify_chain_postgres(where)
    else:
        from rankwise.serving.audit import verify_chain

        report = verify_chain(where)
    unchained = f" ({report.unchained} older rows predate the chain)" if report.unchained else ""
    if not report.ok:
        err.print(f"[bold red]audit log tampered:[/] row seq {report.broken_at}: {report.reason}; "
                  f"{report.rows - 1} rows before it verified{unchained}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"[green]audit log intact:[/] {report.rows} rows verified{unchained}; head {report.head} "
              "(keep this hash elsewhere to detect rows cut off the end later)", highlight=False, soft_wrap=True)
