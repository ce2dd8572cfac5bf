"""Cross-encoder reranking with a Hugging Face sequence-classification model.

Loading goes through sentence-transformers' ``CrossEncoder`` (so any model it can load works, from a
local directory or a cached hub id), but scoring is our own loop: pairs are tokenized once with the fast
tokenizer, grouped by a token budget (see :mod:`rankwise.rerank.batching`) and run under
``torch.inference_mode``. Passages longer than ``max_length`` are not silently truncated: they are split
into overlapping windows, each window is scored, and the windows are aggregated per passage (MaxP by
default); the response reports how many inputs were split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from rankwise.errors import ModelError, QueryError
from rankwise.models import resolve_model, weights_sha256
from rankwise.rerank.base import RerankScores, logits_to_scores
from rankwise.rerank.batching import padding_ratio, token_budget_batches

Aggregation = Literal["maxp", "firstp", "mean", "topk-mean", "truncate"]
AGGREGATIONS: tuple[str, ...] = ("maxp", "firstp", "mean", "topk-mean", "truncate")


class CrossEncoderReranker:
    """Score (query, passage) pairs with a cross-encoder; implements :class:`~rankwise.rerank.base.Reranker`.

    Args:
        model: local model directory or Hugging Face hub id (must be in the local cache unless downloads
            are allowed, see :func:`rankwise.models.resolve_model`).
        max_length: tokens per (query, passage) window, special tokens included.
        batch_tokens: token budget per forward pass; bounds memory whatever the candidate count.
        long_documents: how windows of a passage longer than ``max_length`` are combined
            (``maxp`` max, ``firstp`` first window, ``mean``, ``topk-mean`` mean of the best 3, or
            ``truncate`` to score only the first window — counted, never silent).
        stride: tokens shared by consecutive windows of a long passage.
        threads: intra-op threads (default: all cores).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        max_length: int = 512,
        batch_tokens: int = 16384,
        long_documents: Aggregation = "maxp",
        stride: int = 32,
        threads: int | None = None,
        device: str = "cpu",
        name: str | None = None,
    ) -> None:
        if long_documents not in AGGREGATIONS:
            raise QueryError(f"unknown long-document aggregation '{long_documents}'; choose {', '.join(AGGREGATIONS)}")
        if max_length < 16:
            raise QueryError(f"max_length must be at least 16 tokens (got {max_length})")
        import torch
        from sentence_transformers import CrossEncoder

        if threads:
            torch.set_num_threads(threads)
        self.path = resolve_model(model)
        try:
            encoder = CrossEncoder(str(self.path), device=device, local_files_only=True, max_length=max_length)
        except Exception as err:  # noqa: BLE001 - any load failure becomes one actionable line
            raise ModelError(f"cannot load cross-encoder '{model}' from {self.path}: {type(err).__name__}: {err}") from err
        self.model = encoder.transformers_model.eval()
        self.tokenizer = encoder.tokenizer
        if not getattr(self.tokenizer, "is_fast", False):
            raise ModelError(f"cross-encoder '{model}' has no fast tokenizer (tokenizer.json); rankwise needs one")
        num_labels = int(self.model.config.num_labels)
        if num_labels not in (1, 2):
            raise ModelError(f"'{model}' has {num_labels} output labels; a reranker needs 1 (or 2 for a binary classifier)")
        model_max = int(getattr(self.model.config, "max_position_embeddings", max_length))
        self.max_length = min(max_length, model_max)
        self.batch_tokens = batch_tokens
        self.long_documents = long_documents
        self.stride = stride
        self.name = name or str(model)
        self.weights_sha256 = weights_sha256(self.path)
        self._torch = torch

    def __repr__(self) -> str:
        return f"CrossEncoderReranker({self.name!r}, max_length={self.max_length})"

    # ------------------------------------------------------------------ scoring
    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        if not texts:
            return RerankScores(raw=np.empty(0, np.float32), calibrated=np.empty(0, np.float32))
        windows, types, owners, split = self._tokenize(query, texts)
        lengths = [len(w) for w in windows]
        batches = token_budget_batches(lengths, self.batch_tokens)
        logits = np.empty(len(windows), dtype=np.float32)
        for batch in batches:
            logits[batch] = self._forward([windows[i] for i in batch], [types[i] for i in batch])
        per_text = self._aggregate(logits, owners, len(texts))
        raw, calibrated = logits_to_scores(per_text)
        stats = {"pairs": float(len(texts)), "windows": float(len(windows)), "tokens": float(sum(lengths)),
                 "batches": float(len(batches)), "padding": padding_ratio(lengths, batches)}
        return RerankScores(raw=raw, calibrated=calibrated, truncated=split, stats=stats)

    def _tokenize(self, query: str, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]], list[int], int]:
        """Windows of token ids, their token types, the text each window belongs to, and how many texts split."""
        query_tokens = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        if query_tokens > self.max_length // 2:
            raise QueryError(f"query is {query_tokens} tokens; the reranker allows at most {self.max_length // 2} "
                             f"(half of max_length {self.max_length}); shorten the query")
        enc = self.tokenizer([query] * len(texts), list(texts), truncation="only_second", max_length=self.max_length,
                             stride=self.stride, return_overflowing_tokens=True, return_token_type_ids=True)
        owners: list[int] = list(enc["overflow_to_sample_mapping"])
        windows: list[list[int]] = enc["input_ids"]
        types: list[list[int]] = enc["token_type_ids"]
        split = len(set(o for i, o in enumerate(owners) if i > 0 and owners[i - 1] == o))
        if self.long_documents in ("truncate", "firstp"):
            first = [i for i, o in enumerate(owners) if i == 0 or owners[i - 1] != o]
            windows, types, owners = [windows[i] for i in first], [types[i] for i in first], [owners[i] for i in first]
        return windows, types, owners, split

    def _forward(self, ids: list[list[int]], types: list[list[int]]) -> np.ndarray:
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = np.full((len(ids), width), pad, dtype=np.int64)
        token_type_ids = np.zeros((len(ids), width), dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, (x, t) in enumerate(zip(ids, types, strict=True)):
            input_ids[row, : len(x)] = x
            token_type_ids[row, : len(t)] = t
            attention_mask[row, : len(x)] = 1
        torch = self._torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
                             token_type_ids=torch.from_numpy(token_type_ids))
        logits = out.logits.float().numpy()
        return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]

    def _aggregate(self, logits: np.ndarray, owners: list[int], n: int) -> np.ndarray:
        groups: list[list[float]] = [[] for _ in range(n)]
        for value, owner in zip(logits.tolist(), owners, strict=True):
            groups[owner].append(value)
        how = self.long_documents
        if how == "mean":
            return np.array([np.mean(g) for g in groups], dtype=np.float32)
        if how == "topk-mean":
            return np.array([np.mean(sorted(g, reverse=True)[:3]) for g in groups], dtype=np.float32)
        return np.array([max(g) for g in groups], dtype=np.float32)  # maxp; firstp/truncate have one window
