"""The rerankers a server holds, and which one answers each request: production, a canary, an experiment's
arms, and the registry aliases it follows so that a promotion or rollback takes effect without a restart.

Every loaded model is a :class:`ServedModel`: the reranker, its own micro-batcher (one worker thread, so
two models never share a tokenizer) and its :class:`RerankService` (score-cache keys include the model's
weights hash, so versions never see each other's scores). A request *leases* the models it uses for its
whole life; a swap only changes which model the next lease gets. That is why one response is never
scored by two versions, and why a swap fails no request: the model it replaced is closed only when its
last lease is returned.

Aliases (``production``, ``candidate``) are followed by polling the registry's append-only history —
cheap (one small file read) and correct across processes, where a file-watch API would miss writes made
over NFS and a push would need the CLI to know every server. A new version is loaded and warmed on the
follower thread, off the request path, and only then swapped in; a version that fails to load or to score
the probe batch (:mod:`rankwise.rerank.sanity`) leaves the old one serving, is counted
(``rankwise_model_swaps_total{outcome="failed"}``), logged once and not retried until the alias moves.

A canary or experiment arm that cannot load or score at start is not served: its requests go to production
(counted as ``rankwise_model_swaps_total{outcome="fallback"}``) and ``/readyz`` names the problem. Only
production itself failing stops the server.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from rankwise.errors import ModelError
from rankwise.experiments import Experiment, assign, bucket, enrolled
from rankwise.options import PipelineSettings, no_reranker
from rankwise.registry import Registry, names_registry
from rankwise.rerank.base import Reranker, backend_label
from rankwise.rerank.loading import LoadOptions, load_reranker
from rankwise.rerank.sanity import probe
from rankwise.serving.batcher import MicroBatcher
from rankwise.serving.cache import ScoreCache
from rankwise.serving.config import BatchingSettings, RolloutSettings
from rankwise.serving.metrics import ServingMetrics
from rankwise.serving.scoring import scorer_for
from rankwise.serving.service import RerankService

log = logging.getLogger("rankwise.serving")

@dataclass(eq=False)
class ServedModel:
    """One loaded reranker with its batcher and scoring service; closed when retired and no longer leased."""

    key: str  # the registry version, or the spec for a model loaded from a path
    reranker: Reranker
    batcher: MicroBatcher
    service: RerankService
    leases: int = 0
    slots: int = 0  # how many roles (production, canary, arms) point at it
    closed: bool = False

    @property
    def name(self) -> str:
        return self.reranker.name

    @property
    def sha256(self) -> str:
        return self.reranker.weights_sha256

    def warm(self) -> None:
        """Score the probe batch through the batcher (loading lazy parts) and check the scores."""
        probe(self.name, lambda query, texts: self.batcher.submit(query, texts).result().scores)


@dataclass(frozen=True, slots=True)
class Route:
    """The models one request uses, and why: the experiment arm(s) or canary that picked them."""

    model: ServedModel | None  # the model whose ranking is served (for interleaving: arm a)
    arm: str | None = None
    experiment: str | None = None
    #: what answers, logs and the audit call the model for this request: its version and the alias it
    #: was reached by right now (``v3 (production)``), so a promotion renames it on the next request
    label: str | None = None
    #: interleaving only: the second arm's model, its served name and both arm names (a, b)
    other: ServedModel | None = None
    other_label: str | None = None
    arms: tuple[str, str] | None = None
    #: the pipeline settings of the arm (and of the second arm); unset ones are the server's
    settings: PipelineSettings = field(default_factory=PipelineSettings)
    other_settings: PipelineSettings = field(default_factory=PipelineSettings)


class ModelRouter:
    """Loads the configured rerankers, routes requests to them, and follows registry aliases.

    ``production`` is the ``--reranker`` spec; every model, whatever its role, is loaded with ``load`` and
    batched with ``batching``, and ``rollout`` says which callers a canary serves and how often aliases are
    re-read.
    """

    def __init__(self, production: str, load: LoadOptions, rollout: RolloutSettings, cache: ScoreCache,
                 metrics: ServingMetrics, *, batching: BatchingSettings, max_request_tokens: int,
                 experiment: Experiment | None = None, info: dict[str, str] | None = None) -> None:
        self.load = load
        self.rollout = rollout
        self.batching = batching
        self.max_request_tokens = max_request_tokens
        self.info = info or {}
        self.cache = cache
        self.metrics = metrics
        self.experiment = experiment
        self.registry = Registry(load.registry) if load.registry else None
        self._lock = threading.Lock()
        self._loaded: dict[str, ServedModel] = {}
        #: role → (spec, model): "production", "canary", "arm:<name>"
        self._slots: dict[str, tuple[str, ServedModel]] = {}
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self.problems: dict[str, str] = {}  # role → why its newest version is not served (readiness detail)
        self._failed: dict[str, str] = {}  # role → the version that failed, not retried until the alias moves
        self._names: set[str] = set()
        self._same_version: dict[str, bool] = {}
        specs: dict[str, str] = {"production": production}
        if rollout.canary_share > 0:
            specs["canary"] = rollout.canary
        if experiment is not None:
            for arm in experiment.arms:
                if not no_reranker(arm.reranker):
                    specs[f"arm:{arm.name}"] = arm.reranker
        keys = {role: self._resolve(spec) for role, spec in specs.items()}  # every name checked before any load
        for role, spec in specs.items():
            try:
                self._slots[role] = (spec, self._acquire(spec, keys[role]))
            except Exception as error:
                if role == "production" or "production" not in self._slots:
                    raise
                self._fall_back(role, spec, keys[role], error)
        self._publish_info()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start every batcher, and the alias follower when a served spec names the registry."""
        for model in self._loaded.values():
            model.batcher.start()
        if self.rollout.follow_interval_s > 0 and any(names_registry(spec) for spec, _ in self._slots.values()):
            self._follower = threading.Thread(target=self._follow, name="rankwise-follow", daemon=True)
            self._follower.start()

    def warm(self) -> None:
        """Warm every model; a canary or arm that cannot score falls back to production (production raises)."""
        production = self.production
        if production is not None:
            production.warm()
        for role, (spec, model) in list(self._slots.items()):
            if model is production:
                continue
            try:
                model.warm()
            except Exception as error:
                if production is None:
                    raise
                self._release(model)
                self._fall_back(role, spec, model.key, error)
        self._publish_info()

    def _fall_back(self, role: str, spec: str, key: str, error: Exception) -> None:
        """Route ``role``'s requests to production, say why, and do not retry ``key`` until its alias moves."""
        with self._lock:
            production = self._slots["production"][1]
            production.slots += 1
            self._slots[role] = (spec, production)
        self._cannot_serve(role, spec, key, error, "fallback", f"its requests go to production {production.key}")

    def _cannot_serve(self, role: str, spec: str, key: str, error: Exception, outcome: str, instead: str) -> None:
        """Say once (log, /readyz, metric) that ``key`` cannot serve ``role``, and do not retry it until the
        alias moves."""
        reason = f"{type(error).__name__}: {str(error)[:300]}"
        log.error("%s: %s cannot serve (%s); %s", role, key, reason, instead)
        self.problems[role] = f"{spec} → {key} cannot serve ({reason}); {instead}"
        self._failed[role] = key
        self.metrics.model_swaps.labels(role, outcome).inc()

    def close(self) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join(30)
        with self._lock:
            models, self._loaded = list(self._loaded.values()), {}
        for model in models:
            model.closed = True
            model.batcher.close()

    # ------------------------------------------------------------------ routing
    def depth(self) -> int:
        """Jobs waiting on every loaded model's batcher (the queue-depth gauge)."""
        with self._lock:
            return sum(m.batcher.depth for m in self._loaded.values())

    def busy(self) -> bool:
        """Whether any served model has work queued or running (the shadow waits while it does)."""
        with self._lock:
            return any(m.batcher.busy for m in self._loaded.values())

    def names(self) -> set[str]:
        """Every name a request's ``model`` may use: versions, names and weight hashes served since start."""
        return self._names

    @property
    def production(self) -> ServedModel | None:
        slot = self._slots.get("production")
        return slot[1] if slot else None

    def models(self) -> dict[str, ServedModel]:
        """Role → model, right now (for /readyz and metrics)."""
        with self._lock:
            return {role: model for role, (_, model) in self._slots.items()}

    @contextlib.contextmanager
    def lease(self, unit: str) -> Iterator[Route]:
        """The route for a caller identified by ``unit`` (user id, key id or request id), held until exit."""
        with self._lock:
            route = self._route(unit)
            held = [m for m in (route.model, route.other) if m is not None]
            for model in held:
                model.leases += 1
        try:
            yield route
        finally:
            with self._lock:
                for model in held:
                    model.leases -= 1
                    self._maybe_close(model)

    def _route(self, unit: str) -> Route:
        experiment = self.experiment
        if experiment is not None and enrolled(experiment, unit):
            if experiment.mode == "interleave":
                a, b = experiment.arms
                return Route(self._arm_model(a.name), "interleaved", experiment.name, self._label(f"arm:{a.name}"),
                             other=self._arm_model(b.name), other_label=self._label(f"arm:{b.name}"),
                             arms=(a.name, b.name), settings=a.settings, other_settings=b.settings)
            arm = assign(experiment, unit)
            return Route(self._arm_model(arm.name), arm.name, experiment.name, self._label(f"arm:{arm.name}"),
                         settings=arm.settings)
        if "canary" in self._slots and bucket("canary", unit) < self.rollout.canary_share:
            return Route(self._slots["canary"][1], "canary", label=self._label("canary"))
        production = self._slots.get("production")
        return Route(production[1] if production else None, None, label=self._label("production"))

    def _arm_model(self, arm: str) -> ServedModel | None:
        slot = self._slots.get(f"arm:{arm}")
        return slot[1] if slot else None

    def _label(self, role: str) -> str | None:
        """The served name of ``role``'s model right now (call with the lock held): ``v3 (production)`` for a
        registry alias, the version or the model's name otherwise; a role that fell back is production's."""
        slot = self._slots.get(role)
        if slot is None:
            return None
        spec, model = slot
        production = self._slots.get("production")
        if role in self._failed and production is not None and model is production[1]:
            spec = production[0]  # production answers this role's requests
        return f"{model.key} ({spec})" if names_registry(spec) and spec != model.key else model.name

    def labels(self) -> dict[str, str]:
        """Role → served name, right now (for /readyz)."""
        with self._lock:
            return {role: label for role in self._slots if (label := self._label(role)) is not None}

    # ------------------------------------------------------------------ loading and following
    def _resolve(self, spec: str) -> str:
        """The key a spec loads as: its registry version (so two aliases of one version share a model)."""
        if names_registry(spec):
            return (self.registry or Registry()).get(spec).version
        return spec

    def _acquire(self, spec: str, key: str) -> ServedModel:
        """The loaded model for ``key``, loading it if needed (call without the lock: loading is slow)."""
        with self._lock:
            model = self._loaded.get(key)
            if model is not None:
                model.slots += 1
                return model
        # a registry spec loads the version it resolved to (the alias may move again meanwhile)
        # named by its version alone: the alias it is reached by is the route's, and changes with promotions
        named = {"name": key} if names_registry(spec) else {}
        reranker = load_reranker(key, self.load, registry=self.registry, **named)
        if reranker is None:
            raise ModelError(f"'{spec}' names no reranker; pass a registry name or a model directory")
        batcher = MicroBatcher(scorer_for(reranker), self.batching, self.metrics, label=key,
                               max_request_tokens=self.max_request_tokens)
        model = ServedModel(key, reranker, batcher, RerankService(reranker, batcher, self.cache, self.metrics), slots=1)
        with self._lock:
            self._loaded[key] = model
            self._names = self._names | {key, model.name, model.sha256, model.sha256[:12]}
        return model

    def _follow(self) -> None:
        while not self._stop.wait(self.rollout.follow_interval_s):
            for role, (spec, current) in list(self._slots.items()):
                if not names_registry(spec):
                    continue
                try:
                    key = self._resolve(spec)
                except Exception as error:  # noqa: BLE001 - the registry may be mid-write or damaged
                    self.problems[role] = f"cannot resolve '{spec}': {error}"
                    continue
                if key == current.key:  # the alias names what is served (again, after a rollback): all is well
                    self.problems.pop(role, None)
                    self._failed.pop(role, None)
                    continue
                if key == self._failed.get(role):
                    continue
                self._swap(role, spec, key, current)

    def _swap(self, role: str, spec: str, key: str, current: ServedModel) -> None:
        """Load and warm ``key`` off the request path, then point ``role`` at it; the old model drains."""
        model: ServedModel | None = None
        try:
            model = self._acquire(spec, key)
            if not model.batcher.is_running:
                model.batcher.start()
            model.warm()
        except Exception as error:  # noqa: BLE001 - a bad version must never stop the serving one
            if model is not None:  # loaded but cannot score: released (closed unless another role uses it)
                self._release(model)
            self._cannot_serve(role, spec, key, error, "failed", f"still serving {current.key}")
            return
        with self._lock:
            self._slots[role] = (spec, model)
        self._release(current)
        self.problems.pop(role, None)
        self._failed.pop(role, None)
        self.metrics.model_swaps.labels(role, "swapped").inc()
        log.warning("%s now serves %s (was %s)", role, model.name, current.name)
        self._publish_info()

    def _release(self, model: ServedModel) -> None:
        """One role fewer points at ``model``; closed once none does and no request holds it."""
        with self._lock:
            model.slots -= 1
            self._maybe_close(model)

    def _maybe_close(self, model: ServedModel) -> None:
        """Close a model nobody routes to and nobody holds (call with the lock held)."""
        if model.slots > 0 or model.leases > 0 or model.closed:
            return
        model.closed = True
        self._loaded.pop(model.key, None)
        threading.Thread(target=model.batcher.close, name="rankwise-retire", daemon=True).start()

    def _publish_info(self) -> None:
        self._check_same_versions()
        production = self.production
        self.metrics.model.info({
            **self.info,
            "reranker": production.name if production else "none",
            "reranker_sha256": production.sha256 if production else "none",
            "reranker_backend": backend_label(production.reranker if production else None),
            **{f"{role.replace(':', '_')}_reranker": label for role, label in self.labels().items()
               if role != "production"},
        })

    def _check_same_versions(self) -> None:
        """Warn (log and metric) when a canary serves production's version, or an arm another arm's: typically
        after a promotion made production and candidate the same version, so the comparison compares a model
        with itself. A role that fell back to production is reported by its problem instead."""
        with self._lock:
            slots = {role: model for role, (_, model) in self._slots.items()}
            failed = set(self._failed)
        for role, model in slots.items():
            if role == "production":
                continue
            # what the role is compared with: the canary with production, an arm with the other arms (an arm
            # serving production's version is the usual control)
            rivals = ["production"] if role == "canary" else [r for r in slots if r.startswith("arm:") and r != role]
            others = [other for other in rivals if slots[other] is model]
            same = bool(others) and role not in failed
            was = self._same_version.get(role, False)
            self.metrics.same_version.labels(role).set(int(same))
            self._same_version[role] = same
            if same and not was:
                log.warning("%s serves %s, the version %s also serves: it compares a model with itself",
                            role, model.key, " and ".join(others))

