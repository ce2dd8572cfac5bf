"""Cross-encoder reranking with a Hugging Face sequence-classification model, on torch, ONNX Runtime or OpenVINO.

Scoring is our own loop, shared by every backend: pairs are tokenized once with the fast tokenizer,
grouped by a token budget (see :mod:`rankwise.rerank.batching`) and only the forward pass differs —
eager PyTorch under ``torch.inference_mode`` (``backend="torch"``, loaded through sentence-transformers'
``CrossEncoder`` so any model it can load works) or an ONNX Runtime session over a fused fp32 or int8
export (``"onnx"``, ``"onnx-int8"``; see :mod:`rankwise.rerank.onnx_backend`) or OpenVINO over the plain
export (``"openvino"``, ``"openvino-int8"``; see :mod:`rankwise.rerank.openvino_backend`). Passages longer than
``max_length`` are not silently truncated: they are split into overlapping windows, each window is
scored, and the windows are aggregated per passage (MaxP by default); the response reports how many
inputs were split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rankwise.errors import ModelError, QueryError
from rankwise.models import resolve_model, weights_sha256
from rankwise.rerank.base import RerankScores, logits_to_scores
from rankwise.rerank.batching import Mapper, pad_batch, padding_ratio, run_batched
from rankwise.rerank.calibration import calibration_batches, calibration_queries
from rankwise.rerank.onnx_backend import (
    Backend,
    Runner,
    check_backend,
    export_module,
    model_inputs,
)
from rankwise.rerank.openvino_backend import exported_runner

Aggregation = Literal["maxp", "firstp", "mean", "topk-mean", "truncate"]
AGGREGATIONS: tuple[str, ...] = ("maxp", "firstp", "mean", "topk-mean", "truncate")


class CrossEncoderReranker:
    """Score (query, passage) pairs with a cross-encoder; implements :class:`~rankwise.rerank.base.Reranker`.

    Args:
        model: local model directory or Hugging Face hub id (must be in the local cache unless downloads
            are allowed, see :func:`rankwise.models.resolve_model`).
        backend: ``torch`` (eager PyTorch), ``torch-bf16`` (bfloat16 autocast: fast on CPUs with native
            bf16, e.g. AVX512-BF16; small score shifts), ``onnx`` (fused fp32 ONNX Runtime: same scores, faster),
            ``onnx-int8`` (int8 weights, dynamic int8 activations: scores shift slightly), ``openvino``
            (OpenVINO at its default precision, bf16 on native-bf16 CPUs) or ``openvino-int8`` (static int8
            calibrated on the bundled knowledge base: the fastest on CPU; check its fidelity for your model
            with ``benchmarks/rerank_speed.py``). Exported files are created on first use and cached next to
            the model (see :mod:`rankwise.rerank.onnx_backend`).
        max_length: tokens per (query, passage) window, special tokens included. Default: the length the
            model was trained with (its tokenizer's ``model_max_length``, which ``rankwise train`` sets),
            else 512. Scoring longer windows than a model saw in training can cost a lot of quality
            (measured: a SciFact reranker trained at 128 tokens fell from nDCG@10 0.71 to 0.55 at 256), so
            longer passages are split into windows of the trained length instead.
        batch_tokens: token budget per forward pass; bounds memory whatever the candidate count.
        long_documents: how windows of a passage longer than ``max_length`` are combined
            (``maxp`` max, ``firstp`` first window, ``mean``, ``topk-mean`` mean of the best 3, or
            ``truncate`` to score only the first window — counted, never silent).
        stride: tokens shared by consecutive windows of a long passage.
        threads: intra-op threads (default: all cores; for torch this sets the process-wide torch count).
        name: display name for provenance; defaults to ``model``, with ``[onnx]``/``[onnx-int8]`` appended for
            those backends so responses say which numerics produced them.
        calibration: ``openvino-int8`` only: a calibration JSONL file (see :mod:`rankwise.rerank.calibration`);
            default: the one ``rankwise train`` stores in the model directory, else the bundled knowledge base.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        backend: Backend = "torch",
        max_length: int | None = None,
        batch_tokens: int = 16384,
        long_documents: Aggregation = "maxp",
        stride: int = 32,
        threads: int | None = None,
        device: str = "cpu",
        name: str | None = None,
        calibration: str | Path | None = None,
    ) -> None:
        if long_documents not in AGGREGATIONS:
            raise QueryError(f"unknown long-document aggregation '{long_documents}'; choose {', '.join(AGGREGATIONS)}")
        if calibration is not None and backend != "openvino-int8":
            raise QueryError(f"a calibration file only applies to backend 'openvino-int8' (got '{backend}')")
        if max_length is not None and max_length < 16:
            raise QueryError(f"max_length must be at least 16 tokens (got {max_length})")
        self.backend = check_backend(backend)
        torch_backend = backend.startswith("torch")
        if not torch_backend and device != "cpu":
            raise QueryError(f"the {backend} backend runs on the CPU; use backend='torch' for device '{device}'")
        self.path = resolve_model(model)
        self.weights_sha256 = weights_sha256(self.path)
        if torch_backend:
            self.tokenizer, config, self._run = self._load_torch(model, device, threads)
        else:
            self.tokenizer, config = self._load_hf(model)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ModelError(f"cross-encoder '{model}' has no fast tokenizer (tokenizer.json); rankwise needs one")
        num_labels = int(config.num_labels)
        if num_labels not in (1, 2):
            raise ModelError(f"'{model}' has {num_labels} output labels; a reranker needs 1 (or 2 for a binary classifier)")
        trained = getattr(self.tokenizer, "model_max_length", None)
        if max_length is None:  # tokenizers without a limit report a huge sentinel (int(1e30))
            max_length = int(trained) if isinstance(trained, int) and 16 <= trained <= 100_000 else 512
        model_max = int(getattr(config, "max_position_embeddings", max_length))
        self.max_length = min(max_length, model_max)
        self.batch_tokens = batch_tokens
        self.long_documents = long_documents
        self.stride = stride
        self.name = name or (str(model) if backend == "torch" else f"{model}[{backend}]")
        self.calibration = calibration
        if not torch_backend:  # after max_length: static int8 calibrates on windows of that length
            self._run = self._exported_runner(threads)

    def _load_torch(self, model: str | Path, device: str, threads: int | None) -> tuple[Any, Any, Runner]:
        import torch
        from sentence_transformers import CrossEncoder

        if threads:
            torch.set_num_threads(threads)
        try:
            encoder = CrossEncoder(str(self.path), device=device, local_files_only=True)
        except Exception as err:  # any load failure becomes one actionable line
            raise ModelError(f"cannot load cross-encoder '{model}' from {self.path}: {type(err).__name__}: {err}") from err
        network = encoder.transformers_model.eval()
        names = model_inputs(encoder.tokenizer)
        bf16 = self.backend == "torch-bf16"

        def forward(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode(), torch.autocast(network.device.type, torch.bfloat16, enabled=bf16):
                tensors = {n: torch.from_numpy(feeds[n]).to(network.device) for n in names}
                return network(**tensors).logits.float().cpu().numpy()

        return encoder.tokenizer, network.config, forward

    def _load_hf(self, model: str | Path) -> tuple[Any, Any]:
        from transformers import AutoConfig, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(self.path, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as err:  # any load failure becomes one actionable line
            raise ModelError(f"cannot load cross-encoder '{model}' from {self.path}: {type(err).__name__}: {err}") from err
        return tokenizer, config

    def _exported_runner(self, threads: int | None) -> Runner:
        names = model_inputs(self.tokenizer)

        def export(dest: Path) -> None:
            from transformers import AutoModelForSequenceClassification

            network = AutoModelForSequenceClassification.from_pretrained(
                self.path, local_files_only=True, attn_implementation="eager").eval()
            export_module(lambda features: network(**features).logits, network, names, "logits", dest)

        return exported_runner(self.path, "cross-encoder", self.backend, export, self._calibration_batches,
                               threads=threads)

    def _calibration_batches(self) -> tuple[list[dict[str, np.ndarray]], str]:
        """Calibration windows, tokenized and padded exactly like real requests, and where they came from."""
        queries, source = calibration_queries(self.path, self.calibration)
        windows: list[list[int]] = []
        types: list[list[int]] = []
        for item in queries:
            query_windows, query_types, _, _ = self.encode_pairs(item.query, item.texts)
            windows += query_windows
            types += query_types
        return calibration_batches(windows, types, self.tokenizer.pad_token_id or 0), source

    def __repr__(self) -> str:
        return f"CrossEncoderReranker({self.name!r}, backend={self.backend!r}, max_length={self.max_length})"

    # ------------------------------------------------------------------ scoring
    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        if not texts:
            return RerankScores(raw=np.empty(0, np.float32), calibrated=np.empty(0, np.float32))
        windows, types, owners, split = self.encode_pairs(query, texts)
        logits, batches = run_batched(windows, lambda b: self.forward_windows([windows[i] for i in b], [types[i] for i in b]),
                                      self.batch_tokens, mapper=self.mapper)
        per_text = self.aggregate_windows(logits, owners, len(texts))
        raw, calibrated = logits_to_scores(per_text)
        lengths = [len(w) for w in windows]
        stats = {"pairs": float(len(texts)), "windows": float(len(windows)), "tokens": float(sum(lengths)),
                 "batches": float(len(batches)), "padding": padding_ratio(lengths, batches)}
        return RerankScores(raw=raw, calibrated=calibrated, truncated=split, stats=stats)

    def encode_pairs(self, query: str, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]], list[int], int]:
        """Windows of token ids, their token types, the text each window belongs to, and how many texts split.

        ``encode_pairs`` → ``forward_windows`` (per batch) → ``aggregate_windows`` is exactly what
        :meth:`score` does; they are public so a caller can pool the windows of several queries into shared
        forward passes (the serving micro-batcher, :mod:`rankwise.serving.scoring`).
        """
        query_tokens = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        if query_tokens > self.max_length // 2:
            raise QueryError(f"query is {query_tokens} tokens; the reranker allows at most {self.max_length // 2} "
                             f"(half of max_length {self.max_length}); shorten the query")
        # windows must advance: the overlap has to stay below the room left for the passage in each window
        stride = min(self.stride, (self.max_length - query_tokens - 3) // 2)
        enc = self.tokenizer([query] * len(texts), list(texts), truncation="only_second", max_length=self.max_length,
                             stride=stride, return_overflowing_tokens=True, return_token_type_ids=True)
        owners: list[int] = list(enc["overflow_to_sample_mapping"])
        windows: list[list[int]] = enc["input_ids"]
        types: list[list[int]] = enc["token_type_ids"]
        split = len({o for i, o in enumerate(owners) if i > 0 and owners[i - 1] == o})
        if self.long_documents in ("truncate", "firstp"):
            first = [i for i, o in enumerate(owners) if i == 0 or owners[i - 1] != o]
            windows, types, owners = [windows[i] for i in first], [types[i] for i in first], [owners[i] for i in first]
        return windows, types, owners, split

    @property
    def mapper(self) -> Mapper | None:
        """How :func:`run_batched` runs batches: several at once on a multi-stream OpenVINO model, else in turn."""
        return getattr(self._run, "map", None)

    def forward_windows(self, ids: list[list[int]], types: list[list[int]]) -> np.ndarray:
        """One padded batch of windows → one raw logit per window (log-odds for two-logit models)."""
        feeds = pad_batch(ids, types, self.tokenizer.pad_token_id or 0,
                          multiple=getattr(self._run, "width_multiple", 1), max_width=self.max_length)
        logits = np.asarray(self._run(feeds), dtype=np.float32)
        return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]

    def aggregate_windows(self, logits: np.ndarray, owners: list[int], n: int) -> np.ndarray:
        """One logit per text from its windows' logits, by the ``long_documents`` rule."""
        groups: list[list[float]] = [[] for _ in range(n)]
        for value, owner in zip(logits.tolist(), owners, strict=True):
            groups[owner].append(value)
        how = self.long_documents
        if how == "mean":
            return np.array([np.mean(g) for g in groups], dtype=np.float32)
        if how == "topk-mean":
            return np.array([np.mean(sorted(g, reverse=True)[:3]) for g in groups], dtype=np.float32)
        return np.array([max(g) for g in groups], dtype=np.float32)  # maxp; firstp/truncate have one window
