"""Slices of a gold set: which queries a metric is averaged over when "nDCG@5 dropped" needs a *where*.

An average can hold steady while one kind of query collapses (long questions after a tokenizer change,
one product area after a re-index), and an average can drop because of one kind of query alone. Each run
therefore records per-slice means with their query counts, and the query ids of every slice, so that a
check can run the same paired test inside a slice as over all queries. Three kinds of slice:

* ``length`` — the query's length in words, bucketed 1–3, 4–7, 8–15, 16+ (short keyword queries and long
  natural-language questions fail differently);
* a document metadata key (``--slice-by category``) — the most common value of that key among the query's
  relevant documents, read from the index's docstore: the area of the corpus the query is about;
* ``tag`` — the gold set's own labels for its queries: an optional ``tags`` list of strings on the gold-set
  JSONL records (``{"query_id": "q1", ..., "tags": ["billing", "long-tail"]}``), unioned over a query's
  records; a query may carry several tags and then counts in each.

A query with no value for a slice (no relevant document has the key; an untagged query) is counted under
``(none)``, so the counts of a slice add up to the queries evaluated (tags excepted: a query counts once
per tag).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.evaluation.goldset import PreparedGoldSet
from rankwise.index import Index
from rankwise.jsonl import parse_json_object, read_lines
from rankwise.monitoring.history import MonitorError

LENGTH_SLICE = "length"
TAG_SLICE = "tag"
NO_VALUE = "(none)"
#: inclusive word-count ranges of the length buckets; the last is open-ended
LENGTH_BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 3), (4, 7), (8, 15), (16, None))

#: documents whose metadata one docstore query reads
_CHUNK = 500

#: ``{slice: {value: [query ids]}}``
Members = dict[str, dict[str, list[str]]]


def length_bucket(text: str) -> str:
    """``"4-7 words"`` and so on: the bucket of a query's word count."""
    words = len(text.split())
    for low, high in LENGTH_BUCKETS:
        if high is None or words <= high:
            return _bucket_label(low, high)
    raise AssertionError("the last bucket is open-ended")


def _bucket_label(low: int, high: int | None) -> str:
    return f"{low}+ words" if high is None else f"{low}-{high} words"


def metadata_slice_name(key: str) -> str:
    """The slice name of a metadata key: the key itself, unless it would collide with a built-in slice."""
    return f"doc.{key}" if key in (LENGTH_SLICE, TAG_SLICE) else key


def read_query_tags(path: str | Path) -> dict[str, list[str]]:
    """``{query_id: tags}`` from a gold-set JSONL's optional ``tags`` field (sorted, de-duplicated).

    The gold-set reader ignores fields it does not know, so tags live in the same file as the judgements
    without changing how the gold set is evaluated. Queries without tags are left out of the result.
    """
    tags: dict[str, set[str]] = defaultdict(set)
    for lineno, line in read_lines(path, MonitorError):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        record = parse_json_object(line, where, MonitorError)
        value = record.get("tags")
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
            raise MonitorError(f"{where}: 'tags' must be a list of non-empty strings, e.g. [\"billing\", "
                               "\"long-tail\"]; fix or remove it")
        if record.get("query_id") is None:
            raise MonitorError(f"{where}: a record with tags needs its query_id")
        tags[str(record["query_id"])].update(t.strip() for t in value)
    return {qid: sorted(values) for qid, values in tags.items()}


def check_slice_keys(index: Index, keys: Sequence[str]) -> list[str]:
    """``keys`` de-duplicated, each a metadata key some document of ``index`` has (else one line that lists
    the keys there are)."""
    known = index.docstore.metadata_keys
    wanted = list(dict.fromkeys(k.strip() for k in keys if k.strip()))
    unknown = [k for k in wanted if k not in known]
    if unknown:
        listing = ", ".join(sorted(known)) if known else "none (the documents carry no metadata)"
        raise MonitorError(f"--slice-by {unknown[0]}: no document of the index '{index.location}' has that "
                           f"metadata key; known keys: {listing}")
    return wanted


def slice_members(index: Index, goldset: PreparedGoldSet, *, slice_by: Sequence[str] = (),
                  tags: Mapping[str, Sequence[str]] | None = None) -> Members:
    """The query ids of every slice value: length buckets, ``slice_by`` metadata keys, and ``tags`` if any."""
    lengths = {q: [length_bucket(t)] for q, t in goldset.queries.items()}
    members: Members = {LENGTH_SLICE: _group(lengths, [_bucket_label(*bucket) for bucket in LENGTH_BUCKETS])}
    for key in check_slice_keys(index, slice_by):
        members[metadata_slice_name(key)] = _group(_metadata_values(index, goldset, key))
    if tags:
        members[TAG_SLICE] = _group({q: list(tags.get(q, ())) for q in goldset.queries})
    return members


def slice_means(per_query: Mapping[str, Mapping[str, float]], members: Members
                ) -> dict[str, dict[str, dict[str, float]]]:
    """``{slice: {value: {"n": count, metric: mean}}}`` over the queries of each slice value."""
    return {name: {value: {"n": len(qids), **{metric: float(np.mean([values[q] for q in qids]))
                                              for metric, values in per_query.items()}}
                   for value, qids in groups.items()}
            for name, groups in members.items()}


def _metadata_values(index: Index, goldset: PreparedGoldSet, key: str) -> dict[str, list[str]]:
    """Each query's most common ``key`` value among its relevant documents (ties: the smallest value)."""
    relevant = {qid: [d for d, label in docs.items() if label > 0] for qid, docs in goldset.qrels.items()}
    ids = sorted({d for docs in relevant.values() for d in docs})
    metadata: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), _CHUNK):  # bound SQLite's bound parameters
        metadata.update(index.docstore.metadata(ids[start:start + _CHUNK]))
    values: dict[str, list[str]] = {}
    for qid in goldset.queries:
        counts = Counter(v for d in relevant[qid] for v in _scalars(metadata.get(d, {}).get(key)))
        values[qid] = [min(counts.items(), key=lambda item: (-item[1], item[0]))[0]] if counts else []
    return values


def _scalars(value: Any) -> list[str]:
    """A metadata value as slice values: a list counts each element; missing (``None``) counts nothing."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [str(item) for item in items if item is not None and str(item).strip()]


def _group(values: Mapping[str, Sequence[str]], order: Sequence[str] = ()) -> dict[str, list[str]]:
    """``{query: [values]}`` → ``{value: [queries]}``, ``(none)`` for a query with none; values in ``order``
    first, then sorted, ``(none)`` last."""
    groups: dict[str, list[str]] = defaultdict(list)
    for qid, items in values.items():
        for value in items or [NO_VALUE]:
            groups[value].append(qid)
    rank = {value: i for i, value in enumerate(order)}
    return {value: groups[value]
            for value in sorted(groups, key=lambda v: (v == NO_VALUE, rank.get(v, len(rank)), v))}
