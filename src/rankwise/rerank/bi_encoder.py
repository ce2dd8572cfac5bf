"""A reranker that re-embeds the candidates with a bi-encoder fine-tuned on the domain.

Why a bi-encoder can be the better second stage: a cross-encoder trained from a bare backbone starts with
no notion of relevance and, from a few dozen judged queries, learns to recognise the pages it was trained
on rather than how a query's attribute maps to a page's (measured on the demo knowledge base, see
``benchmarks/README.md``). A copy of the embedding model starts at the first stage's own ranking and
only has to learn the residual — which sibling a period, version, plan or error code points to — so the
same few minutes of CPU training go much further. It scores by cosine similarity, exactly like the first
stage, but with weights tuned to the domain and on the candidates only.

Scores: ``raw`` is the cosine similarity in [-1, 1]; ``calibrated`` is ``(1 + cosine) / 2``, a fixed
function, so like a cross-encoder's sigmoid it means the same in every response.

Passages are embedded independently of the query, so their vectors are kept in a bounded LRU cache
keyed by the passage text: a knowledge base's pages come back as candidates for many queries, and a
cached page costs a dot product instead of a forward pass. Only the query is embedded on every call.

A bi-encoder trained with frozen passages (``rankwise train --freeze-passages``, the recipe's choice for
hundreds of judged queries) declares a ``passage_encoder`` subdirectory: passages are embedded by that
frozen copy of the first stage's model and only queries by the tuned one, which is how it was trained.

A trained model directory declares its kind in ``rankwise_reranker.json`` (see
:mod:`rankwise.rerank.declaration`); directories without it are cross-encoders, as every hub reranker is.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rankwise.errors import QueryError
from rankwise.index.dense import Embedder
from rankwise.inference.backends import BackendChoice
from rankwise.inference.calibration import calibration_digest
from rankwise.models import resolve_model, weights_sha256
from rankwise.options import RerankFusion
from rankwise.rerank.base import RerankScores, ScoringKey
from rankwise.rerank.declaration import Declaration, read_declaration


class BiEncoderReranker:
    """Scores (query, passage) pairs by the cosine of their embeddings under a domain-tuned bi-encoder.

    Args:
        model: a model directory trained by ``rankwise train --architecture bi-encoder`` (any
            sentence-transformers embedding model works).
        backend: as for the embedder; ``auto`` picks the fastest for this CPU.
        max_length: tokens of each passage that are embedded (default: the model's own limit).
        name: display name for provenance.
        cache_size: passage vectors kept (LRU; 384-dim float32 is 1.5 kB each); 0 turns the cache off.
    """

    def __init__(self, model: str | Path, *, backend: BackendChoice = "auto", max_length: int | None = None,
                 device: str = "cpu", threads: int | None = None, name: str | None = None,
                 cache_size: int = 20_000, declaration: Declaration | None = None) -> None:
        if max_length is not None and max_length < 16:
            raise QueryError(f"max_length must be at least 16 tokens (got {max_length})")
        if cache_size < 0:
            raise QueryError(f"cache_size must be 0 or more (got {cache_size})")
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.path = resolve_model(model)
        self.weights_sha256 = weights_sha256(self.path)
        # a loader that already read the declaration (to choose the kind) hands it over
        declared = declaration or read_declaration(self.path)
        self.declared_fusion: RerankFusion = declared.fusion or "none"
        self.embedder = Embedder(str(self.path), backend=backend, device=device, threads=threads,
                                 max_seq_length=max_length, reranking=True)
        #: what embeds the passages: the tuned model itself, or the frozen passage encoder it declares
        self.passage_embedder = self.embedder if declared.passage_encoder is None else Embedder(
            str(self.path / declared.passage_encoder), backend=backend, device=device, threads=threads,
            max_seq_length=max_length, reranking=True)
        self.backend_decision = self.embedder.backend_decision
        backend_name = self.backend_decision.backend
        self.name = name or (str(model) if backend_name == "torch" else f"{model}[{backend_name}]")

    def __repr__(self) -> str:
        return f"BiEncoderReranker({self.name!r})"

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """``(1 + cosine) / 2``: a cosine of 0.7 is 0.85 everywhere."""
        return ((1.0 + np.asarray(raw, dtype=np.float32)) / 2.0).astype(np.float32)

    def scoring_key(self) -> ScoringKey:
        info = self.embedder.info
        # the weights hash covers the passage encoder too (it lives inside the model directory)
        key: dict[str, object] = {"kind": "bi-encoder", "weights_sha256": self.weights_sha256,
                                  "backend": info.backend, "max_length": info.max_seq_length}
        if self.passage_embedder is not self.embedder:
            key["passage_max_length"] = self.passage_embedder.info.max_seq_length
        if info.backend == "openvino-int8":  # static int8 scales come from the calibration windows
            key["int8_calibration"] = calibration_digest(self.path)
        return key

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        if not texts:
            empty = np.empty(0, dtype=np.float32)
            return RerankScores(raw=empty, calibrated=empty)
        keys = [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts]
        with self._lock:
            cached = {k: self._cache[k] for k in keys if k in self._cache}
            for k in cached:
                self._cache.move_to_end(k)
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in cached}  # a repeated text once
        if self.passage_embedder is self.embedder:  # one forward pass for the query and the new passages
            vectors, tokens = self.embedder.encode_counted([query, *missing.values()])
            query_vector, passage_vectors = vectors[0], vectors[1:]
        else:
            query_vectors, tokens = self.embedder.encode_counted([query])
            passage_vectors, passage_tokens = (self.passage_embedder.encode_counted(list(missing.values()))
                                               if missing else (query_vectors[:0], 0))
            query_vector, tokens = query_vectors[0], tokens + passage_tokens
        fresh = dict(zip(missing, passage_vectors, strict=True))
        if self.cache_size:
            with self._lock:
                self._cache.update(fresh)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        found = {**fresh, **cached}
        raw = (np.stack([found[k] for k in keys]) @ query_vector).astype(np.float32)
        return RerankScores(raw=raw, calibrated=self.calibrate(raw),
                            stats={"pairs": float(len(texts)), "cached": float(sum(k in cached for k in keys)),
                                   "tokens": float(tokens)})
