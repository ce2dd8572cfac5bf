"""Dense retrieval: a sentence-transformers bi-encoder and an exact FAISS inner-product index.

The bi-encoder runs on eager PyTorch (sentence-transformers ``encode``), on ONNX Runtime (fp32 or dynamic
int8) or on OpenVINO (bf16/fp32, or static int8 calibrated on the bundled passages and queries) — the same
export/cache machinery as the cross-encoder (:func:`rankwise.inference.runners.exported_runner`). The
default, ``auto``, picks the fastest for the CPU (:func:`rankwise.inference.backends.resolve_backend`).
The exported graph is the whole sentence-transformers module stack (transformer, pooling, normalisation),
so pooling semantics are the model's own, not a re-implementation.

Vectors are L2-normalised so inner product is cosine similarity. The index is exact (``IndexFlatIP``):
at the corpus sizes rankwise targets (up to a few million passages) exact search is fast enough, needs
no training and can never silently miss a neighbour the way an approximate index can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from rankwise.errors import ModelError
from rankwise.index.integrity import corrupt
from rankwise.inference.backends import BackendChoice, Runner, resolve_backend
from rankwise.inference.batching import pad_batch, run_batched
from rankwise.inference.calibration import bundled_texts, calibration_batches
from rankwise.inference.onnx import export_module, model_inputs
from rankwise.inference.runners import exported_runner
from rankwise.models import resolve_model, weights_sha256


@dataclass(frozen=True, slots=True)
class EmbeddingModelInfo:
    model: str
    path: str
    sha256: str
    dim: int
    max_seq_length: int
    #: inference backend the vectors came from (``torch``, ``onnx``, ``openvino-int8``…): int8 vectors differ slightly
    backend: str = "torch"
    #: why that backend: ``requested``, or the per-CPU rule of ``auto``
    backend_reason: str = "requested"


class Embedder:
    """Encodes passages and queries with a sentence-transformers model loaded from a local directory.

    Args:
        model: local directory, hub id in the local cache, or ``minilm`` (the bundled all-MiniLM-L6-v2).
        backend: ``auto`` (default: the fastest for this CPU, see :mod:`rankwise.inference.backends`),
            ``torch`` (sentence-transformers ``encode``, exact fp32), ``onnx`` (fused fp32), ``onnx-int8``,
            ``openvino`` (bf16 on native-bf16 CPUs) or ``openvino-int8`` (static int8, the fastest on CPU).
        batch_size: texts per forward pass (torch); the cap on rows per batch for exported backends.
        batch_tokens: exported backends' token budget per forward pass (length-sorted batches, bounded memory).
        threads: intra-op threads of the exported backends (default: all cores).
        max_seq_length: tokens embedded per text (default: the model's own limit).
        reranking: the embeddings rerank a short candidate list rather than rank a corpus, which changes
            what ``auto`` picks on some CPUs (:func:`~rankwise.inference.backends.resolve_backend`).
    """

    def __init__(self, model: str = "minilm", *, backend: BackendChoice = "auto", batch_size: int = 64,
                 batch_tokens: int = 16384, device: str = "cpu", threads: int | None = None,
                 max_seq_length: int | None = None, reranking: bool = False) -> None:
        from sentence_transformers import SentenceTransformer

        self.backend_decision = resolve_backend(backend, "embedder", device=device, reranking=reranking)
        backend = self.backend_decision.backend
        path = resolve_model(model)
        try:
            self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as err:  # report any load failure as one line
            raise ModelError(f"cannot load embedding model '{model}' from {path}: {err}") from err
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        dim = self.model.get_embedding_dimension()
        self.info = EmbeddingModelInfo(
            model=model, path=str(path), sha256=weights_sha256(path), dim=int(dim or 0),
            max_seq_length=int(self.model.max_seq_length), backend=backend,
            backend_reason=self.backend_decision.reason,
        )
        self._runner: Runner | None = None if backend == "torch" else exported_runner(
            path, "embedder", backend, lambda dest: _export_sentence_transformer(path, dest),
            self._calibration_batches, threads=threads)

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text (``show_progress``: torch backend only)."""
        return self._encode(texts, show_progress=show_progress, count=False)[0]

    def encode_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """:meth:`encode`, and the tokens the model read (after truncation): what a request's cost reports.

        The exported runners tokenize anyway; the torch path tokenizes once more to count, which is why
        indexing (:meth:`encode`) does not.
        """
        return self._encode(texts, show_progress=False, count=True)

    def _encode(self, texts: Sequence[str], *, show_progress: bool, count: bool) -> tuple[np.ndarray, int]:
        if self._runner is None:
            tokens = sum(len(ids) for ids in self._tokenize(texts)[0]) if texts and count else 0
            vectors = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                        normalize_embeddings=True, show_progress_bar=show_progress)
            return np.ascontiguousarray(vectors, dtype=np.float32), tokens
        if not texts:
            return np.empty((0, self.info.dim), dtype=np.float32), 0
        rows, types = self._tokenize(texts)
        pad, runner = self.model.tokenizer.pad_token_id or 0, self._runner
        multiple, width = runner.width_multiple, self.info.max_seq_length
        vectors, _ = run_batched(rows, lambda b: runner(pad_batch([rows[i] for i in b], [types[i] for i in b], pad,
                                                                  multiple=multiple, max_width=width)),
                                 self.batch_tokens, max_rows=self.batch_size, mapper=runner.map)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32),
                sum(len(row) for row in rows))

    def _tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
        enc = self.model.tokenizer(list(texts), truncation=True, max_length=self.info.max_seq_length,
                                   return_token_type_ids=True)
        return enc["input_ids"], enc["token_type_ids"]

    def _calibration_batches(self) -> tuple[list[dict[str, np.ndarray]], str]:
        """Bundled passages and queries, tokenized and padded like :meth:`encode`'s batches (static int8)."""
        rows, types = self._tokenize(bundled_texts())
        return calibration_batches(rows, types, self.model.tokenizer.pad_token_id or 0), "bundled"


def _export_sentence_transformer(path: Path, dest: Path) -> None:
    """Trace the full module stack to ``sentence_embedding``, reloaded with eager attention for ORT's fusions."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", local_files_only=True,
                                model_kwargs={"attn_implementation": "eager"}).eval()
    export_module(lambda features: model(features)["sentence_embedding"], model, model_inputs(model.tokenizer),
                  "sentence_embedding", dest)


#: how far a stored vector's squared norm may stray from 1 (float32 rounding is ~1e-6; damage is far larger)
_NORM_TOLERANCE = 1e-2


def check_vector_shape(file: Path, shape: tuple[int, ...], dtype: np.dtype, dim: int, rows: int | None) -> None:
    """Refuse vectors that are not a ``rows`` x ``dim`` float32 matrix (``rows=None``: any row count)."""
    if dtype != np.float32 or len(shape) != 2 or shape[1] != dim or (rows is not None and shape[0] != rows):
        expected = f"({'*' if rows is None else rows}, {dim}) float32"
        raise corrupt(file, f"vectors of shape {tuple(shape)} {dtype}, the manifest expects {expected}")


class VectorIndex:
    """Exact cosine search over passage vectors; row ``i`` is passage row ``i`` of the docstore."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = faiss.IndexFlatIP(self.vectors.shape[1])
        self.index.add(self.vectors)

    @classmethod
    def load(cls, file: Path, dim: int, rows: int | None = None) -> VectorIndex:
        """The vectors of ``file``, refused unless they are ``rows`` x ``dim`` finite unit-length float32.

        Every vector the build writes is L2-normalised, so a non-finite or non-unit row can only be damage
        (overwritten bytes, NaN from a bad copy) and would otherwise rank silently wrong.
        """
        if not file.is_file():
            raise corrupt(file, "the file is missing")
        try:
            vectors = np.load(file, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - a corrupt .npy raises many types; one line for all
            raise corrupt(file, err) from None
        check_vector_shape(file, vectors.shape, vectors.dtype, dim, rows)
        squared_norms = np.einsum("ij,ij->i", vectors, vectors)
        bad = np.flatnonzero(~(np.abs(squared_norms - 1.0) <= _NORM_TOLERANCE))  # NaN compares False: bad
        if bad.size:
            raise corrupt(file, f"{bad.size} vectors are not finite unit vectors, the first at row {bad[0]}")
        return cls(vectors)

    @staticmethod
    def stored_shape(file: Path) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype from the ``.npy`` header alone (memory-mapped; no data read)."""
        if not file.is_file():
            raise corrupt(file, "the file is missing")
        try:
            header = np.load(file, mmap_mode="r", allow_pickle=False)
            shape, dtype = header.shape, header.dtype
            del header
        except Exception as err:  # noqa: BLE001 - a corrupt .npy raises many types; one line for all
            raise corrupt(file, err) from None
        return shape, dtype

    def search(self, query_vector: np.ndarray, k: int, allowed_rows: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal if allowed_rows is None else len(allowed_rows))
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        params = None
        if allowed_rows is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed_rows.astype(np.int64)))
        scores, rows = self.index.search(query_vector.reshape(1, -1), k, params=params)
        keep = rows[0] >= 0
        return rows[0][keep].astype(np.int64), scores[0][keep]
