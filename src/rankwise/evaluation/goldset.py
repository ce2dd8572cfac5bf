"""Gold sets: relevance judgements with their query texts, as one JSONL record per judgement.

``{"query_id": "q1", "query": "reset mfa", "document_id": "mfa-employee", "label": 2,
"annotator": "alice", "notes": "..."}`` — ``annotator`` and ``notes`` are optional; labels are integers
(binary 0/1 or graded, e.g. 0–3; labels ≤ 0 mean "not relevant", as in trec_eval).

A gold set is checked before it is used, and nothing is dropped silently:

* **errors** (nothing is evaluated): no judgements; the same query + document judged twice by the same
  annotator; a label outside the declared scale; one query id with two different texts;
* **warnings with counts**: queries without text and queries without any relevant judgement are left
  out (no system can be scored on them); pairs on which annotators tie are left out; judgements of
  documents that are not in the index are *kept* — they count as relevant documents that no system
  can find, so recall and nDCG are never inflated by dropping them.

Several annotators may judge the same pair; their labels are combined by majority vote
(:func:`majority_label`).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rankwise.evaluation.errors import EvaluationError
from rankwise.evaluation.runs import Qrels, read_trec_qrels, write_trec_qrels
from rankwise.jsonl import parse_json_object, read_lines
from rankwise.storage import atomic_writer

_EXAMPLES = 3


@dataclass(frozen=True, slots=True)
class Judgement:
    """One annotator's relevance label for one (query, document) pair."""

    query_id: str
    query: str
    document_id: str
    label: int
    annotator: str | None = None
    notes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSONL record; optional fields are left out when empty."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("annotator", "notes")}


@dataclass(frozen=True, slots=True)
class LabelScale:
    """The labels a gold set may use, declared as ``"0-3"``, ``"0,1,2"`` or ``"binary"``."""

    labels: frozenset[int]

    @classmethod
    def parse(cls, spec: str) -> LabelScale:
        text = spec.strip().lower()
        try:
            if text == "binary":
                return cls(frozenset({0, 1}))
            low, sep, high = text.partition("-") if not text.startswith("-") else ("", "", "")
            if sep and low.strip() and high.strip():
                lo, hi = int(low), int(high)
                if lo <= hi:
                    return cls(frozenset(range(lo, hi + 1)))
            elif text:
                return cls(frozenset(int(part) for part in text.split(",") if part.strip()))
        except ValueError:
            pass
        raise EvaluationError(f"label scale '{spec}' is not valid; write e.g. 0-3, 0,1,2 or binary")

    def __str__(self) -> str:
        return "{" + ",".join(str(v) for v in sorted(self.labels)) + "}"


def majority_label(labels: Iterable[int]) -> int | None:
    """The most frequent label, or ``None`` when the most frequent labels tie (to be resolved by a person).

    Ties are not broken by a rule (max, min, mean) because any rule would invent a judgement nobody
    made; a tie is flagged instead.
    """
    counts = Counter(labels).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


@dataclass(frozen=True)
class PreparedGoldSet:
    """A checked gold set, ready to evaluate: the qrels and queries kept, with counts and warnings."""

    name: str
    queries: dict[str, str]
    qrels: Qrels
    counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)

    def limit(self, n: int) -> PreparedGoldSet:
        """The first ``n`` queries (file order) — for quick, bounded runs."""
        if n <= 0:
            raise EvaluationError(f"--limit-queries must be positive (got {n})")
        return self.only(list(self.queries)[:n])

    def only(self, ids: Collection[str]) -> PreparedGoldSet:
        """The queries among ``ids``, in file order."""
        wanted = set(ids)
        keep = [q for q in self.queries if q in wanted]
        return PreparedGoldSet(self.name, {q: self.queries[q] for q in keep}, {q: self.qrels[q] for q in keep},
                               {**self.counts, "evaluated_queries": len(keep)}, list(self.warnings))


class GoldSet:
    """An ordered collection of :class:`Judgement` records (see the module docstring for the rules)."""

    def __init__(self, judgements: Iterable[Judgement], name: str = "goldset") -> None:
        self.judgements: tuple[Judgement, ...] = tuple(judgements)
        self.name = name

    def __len__(self) -> int:
        return len(self.judgements)

    def __repr__(self) -> str:
        return f"GoldSet({self.name!r}, judgements={len(self)}, queries={len(self.queries)})"

    @property
    def queries(self) -> dict[str, str]:
        """``{query_id: text}`` in order of first appearance."""
        out: dict[str, str] = {}
        for j in self.judgements:
            out.setdefault(j.query_id, j.query)
        return out

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def load(cls, path: str | Path) -> GoldSet:
        """Read a JSONL gold set; each malformed line is reported with its line number."""
        path = Path(path)
        if not path.is_file():
            raise EvaluationError(f"gold set '{path}' does not exist")
        judgements = []
        for lineno, line in read_lines(path, EvaluationError):  # bad bytes: one line with file and line number
            if line.strip():
                judgements.append(_parse_record(line, f"{path}:{lineno}"))
        return cls(judgements, name=path.stem)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_writer(path) as fh:
            for j in self.judgements:
                fh.write(json.dumps(j.to_dict(), ensure_ascii=False) + "\n")
        return path

    @classmethod
    def from_beir(cls, dataset_dir: str | Path, split: str) -> GoldSet:
        """Judgements of one split of a BEIR dataset (``queries.jsonl`` + ``qrels/<split>.tsv``)."""
        from rankwise.corpus.beir import load_qrels, load_queries

        queries, qrels = load_queries(dataset_dir), load_qrels(dataset_dir, split)
        return cls((Judgement(qid, queries.get(qid, ""), doc, label)
                    for qid, docs in qrels.items() for doc, label in docs.items()),
                   name=f"{Path(dataset_dir).name}/{split}")

    @classmethod
    def from_trec_qrels(cls, path: str | Path, queries: Mapping[str, str]) -> GoldSet:
        """Judgements from a TREC qrels file; query texts come from ``queries`` (missing ones are flagged)."""
        return cls((Judgement(qid, queries.get(qid, ""), doc, label) for qid, doc, label in read_trec_qrels(path)),
                   name=Path(path).stem)

    def save_trec_qrels(self, path: str | Path) -> Path:
        """Export as TREC qrels (one merged label per pair); refuses when annotators tie on a pair."""
        qrels, ties = self._merged()
        if ties:
            raise EvaluationError(f"{len(ties)} (query, document) pairs are tied between annotators "
                                  f"(e.g. {_pairs(ties)}); resolve them before exporting TREC qrels")
        return write_trec_qrels(qrels, path)

    # ------------------------------------------------------------------ checking
    def validate(self, scale: LabelScale | None = None) -> None:
        """Raise :class:`EvaluationError` for an empty set, duplicates, out-of-scale labels or conflicting texts."""
        if not self.judgements:
            raise EvaluationError(f"the gold set '{self.name}' has no judgements (empty split or file)")
        dupes = [key for key, n in Counter((j.query_id, j.document_id, j.annotator) for j in self.judgements).items()
                 if n > 1]
        if dupes:
            raise EvaluationError(
                f"{len(dupes)} duplicate judgements in '{self.name}' (same query, document and annotator), "
                f"e.g. {_pairs(dupes)}; keep one label per annotator and pair")
        if scale is not None:
            bad = [j for j in self.judgements if j.label not in scale.labels]
            if bad:
                raise EvaluationError(
                    f"{len(bad)} labels in '{self.name}' are outside the declared scale {scale}, e.g. "
                    + ", ".join(f"{j.label} ({j.query_id}/{j.document_id})" for j in bad[:_EXAMPLES])
                    + "; fix the labels or declare the right scale")
        texts: dict[str, set[str]] = defaultdict(set)
        for j in self.judgements:
            if j.query.strip():
                texts[j.query_id].add(j.query.strip())
        conflicting = [qid for qid, t in texts.items() if len(t) > 1]
        if conflicting:
            raise EvaluationError(f"{len(conflicting)} query ids have more than one text in '{self.name}', e.g. "
                                  f"{', '.join(conflicting[:_EXAMPLES])}; give each query one text")

    def prepare(self, *, scale: LabelScale | None = None, known_documents: Collection[str] | None = None,
                hidden_documents: Collection[str] = (), hidden_from: str = "") -> PreparedGoldSet:
        """Validate, merge annotators, and set aside what cannot be evaluated — with counts and warnings.

        ``known_documents`` (the index's document ids) enables the unknown-document check.
        ``hidden_documents``: documents the evaluated caller (``hidden_from``, e.g. "groups finance") may not
        see; their judgements are left out, since no search of that caller can or should return them.
        """
        self.validate(scale)
        qrels, ties = self._merged()
        hidden = set(hidden_documents)
        dropped = [(q, d) for q, docs in qrels.items() for d in docs if d in hidden]
        for q, d in dropped:
            del qrels[q][d]
        emptied = [q for q, docs in qrels.items() if not docs]
        qrels = {q: docs for q, docs in qrels.items() if docs}
        texts = {qid: text.strip() for qid, text in self.queries.items()}
        warnings: list[str] = []
        counts = {"judgements": len(self.judgements), "queries": len(texts), "tied_pairs": len(ties),
                  "annotators": len({j.annotator for j in self.judgements if j.annotator})}
        if ties:
            warnings.append(f"{len(ties)} (query, document) pairs are tied between annotators and were left out "
                            f"(e.g. {_pairs(ties)}); resolve them in the sheets and re-import")
        no_text = [qid for qid in qrels if not texts.get(qid)]
        counts["excluded_no_text"] = len(no_text)
        if no_text:
            warnings.append(f"{len(no_text)} of {len(qrels)} queries have no text and were left out "
                            f"(e.g. {', '.join(no_text[:_EXAMPLES])}); add their text to the gold set")
        counts["hidden_judgements"] = len(dropped)
        if dropped:
            warnings.append(f"{len(dropped)} judgements on {len({d for _, d in dropped})} documents hidden from "
                            f"{hidden_from or 'the caller'} were left out (no search of theirs may return them)"
                            + (f"; {len(emptied)} queries had no other judgement and were left out" if emptied else ""))
        counts["unknown_documents"] = counts["unknown_relevant"] = 0
        if known_documents is not None:
            judged = {doc for docs in qrels.values() for doc in docs}
            unknown = judged.difference(known_documents)
            if judged and unknown == judged:
                raise EvaluationError(f"none of the {len(judged)} judged documents of '{self.name}' is in the index "
                                      "(e.g. " + ", ".join(sorted(judged)[:_EXAMPLES])
                                      + "); is this the index of the gold set's corpus?")
            pairs = [(q, d, lab) for q, docs in qrels.items() if q not in no_text for d, lab in docs.items()
                     if d in unknown]
            counts["unknown_documents"] = len(pairs)
            counts["unknown_relevant"] = sum(1 for *_, lab in pairs if lab > 0)
            if pairs:
                warnings.append(
                    f"{len(pairs)} judgements ({counts['unknown_relevant']} relevant) reference {len(unknown)} documents "
                    "that are not in the index (e.g. " + ", ".join(sorted(unknown)[:_EXAMPLES]) + "); they stay "
                    "in the qrels as documents no system can find, so metrics are not inflated — rebuild the "
                    "index from the gold set's corpus if this is unexpected")
        no_relevant = [qid for qid, docs in qrels.items() if qid not in no_text and max(docs.values()) <= 0]
        counts["excluded_no_relevant"] = len(no_relevant)
        if no_relevant:
            warnings.append(f"{len(no_relevant)} of {len(qrels)} queries have no relevant judgement (all labels ≤ 0) "
                            f"and were left out (e.g. {', '.join(no_relevant[:_EXAMPLES])}): every metric is "
                            "undefined on them")
        skip = set(no_text) | set(no_relevant)
        kept = {qid: docs for qid, docs in qrels.items() if qid not in skip}
        if not kept:
            raise EvaluationError(f"the gold set '{self.name}' has no query that can be evaluated "
                                  "(each needs text and at least one relevant judgement)")
        counts["evaluated_queries"] = len(kept)
        return PreparedGoldSet(self.name, {qid: texts[qid] for qid in kept}, kept, counts, warnings)

    def _merged(self) -> tuple[Qrels, list[tuple[str, str]]]:
        """One label per pair (majority over annotators) and the pairs whose annotators tie."""
        labels: dict[tuple[str, str], list[int]] = defaultdict(list)
        for j in self.judgements:
            labels[(j.query_id, j.document_id)].append(j.label)
        qrels: Qrels = {}
        ties: list[tuple[str, str]] = []
        for (qid, doc), votes in labels.items():
            label = majority_label(votes)
            if label is None:
                ties.append((qid, doc))
            else:
                qrels.setdefault(qid, {})[doc] = label
        return qrels, ties


def parse_label(value: object, where: str) -> int:
    """An integer label from JSON/CSV input (``1``, ``1.0``, ``"2"``); anything else is an error."""
    if isinstance(value, bool):
        raise EvaluationError(f"{where}: label {value!r} must be an integer (e.g. 0, 1, 2)")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise EvaluationError(f"{where}: label {value!r} must be an integer (e.g. 0, 1, 2)") from None
    if not number.is_integer():
        raise EvaluationError(f"{where}: label {value!r} must be an integer (e.g. 0, 1, 2)")
    return int(number)


def _parse_record(line: str, where: str) -> Judgement:
    record = parse_json_object(line, where, EvaluationError)
    missing = [k for k in ("query_id", "query", "document_id", "label") if record.get(k) is None]
    if missing:
        raise EvaluationError(f"{where}: missing {', '.join(missing)} (a judgement needs query_id, query, "
                              "document_id and label)")
    optional = {k: str(record[k]) for k in ("annotator", "notes") if record.get(k) not in (None, "")}
    return Judgement(str(record["query_id"]), str(record["query"]), str(record["document_id"]),
                     parse_label(record["label"], where), **optional)


def _pairs(keys: list[tuple[str, ...]]) -> str:
    return ", ".join("/".join(str(p) for p in key if p is not None) for key in keys[:_EXAMPLES])
