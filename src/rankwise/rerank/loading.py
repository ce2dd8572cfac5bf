"""Turn a reranker spec from the CLI/API/server into a :class:`Reranker`.

A spec is ``none``, a registry alias or version (``production``, ``candidate``, ``v3``), a local model
directory, or a Hugging Face hub id already in the local cache. Registry names win over hub ids so that
``--reranker production`` means the same model in the CLI, the Python API and the server.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rankwise.registry import ALIASES, Registry
from rankwise.rerank.base import Reranker

_VERSION = re.compile(r"^v\d+$")


def load_reranker(spec: str | None, *, registry: Registry | None = None, **options: Any) -> Reranker | None:
    """``None``/``"none"`` → no reranker; otherwise a :class:`CrossEncoderReranker` (offline-safe)."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    from rankwise.rerank.cross_encoder import CrossEncoderReranker

    spec = spec.strip()
    if (spec in ALIASES or _VERSION.match(spec)) and not Path(spec).exists():
        entry = (registry or Registry()).get(spec)
        options.setdefault("name", f"{entry.version} ({spec})" if spec != entry.version else entry.version)
        return CrossEncoderReranker(entry.path, **options)
    return CrossEncoderReranker(spec, **options)
