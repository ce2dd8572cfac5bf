"""Hard-negative mining: turn judged (query, relevant documents) into training groups.

Negatives are *mixed* on purpose. Drawing them only from BM25's top ranks teaches a cross-encoder that
lexical overlap means "not relevant" and it then demotes the relevant documents of a lexical candidate
list (measured here: nDCG@10 0.12 on SciFact, see the design notes). So each group takes negatives from
several first stages plus random in-corpus documents, skips every judged positive, and can drop
suspiciously high-scoring candidates (likely unjudged positives) with a margin filter.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from rankwise.errors import QueryError
from rankwise.index import Index
from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings
from rankwise.types import Candidate

NEGATIVE_SOURCES = ("bm25", "dense", "hybrid", "random")


@dataclass(frozen=True, slots=True)
class TrainingGroup:
    """One query with its judged positives and mined negatives (document texts, title first)."""

    query_id: str
    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    negative_ids: tuple[str, ...] = ()


def parse_negative_mix(spec: str) -> dict[str, int]:
    """``"bm25:3,dense:2,random:2"`` → ``{"bm25": 3, "dense": 2, "random": 2}``."""
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        if name not in NEGATIVE_SOURCES or not count.isdigit():
            raise QueryError(f"bad negative source '{part}'; use name:count with names {', '.join(NEGATIVE_SOURCES)}")
        mix[name] = int(count)
    if not mix or sum(mix.values()) == 0:
        raise QueryError("the negative mix must ask for at least one negative")
    return mix


def mine_groups(
    index: Index,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    mix: Mapping[str, int],
    depth: int = 30,
    skip_top: int = 0,
    false_negative_margin: float | None = None,
    rounds: int = 1,
    max_positives: int | None = None,
    seed: int = 42,
    with_titles: bool = True,
) -> list[TrainingGroup]:
    """Build ``rounds`` groups per judged query that has a positive in the index.

    Args:
        mix: negatives per source (``bm25``/``dense``/``hybrid`` candidates, ``random`` corpus documents).
        depth: mine first-stage negatives from the top ``depth`` candidates.
        skip_top: ignore the first ``skip_top`` candidates (they are the likeliest unjudged positives).
        false_negative_margin: drop a candidate whose first-stage score is at least this fraction of the
            best-scoring judged positive's (e.g. 0.95), a cheap guard against false negatives.
        rounds: groups per query, each with a fresh sample of negatives from the same candidate pools —
            more distinct negatives for multi-epoch training without retrieving again.
        max_positives: keep at most this many positives per query (NFCorpus judges ~38 per query, some
            hundreds): best grade first, then the best first-stage rank — the documents a reranker must
            order, and the ones with a visible link to the query. Dropped positives stay *judged*, so they
            are never drawn as negatives (letting them become negatives kept an NFCorpus reranker at chance).
        with_titles: put each document's title before its text, as the reranker sees it at search time.
    """
    if rounds < 1:
        raise QueryError(f"rounds must be at least 1 (got {rounds})")
    rng = random.Random(seed)
    stages = {m: FirstStage(index, FirstStageSettings(method=m)) for m in mix if m != "random" and mix[m] > 0}
    indexed = set(index.passage_doc_ids)
    all_doc_ids = sorted(indexed)
    groups: list[TrainingGroup] = []
    for qid in sorted(qrels):
        judged = qrels[qid]
        if qid not in queries or not any(grade > 0 and d in indexed for d, grade in judged.items()):
            continue  # checked before retrieving: a query none of whose positives is indexed costs nothing
        candidates = {method: stage.retrieve(queries[qid], depth) for method, stage in stages.items()}
        positives = _ranked_positives(judged, candidates.values())[:max_positives]
        positive_texts = [t for t in (_doc_text(index, d, with_titles) for d in positives) if t]
        if not positive_texts:
            continue
        pools: dict[str, list[str]] = {}
        for method, ranked in candidates.items():
            best_positive = max((c.score for c in ranked if c.passage.doc_id in judged), default=None)
            pools[method] = list(dict.fromkeys(
                c.passage.doc_id for c in ranked[skip_top:]
                if c.passage.doc_id not in judged
                and not (false_negative_margin and best_positive is not None
                         and c.score >= false_negative_margin * best_positive)))
        judged_negatives = sorted(d for d, grade in judged.items() if grade <= 0 and d in indexed)
        for _round in range(rounds):
            chosen = _sample_negatives(pools, mix, judged, all_doc_ids, rng, judged_negatives)
            groups.append(TrainingGroup(qid, queries[qid], tuple(positive_texts),
                                        tuple(_doc_text(index, d, with_titles) for d in chosen), tuple(chosen)))
    return groups


def title_groups(
    index: Index,
    *,
    mix: Mapping[str, int],
    depth: int = 30,
    exclude: Collection[str] = (),
    seed: int = 42,
) -> list[TrainingGroup]:
    """Pseudo-queries from the corpus itself: each document title is a query answered by its body.

    Why: a few dozen judged queries are too few for a cross-encoder to learn fine distinctions, and the
    titles of an enterprise corpus ("Parental Leave - United States" vs "... - Germany") name exactly
    the near-miss distinctions reranking is for. Titles are removed from every text of these groups —
    otherwise the positive would contain the query verbatim and teach copy-matching. Negatives are mined
    like :func:`mine_groups` (documents sharing the title count as positives, never as negatives).
    Only the corpus is used, no queries or judgements; ``exclude`` names documents that get no
    pseudo-query (they can still be drawn as negatives). Measured on the bundled knowledge base (68 judged
    train queries, 100 steps): validation nDCG@10 0.75 → 0.88 with title groups added; test nDCG@5 of
    hybrid + reranker (RRF) 0.81 → 0.84.
    """
    by_title: dict[str, list[str]] = {}
    for doc_id in sorted(set(index.passage_doc_ids) - set(exclude)):
        doc = index.docstore.document(doc_id)
        if doc is not None and doc.title.strip():
            by_title.setdefault(doc.title.strip(), []).append(doc_id)
    queries = {f"title:{ids[0]}": title for title, ids in by_title.items()}
    qrels = {f"title:{ids[0]}": dict.fromkeys(ids, 1) for ids in by_title.values()}
    return mine_groups(index, queries, qrels, mix=mix, depth=depth, seed=seed, with_titles=False)


def lead_sentence_groups(
    index: Index,
    *,
    mix: Mapping[str, int],
    depth: int = 30,
    limit: int | None = None,
    seed: int = 42,
) -> list[TrainingGroup]:
    """Pseudo-queries from the corpus itself: a document's first sentence is a query answered by the rest.

    Why: titles are one kind of free query; a lead sentence ("Vitamin D deficiency is common in …") is the
    other a corpus of abstracts or articles always has, longer and closer to how people ask. The sentence
    is cut from its own positive, so the model cannot learn to match a query copied into the passage; the
    title stays. Documents whose lead is under four words or is the whole text get none. ``limit``: at most
    this many documents, a seeded sample (a large corpus need not give every document a query).
    """
    leads: dict[str, tuple[str, str]] = {}  # document → (its lead, its positive text: title and the rest)
    for doc_id in sorted(set(index.passage_doc_ids)):
        doc = index.docstore.document(doc_id)
        if doc is None:
            continue
        match = _LEAD.match(doc.text.strip())
        if match and len(match.group(1).split()) >= 4 and match.group(2).strip():
            rest = match.group(2).strip()
            leads[doc_id] = (match.group(1).strip(), f"{doc.title}\n{rest}" if doc.title else rest)
    chosen = sorted(leads)
    if limit is not None and limit < len(chosen):
        chosen = sorted(random.Random(seed).sample(chosen, limit))
    queries = {f"lead:{d}": leads[d][0] for d in chosen}
    groups = mine_groups(index, queries, {f"lead:{d}": {d: 1} for d in chosen}, mix=mix, depth=depth, seed=seed)
    return [replace(g, positives=(leads[g.query_id.removeprefix("lead:")][1],)) for g in groups]


#: a document's first sentence (up to the first . ! or ? followed by a space) and what follows it
_LEAD = re.compile(r"(.+?[.!?])\s+(.*)", re.DOTALL)


def _ranked_positives(judged: Mapping[str, int], rankings: Iterable[Sequence[Candidate]]) -> list[str]:
    """Positive ids, best grade first, then best rank in any first-stage list, then id (deterministic)."""
    best_rank: dict[str, int] = {}
    for ranked in rankings:
        for rank, candidate in enumerate(ranked):
            doc_id = candidate.passage.doc_id
            best_rank[doc_id] = min(rank, best_rank.get(doc_id, rank))
    positives = [d for d, grade in judged.items() if grade > 0]
    return sorted(positives, key=lambda d: (-judged[d], best_rank.get(d, len(best_rank)), d))


def _sample_negatives(pools: Mapping[str, list[str]], mix: Mapping[str, int], judged: Container[str],
                      all_doc_ids: list[str], rng: random.Random, judged_negatives: Sequence[str] = ()) -> list[str]:
    """Distinct negatives: documents judged not relevant first (up to half the group: a human said no to
    them, usually after the first stage ranked them high — the hardest true negatives there are), then
    ``mix[source]`` from each first-stage pool and random corpus documents, to the same group size."""
    size = sum(mix.values())
    chosen: list[str] = rng.sample(list(judged_negatives), min(len(judged_negatives), max(1, size // 2)))
    for method, pool in pools.items():
        fresh = [d for d in pool if d not in chosen]
        chosen += rng.sample(fresh, min(mix[method], len(fresh)))
    for _ in range(mix.get("random", 0)):
        for _attempt in range(20):
            doc_id = rng.choice(all_doc_ids)
            if doc_id not in judged and doc_id not in chosen:
                chosen.append(doc_id)
                break
    return chosen[:size]


def _doc_text(index: Index, doc_id: str, with_title: bool = True) -> str:
    doc = index.docstore.document(doc_id)
    if doc is None:
        return ""
    return f"{doc.title}\n{doc.text}" if doc.title and with_title else doc.text
