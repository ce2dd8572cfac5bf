"""A residual reranker: the first stage's dense cosine plus a correction a cross-encoder learned.

Why: a cross-encoder trained from a bare backbone on a few hundred judged queries starts with no notion
of relevance and can end up far below the first stage it reranks. Served as a residual, the score is
``correction + weight × (cosine − center)`` (see :class:`~rankwise.rerank.declaration.ResidualBase`): the
correction starts at exactly zero, so an untrained model ranks like the dense first stage, and every step
of training can only move the ranking where the judged data pushes it.

Both parts are scored here, by the same code in the library, evaluation and the server: the correction
by a :class:`~rankwise.rerank.cross_encoder.CrossEncoderReranker` (any backend, windows for long
passages), the cosine by a :class:`~rankwise.rerank.bi_encoder.BiEncoderReranker` over the declared
embedding model (whose passage-vector cache makes the base nearly free for pages seen before).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.errors import ModelError
from rankwise.inference.backends import BackendChoice
from rankwise.models import resolve_model, weights_sha256
from rankwise.rerank.base import RerankScores, ScoringKey
from rankwise.rerank.bi_encoder import BiEncoderReranker
from rankwise.rerank.cross_encoder import CrossEncoderReranker
from rankwise.rerank.declaration import Declaration, ResidualBase, read_declaration


def load_residual_base(base: ResidualBase) -> Path:
    """The declared embedding model's directory, refused in one line when its weights are not the ones the
    correction was trained against (a different base would silently shift every score)."""
    path = resolve_model(base.embedder)
    found = weights_sha256(path)
    if found != base.embedder_sha256:
        raise ModelError(f"the residual reranker was trained over embedding model '{base.embedder}' with weights "
                         f"sha256 {base.embedder_sha256[:12]}, but {path} holds {found[:12]}; install those weights "
                         "or retrain the reranker")
    return path


class ResidualReranker:
    """Scores ``correction + weight × (cosine − center)``; raw is that sum, calibrated its sigmoid.

    Args:
        model: a model directory trained by ``rankwise train --residual`` (it declares its base).
        backend, device, threads: for both the correction and the base embedder.
        name: display name for provenance.
        options: the cross-encoder's own options (``max_length``, ``long_documents``, ``batch_tokens``, …).
    """

    def __init__(self, model: str | Path, *, backend: BackendChoice = "auto", device: str = "cpu",
                 threads: int | None = None, name: str | None = None, declaration: Declaration | None = None,
                 **options: Any) -> None:
        declaration = declaration or read_declaration(resolve_model(model))
        base = declaration.residual
        if base is None:
            raise ModelError(f"'{model}' declares no residual base; load it as a CrossEncoderReranker")
        self.base = base
        self.correction = CrossEncoderReranker(model, backend=backend, device=device, threads=threads, name=name,
                                               declaration=declaration, **options)
        self.base_scorer = BiEncoderReranker(load_residual_base(base), backend=backend, device=device,
                                             threads=threads)
        self.name = self.correction.name
        self.weights_sha256 = self.correction.weights_sha256
        self.backend_decision = self.correction.backend_decision
        self.declared_fusion = self.correction.declared_fusion

    def __repr__(self) -> str:
        return f"ResidualReranker({self.name!r}, base={self.base.embedder!r}, weight={self.base.weight:.3g})"

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """The cross-encoder's own calibration (the sigmoid), applied to the summed score."""
        return self.correction.calibrate(raw)

    def scoring_key(self) -> ScoringKey:
        return {"kind": "residual", "correction": dict(self.correction.scoring_key()),
                "base": {**asdict(self.base), "scorer": dict(self.base_scorer.scoring_key())}}

    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        correction = self.correction.score(query, texts)
        if not texts:
            return correction
        cosine = self.base_scorer.score(query, texts)
        raw = (correction.raw + self.base.weight * (cosine.raw - self.base.center)).astype(np.float32)
        stats = {**correction.stats, "base_cached": cosine.stats.get("cached", 0.0)}
        return RerankScores(raw=raw, calibrated=self.calibrate(raw), truncated=correction.truncated, stats=stats)
