"""Multi-query scoring: (query, texts) requests from several clients scored in rounds on one worker thread.

:meth:`Reranker.score` takes one query, so batching whole ``score`` calls could not share a forward pass
between requests. A :class:`~rankwise.rerank.base.WindowedReranker` exposes its three steps, and
:class:`PairBatchScorer` runs the expensive middle one on the pooled windows of every request in a round:

1. ``encode``: tokenize each request into (query, passage) windows exactly as ``score`` does;
2. ``score_round``: group *all* windows of the round by the reranker's own token budget
   (:func:`~rankwise.inference.batching.run_batched`) and run the forward passes;
3. per request, aggregate windows to passages and calibrate, exactly as ``score`` does.

Because steps 1 and 3 are the reranker's own code, a request's scores equal ``reranker.score(query,
texts)`` up to float32 rounding from different padding widths (the same variation ``score`` itself has
when the same passage comes in a different candidate list).

A reranker with only ``score`` is served by :class:`RequestScorer`: one ``score`` call per request, in
the same rounds (no shared forward passes, but the same queue, budgets, cache and metrics).
:func:`scorer_for` picks between them from the declared contract. Everything here runs on the batcher's
single worker thread: the tokenizer and model are never touched from two threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rankwise.errors import QueryError
from rankwise.inference.batching import padding_ratio, run_batched
from rankwise.rerank.base import EncodedPairs, Reranker, RerankScores, TokenBudgetExceeded, WindowedReranker


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """One request, ready for a round: its windows (windowed rerankers) or its texts (plain ones)."""

    query: str
    texts: Sequence[str]
    pairs: EncodedPairs | None

    @property
    def num_texts(self) -> int:
        return len(self.texts)

    @property
    def tokens(self) -> int:
        """The request's share of a round's token budget (characters / 4 for a reranker without windows)."""
        return self.pairs.tokens if self.pairs is not None else sum(len(t) for t in self.texts) // 4


@dataclass(slots=True)
class RequestScores:
    """One request's share of a round: its scores, which texts were split, and where its time went."""

    scores: RerankScores
    split: list[bool]
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    #: this request's share of its round's CPU time (process time, split by tokens)
    cpu_ms: float = 0.0


#: whether request ``i`` of a round is still wanted (its caller has not given up); checked between batches
Wanted = Callable[[int], bool]


def _always(_: int) -> bool:
    return True


class RoundScorer(Protocol):
    """What the micro-batcher drives: encode each request, then score a round of them.

    ``score_round`` returns ``None`` for a request that stopped being ``wanted`` before its scores were
    complete: its remaining forward passes are skipped, so an abandoned request stops costing the others.
    """

    reranker: Reranker

    def encode(self, query: str, texts: Sequence[str], max_tokens_per_doc: int | None = None, *,
               max_tokens: int | None = None) -> EncodedRequest:
        """Tokenize one request; more than ``max_tokens`` raises
        :class:`~rankwise.rerank.base.TokenBudgetExceeded` as early as the scorer can tell."""
        ...

    def score_round(self, requests: Sequence[EncodedRequest],
                    wanted: Wanted = _always) -> list[RequestScores | None]: ...


class PairBatchScorer:
    """Scores rounds of requests for a windowed reranker in shared, length-sorted forward passes."""

    def __init__(self, reranker: WindowedReranker) -> None:
        self.reranker = reranker

    def encode(self, query: str, texts: Sequence[str], max_tokens_per_doc: int | None = None, *,
               max_tokens: int | None = None) -> EncodedRequest:
        """Tokenize one request (raises :class:`~rankwise.errors.QueryError` for a query that is too long)."""
        return EncodedRequest(query, texts, self.reranker.encode_pairs(query, texts, max_tokens_per_doc,
                                                                      max_tokens=max_tokens))

    def score_round(self, requests: Sequence[EncodedRequest],
                    wanted: Wanted = _always) -> list[RequestScores | None]:
        r = self.reranker
        encoded = [req.pairs for req in requests if req.pairs is not None]
        windows = [w for enc in encoded for w in enc.windows]
        types = [t for enc in encoded for t in enc.token_types]
        owner = np.repeat(np.arange(len(encoded)), [len(enc.windows) for enc in encoded])
        lengths = [len(w) for w in windows]

        skipped = np.zeros(len(windows), dtype=bool)
        passes = [0]

        def forward(batch: list[int]) -> np.ndarray:
            # windows of requests whose callers gave up are not run (their requests get no scores)
            keep = np.array([wanted(int(owner[i])) for i in batch], dtype=bool)
            skipped[np.asarray(batch)[~keep]] = True
            out = np.zeros(len(batch), dtype=np.float32)
            if keep.any():
                passes[0] += 1
                out[keep] = r.forward_windows([windows[i] for i, k in zip(batch, keep) if k],
                                              [types[i] for i, k in zip(batch, keep) if k])
            return out

        logits, batches = run_batched(windows, forward, r.batch_tokens, mapper=r.mapper)
        round_stats = {"round_requests": float(len(requests)), "round_windows": float(len(windows)),
                       "round_batches": float(passes[0]), "round_padding": padding_ratio(lengths, batches)}
        out: list[RequestScores | None] = []
        start = 0
        for n, enc in enumerate(encoded):
            own = logits[start: start + len(enc.windows)]
            start += len(enc.windows)
            if skipped[start - len(enc.windows): start].any() or not wanted(n):
                out.append(None)
                continue
            raw = r.aggregate_windows(own, enc.owners, enc.num_texts)
            calibrated = r.calibrate(raw)
            stats = {"pairs": float(enc.num_texts), "windows": float(len(enc.windows)), "tokens": float(enc.tokens),
                     **round_stats}
            out.append(RequestScores(RerankScores(raw=raw, calibrated=calibrated, truncated=sum(enc.split), stats=stats),
                                     enc.split))
        return out


class RequestScorer:
    """Scores each request of a round with one ``score`` call: any :class:`Reranker` can be served."""

    def __init__(self, reranker: Reranker) -> None:
        self.reranker = reranker

    def encode(self, query: str, texts: Sequence[str], max_tokens_per_doc: int | None = None, *,
               max_tokens: int | None = None) -> EncodedRequest:
        if max_tokens_per_doc is not None:
            raise QueryError(f"reranker '{self.reranker.name}' has no tokenizer rankwise can use, so "
                             "max_tokens_per_doc is not supported; leave it out")
        encoded = EncodedRequest(query, texts, None)
        if max_tokens is not None and encoded.tokens > max_tokens:  # estimated from characters
            raise TokenBudgetExceeded(encoded.tokens, max_tokens)
        return encoded

    def score_round(self, requests: Sequence[EncodedRequest],
                    wanted: Wanted = _always) -> list[RequestScores | None]:
        out: list[RequestScores | None] = []
        for n, req in enumerate(requests):
            if not wanted(n):
                out.append(None)
                continue
            scores = self.reranker.score(req.query, req.texts)
            # which texts were split is only known as a count; none are flagged rather than guessed
            out.append(RequestScores(scores, [False] * req.num_texts))
        return out


def scorer_for(reranker: Reranker) -> PairBatchScorer | RequestScorer:
    """Shared forward passes when the reranker declares the windowed steps, else one ``score`` per request."""
    if isinstance(reranker, WindowedReranker):
        return PairBatchScorer(reranker)
    return RequestScorer(reranker)
