"""Drift alarms: has the metric dropped since the reference run, by more than noise and by more than allowed?

The rule, per metric (default ``nDCG@5``), comparing the latest run with a reference run:

* **alarm** — the mean over the queries present (and judged identically) in both runs dropped by more than
  ``max_drop`` *relative* to the reference (default 10%) **and** Fisher's paired randomization test on those
  queries' values is significant at ``alpha`` (default 0.05). Both are needed: a 12% drop on 15 queries can
  be one query's luck, and a significant 1% drop is not worth a page.
* **inconclusive** — fewer than ``min_queries`` paired queries (default 10), or no reference run yet. Never
  an alarm: too few queries cannot tell a regression from noise, and a cron job's first run must not page.
* **ok** — everything else.

The reference is the ``previous`` run, the run closest to 30 days before the latest (``30d``: the
month-over-month comparison), or the ``baseline`` pinned with ``rankwise monitor pin``. The same rule runs
inside every slice the runs recorded (query length, document category, gold-set tags), with Holm's
correction over the slices tested, since a dozen slices tested at 0.05 would otherwise page on noise;
a slice alarm makes the check an alarm too. A gold set that changed between the two runs is announced in
the warnings and compared only on the common, identically judged queries — never silently.

Each result lists the queries that got worse most and, as likely causes, everything the two records say
changed: index, embedding model, reranker version and weights, first stage, ``rerank_k``, fusion, backend,
gold set, rankwise version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

from rankwise.evaluation.metrics import parse_metric
from rankwise.evaluation.significance import holm, randomization_test
from rankwise.monitoring.history import (
    DEFAULT_NAME,
    MonitorError,
    MonitorHistory,
    MonitorRecord,
    json_safe,
    parse_time,
)
from rankwise.options import choose

Reference = Literal["previous", "30d", "baseline"]
Status = Literal["ok", "alarm", "inconclusive"]
REFERENCES: tuple[Reference, ...] = get_args(Reference)
#: exit code of ``rankwise monitor check`` on an alarm (0: ok or inconclusive, 2: an error)
ALARM_EXIT = 1
MONTH = timedelta(days=30)
#: a ``30d`` reference further than this from 30 days before the latest run is announced in the warnings
MONTH_TOLERANCE = timedelta(days=7)
#: per-query differences smaller than this count as unchanged
TIE_TOLERANCE = 1e-9
#: slice alarms named in the one-line summary (the worst first; the rest are counted)
SUMMARY_SLICES = 2


@dataclass(frozen=True, slots=True)
class QueryChange:
    """A query's metric value in the reference run and in the latest run."""

    query_id: str
    query: str
    reference_value: float
    latest_value: float

    @property
    def delta(self) -> float:
        return self.latest_value - self.reference_value


@dataclass(frozen=True, slots=True)
class Verdict:
    """The rule applied to one set of paired queries (all of them, or one slice's)."""

    status: Status
    n: int
    reference_mean: float
    latest_mean: float
    #: ``(latest - reference) / reference``; ``None`` when the reference mean is 0
    relative_change: float | None
    #: paired randomization test (two-sided); ``None`` when there are too few queries to test
    p_value: float | None


@dataclass(frozen=True, slots=True)
class SliceCheck:
    """The rule inside one slice value; the verdict's p-value is Holm-adjusted over the values tested."""

    slice: str
    value: str
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of :func:`check`: the status, the numbers behind it and what to look at first."""

    status: Status
    name: str
    metric: str
    reference_kind: Reference
    max_drop: float
    alpha: float
    min_queries: int
    latest_id: str
    latest_time: str
    reference_id: str | None
    reference_time: str | None
    verdict: Verdict | None
    #: the paired queries that got worse most, worst first
    worst: tuple[QueryChange, ...]
    likely_causes: tuple[str, ...]
    warnings: tuple[str, ...]
    slices: tuple[SliceCheck, ...]

    @property
    def exit_code(self) -> int:
        return ALARM_EXIT if self.status == "alarm" else 0

    @property
    def slice_alarms(self) -> tuple[SliceCheck, ...]:
        return tuple(s for s in self.slices if s.verdict.status == "alarm")

    def summary(self) -> str:
        """One line: status, the metric's move, the test, the reference, then slice alarms and causes."""
        head = f"{self.status.upper()} {self.metric}"
        v = self.verdict
        if v is None or self.reference_time is None:
            if self.reference_kind == "baseline":
                return f"{head}: the latest run of '{self.name}' is its pinned baseline; nothing to compare"
            return f"{head}: no earlier run of '{self.name}' to compare with yet"
        test = (f"{_p(v.p_value)}, {v.n} queries" if v.p_value is not None else
                f"only {v.n} paired queries, {self.min_queries} needed")
        move = f"{v.reference_mean:.3f} → {v.latest_mean:.3f} ({_percent(v.relative_change)}, {test})"
        parts = [f"{head} {move} vs {_REFERENCE_WORDS[self.reference_kind]} run {self.reference_time[:10]}"]
        alarms = sorted(self.slice_alarms, key=lambda s: s.verdict.relative_change or 0.0)
        parts += [f"slice {s.slice}={s.value} {_percent(s.verdict.relative_change)} "
                  f"({_p(s.verdict.p_value)} Holm, {s.verdict.n} queries)" for s in alarms[:SUMMARY_SLICES]]
        if len(alarms) > SUMMARY_SLICES:
            parts.append(f"{len(alarms) - SUMMARY_SLICES} more slice alarms")
        if self.status != "ok" or self.warnings:
            parts += self.likely_causes
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON data (NaN → ``null``) with the summary line first."""
        data = asdict(self)
        data["worst"] = [{**asdict(q), "delta": q.delta} for q in self.worst]
        return json_safe({"summary": self.summary(), **data})


_REFERENCE_WORDS: dict[Reference, str] = {"previous": "previous", "30d": "30-day", "baseline": "baseline"}


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}".replace("-", "−")


def _p(value: float | None) -> str:
    if value is None:
        return "p=n/a"
    return "p<0.001" if value < 0.001 else f"p={value:.3f}"


# ---------------------------------------------------------------------------------------------- the rule
@dataclass(frozen=True, slots=True)
class AlarmRule:
    """When a drop pages: more than ``max_drop`` relative, significant at ``alpha``, on ``min_queries`` or
    more paired queries (fewer is inconclusive)."""

    max_drop: float = 0.10
    alpha: float = 0.05
    min_queries: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.max_drop < 1:
            raise MonitorError(f"--max-drop must be a share below 100% (got {self.max_drop}); write e.g. 10%")
        if not 0 < self.alpha < 1:
            raise MonitorError(f"--alpha must be between 0 and 1 (got {self.alpha}); 0.05 is usual")
        if self.min_queries < 2:
            raise MonitorError(f"--min-queries must be at least 2 (got {self.min_queries}); a paired test "
                               "needs pairs")

    def judge(self, reference: dict[str, float], latest: dict[str, float], p_value: float | None = None
              ) -> Verdict:
        """The rule on paired per-query values (``{query_id: value}``, the same keys in both).

        ``p_value`` replaces the test's own p-value (a Holm-adjusted one, for slices).
        """
        qids = sorted(reference)
        ref = [reference[q] for q in qids]
        new = [latest[q] for q in qids]
        ref_mean = math.fsum(ref) / len(ref) if ref else math.nan
        new_mean = math.fsum(new) / len(new) if new else math.nan
        relative = (new_mean - ref_mean) / ref_mean if ref and ref_mean > 0 else None
        if len(qids) < self.min_queries:
            return Verdict("inconclusive", len(qids), ref_mean, new_mean, relative, None)
        p = randomization_test(new, ref) if p_value is None else p_value
        dropped = relative is not None and -relative > self.max_drop
        status: Status = "alarm" if dropped and p < self.alpha else "ok"
        return Verdict(status, len(qids), ref_mean, new_mean, relative, p)


def paired_queries(reference: MonitorRecord, latest: MonitorRecord, metric: str
                   ) -> tuple[list[str], list[str]]:
    """The queries to compare (present and judged identically in both runs) and warnings about the rest."""
    ref, new = reference.per_query[metric], latest.per_query[metric]
    common = [q for q in new if q in ref and reference.query_digests.get(q) == latest.query_digests.get(q)]
    if reference.goldset_fingerprint == latest.goldset_fingerprint:
        return common, []
    dropped = sum(1 for q in ref if q not in new)
    added = sum(1 for q in new if q not in ref)
    relabelled = sum(1 for q in new if q in ref and q not in common)
    before = f"'{reference.goldset_name}' {reference.goldset_fingerprint[:8]}…"
    after = f"'{latest.goldset_name}' {latest.goldset_fingerprint[:8]}…"
    return common, [(f"the gold set changed between the runs ({before} → {after}): comparing only the "
                     f"{len(common)} queries judged identically in both ({dropped} dropped, {added} added, "
                     f"{relabelled} with changed text or judgements); pin a new baseline once the new gold "
                     "set is the yardstick")]


def likely_causes(reference: MonitorRecord, latest: MonitorRecord) -> list[str]:
    """Everything the two records say changed, in words, most consequential first."""
    a, b = reference, latest
    causes: list[str] = []
    if a.index_fingerprint != b.index_fingerprint:
        detail = f"{a.index_fingerprint[:8]}…→{b.index_fingerprint[:8]}…"
        if a.num_documents != b.num_documents:
            detail += f", {a.num_documents}→{b.num_documents} documents"
        if a.index_path != b.index_path:
            detail += f", {a.index_path} → {b.index_path}"
        causes.append(f"index changed ({detail})")
    if (a.embedding_model, a.embedding_sha256) != (b.embedding_model, b.embedding_sha256):
        causes.append(f"embedding model changed ({_model(a.embedding_model, a.embedding_sha256)} → "
                      f"{_model(b.embedding_model, b.embedding_sha256)})")
    causes += _reranker_changes(a, b)
    for label, before, after in (("first stage", a.first_stage, b.first_stage),
                                 ("retrieve_k", a.retrieve_k, b.retrieve_k),
                                 ("rerank_k", a.rerank_k, b.rerank_k),
                                 ("rerank fusion", a.rerank_fusion, b.rerank_fusion),
                                 ("reranker backend", a.backend, b.backend)):
        if before != after:
            causes.append(f"{label} changed ({before} → {after})")
    if a.goldset_fingerprint != b.goldset_fingerprint:
        causes.append(f"gold set changed ({a.goldset_fingerprint[:8]}…→{b.goldset_fingerprint[:8]}…, "
                      f"{a.num_queries}→{b.num_queries} queries)")
    if a.rankwise_version != b.rankwise_version:
        causes.append(f"rankwise changed ({a.rankwise_version} → {b.rankwise_version})")
    nothing = "no recorded change (same index, models, settings and gold set): look at the worst queries"
    return causes or [nothing]


def _reranker_changes(reference: MonitorRecord, latest: MonitorRecord) -> list[str]:
    before, after = reference.reranker_version, latest.reranker_version
    weights = f"{_short(reference.reranker_sha256)} → {_short(latest.reranker_sha256)}"
    if before is None and after is None:
        return []
    if before is None:
        return [f"reranker added ({after})"]
    if after is None:
        return [f"reranker removed (was {before})"]
    if before != after:
        return [f"reranker changed ({before} → {after}, weights {weights})"]
    if reference.reranker_sha256 != latest.reranker_sha256:
        return [f"reranker weights changed under the same name {after} ({weights})"]
    return []


def _short(digest: str | None) -> str:
    return "none" if digest is None else f"{digest[:8]}…"


def _model(name: str | None, digest: str | None) -> str:
    return "none" if name is None else f"{name} {_short(digest)}"


# ---------------------------------------------------------------------------------------------- references
def pick_reference(records: Sequence[MonitorRecord], position: int, kind: Reference,
                   baseline: MonitorRecord | None) -> tuple[MonitorRecord | None, list[str]]:
    """The reference of ``records[position]`` (records oldest first) and warnings about the choice."""
    latest = records[position]
    if kind == "baseline":
        return (None if baseline is None or baseline.id == latest.id else baseline), []
    earlier = records[:position]
    if not earlier:
        return None, []
    if kind == "previous":
        return earlier[-1], []
    target = parse_time(latest.time) - MONTH
    chosen = min(earlier, key=lambda r: (abs(parse_time(r.time) - target), r.time))
    if abs(parse_time(chosen.time) - target) <= MONTH_TOLERANCE:
        return chosen, []
    age = (parse_time(latest.time) - parse_time(chosen.time)).days
    return chosen, [(f"no run near 30 days before the latest: comparing with the closest one, {age} days "
                    f"earlier ({chosen.time[:10]})")]


# ---------------------------------------------------------------------------------------------- checks
def check(history: MonitorHistory, *, name: str = DEFAULT_NAME, reference: str = "previous",
          metric: str = "nDCG@5", max_drop: float = 0.10, alpha: float = 0.05, min_queries: int = 10,
          slices: bool = True, worst: int = 10) -> CheckResult:
    """Compare monitor ``name``'s latest run with its reference (see the module docstring for the rule)."""
    kind = choose(reference, REFERENCES, "reference")
    rule = AlarmRule(max_drop, alpha, min_queries)
    metric = str(parse_metric(metric))
    records = history.records(name)
    if not records:
        known = ", ".join(history.names()) or "none"
        raise MonitorError(f"no runs named '{name}' in the monitoring history (names recorded: {known}); "
                           "pass --name, or record a run with `rankwise monitor run --name NAME`")
    baseline = history.baseline(name) if kind == "baseline" else None
    if kind == "baseline" and baseline is None:
        raise MonitorError(f"no baseline pinned for '{name}'; pin a run with `rankwise monitor pin RUN_ID` "
                           "(ids: `rankwise monitor list`) or use --reference previous")
    latest = records[-1]
    _require_metric(latest, metric)
    ref, warnings = pick_reference(records, len(records) - 1, kind, baseline)

    def result(status: Status, verdict: Verdict | None = None, changes: Sequence[QueryChange] = (),
               causes: Sequence[str] = (), notes: Sequence[str] = (), slice_checks: Sequence[SliceCheck] = ()
               ) -> CheckResult:
        return CheckResult(status=status, name=name, metric=metric, reference_kind=kind, max_drop=max_drop,
                           alpha=alpha, min_queries=min_queries, latest_id=latest.id, latest_time=latest.time,
                           reference_id=ref.id if ref else None, reference_time=ref.time if ref else None,
                           verdict=verdict, worst=tuple(changes), likely_causes=tuple(causes),
                           warnings=tuple(warnings) + tuple(notes), slices=tuple(slice_checks))

    if ref is None:
        return result("inconclusive")
    _require_metric(ref, metric)
    qids, gold_warnings = paired_queries(ref, latest, metric)
    before = {q: ref.per_query[metric][q] for q in qids}
    after = {q: latest.per_query[metric][q] for q in qids}
    verdict = rule.judge(before, after)
    slice_checks = _slices(ref, latest, metric, set(qids), rule) if slices else []
    alarmed = verdict.status == "alarm" or any(s.verdict.status == "alarm" for s in slice_checks)
    changes = sorted((QueryChange(q, latest.query_texts.get(q, ""), before[q], after[q]) for q in qids
                      if after[q] - before[q] < -TIE_TOLERANCE), key=lambda c: (c.delta, c.query_id))
    return result("alarm" if alarmed else verdict.status, verdict, changes[:worst],
                  likely_causes(ref, latest), gold_warnings, slice_checks)


def statuses(records: Sequence[MonitorRecord], *, reference: str = "previous", metric: str = "nDCG@5",
             baseline: MonitorRecord | None = None, max_drop: float = 0.10, alpha: float = 0.05,
             min_queries: int = 10) -> list[tuple[MonitorRecord | None, Status]]:
    """Each record's reference and status under the rule (all queries, no slices), for history plots."""
    kind = choose(reference, REFERENCES, "reference")
    rule = AlarmRule(max_drop, alpha, min_queries)
    metric = str(parse_metric(metric))
    out: list[tuple[MonitorRecord | None, Status]] = []
    for position, record in enumerate(records):
        ref, _ = pick_reference(records, position, kind, baseline)
        if ref is None or metric not in ref.per_query or metric not in record.per_query:
            out.append((ref, "inconclusive"))
            continue
        qids, _ = paired_queries(ref, record, metric)
        verdict = rule.judge({q: ref.per_query[metric][q] for q in qids},
                             {q: record.per_query[metric][q] for q in qids})
        out.append((ref, verdict.status))
    return out


def _slices(reference: MonitorRecord, latest: MonitorRecord, metric: str, paired: set[str],
            rule: AlarmRule) -> list[SliceCheck]:
    """The rule in every slice value, Holm-corrected over the values tested.

    Membership is the reference run's: a query's document category is read from the index, and after an
    index change its relevant documents may be gone — the query still belongs where it belonged.
    """
    ref, new = reference.per_query[metric], latest.per_query[metric]
    groups = [(name, value, [q for q in qids if q in paired])
              for name, values in reference.slice_members.items() for value, qids in values.items()]
    pairs = [({q: ref[q] for q in qids}, {q: new[q] for q in qids}) for _, _, qids in groups]
    raw = [rule.judge(before, after) for before, after in pairs]
    tested = {i: v.p_value for i, v in enumerate(raw) if v.p_value is not None}
    adjusted = dict(zip(tested, holm(list(tested.values())), strict=True))
    return [SliceCheck(name, value, rule.judge(*pairs[i], p_value=adjusted[i]) if i in adjusted else raw[i])
            for i, (name, value, _) in enumerate(groups)]


def _require_metric(record: MonitorRecord, metric: str) -> None:
    if metric not in record.per_query:
        raise MonitorError(f"run {record.id[:12]} ({record.time[:10]}) did not record {metric} (it has "
                           f"{', '.join(record.per_query)}); pass one of those with --metric")
