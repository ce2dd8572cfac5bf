"""Build a gold set from real usage: labelling sheets out, annotators' labels back in.

1. :func:`build_sheet` runs production queries through the current pipeline and lists each query's top
   ``k`` documents; :func:`write_sheet` writes them as ``labels.csv`` (for spreadsheets; UTF-8 with a
   BOM so Excel shows accents) and ``labels.jsonl``, with empty ``label``/``annotator``/``notes`` columns.
2. Each domain expert fills in a copy. :func:`read_sheet` reads one back (CSV or JSONL); an empty label
   means "not judged", an empty annotator defaults to the sheet's file name.
3. :func:`merge_sheets` combines 2–3 annotators: majority vote per (query, document); ties are flagged
   and left out of the gold set; agreement is Cohen's kappa for two annotators (scikit-learn) and Fleiss'
   kappa for three or more (statsmodels), over the pairs every annotator labelled; every pair on which
   annotators disagree is listed.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rankwise.evaluation.errors import EvaluationError
from rankwise.evaluation.goldset import GoldSet, Judgement, LabelScale, majority_label, parse_label
from rankwise.pipeline import Pipeline
from rankwise.storage import atomic_writer

SHEET_CSV = "labels.csv"
SHEET_JSONL = "labels.jsonl"


@dataclass(frozen=True, slots=True)
class SheetRow:
    """One line of a labelling sheet: a query, one of its retrieved documents, and the (blank) label."""

    query_id: str
    query: str
    rank: int
    document_id: str
    title: str
    snippet: str
    label: int | None = None
    annotator: str | None = None
    notes: str | None = None


SHEET_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(SheetRow))


def build_sheet(pipeline: Pipeline, queries: Mapping[str, str], k: int = 20,
                progress: Callable[[int, int], None] | None = None,
                groups: Collection[str] | None = None) -> list[SheetRow]:
    """The top ``k`` documents of each query, as the pipeline ranks them today; with ``groups``, among the
    documents those groups may see (a sheet for annotators who may only read those)."""
    if k <= 0:
        raise EvaluationError(f"--k must be positive (got {k})")
    rows: list[SheetRow] = []
    for done, (qid, text) in enumerate(queries.items(), start=1):
        for r in pipeline.search(text, k=k, groups=groups).results:
            rows.append(SheetRow(qid, text, r.rank, r.doc_id, r.title, r.snippet))
        if progress is not None:
            progress(done, len(queries))
    return rows


def write_sheet(rows: Sequence[SheetRow], out_dir: str | Path) -> tuple[Path, Path]:
    """``labels.csv`` and ``labels.jsonl`` in ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EvaluationError(f"--out '{out}' is a file; pass a directory for the labelling sheets")
    out.mkdir(parents=True, exist_ok=True)
    csv_path, jsonl_path = out / SHEET_CSV, out / SHEET_JSONL
    with atomic_writer(csv_path, encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SHEET_COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in asdict(row).items()} for row in rows)
    with atomic_writer(jsonl_path) as fh:
        for row in rows:
            fh.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
    return csv_path, jsonl_path


def read_sheet(path: str | Path) -> list[SheetRow]:
    """A filled-in sheet (``.csv`` or ``.jsonl``); rows keep a blank label as ``None`` (not judged)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"labelling sheet '{path}' does not exist")
    records: list[tuple[str, dict[str, object]]] = []
    if path.suffix.lower() == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append((f"{path}:{lineno}", json.loads(line)))
                    except json.JSONDecodeError as error:
                        raise EvaluationError(f"{path}:{lineno}: not valid JSON ({error.msg})") from None
    else:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"query_id", "query", "document_id", "label"} - set(reader.fieldnames or [])
            if missing:
                raise EvaluationError(f"{path}: not a labelling sheet (missing columns {', '.join(sorted(missing))})")
            records = [(f"{path}:{lineno}", dict(row)) for lineno, row in enumerate(reader, 2)]
    return [_row(record, where, default_annotator=path.stem) for where, record in records]


def _row(record: dict[str, object], where: str, *, default_annotator: str) -> SheetRow:
    if not isinstance(record, dict) or not record.get("query_id") or not record.get("document_id"):
        raise EvaluationError(f"{where}: a sheet row needs query_id and document_id")
    text = {k: ("" if record.get(k) is None else str(record.get(k)).strip()) for k in SHEET_COLUMNS}
    try:
        rank = int(text["rank"] or 0)
    except ValueError:
        raise EvaluationError(f"{where}: rank '{text['rank']}' is not an integer") from None
    return SheetRow(query_id=text["query_id"], query=text["query"], rank=rank, document_id=text["document_id"],
                    title=text["title"], snippet=text["snippet"],
                    label=parse_label(text["label"], where) if text["label"] else None,
                    annotator=text["annotator"] or default_annotator, notes=text["notes"] or None)


@dataclass(frozen=True, slots=True)
class Agreement:
    """Chance-corrected agreement over the pairs every annotator labelled (``kappa`` NaN when undefined,
    e.g. everyone gave the same label to everything)."""

    statistic: str
    kappa: float
    observed: float
    items: int
    annotators: list[str]


@dataclass(frozen=True, slots=True)
class Disagreement:
    query_id: str
    query: str
    document_id: str
    labels: dict[str, int]
    majority: int | None

    @property
    def tie(self) -> bool:
        return self.majority is None


@dataclass(frozen=True)
class MergedLabels:
    goldset: GoldSet
    annotators: list[str]
    agreement: Agreement | None
    disagreements: list[Disagreement]
    unlabelled_rows: int

    @property
    def ties(self) -> list[Disagreement]:
        return [d for d in self.disagreements if d.tie]


def merge_sheets(sheets: Sequence[Sequence[SheetRow]], *, scale: LabelScale | None = None,
                 name: str = "goldset") -> MergedLabels:
    """Majority-vote gold set, agreement and disagreements from several annotators' sheets."""
    if not sheets:
        raise EvaluationError("no labelling sheets given")
    owners: dict[str, int] = {}
    for i, rows in enumerate(sheets):
        for annotator in {r.annotator for r in rows if r.label is not None}:
            if owners.setdefault(str(annotator), i) != i:
                raise EvaluationError(f"annotator '{annotator}' appears in two sheets; give each annotator's sheet "
                                      "its own name (annotator column or file name)")
    rows = [r for sheet in sheets for r in sheet]
    labelled = [r for r in rows if r.label is not None]
    individual = GoldSet((Judgement(r.query_id, r.query, r.document_id, int(r.label), r.annotator, r.notes)  # type: ignore[arg-type]
                          for r in labelled), name=name)
    individual.validate(scale)  # duplicates, out-of-scale labels, conflicting query texts → errors
    votes: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    notes: dict[tuple[str, str], list[str]] = defaultdict(list)
    texts: dict[str, str] = {}
    for r in labelled:
        votes[(r.query_id, r.document_id)][str(r.annotator)] = int(r.label)  # type: ignore[arg-type]
        texts.setdefault(r.query_id, r.query)
        if r.notes:
            notes[(r.query_id, r.document_id)].append(f"{r.annotator}: {r.notes}")
    annotators = sorted({a for v in votes.values() for a in v})
    merged: list[Judgement] = []
    disagreements: list[Disagreement] = []
    for (qid, doc), by_annotator in votes.items():
        label = majority_label(by_annotator.values())
        if len(set(by_annotator.values())) > 1:
            disagreements.append(Disagreement(qid, texts[qid], doc, dict(sorted(by_annotator.items())), label))
        if label is None:
            continue
        sole = len(by_annotator) == 1
        detail = " ".join(f"{a}={v}" for a, v in sorted(by_annotator.items()))
        merged.append(Judgement(qid, texts[qid], doc, label,
                                annotator=next(iter(by_annotator)) if sole else "majority",
                                notes="; ".join(([] if sole else [f"votes {detail}"]) + notes[(qid, doc)]) or None))
    return MergedLabels(GoldSet(merged, name=name), annotators, agreement(votes, annotators), disagreements,
                        unlabelled_rows=len(rows) - len(labelled))


def agreement(votes: Mapping[tuple[str, str], Mapping[str, int]], annotators: Sequence[str]) -> Agreement | None:
    """Cohen's kappa (2 annotators) or Fleiss' kappa (3+) over the pairs all of them labelled.

    Both come from well-kept libraries: ``sklearn.metrics.cohen_kappa_score`` (Cohen 1960) and
    ``statsmodels.stats.inter_rater.fleiss_kappa`` (Fleiss 1971). Unweighted: graded labels count a 2-vs-3
    disagreement the same as 0-vs-3.
    """
    if len(annotators) < 2:
        return None
    complete = [[v[a] for a in annotators] for v in votes.values() if all(a in v for a in annotators)]
    if not complete:
        return Agreement("cohen_kappa" if len(annotators) == 2 else "fleiss_kappa", float("nan"), float("nan"), 0,
                         list(annotators))
    observed = sum(len(set(item)) == 1 for item in complete) / len(complete)
    if len({label for item in complete for label in item}) < 2:
        kappa = float("nan")  # a single category: expected agreement is 1, kappa is 0/0
    elif len(annotators) == 2:
        from sklearn.metrics import cohen_kappa_score

        kappa = float(cohen_kappa_score([i[0] for i in complete], [i[1] for i in complete]))
    else:
        from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

        kappa = float(fleiss_kappa(aggregate_raters(complete)[0]))
    return Agreement("cohen_kappa" if len(annotators) == 2 else "fleiss_kappa",
                     kappa if math.isfinite(kappa) else float("nan"), observed, len(complete), list(annotators))


def write_disagreements(disagreements: Sequence[Disagreement], annotators: Sequence[str], path: str | Path) -> Path:
    """A CSV of the pairs annotators disagree on (one column per annotator; ``majority`` empty = tie)."""
    path = Path(path)
    with atomic_writer(path, encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["query_id", "query", "document_id", *annotators, "majority", "tie"])
        for d in disagreements:
            writer.writerow([d.query_id, d.query, d.document_id, *(d.labels.get(a, "") for a in annotators),
                             "" if d.majority is None else d.majority, "yes" if d.tie else ""])
    return path
