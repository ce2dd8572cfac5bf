"""Multi-query scoring: (query, texts) requests from several clients scored in shared forward passes.

:meth:`Reranker.score` takes one query, so batching whole ``score`` calls could not share a forward pass
between requests. Instead this module splits :class:`~rankwise.rerank.CrossEncoderReranker` scoring into
its three steps and runs the expensive middle one on the pooled windows of every request in a round:

1. ``encode``: tokenize each request into (query, passage) windows exactly as ``score`` does;
2. ``score_round``: group *all* windows of the round by the reranker's own token budget
   (:func:`~rankwise.rerank.batching.run_batched`) and run the forward passes;
3. per request, aggregate windows to passages and calibrate, exactly as ``score`` does.

Because steps 1 and 3 are the reranker's own code, a request's scores equal ``reranker.score(query,
texts)`` up to float32 rounding from different padding widths (the same variation ``score`` itself has
when the same passage comes in a different candidate list; measured ~2e-9 on logits).

The three steps are the reranker's public hook ``encode_pairs`` / ``forward_windows`` /
``aggregate_windows`` (every backend of :class:`~rankwise.rerank.CrossEncoderReranker` has it; another
reranker can opt in by providing the same methods). Everything here runs on the batcher's single worker
thread: the tokenizer and model are never touched from two threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankwise.errors import ModelError
from rankwise.rerank.base import Reranker, RerankScores, logits_to_scores
from rankwise.rerank.batching import padding_ratio, run_batched

_HOOK = ("encode_pairs", "forward_windows", "aggregate_windows", "tokenizer", "batch_tokens", "mapper", "max_length",
         "long_documents")


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """One request's windows, ready to be pooled with others. ``split[i]``: text i exceeded max_length."""

    windows: list[list[int]]
    token_types: list[list[int]]
    owners: list[int]
    split: list[bool]
    num_texts: int

    @property
    def tokens(self) -> int:
        return sum(len(w) for w in self.windows)


@dataclass(slots=True)
class RequestScores:
    """One request's share of a round: its scores, which texts were split, and where its time went."""

    scores: RerankScores
    split: list[bool]
    queue_ms: float = 0.0
    inference_ms: float = 0.0


def supports_shared_batches(reranker: Reranker) -> bool:
    return all(hasattr(reranker, name) for name in _HOOK)


class PairBatchScorer:
    """Scores rounds of requests for one reranker. Not thread-safe by design: one worker thread owns it."""

    def __init__(self, reranker: Reranker) -> None:
        if not supports_shared_batches(reranker):
            raise ModelError(f"reranker '{reranker.name}' ({type(reranker).__name__}) cannot be served: the server "
                             "needs a cross-encoder with the encode_pairs/forward_windows/aggregate_windows hook "
                             "(CrossEncoderReranker)")
        self.reranker = reranker
        self._r: Any = reranker  # duck-typed: anything with the _HOOK methods and attributes
        self._pair_specials = int(self._r.tokenizer.num_special_tokens_to_add(pair=True))

    def encode(self, query: str, texts: Sequence[str], max_tokens_per_doc: int | None = None) -> EncodedRequest:
        """Tokenize one request (raises :class:`~rankwise.errors.QueryError` for a query that is too long)."""
        r = self._r
        if max_tokens_per_doc is not None:
            texts = [self._truncate(t, max_tokens_per_doc) for t in texts]
        windows, types, owners, _ = r.encode_pairs(query, texts)
        return EncodedRequest(windows, types, owners, self._split_flags(query, texts, owners), len(texts))

    def score_round(self, requests: Sequence[EncodedRequest]) -> list[RequestScores]:
        """Score every request of a round in shared, length-sorted forward passes."""
        r = self._r
        windows = [w for req in requests for w in req.windows]
        types = [t for req in requests for t in req.token_types]
        lengths = [len(w) for w in windows]
        logits, batches = run_batched(windows, lambda b: r.forward_windows([windows[i] for i in b], [types[i] for i in b]),
                                      r.batch_tokens, mapper=r.mapper)
        round_stats = {"round_requests": float(len(requests)), "round_windows": float(len(windows)),
                       "round_batches": float(len(batches)), "round_padding": padding_ratio(lengths, batches)}
        out: list[RequestScores] = []
        start = 0
        for req in requests:
            own = logits[start: start + len(req.windows)]
            start += len(req.windows)
            raw, calibrated = logits_to_scores(r.aggregate_windows(own, req.owners, req.num_texts))
            stats = {"pairs": float(req.num_texts), "windows": float(len(req.windows)), "tokens": float(req.tokens),
                     **round_stats}
            out.append(RequestScores(RerankScores(raw=raw, calibrated=calibrated, truncated=sum(req.split), stats=stats),
                                     req.split))
        return out

    def _truncate(self, text: str, max_tokens: int) -> str:
        """Cut ``text`` after its first ``max_tokens`` tokens (Cohere's ``max_tokens_per_doc``), at a token end."""
        enc = self._r.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]

    def _split_flags(self, query: str, texts: Sequence[str], owners: list[int]) -> list[bool]:
        """Per text: was it longer than one window? (``score`` only reports the count; the cache needs flags.)

        With maxp/mean/topk-mean every window is kept, so a text with two windows was split. truncate/firstp
        keep only the first window, so there the lengths decide: query + text + special tokens > max_length.
        """
        r = self._r
        if r.long_documents not in ("truncate", "firstp"):
            counts = np.bincount(np.asarray(owners, dtype=np.int64), minlength=len(texts))
            return [bool(c > 1) for c in counts]
        if not texts:
            return []
        q = len(r.tokenizer(query, add_special_tokens=False)["input_ids"])
        lengths = [len(ids) for ids in r.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        return [q + n + self._pair_specials > r.max_length for n in lengths]
