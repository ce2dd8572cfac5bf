"""Cross-encoder reranking with a Hugging Face sequence-classification model, on torch, ONNX Runtime or OpenVINO.

Scoring is our own loop, shared by every backend: pairs are tokenized once with the fast tokenizer,
grouped by a token budget (see :mod:`rankwise.inference.batching`) and only the forward pass differs —
eager PyTorch under ``torch.inference_mode`` (``backend="torch"``, loaded through sentence-transformers'
``CrossEncoder`` so any model it can load works) or an ONNX Runtime session over a fused fp32 or int8
export (``"onnx"``, ``"onnx-int8"``; see :mod:`rankwise.inference.onnx`) or OpenVINO over the plain
export (``"openvino"``, ``"openvino-int8"``; see :mod:`rankwise.inference.openvino`). The default, ``auto``,
picks the fastest of these for the CPU (:func:`rankwise.inference.backends.resolve_backend`). Passages longer than
``max_length`` are not silently truncated: they are split into overlapping windows, each window is
scored, and the windows are aggregated per passage (MaxP by default); the response reports how many
inputs were split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from rankwise.errors import ModelError, QueryError
from rankwise.inference.backends import BackendChoice, FunctionRunner, Mapper, Runner, resolve_backend
from rankwise.inference.batching import pad_batch, padding_ratio, run_batched
from rankwise.inference.calibration import calibration_batches, calibration_digest, calibration_queries
from rankwise.inference.onnx import export_module, model_inputs
from rankwise.inference.runners import exported_runner
from rankwise.models import resolve_model, weights_sha256
from rankwise.options import RerankFusion, choose
from rankwise.rerank.base import (
    EncodedPairs,
    RerankScores,
    ScoringKey,
    TokenBudgetExceeded,
    logits_to_scores,
    sigmoid,
)
from rankwise.rerank.declaration import Declaration, read_declaration

Aggregation = Literal["maxp", "firstp", "mean", "topk-mean", "truncate"]
AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)


class CrossEncoderReranker:
    """Score (query, passage) pairs with a cross-encoder; a :class:`~rankwise.rerank.base.WindowedReranker`.

    Args:
        model: local model directory or Hugging Face hub id (must be in the local cache unless downloads
            are allowed, see :func:`rankwise.models.resolve_model`).
        backend: ``auto`` (the default: ``openvino-int8`` on AVX-512 VNNI CPUs, ``onnx-int8`` on others, ``torch``
            where neither runtime is installed; see :mod:`rankwise.inference.backends`), ``torch`` (eager
            PyTorch, the exact fp32 reference), ``torch-bf16``  (bfloat16 autocast: fast on CPUs with native
            bf16, e.g. AVX512-BF16; small score shifts), ``onnx`` (fused fp32 ONNX Runtime: same scores, faster),
            ``onnx-int8`` (int8 weights, dynamic int8 activations: scores shift slightly), ``openvino``
            (OpenVINO at its default precision, bf16 on native-bf16 CPUs) or ``openvino-int8`` (static int8
            calibrated on the bundled knowledge base: the fastest on CPU; check its fidelity for your model
            with ``benchmarks/rerank_speed.py``). Exported files are created on first use and cached next to
            the model (see :mod:`rankwise.inference.artifacts`).
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
        calibration: ``openvino-int8`` only: a calibration JSONL file (see :mod:`rankwise.inference.calibration`);
            default: the one ``rankwise train`` stores in the model directory, else the bundled knowledge base.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        backend: BackendChoice = "auto",
        max_length: int | None = None,
        batch_tokens: int = 16384,
        long_documents: Aggregation = "maxp",
        stride: int = 32,
        threads: int | None = None,
        device: str = "cpu",
        name: str | None = None,
        calibration: str | Path | None = None,
        declaration: Declaration | None = None,
    ) -> None:
        choose(long_documents, AGGREGATIONS, "long-document aggregation")
        if max_length is not None and max_length < 16:
            raise QueryError(f"max_length must be at least 16 tokens (got {max_length})")
        self.backend_decision = resolve_backend(backend, "cross-encoder", device=device)
        self.backend = backend = self.backend_decision.backend
        if calibration is not None and backend != "openvino-int8":
            raise QueryError(f"a calibration file only applies to backend 'openvino-int8' (got '{backend}')")
        torch_backend = backend.startswith("torch")
        self.path = resolve_model(model)
        self.weights_sha256 = weights_sha256(self.path)
        # a loader that already read the declaration (to choose the kind) hands it over
        self.declared_fusion: RerankFusion = (declaration or read_declaration(self.path)).fusion or "none"
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

        return encoder.tokenizer, network.config, FunctionRunner(forward)

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
            encoded = self.encode_pairs(item.query, item.texts)
            windows += encoded.windows
            types += encoded.token_types
        return calibration_batches(windows, types, self.tokenizer.pad_token_id or 0), source

    def __repr__(self) -> str:
        return f"CrossEncoderReranker({self.name!r}, backend={self.backend!r}, max_length={self.max_length})"

    # ------------------------------------------------------------------ scoring
    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """The sigmoid of the logit (log-odds of the positive class for two-logit models)."""
        return sigmoid(np.asarray(raw, dtype=np.float32))

    def scoring_key(self) -> ScoringKey:
        key: dict[str, object] = {"kind": "cross-encoder", "weights_sha256": self.weights_sha256,
                                  "backend": self.backend, "max_length": self.max_length,
                                  "long_documents": self.long_documents, "stride": self.stride}
        if self.backend == "openvino-int8":  # static int8 scales come from the calibration windows
            key["int8_calibration"] = calibration_digest(self.path, self.calibration)
        return key

    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        if not texts:
            return RerankScores(raw=np.empty(0, np.float32), calibrated=np.empty(0, np.float32))
        enc = self.encode_pairs(query, texts)
        windows, types = enc.windows, enc.token_types
        logits, batches = run_batched(windows, lambda b: self.forward_windows([windows[i] for i in b], [types[i] for i in b]),
                                      self.batch_tokens, mapper=self.mapper)
        per_text = self.aggregate_windows(logits, enc.owners, len(texts))
        raw, calibrated = logits_to_scores(per_text)
        lengths = [len(w) for w in windows]
        stats = {"pairs": float(len(texts)), "windows": float(len(windows)), "tokens": float(sum(lengths)),
                 "batches": float(len(batches)), "padding": padding_ratio(lengths, batches)}
        return RerankScores(raw=raw, calibrated=calibrated, truncated=sum(enc.split), stats=stats)

    def encode_pairs(self, query: str, texts: Sequence[str], max_text_tokens: int | None = None, *,
                     max_tokens: int | None = None) -> EncodedPairs:
        """Windows of token ids, their token types, the text each window belongs to, and which texts split.

        ``encode_pairs`` → ``forward_windows`` (per batch) → ``aggregate_windows`` is exactly what
        :meth:`score` does (the :class:`~rankwise.rerank.base.WindowedReranker` steps), so a caller can pool
        the windows of several queries into shared forward passes (the serving micro-batcher).
        ``max_text_tokens`` first cuts each text after that many tokens, at a token end (Cohere's
        ``max_tokens_per_doc``). ``max_tokens`` bounds the request's windows: texts are tokenized a slice
        of about :data:`ENCODE_CHARS` characters at a time, and the first slice that takes the total over it
        raises :class:`~rankwise.rerank.base.TokenBudgetExceeded`, so an oversized request costs the server
        one slice of tokenizing, not all of it.
        """
        query_tokens = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        if query_tokens > self.max_length // 2:
            raise QueryError(f"query is {query_tokens} tokens; the reranker allows at most {self.max_length // 2} "
                             f"(half of max_length {self.max_length}); shorten the query")
        if max_text_tokens is not None:
            texts = [self._cut(t, max_text_tokens) for t in texts]
        # windows must advance: the overlap has to stay below the room left for the passage in each window
        stride = min(self.stride, (self.max_length - query_tokens - 3) // 2)
        windows: list[list[int]] = []
        types: list[list[int]] = []
        owners: list[int] = []
        split: list[bool] = []
        tokens = 0
        for start, stop in _slices(texts, ENCODE_CHARS):
            enc = self.tokenizer([query] * (stop - start), list(texts[start:stop]), truncation="only_second",
                                 max_length=self.max_length, stride=stride, return_overflowing_tokens=True,
                                 return_token_type_ids=True)
            part: list[int] = [start + o for o in enc["overflow_to_sample_mapping"]]
            ids: list[list[int]] = enc["input_ids"]
            kinds: list[list[int]] = enc["token_type_ids"]
            counts = np.bincount(np.asarray(part, dtype=np.int64) - start, minlength=stop - start)
            split += [bool(c > 1) for c in counts]  # a text longer than one window overflows into a second one
            if self.long_documents in ("truncate", "firstp"):
                first = [i for i, o in enumerate(part) if i == 0 or part[i - 1] != o]
                ids, kinds, part = [ids[i] for i in first], [kinds[i] for i in first], [part[i] for i in first]
            windows += ids
            types += kinds
            owners += part
            tokens += sum(len(w) for w in ids)
            if max_tokens is not None and tokens > max_tokens:
                raise TokenBudgetExceeded(tokens, max_tokens)
        return EncodedPairs(windows, types, owners, split)

    def _cut(self, text: str, max_tokens: int) -> str:
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]

    @property
    def mapper(self) -> Mapper | None:
        """How :func:`run_batched` runs batches: several at once on a multi-stream runner, else in turn."""
        return self._run.map

    def forward_windows(self, ids: list[list[int]], types: list[list[int]]) -> np.ndarray:
        """One padded batch of windows → one raw logit per window (log-odds for two-logit models)."""
        feeds = pad_batch(ids, types, self.tokenizer.pad_token_id or 0,
                          multiple=self._run.width_multiple, max_width=self.max_length)
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


#: characters tokenized per call by :meth:`CrossEncoderReranker.encode_pairs`: a usual request (100
#: passages of a few hundred words) is one call; an oversized one stops after the slice that exceeds its budget
ENCODE_CHARS = 262_144


def _slices(texts: Sequence[str], max_chars: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` covering ``texts`` in order, each about ``max_chars`` characters (at least one text)."""
    out: list[tuple[int, int]] = []
    start = size = 0
    for i, text in enumerate(texts):
        if i > start and size + len(text) > max_chars:
            out.append((start, i))
            start, size = i, 0
        size += len(text)
    if start < len(texts):
        out.append((start, len(texts)))
    return out
