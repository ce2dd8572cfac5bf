"""Turn a reranker spec from the CLI/API/server into a :class:`Reranker`.

A spec is ``none``, a registry alias or version (``production``, ``candidate``, ``v3``), a local model
directory, or a Hugging Face hub id already in the local cache. Registry names always mean the registry —
over hub ids and over a local directory of the same name (pass ``./v3`` for that) — so that
``--reranker production`` means the same verified model in the CLI, the Python API and the server, whatever
the working directory holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rankwise.errors import ModelError
from rankwise.registry import Registry, names_registry
from rankwise.rerank.base import Reranker


def load_reranker(spec: str | None, *, registry: Registry | None = None, **options: Any) -> Reranker | None:
    """``None``/``"none"`` → no reranker; otherwise the kind of reranker the model declares (offline-safe):
    a :class:`CrossEncoderReranker`, a :class:`BiEncoderReranker` for a fine-tuned bi-encoder, or a
    :class:`ResidualReranker` for a cross-encoder trained as a correction to the dense first stage.

    A registry name is resolved and verified file by file by :meth:`Registry.get` before anything loads.
    """
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    spec = spec.strip()
    if names_registry(spec):
        try:
            entry = (registry or Registry()).get(spec)
        except ModelError as err:
            if Path(spec).is_dir():
                raise ModelError(f"{err} (to load the local directory '{spec}' instead, pass ./{spec})") from err
            raise
        options.setdefault("name", f"{entry.version} ({spec})" if spec != entry.version else entry.version)
        return _load(entry.path, options)
    return _load(spec, options)


#: what a bi-encoder reranker accepts; the cross-encoder's window options do not apply to it
_BI_ENCODER_OPTIONS = frozenset({"backend", "max_length", "device", "threads", "name", "cache_size"})


def _load(model: str | Path, options: dict[str, Any]) -> Reranker:
    from rankwise.rerank.bi_encoder import BiEncoderReranker
    from rankwise.rerank.cross_encoder import CrossEncoderReranker
    from rankwise.rerank.declaration import read_declaration
    from rankwise.rerank.residual import ResidualReranker

    local = Path(model)
    declaration = read_declaration(local) if local.is_dir() else None
    if declaration is not None and declaration.residual is not None:
        return ResidualReranker(model, declaration=declaration, **options)
    if declaration is not None and declaration.kind == "bi-encoder":
        extra = sorted(k for k, v in options.items() if k not in _BI_ENCODER_OPTIONS and v is not None)
        if extra:
            raise ModelError(f"{', '.join(extra)}: cross-encoder options; '{model}' is a bi-encoder reranker")
        return BiEncoderReranker(model, declaration=declaration, **options)
    return CrossEncoderReranker(model, declaration=declaration, **options)
