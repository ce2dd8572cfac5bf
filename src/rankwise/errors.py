"""User-facing errors.

Every failure a user can cause (bad input, missing index, unknown model, network needed while offline)
raises a subclass of :class:`RankwiseError` whose message is one line that says what went wrong *and what
to do*. The CLI prints that line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations


class RankwiseError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is a single actionable line."""

    exit_code: int = 2


class CorpusError(RankwiseError):
    """The source corpus is missing, empty or malformed."""


class IndexNotFoundError(RankwiseError):
    """No usable index at the given path (missing, incomplete or corrupt)."""


class ModelError(RankwiseError):
    """A model id/path cannot be resolved or loaded (unknown, corrupt, or needs the network)."""


class QueryError(RankwiseError):
    """The query or search options are invalid (e.g. empty query, unknown first stage)."""
