"""Option values that several layers and every front end share, as ``Literal`` types with one validator each.

A first stage, a fusion or a backend is named the same way in the Python API, the CLI, the HTTP API and
evaluation reports; declaring each set of names once (and validating it with :func:`choose`) keeps the
names, the error message and the error class from drifting apart between those front ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar, get_args

from rankwise.errors import QueryError

FirstStageMethod = Literal["bm25", "dense", "hybrid"]
Fusion = Literal["rrf", "convex"]
RerankFusion = Literal["none", "rrf"]
Granularity = Literal["document", "passage"]

FIRST_STAGE_METHODS: tuple[FirstStageMethod, ...] = get_args(FirstStageMethod)
FUSIONS: tuple[Fusion, ...] = get_args(Fusion)
RERANK_FUSIONS: tuple[RerankFusion, ...] = get_args(RerankFusion)
GRANULARITIES: tuple[Granularity, ...] = get_args(Granularity)

T = TypeVar("T", bound=str)


def choose(value: str, allowed: Sequence[T], what: str) -> T:
    """``value`` if it is one of ``allowed``; otherwise one :class:`QueryError` line naming the choices."""
    if value not in allowed:
        raise QueryError(f"unknown {what} '{value}'; choose {', '.join(allowed)}")
    return value  # type: ignore[return-value]


def choose_many(spec: str | Sequence[str], allowed: Sequence[T], what: str) -> list[T]:
    """A comma list (or sequence) of values from ``allowed``, de-duplicated in order; at least one."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    values = list(dict.fromkeys(s.strip() for s in items if s.strip()))
    if not values:
        raise QueryError(f"no {what} given; choose from {', '.join(allowed)}")
    return [choose(v, allowed, what) for v in values]
