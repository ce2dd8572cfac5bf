"""Calibration queries for static int8: the (query, passages) a quantiser measures activation ranges on.

Static int8 fixes every activation's scale from what it sees at calibration time, so windows from the
model's own domain give ranges that fit what it will score. Measured on the trained SciFact reranker
(``benchmarks/rerank_speed.py``'s model, 300 SciFact test queries × BM25 top-100, 128 tokens): OpenVINO
int8 calibrated on 48 SciFact-train queries agreed with fp32 at Spearman 0.993 (nDCG@10 +0.003), against
0.989 (+0.004) when calibrated on the bundled knowledge base; 128 queries instead of 48 did not help.

Where the queries come from, first match wins: an explicit file (``CrossEncoderReranker(calibration=…)``);
:data:`CALIBRATION_FILE` inside the model directory — ``rankwise train`` writes it from its held-out
queries' real candidate lists, so a fine-tuned model carries its own domain; the bundled knowledge base.
The file is JSONL, one query per line: ``{"query": "...", "texts": ["judged passage", "other", ...]}``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from rankwise.corpus import SAMPLE_KB
from rankwise.errors import ModelError
from rankwise.inference.batching import pad_batch
from rankwise.storage import atomic_writer

#: the calibration file a model directory may carry (written by ``rankwise train``)
CALIBRATION_FILE = "rankwise-calibration.jsonl"
#: how many queries to calibrate on; each brings one judged passage (so the high-score range is seen)
#: and three others
CALIBRATION_QUERIES = 48
PASSAGES_PER_QUERY = 4
#: rows per calibration batch (the quantiser sees these batches, not request-sized ones)
CALIBRATION_BATCH_ROWS = 16
Source = Literal["file", "model", "bundled"]
T = TypeVar("T")


@dataclass(frozen=True)
class CalibrationQuery:
    """One query and the passages scored with it during calibration (judged first, when there is one)."""

    query: str
    texts: tuple[str, ...]

    @classmethod
    def pick(cls, query: str, judged: Sequence[str], others: Sequence[str]) -> CalibrationQuery:
        """The first judged passage (so the high-score range is seen), then others up to PASSAGES_PER_QUERY."""
        return cls(query, tuple([*judged[:1], *others][:PASSAGES_PER_QUERY]))


def spread(items: Sequence[T], limit: int = CALIBRATION_QUERIES) -> list[T]:
    """At most ``limit`` (≥ 2) items, evenly spaced, so a sorted or clustered source is sampled across its range."""
    if len(items) <= limit:
        return list(items)
    step = (len(items) - 1) / (limit - 1)
    return [items[round(i * step)] for i in range(limit)]


def bundled_queries() -> list[CalibrationQuery]:
    """Training queries of the bundled knowledge base, each with its judged passage and three others."""
    from rankwise.corpus.beir import load_qrels, load_queries

    docs = _bundled_documents()
    ids, queries, qrels = sorted(docs), load_queries(SAMPLE_KB), load_qrels(SAMPLE_KB, "train")
    out = []
    for i, qid in enumerate(sorted(qrels)[:CALIBRATION_QUERIES]):
        judged = [docs[d] for d, grade in qrels[qid].items() if grade > 0 and d in docs]
        others = [docs[ids[(i * 37 + j * 101) % len(ids)]] for j in range(PASSAGES_PER_QUERY)]
        out.append(CalibrationQuery.pick(queries[qid], judged, others))
    return out


def bundled_texts() -> list[str]:
    """Texts a bi-encoder calibrates on: bundled passages and queries, both, since it embeds both kinds.

    The embedder has no model-specific file: an index is built before any query is known, and a general
    English sample kept SciFact dense-retrieval nDCG@10 within the change ``benchmarks/embed_speed.py``
    reports (README).
    """
    from rankwise.corpus.beir import load_queries

    docs = _bundled_documents()
    queries = [text for _, text in sorted(load_queries(SAMPLE_KB).items())]
    return spread([docs[i] for i in sorted(docs)]) + spread(queries)


def _bundled_documents() -> dict[str, str]:
    """The bundled knowledge base as ``{doc_id: title + text}``, the text a model scores for a document."""
    from rankwise.corpus import load_documents

    return {d.id: f"{d.title}\n{d.text}" if d.title else d.text for d in load_documents(SAMPLE_KB)}


def calibration_batches(rows: Sequence[Sequence[int]], token_types: Sequence[Sequence[int]], pad_id: int
                        ) -> list[dict[str, np.ndarray]]:
    """Tokenized calibration windows in fixed batches of :data:`CALIBRATION_BATCH_ROWS`, padded like requests."""
    step = CALIBRATION_BATCH_ROWS
    return [pad_batch(rows[s:s + step], token_types[s:s + step], pad_id) for s in range(0, len(rows), step)]


def write_calibration(path: Path, queries: Iterable[CalibrationQuery]) -> Path:
    """Write a calibration file atomically (aside, then renamed), never leaving a half file behind."""
    with atomic_writer(path) as fh:
        for item in queries:
            fh.write(json.dumps({"query": item.query, "texts": list(item.texts)}, ensure_ascii=False) + "\n")
    return path


def read_calibration(path: Path) -> list[CalibrationQuery]:
    """Parse a calibration file; a malformed line is a :class:`ModelError` naming the file and line."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"cannot read calibration file '{path}': {err}") from err
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            query, texts = row["query"], row["texts"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ModelError(f"{path}:{number}: expected {{\"query\": str, \"texts\": [str, ...]}} ({err})") from err
        if not isinstance(query, str) or not query.strip() or not isinstance(texts, list) or not texts \
                or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ModelError(f"{path}:{number}: 'query' must be a non-empty string and 'texts' a non-empty "
                             "list of non-empty strings")
        out.append(CalibrationQuery(query, tuple(texts)))
    if not out:
        raise ModelError(f"calibration file '{path}' has no queries")
    return out


def calibration_digest(model_dir: Path, explicit: str | Path | None = None) -> str:
    """Which calibration windows :func:`calibration_queries` would pick, as a digest of that file's bytes
    (``bundled`` for the bundled knowledge base's): static int8 scores depend on it."""
    path = Path(explicit) if explicit is not None else model_dir / CALIBRATION_FILE
    if explicit is None and not path.is_file():
        return "bundled"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else f"missing:{path}"


def calibration_queries(model_dir: Path, explicit: str | Path | None = None) -> tuple[list[CalibrationQuery], Source]:
    """The calibration queries for ``model_dir`` and where they came from (see the module docstring)."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ModelError(f"calibration file '{path}' does not exist")
        return spread(read_calibration(path)), "file"
    if (model_dir / CALIBRATION_FILE).is_file():
        return spread(read_calibration(model_dir / CALIBRATION_FILE)), "model"
    return bundled_queries(), "bundled"
