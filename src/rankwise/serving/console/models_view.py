"""The models page's data, and the promotion gate and registry changes it runs: the registry read and
written as ``rankwise models`` does, with the signed-in key recorded as who asked."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rankwise.errors import ModelError
from rankwise.registry import Registry
from rankwise.serving.console.sessions import GateRun
from rankwise.serving.state import ServingState

#: a gate's pass is good for a promotion this long (after it, run the gate again)
GATE_TTL_S = 15 * 60


def models_view(registry_root: Path, *, admin: bool) -> dict[str, Any]:
    """Versions with their cards and aliases, and the history newest first; where the history lives and
    who changed it are shown to admin keys only (as the API shows model details only to them)."""
    registry = Registry(registry_root)
    by_version: dict[str, list[str]] = {}
    for alias, version in registry.aliases().items():
        by_version.setdefault(version, []).append(alias)
    versions = [{"version": v.version, "aliases": by_version.get(v.version, []), "sha256": v.weights_sha256,
                 "probes": len(registry.probe_events(v.version)), **card_summary(v.card.to_dict())}
                for v in reversed(registry.versions())]
    history = list(reversed(registry.history()))[:100]
    if not admin:
        history = [{k: v for k, v in event.items() if k != "by"} for event in history]
    return {"versions": versions, "history": history, "problems": registry.problems() if admin else [],
            "location": registry.history_location if admin else None}


def card_summary(card: dict[str, Any]) -> dict[str, Any]:
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


class Gatekeeper:
    """Runs the promotion gate of ``rankwise models promote`` on the server's index and gold set (one at a
    time: a second click while one runs is refused, not queued behind minutes of evaluation), and promotes
    only on a fresh pass against the production it was measured against."""

    def __init__(self, state: ServingState) -> None:
        self.state = state
        self._running = threading.Lock()

    @property
    def registry(self) -> Registry:
        assert self.state.config.load.registry is not None
        return Registry(self.state.config.load.registry)

    def run(self, version: str) -> GateRun:
        from rankwise.evaluation.goldset import GoldSet
        from rankwise.training.promotion import check_promotion

        state = self.state
        if state.index is None or state.config.monitor.goldset is None:
            raise ModelError("the gate evaluates on the server's gold set: start it with --index and "
                             "--monitor-goldset (or run `rankwise models promote`)")
        if not self._running.acquire(blocking=False):
            raise ModelError("a promotion gate is already running on this server; wait for its result")
        try:
            registry = self.registry
            production = registry.aliases().get("production")
            prepared = GoldSet.load(state.config.monitor.goldset).prepare(
                known_documents=set(state.index.passage_doc_ids))
            load = state.config.load
            decision = check_promotion(registry, state.index, prepared, candidate=version,
                                       first_stage=state.config.pipeline.first_stage or "hybrid",
                                       backend=load.backend, device=load.device)
        finally:
            self._running.release()
        return GateRun(decision.to_dict(), production)

    def promote(self, run: GateRun | None, version: str, by: str) -> str:
        """Promote ``version`` on ``run``'s pass; refused when it did not pass, is stale, or production
        moved since (the gate compared against another model)."""
        if run is None or run.decision["candidate"] != version or not run.decision["passed"]:
            raise ModelError("run the gate for this version first: only a version that passed it is promoted "
                             "from the console")
        if time.monotonic() - run.ran_at > GATE_TTL_S:
            raise ModelError("this gate result is more than 15 minutes old; run the gate again")
        registry = self.registry
        if registry.aliases().get("production") != run.production:
            raise ModelError(f"production moved to {registry.aliases().get('production')} after the gate compared "
                             f"against {run.production}; run the gate again")
        registry.promote(version, gate=run.decision, by=by)
        return version

    def rollback(self, by: str) -> str:
        return self.registry.rollback(by=by)
