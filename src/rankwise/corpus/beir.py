"""Queries and relevance judgements in BEIR layout (``queries.jsonl``, ``qrels/<split>.tsv``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rankwise.errors import CorpusError
from rankwise.jsonl import read_lines

Qrels = dict[str, dict[str, int]]


def load_queries(dataset_dir: str | Path) -> dict[str, str]:
    """All queries of a BEIR dataset as ``{query_id: text}`` (every split shares one file)."""
    path = Path(dataset_dir) / "queries.jsonl"
    if not path.is_file():
        raise CorpusError(f"{dataset_dir}: no queries.jsonl (is this a BEIR dataset directory?)")
    queries: dict[str, str] = {}
    for lineno, line in read_lines(path, CorpusError):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            queries[str(record["_id"])] = str(record["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CorpusError(f"{path}:{lineno}: expected {{\"_id\", \"text\"}} JSON ({err})") from None
    return queries


def available_splits(dataset_dir: str | Path) -> list[str]:
    return sorted(p.stem for p in (Path(dataset_dir) / "qrels").glob("*.tsv"))


def load_qrels(dataset_dir: str | Path, split: str) -> Qrels:
    """``{query_id: {doc_id: grade}}`` from ``qrels/<split>.tsv`` (header optional, CRLF tolerated)."""
    path = Path(dataset_dir) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        splits = ", ".join(available_splits(dataset_dir)) or "none"
        raise CorpusError(f"{dataset_dir}: no qrels for split '{split}' (available: {splits})")
    qrels: Qrels = {}
    reader = csv.reader((line for _, line in read_lines(path, CorpusError)), delimiter="\t")
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or (lineno == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid")):
                continue
            if len(row) < 3:
                raise CorpusError(f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score'")
            try:
                grade = int(float(row[-1]))
            except (ValueError, OverflowError):
                raise CorpusError(f"{path}:{lineno}: score '{row[-1]}' is not a number") from None
            qrels.setdefault(row[0].strip(), {})[row[-2].strip()] = grade
    except csv.Error as err:
        raise CorpusError(f"{path}:{reader.line_num}: unreadable TSV ({err})") from None
    if not qrels:
        raise CorpusError(f"{path}: the split '{split}' has no judgements")
    return qrels
