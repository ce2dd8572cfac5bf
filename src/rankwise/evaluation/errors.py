"""The evaluation framework's user errors (bad gold sets, unknown metrics, malformed gates or sheets)."""

from __future__ import annotations

from rankwise.errors import RankwiseError


class EvaluationError(RankwiseError):
    """An evaluation input or option is invalid; the message says which and how to fix it."""
