"""A reranker must score before it may serve: one small probe batch, checked.

Why: a model directory can load and still be unable to score — a tokenizer whose ids run past the
model's vocabulary, a head with the wrong number of outputs, weights that produce NaN. Loading proves
none of that, and such a model found out only when traffic reaches it fails every request it gets. So
``models add`` and ``models promote`` (forced or gated) score this batch first and refuse in one line,
and the server scores it while warming every model and keeps a failing canary or experiment arm off
traffic (its requests go to production, and ``/readyz`` says why).

The batch is short, long and empty-ish text on purpose: windowing, truncation and padding all run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rankwise.errors import ModelError
from rankwise.rerank.base import Reranker, RerankScores

PROBE_QUERY = "how do I reset my password"
PROBE_TEXTS = [
    "To reset your password, open Settings, choose Security and follow the link sent to your e-mail.",
    "Quarterly revenue grew 12% on subscription renewals.",
    " ".join(["Password resets expire after 24 hours; request a new link if yours has expired."] * 40),
    "?",
]


def check_scores(name: str, scores: RerankScores, expected: int) -> None:
    """Refuse scores that a reranker must never return: wrong count, non-finite, calibrated outside 0..1."""
    raw, calibrated = np.asarray(scores.raw), np.asarray(scores.calibrated)
    if raw.shape != (expected,) or calibrated.shape != (expected,):
        raise ModelError(f"{name} returned {raw.shape} raw and {calibrated.shape} calibrated scores for {expected} "
                         "texts; it cannot serve")
    if not (np.isfinite(raw).all() and np.isfinite(calibrated).all()):
        raise ModelError(f"{name} returned non-finite scores (NaN or inf) for a probe batch; it cannot serve")
    if calibrated.min() < 0 or calibrated.max() > 1:
        raise ModelError(f"{name} returned calibrated scores outside 0..1 for a probe batch; it cannot serve")


def probe(name: str, score: Callable[[str, Sequence[str]], RerankScores]) -> None:
    """Score the probe batch with ``score`` (a reranker's, or the server's path to it through its batcher)
    and check the result; any failure is one :class:`ModelError` naming ``name``."""
    try:
        scores = score(PROBE_QUERY, PROBE_TEXTS)
    except ModelError:
        raise
    except Exception as error:  # whatever breaks inside the model is the model's defect
        raise ModelError(f"{name} cannot score a probe batch ({type(error).__name__}: {str(error)[:200]})") from error
    check_scores(name, scores, len(PROBE_TEXTS))


def probe_reranker(reranker: Reranker) -> None:
    """:func:`probe` through ``reranker.score``."""
    probe(reranker.name, reranker.score)
