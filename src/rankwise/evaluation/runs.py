"""TREC run and qrels files, the formats ``trec_eval`` (and ir_measures, ranx, pyserini) read.

* run: ``query_id Q0 document_id rank score tag`` — one line per retrieved document;
* qrels: ``query_id 0 document_id label``.

Why our own small reader instead of ``ir_measures.read_trec_run``: a malformed line must become one
error that names the file and line, and a document listed twice for one query must be an error instead of
silently keeping one of the scores — the library readers do neither.

trec_eval orders a ranking by the score column (not the rank column). A rankwise ranking mixes scales (the
reranked head carries reranker scores, the tail keeps first-stage scores), so :func:`write_trec_run`
writes a score derived from the rank (``n - rank + 1``): any tool then sees exactly the ranking rankwise
produced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from rankwise.evaluation.errors import EvaluationError
from rankwise.storage import atomic_writer

#: ``{query_id: {document_id: score}}`` — higher is better; the shape ir_measures evaluates.
Run = dict[str, dict[str, float]]
#: ``{query_id: {document_id: label}}``
Qrels = dict[str, dict[str, int]]


def run_from_rankings(rankings: Mapping[str, Sequence[str]]) -> Run:
    """Rankings (document ids, best first) as a run whose scores reproduce the order exactly."""
    return {qid: {doc: float(len(docs) - i) for i, doc in enumerate(docs)} for qid, docs in rankings.items()}


def write_trec_run(rankings: Mapping[str, Sequence[str]], path: str | Path, tag: str) -> Path:
    """Write rankings (best first) as a TREC run file; the tag must be one token (no whitespace)."""
    if not tag or any(ch.isspace() for ch in tag):
        raise EvaluationError(f"run tag '{tag}' must be one non-empty token without spaces")
    path = Path(path)
    with atomic_writer(path) as fh:
        for qid, docs in rankings.items():
            for rank, doc in enumerate(docs, start=1):
                fh.write(f"{_token(qid, 'query id')} Q0 {_token(doc, 'document id')} {rank} "
                         f"{len(docs) - rank + 1} {tag}\n")
    return path


def read_trec_run(path: str | Path) -> Run:
    """``{query_id: {document_id: score}}`` from a TREC run file (6 whitespace-separated columns)."""
    run: Run = {}
    for where, cols in _lines(path, 6, "query_id Q0 document_id rank score tag"):
        qid, _, doc, _, score, _ = cols
        docs = run.setdefault(qid, {})
        if doc in docs:
            raise EvaluationError(f"{where}: document '{doc}' is listed twice for query '{qid}'")
        docs[doc] = _number(score, where, "score", integer=False)
    return run


def write_trec_qrels(qrels: Mapping[str, Mapping[str, int]], path: str | Path) -> Path:
    path = Path(path)
    with atomic_writer(path) as fh:
        for qid, docs in qrels.items():
            for doc, label in docs.items():
                fh.write(f"{_token(qid, 'query id')} 0 {_token(doc, 'document id')} {int(label)}\n")
    return path


def read_trec_qrels(path: str | Path) -> list[tuple[str, str, int]]:
    """``(query_id, document_id, label)`` triples in file order — duplicates kept so callers can report them."""
    return [(cols[0], cols[2], _number(cols[3], where, "label", integer=True))
            for where, cols in _lines(path, 4, "query_id 0 document_id label")]


def _lines(path: str | Path, columns: int, layout: str) -> Iterable[tuple[str, list[str]]]:
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"file '{path}' does not exist")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            cols = line.split()
            if not cols:
                continue
            if len(cols) != columns:
                raise EvaluationError(f"{path}:{lineno}: expected {columns} columns '{layout}', got {len(cols)}")
            yield f"{path}:{lineno}", cols


def _number(text: str, where: str, what: str, *, integer: bool) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise EvaluationError(f"{where}: {what} '{text}' is not a number") from None
    if integer:
        if not value.is_integer():
            raise EvaluationError(f"{where}: {what} '{text}' is not an integer")
        return int(value)
    return value


def _token(value: str, what: str) -> str:
    if not value or any(ch.isspace() for ch in value):
        raise EvaluationError(f"{what} '{value}' contains whitespace; TREC files need single-token ids")
    return value
