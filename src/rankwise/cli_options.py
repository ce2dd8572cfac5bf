"""Command-line options shared by several commands (search, eval, serve, models promote).

One declaration each, so a help text or a default cannot drift between the commands that must agree —
a model promoted under one ``--rerank-fusion`` has to be served with the same one. This module imports
only typer: the command modules import it without importing :mod:`rankwise.cli` (which imports them).
"""

from __future__ import annotations

from typing import Annotated

import typer

RerankK = Annotated[int, typer.Option(help="Candidates the reranker scores.")]
RerankFusion = Annotated[str, typer.Option(help="none: reranker order; rrf: fuse reranker and first-stage ranks.")]
MaxLength = Annotated[int | None, typer.Option(help="Reranker tokens per (query, passage) window "
                                                    "(default: the model's trained length).")]
