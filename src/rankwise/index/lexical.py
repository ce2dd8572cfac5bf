"""BM25 over passages with bm25s (Lucene scoring, English Snowball stemming and stopwords).

bm25s is used rather than a hand-rolled scorer because it matches Lucene/Pyserini scores (its parity
tests) and scores a query over a sparse matrix in well under a millisecond per thousand passages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from rankwise.index.integrity import corrupt

# bm25s sets its own logger to DEBUG, so once anything configures root logging its build chatter reaches
# the console; rankwise keeps its warnings only
logging.getLogger("bm25s").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class BM25Settings:
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stemmer: str = "english"
    stopwords: str = "en"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class BM25Index:
    def __init__(self, retriever: bm25s.BM25, settings: BM25Settings) -> None:
        self.retriever = retriever
        self.settings = settings
        self._stemmer = Stemmer.Stemmer(settings.stemmer)
        self.size = int(retriever.scores["num_docs"])

    def _tokenize(self, texts: Sequence[str], *, return_ids: bool, show_progress: bool = False):
        return bm25s.tokenize(list(texts), stopwords=self.settings.stopwords, stemmer=self._stemmer,
                              return_ids=return_ids, show_progress=show_progress)

    @classmethod
    def build(cls, texts: Sequence[str], settings: BM25Settings | None = None) -> BM25Index:
        settings = settings or BM25Settings()
        retriever = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
        stemmer = Stemmer.Stemmer(settings.stemmer)
        tokens = bm25s.tokenize(list(texts), stopwords=settings.stopwords, stemmer=stemmer, show_progress=False)
        retriever.index(tokens, show_progress=False)
        return cls(retriever, settings)

    def save(self, directory: Path) -> None:
        self.retriever.save(str(directory))

    @classmethod
    def load(cls, directory: Path, settings: BM25Settings, rows: int | None = None) -> BM25Index:
        """The BM25 index saved in ``directory``, refused unless its score matrix is consistent with ``rows``.

        bm25s indexes its score arrays without bounds checks, so an inconsistent matrix would otherwise
        surface as an IndexError mid-query or as silently wrong scores.
        """
        if not directory.is_dir():
            raise corrupt(directory, "the BM25 directory is missing")
        try:
            retriever = bm25s.BM25.load(str(directory), show_progress=False)
            scores = retriever.scores
            data, indices, indptr = (np.asarray(scores[k]) for k in ("data", "indices", "indptr"))
            size = int(scores["num_docs"])
        except Exception as err:  # noqa: BLE001 - a damaged file raises many types; one line for all
            raise corrupt(directory, f"BM25 index unreadable: {err}") from None
        if rows is not None and size != rows:
            raise corrupt(directory, f"the BM25 index covers {size} passages, the manifest records {rows}")
        if (data.ndim != 1 or data.shape != indices.shape or indptr.ndim != 1 or indptr.size == 0
                or int(indptr[-1]) != data.size or int(indptr[0]) != 0 or np.any(np.diff(indptr) < 0)
                or (indices.size and (int(indices.min()) < 0 or int(indices.max()) >= size))
                or not np.all(np.isfinite(data))):
            raise corrupt(directory, "the BM25 score matrix is inconsistent")
        return cls(retriever, settings)

    @staticmethod
    def stored_size(directory: Path) -> int:
        """Passages the saved index covers, from its small parameter file (no matrix read)."""
        params = directory / "params.index.json"
        try:
            size = json.loads(params.read_text(encoding="utf-8"))["num_docs"]
        except FileNotFoundError:
            raise corrupt(params, "the file is missing") from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise corrupt(params, f"unreadable BM25 parameters: {err}") from None
        if type(size) is not int:
            raise corrupt(params, f"num_docs is {size!r}, not a number")
        return size

    def search(self, query: str, k: int, allowed_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` passage rows and scores; passages that share no term with the query are dropped."""
        tokens = self._tokenize([query], return_ids=False)[0]
        if not tokens or k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        mask = None
        if allowed_rows is not None:
            mask = np.zeros(self.size, dtype=np.float32)
            mask[allowed_rows] = 1.0
        rows, scores = self.retriever.retrieve([tokens], k=min(k, self.size), show_progress=False,
                                               weight_mask=mask, n_threads=1)
        rows, scores = rows[0].astype(np.int64), scores[0].astype(np.float32)
        keep = scores > 0
        return rows[keep], scores[keep]
