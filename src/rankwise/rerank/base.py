"""The reranker interface every backend implements.

A reranker scores (query, passage) pairs. It returns the model's raw logit *and* a calibrated 0..1
score: the sigmoid of the logit for single-logit models (softmax of the positive class for two-logit
models). Calibration is a fixed function of the logit, never a per-request min-max, so a score of 0.8
means the same thing in every response and can be thresholded or compared across queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


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
    """Anything that can score query–passage pairs. ``name``/``weights_sha256`` go into provenance."""

    name: str
    weights_sha256: str

    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        """Score ``texts`` against ``query``; output order matches input order."""
        ...
