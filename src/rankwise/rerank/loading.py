"""Turn a reranker spec from the CLI/API/server (``none``, a path, a hub id) into a :class:`Reranker`."""

from __future__ import annotations

from typing import Any

from rankwise.rerank.base import Reranker


def load_reranker(spec: str | None, **options: Any) -> Reranker | None:
    """``None``/``"none"`` → no reranker; anything else → :class:`CrossEncoderReranker` (offline-safe)."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    from rankwise.rerank.cross_encoder import CrossEncoderReranker

    return CrossEncoderReranker(spec, **options)
