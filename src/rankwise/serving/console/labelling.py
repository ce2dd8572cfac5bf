"""Labelling in the browser: domain experts work through a sheet made by ``rankwise label`` without
opening a CSV.

``--label-dir DIR`` holds sheets: each directory under it (or DIR itself) with the ``labels.jsonl`` that
``rankwise label --out-dir`` writes. Each annotator's labels go to ``<sheet>/by/<annotator>.jsonl`` — a
filled-in copy of the sheet (rows with ``label``, ``annotator`` and ``notes``), rewritten atomically on
every label, so a closed browser resumes at the first unlabelled row and the files feed
``rankwise label-import <sheet>/by/*.jsonl`` like sheets filled in a spreadsheet. The annotator is the
signed-in key (its name in the labels, its id in the file name): two keys never write to one file. A key
with document groups sees only the rows whose documents those groups may read, as its searches do.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rankwise.evaluation.errors import EvaluationError
from rankwise.evaluation.labeling import SHEET_JSONL, SheetRow, read_sheet
from rankwise.storage import atomic_writer

#: the labels the page offers (keys 0–3), as the sheet's instructions describe them
LABELS = {0: "not relevant", 1: "related", 2: "relevant", 3: "perfect"}
BY = "by"


@dataclass(frozen=True, slots=True)
class Progress:
    sheet: str
    rows: int
    labelled: int
    #: the first row not labelled yet (None: the sheet is done)
    next_row: int | None


@dataclass(frozen=True, slots=True)
class Annotator:
    """Who labels: ``name`` goes into the labels (agreement reports name annotators by it), ``file`` is
    unique per key."""

    name: str
    file: str

    @classmethod
    def of_key(cls, name: str, key_id: str) -> Annotator:
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
        return cls(name or key_id, f"{readable}-{key_id}" if readable else key_id)


class LabelDesk:
    """The sheets under ``root`` and each annotator's labels on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def _found(self) -> dict[str, Path]:
        """Sheet name → its directory: each directory under the root holding a sheet, by its name, and a
        sheet in the root itself by the root's name."""
        found = {p.parent.name: p.parent for p in sorted(self.root.glob(f"*/{SHEET_JSONL}"))}
        if (self.root / SHEET_JSONL).is_file():
            found.setdefault(self.root.resolve().name or "sheet", self.root)
        return found

    def sheets(self) -> list[str]:
        return sorted(self._found())

    def _dir(self, sheet: str) -> Path:
        found = self._found().get(sheet)  # only what is listed: a name is never a path
        if found is None:
            raise EvaluationError(f"no labelling sheet '{sheet}' in the label directory")
        return found

    def rows(self, sheet: str) -> list[SheetRow]:
        return read_sheet(self._dir(sheet) / SHEET_JSONL)

    def labelled(self, sheet: str, annotator: Annotator, visible: Collection[str] | None = None) -> list[SheetRow]:
        """The sheet's rows ``visible`` to the annotator (None: all) with its labels (None where not yet)."""
        rows = [r for r in self.rows(sheet) if visible is None or r.document_id in visible]
        path = self._dir(sheet) / BY / f"{annotator.file}.jsonl"
        if not path.is_file():
            return rows
        done = {(r.query_id, r.document_id): r for r in read_sheet(path)}
        return [replace(row, label=done[key].label, notes=done[key].notes, annotator=annotator.name)
                if (key := (row.query_id, row.document_id)) in done else row for row in rows]

    def progress(self, sheet: str, annotator: Annotator, visible: Collection[str] | None = None) -> Progress:
        rows = self.labelled(sheet, annotator, visible)
        return Progress(sheet, len(rows), sum(1 for r in rows if r.label is not None),
                        next((i for i, r in enumerate(rows) if r.label is None), None))

    def save(self, sheet: str, annotator: Annotator, pair: tuple[str, str], label: int, notes: str | None,
             visible: Collection[str] | None = None) -> None:
        """Record ``label`` on the row of ``pair`` (query id, document id) — named, not numbered, so a sheet
        made again under the same name never takes a label meant for another row. The annotator's file is
        rewritten whole, atomically."""
        if label not in LABELS:
            raise EvaluationError(f"label {label} is not one of {', '.join(map(str, LABELS))}")
        with self._lock:
            rows = self.labelled(sheet, annotator, visible)
            found = [i for i, r in enumerate(rows) if (r.query_id, r.document_id) == pair]
            if not found:
                raise EvaluationError(f"sheet '{sheet}' has no row for query {pair[0]} and document {pair[1]}")
            rows[found[0]] = replace(rows[found[0]], label=label, annotator=annotator.name, notes=notes or None)
            out = self._dir(sheet) / BY
            out.mkdir(exist_ok=True)
            with atomic_writer(out / f"{annotator.file}.jsonl") as fh:
                for row in rows:
                    if row.label is not None:
                        fh.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
