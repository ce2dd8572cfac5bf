"""Turn a reranker spec from the CLI/API/server into a :class:`Reranker`.

A spec is ``none``, a registry alias or version (``production``, ``candidate``, ``v3``), a local model
directory, or a Hugging Face hub id already in the local cache. Registry names always mean the registry —
over hub ids and over a local directory of the same name (pass ``./v3`` for that) — so that
``--reranker production`` means the same verified model in the CLI, the Python API and the server, whatever
the working directory holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rankwise.errors import ModelError, QueryError
from rankwise.inference.backends import BACKEND_CHOICES, BackendChoice
from rankwise.models import resolve_model
from rankwise.options import choose, no_reranker
from rankwise.registry import Registry, names_registry
from rankwise.rerank.base import Reranker


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How a reranker is loaded, whoever asks: the CLI's ``--backend/--device/--max-length/--registry``,
    the server (for production, canary, arms, shadow and the scheduled evaluation alike) and library code.

    One value rather than four loose arguments, so that every model one command or server loads is loaded
    the same way, and a bad value is refused once, where the options are given, before any model loads.
    ``registry`` ``None`` is the default registry (``$RANKWISE_REGISTRY`` or the user data dir).
    """

    backend: BackendChoice = "auto"
    device: str = "cpu"
    #: tokens per (query, passage) window; ``None``: the length the model was trained with
    max_length: int | None = None
    registry: Path | None = None

    def __post_init__(self) -> None:
        choose(self.backend, BACKEND_CHOICES, "inference backend")
        if self.max_length is not None and self.max_length < 16:
            raise QueryError(f"max_length must be at least 16 tokens (got {self.max_length})")


#: the constructor arguments a :class:`LoadOptions` carries, also accepted as keywords of :func:`load_reranker`
_OPTION_FIELDS = ("backend", "device", "max_length")


def load_reranker(spec: str | None, options: LoadOptions = LoadOptions(), *, registry: Registry | None = None,
                  **extra: Any) -> Reranker | None:
    """``None``/``"none"`` → no reranker; otherwise the kind of reranker the model declares (offline-safe):
    a :class:`CrossEncoderReranker`, a :class:`BiEncoderReranker` for a fine-tuned bi-encoder, or a
    :class:`ResidualReranker` for a cross-encoder trained as a correction to the dense first stage.

    A registry name is resolved and verified file by file by :meth:`Registry.get` before anything loads,
    in ``registry`` when the caller already holds one open, else in ``options.registry``. ``extra`` goes to
    the reranker's constructor (``name``, ``threads``, window options…); ``backend``, ``device`` and
    ``max_length`` given there replace ``options``' (``load_reranker(path, backend="torch")`` in a script).
    """
    if no_reranker(spec):
        return None
    given = {name: extra.pop(name) for name in _OPTION_FIELDS if name in extra}
    if given:
        options = replace(options, **given)
    arguments = {"backend": options.backend, "device": options.device, "max_length": options.max_length, **extra}
    spec = spec.strip()
    if names_registry(spec):
        try:
            entry = (registry or Registry(options.registry)).get(spec)
        except ModelError as err:
            if Path(spec).is_dir():
                raise ModelError(f"{err} (to load the local directory '{spec}' instead, pass ./{spec})") from err
            raise
        arguments.setdefault("name", f"{entry.version} ({spec})" if spec != entry.version else entry.version)
        return _load(entry.path, arguments)
    return _load(spec, arguments)


def check_reranker_exists(spec: str | None, options: LoadOptions = LoadOptions()) -> None:
    """Refuse, in one :class:`ModelError` line, a spec that names nothing: an unknown registry name or
    version, a directory that does not exist or holds no model, a hub id that is not in the local cache.

    Loads nothing. A server checks every model it is asked for (production, canary, experiment arms,
    shadow) this way before loading any, so a typo stops it at start whatever role the name was given
    for; a model that exists but cannot load or score is a different failure, which the role's fallback
    handles (a canary or arm serves production's model, a shadow is left out) and ``/readyz`` names.
    """
    if no_reranker(spec):
        return
    spec = spec.strip()
    if names_registry(spec):
        Registry(options.registry).get(spec)
    else:
        resolve_model(spec)


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
