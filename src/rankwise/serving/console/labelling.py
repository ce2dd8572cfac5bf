"""Labelling in the browser: domain experts work through a sheet made by ``rankwise label`` without
opening a CSV.

``--label-dir DIR`` holds sheets: each directory under it (or DIR itself) with the ``labels.jsonl`` that
``rankwise label --out-dir`` writes. Each annotator's labels go to ``<sheet>/by/<annotator>.jsonl`` — a
filled-in copy of the sheet (rows with ``label``, ``annotator`` and ``notes``), rewritten atomically on
every label, so a closed browser resumes at the first unlabelled row and the files feed
``rankwise label-import <sheet>/by/*.jsonl`` like sheets filled in a spreadsheet. The annotator is the
signed-in key's name: two experts never write to one file.
"""

from __future__ import annotations

import json
import re
import threading
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


def annotator_file(name: str) -> str:
    """A file name for annotator ``name`` (key names are free text)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "annotator"


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

    def labelled(self, sheet: str, annotator: str) -> list[SheetRow]:
        """The sheet's rows with this annotator's labels (None where not labelled yet)."""
        rows = self.rows(sheet)
        path = self._dir(sheet) / BY / f"{annotator_file(annotator)}.jsonl"
        if not path.is_file():
            return rows
        done = {(r.query_id, r.document_id): r for r in read_sheet(path)}
        return [replace(row, label=done[key].label, notes=done[key].notes, annotator=annotator)
                if (key := (row.query_id, row.document_id)) in done else row for row in rows]

    def progress(self, sheet: str, annotator: str) -> Progress:
        rows = self.labelled(sheet, annotator)
        return Progress(sheet, len(rows), sum(1 for r in rows if r.label is not None),
                        next((i for i, r in enumerate(rows) if r.label is None), None))

    def save(self, sheet: str, annotator: str, position: int, label: int, notes: str | None) -> None:
        """Record ``label`` on row ``position`` for ``annotator`` (the whole file rewritten atomically)."""
        if label not in LABELS:
            raise EvaluationError(f"label {label} is not one of {', '.join(map(str, LABELS))}")
        with self._lock:
            rows = self.labelled(sheet, annotator)
            if not 0 <= position < len(rows):
                raise EvaluationError(f"row {position + 1} is not in sheet '{sheet}' ({len(rows)} rows)")
            rows[position] = replace(rows[position], label=label, annotator=annotator, notes=notes or None)
            out = self._dir(sheet) / BY
            out.mkdir(exist_ok=True)
            with atomic_writer(out / f"{annotator_file(annotator)}.jsonl") as fh:
                for row in rows:
                    if row.label is not None:
                        fh.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
