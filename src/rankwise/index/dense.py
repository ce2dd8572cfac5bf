"""Dense retrieval: a sentence-transformers bi-encoder and an exact FAISS inner-product index.

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

from rankwise.errors import IndexNotFoundError, ModelError
from rankwise.models import resolve_model, weights_sha256


@dataclass(frozen=True, slots=True)
class EmbeddingModelInfo:
    model: str
    path: str
    sha256: str
    dim: int
    max_seq_length: int


class Embedder:
    """Encodes passages and queries with a sentence-transformers model loaded from a local directory."""

    def __init__(self, model: str = "minilm", *, batch_size: int = 64, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        path = resolve_model(model)
        try:
            self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - report any load failure as one line
            raise ModelError(f"cannot load embedding model '{model}' from {path}: {err}") from err
        self.batch_size = batch_size
        dim = self.model.get_embedding_dimension()
        self.info = EmbeddingModelInfo(
            model=model, path=str(path), sha256=weights_sha256(path), dim=int(dim or 0),
            max_seq_length=int(self.model.max_seq_length),
        )

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=show_progress)
        return np.ascontiguousarray(vectors, dtype=np.float32)


class VectorIndex:
    """Exact cosine search over passage vectors; row ``i`` is passage row ``i`` of the docstore."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = faiss.IndexFlatIP(self.vectors.shape[1])
        self.index.add(self.vectors)

    @classmethod
    def load(cls, file: Path, dim: int) -> VectorIndex:
        if not file.is_file():
            raise IndexNotFoundError(f"index is incomplete: '{file}' is missing; rebuild the index")
        try:
            vectors = np.load(file)
        except Exception as err:  # noqa: BLE001
            raise IndexNotFoundError(f"vector file '{file}' is corrupt ({err}); rebuild the index") from err
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise IndexNotFoundError(f"vector file '{file}' has shape {vectors.shape}, expected (*, {dim}); rebuild")
        return cls(vectors)

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
