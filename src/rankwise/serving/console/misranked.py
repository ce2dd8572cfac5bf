"""The misranked page's data: pairs of served documents whose order users' feedback contradicts (what
``rankwise feedback export --misranked`` reports), with both documents shown, and the step that turns
them into a labelling sheet so an expert settles each pair in the labelling view."""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rankwise.errors import RankwiseError
from rankwise.evaluation.labeling import SheetRow, write_sheet
from rankwise.feedback.export import MisrankedPair, export_goldset
from rankwise.serving.state import ServingState

#: the pairs the page shows: the most frequent first, as in the export's report
SHOWN = 50
SINCE = "30d"
SNIPPET_CHARS = 400


def misranked_pairs(state: ServingState) -> tuple[list[MisrankedPair], str | None]:
    """The most frequent misranked pairs of the last 30 days, or why there are none to show."""
    if state.feedback is None:
        return [], "no query log (--feedback-db none): misranked pairs come from its feedback"
    state.feedback.flush()
    with tempfile.TemporaryDirectory() as scratch:  # the gold set itself is `rankwise feedback export`'s
        try:
            summary = export_goldset(state.feedback, since=SINCE, out=Path(scratch) / "gold.jsonl",
                                     misranked_limit=SHOWN)
        except RankwiseError as err:
            return [], str(err)
    if not summary.misranked:
        return [], "the served lists agree with every label users' feedback gives so far"
    return list(summary.misranked), None


def misranked_view(state: ServingState, visible: Collection[str] | None = None) -> dict[str, Any]:
    """The pairs of both documents ``visible`` to the viewer (None: all), each document with its title and
    the start of its text."""
    pairs, problem = misranked_pairs(state)
    pairs = [p for p in pairs if visible is None
             or (p.preferred.doc_id in visible and p.placed_above.doc_id in visible)]
    documents = state.index.docstore if state.index is not None else None

    def shown(doc_id: str) -> dict[str, str]:
        doc = documents.document(doc_id) if documents is not None else None
        return {"title": (doc.title if doc else "") or doc_id, "text": (doc.text[:SNIPPET_CHARS] if doc else "")}

    return {"problem": problem, "since": SINCE,
            "pairs": [{"pair": p, "preferred": shown(p.preferred.doc_id), "placed_above": shown(p.placed_above.doc_id)}
                      for p in pairs]}


def sheet_from_misranked(view: dict[str, Any], label_dir: Path) -> tuple[str, int]:
    """Write the pairs of ``view`` (what the page showed) as a labelling sheet ``misranked-<UTC time>`` under
    ``label_dir``: each pair's two documents as rows of its query. Returns the sheet's name and its rows."""
    if not view["pairs"]:
        raise RankwiseError(view["problem"] or "no misranked pairs")
    rows: list[SheetRow] = []
    seen: set[tuple[str, str]] = set()
    for item in view["pairs"]:
        pair: MisrankedPair = item["pair"]
        for served, shown in ((pair.placed_above, item["placed_above"]), (pair.preferred, item["preferred"])):
            if (pair.query_id, served.doc_id) not in seen:
                seen.add((pair.query_id, served.doc_id))
                rows.append(SheetRow(pair.query_id, pair.query, served.rank, served.doc_id, shown["title"],
                                     shown["text"]))
    name = "misranked-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    write_sheet(rows, label_dir / name)
    return name, len(rows)
