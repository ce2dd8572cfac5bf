"""The reranker contracts: :class:`Reranker` (what any model must provide) and :class:`WindowedReranker`
(the extension the serving micro-batcher uses to pool several requests into shared forward passes).

A reranker scores (query, passage) pairs. It returns the model's raw score *and* a calibrated 0..1
score: for a cross-encoder the sigmoid of the logit (softmax of the positive class for two-logit models),
for a bi-encoder ``(1 + cosine) / 2``. Calibration is a fixed function of the raw score that the reranker
owns, never a per-request min-max, so a score of 0.8 means the same thing in every response and can be
thresholded or compared across queries.

The contract that keeps the library and the server in agreement (:class:`ScoringDeclaring`):

- ``calibrate(raw)`` is the reranker's own function from raw to calibrated; whoever assembles raw scores
  outside ``score`` (the server's micro-batcher pooling windows of several requests) calibrates with it;
- ``scoring_key()`` lists everything that can change a score — kind, weights, backend, lengths, windowing,
  aggregation — so a score cache keyed on it can never answer with another configuration's scores;
- one ordering rule, :func:`rank_order` (raw descending, ties by input position), for the library, the
  server and the adapters.

A score-only reranker (just ``score``) still works everywhere: :func:`scoring_key` then keys on its class
and weights hash, and the cache stores exactly the calibrated scores it returned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from rankwise.errors import QueryError
from rankwise.inference.backends import BackendDecision, Mapper
from rankwise.options import RerankFusion


@dataclass(frozen=True, slots=True)
class RerankScores:
    raw: np.ndarray
    calibrated: np.ndarray
    truncated: int = 0
    stats: dict[str, float] = field(default_factory=dict)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def logits_to_scores(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, calibrated)`` from a ``(n, 1)`` or ``(n, 2)`` logit matrix."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim == 1 or logits.shape[1] == 1:
        raw = logits.reshape(-1)
    elif logits.shape[1] == 2:  # binary classifier: log-odds of the positive class
        raw = logits[:, 1] - logits[:, 0]
    else:
        raise ValueError(f"a reranker needs 1 or 2 output logits, the model has {logits.shape[1]}")
    return raw, sigmoid(raw)


@runtime_checkable
class Reranker(Protocol):
    """What any reranking model must provide: ``name`` and ``weights_sha256`` go into provenance, ``score``
    returns raw and calibrated scores in input order. Pipelines, evaluation and the server accept any such object.
    """

    name: str
    weights_sha256: str

    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        """Score ``texts`` against ``query``; output order matches input order."""
        ...


#: a reranker's declared scoring settings: JSON scalars (or nested mappings of them), see ``scoring_key``
ScoringKey = Mapping[str, object]


@runtime_checkable
class ScoringDeclaring(Protocol):
    """A reranker that declares how its scores are made: its calibration and the settings they depend on."""

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """The calibrated 0..1 scores for raw scores (a fixed function: the same raw, the same answer)."""
        ...

    def scoring_key(self) -> ScoringKey:
        """Everything that can change a score for a pair: kind, weights sha256, backend, lengths, windows."""
        ...


def scoring_key(reranker: Reranker) -> str:
    """A digest of what determines ``reranker``'s score for a pair (the score cache's namespace).

    A :class:`ScoringDeclaring` reranker's own declaration; any other is keyed by its class and weights
    hash only, so two such rerankers with the same weights but different settings must have different names
    in their ``weights_sha256`` to be cached apart.
    """
    declared: dict[str, object] = {"class": f"{type(reranker).__module__}.{type(reranker).__qualname__}",
                                   "weights_sha256": reranker.weights_sha256}
    if isinstance(reranker, ScoringDeclaring):
        declared["settings"] = dict(reranker.scoring_key())
    payload = json.dumps(declared, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def rank_order(raw: Sequence[float] | np.ndarray) -> list[int]:
    """Input positions best first: raw score descending, ties by input position (one rule everywhere)."""
    values = np.asarray(raw, dtype=np.float64)
    return [int(i) for i in np.lexsort((np.arange(values.size), -values))]


class TokenBudgetExceeded(QueryError):
    """A request's windows come to more tokens than its caller allows (``tokens``: at least this many)."""

    def __init__(self, tokens: int, budget: int) -> None:
        super().__init__(f"the documents come to more than {budget} tokens once windowed for the model "
                         f"(at least {tokens}); send fewer or shorter documents")
        self.tokens, self.budget = tokens, budget


@dataclass(frozen=True, slots=True)
class EncodedPairs:
    """One request's (query, text) pairs as model windows, ready to be pooled with other requests' windows.

    ``owners[j]``: the text window ``j`` belongs to; ``split[i]``: text ``i`` was longer than one window.
    """

    windows: list[list[int]]
    token_types: list[list[int]]
    owners: list[int]
    split: list[bool]

    @property
    def num_texts(self) -> int:
        return len(self.split)

    @property
    def tokens(self) -> int:
        return sum(len(w) for w in self.windows)


@runtime_checkable
class BackendReporting(Protocol):
    """A reranker that says which inference backend produces its scores and why (recorded in provenance)."""

    backend_decision: BackendDecision


@runtime_checkable
class WindowedReranker(Reranker, BackendReporting, Protocol):
    """A reranker whose scoring splits into encode → forward (per batch) → aggregate.

    ``score`` is exactly these three steps; exposing them lets a caller run the expensive middle step on
    the pooled windows of several requests (the server's micro-batcher). A reranker without them is still
    servable: the server then calls ``score`` once per request.
    """

    #: token budget of one forward pass (bounds memory whatever the number of candidates)
    batch_tokens: int
    #: runs several batches at once on a multi-stream runner, else ``None``
    mapper: Mapper | None

    def encode_pairs(self, query: str, texts: Sequence[str], max_text_tokens: int | None = None, *,
                     max_tokens: int | None = None) -> EncodedPairs:
        """Tokenize into windows; ``max_text_tokens`` first cuts each text after that many tokens.

        Raises:
            TokenBudgetExceeded: the windows come to more than ``max_tokens``; raised as soon as that is
                known, before the remaining texts are tokenized.
        """
        ...

    def forward_windows(self, ids: list[list[int]], types: list[list[int]]) -> np.ndarray:
        """One batch of windows → one raw logit per window."""
        ...

    def aggregate_windows(self, logits: np.ndarray, owners: list[int], n: int) -> np.ndarray:
        """One logit per text from its windows' logits."""
        ...

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated scores for the aggregated raw scores (what ``score`` returns beside them)."""
        ...


@runtime_checkable
class PassageCaching(Protocol):
    """A reranker that keeps per-passage work between calls (a bi-encoder's passage vectors), so the first
    query that meets a passage pays for it and later ones do not. Whoever times it must say which it timed:
    evaluation empties the cache before each system, so every system is timed cold, alike."""

    def clear_cache(self) -> None:
        """Forget what was kept (scores do not change; only the next calls' cost does)."""
        ...


@runtime_checkable
class FusionDeclaring(Protocol):
    """A reranker whose training chose, on its held-out queries, how its ranks combine with the first stage's
    (``none``: by the reranker alone; ``rrf``: reciprocal rank fusion with the first stage's ranks)."""

    declared_fusion: RerankFusion


def declared_fusion(reranker: Reranker | None) -> RerankFusion:
    """The ordering a pipeline uses when none is asked for: the model's declared one, else the reranker alone."""
    return reranker.declared_fusion if isinstance(reranker, FusionDeclaring) else "none"


def backend_label(reranker: Reranker | None) -> str:
    """What provenance and metrics say produced a reranker's scores: its backend and why, ``custom`` for a
    reranker that does not declare one, ``none`` without a reranker."""
    if reranker is None:
        return "none"
    return str(reranker.backend_decision) if isinstance(reranker, BackendReporting) else "custom"
