"""Option values that several layers and every front end share, as ``Literal`` types with one validator each.

A first stage, a fusion or a backend is named the same way in the Python API, the CLI, the HTTP API and
evaluation reports; declaring each set of names once (and validating it with :func:`choose`) keeps the
names, the error message and the error class from drifting apart between those front ends.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar, get_args

from rankwise.errors import QueryError, RankwiseError

FirstStageMethod = Literal["bm25", "dense", "hybrid"]
Fusion = Literal["rrf", "convex"]
RerankFusion = Literal["none", "rrf"]


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """What a pipeline retrieves and how it orders the result: the knobs a request, an experiment arm and
    the server each may set. ``None`` means "not set here": :meth:`over` fills it from the layer below
    (request over arm over server), and a ``rerank_fusion`` still unset is the reranker's declared one."""

    first_stage: FirstStageMethod | None = None
    retrieve_k: int | None = None
    rerank_k: int | None = None
    rerank_fusion: RerankFusion | None = None

    def __post_init__(self) -> None:
        # checked where the settings are made (a CLI flag, a request, an experiment file), so a typo fails
        # before minutes of evaluation or at server start, with the same line everywhere
        if self.first_stage is not None:
            choose(self.first_stage, FIRST_STAGE_METHODS, "first stage")
        if self.rerank_fusion is not None:
            choose(self.rerank_fusion, RERANK_FUSIONS, "rerank fusion")
        if self.retrieve_k is not None and self.retrieve_k <= 0:
            raise QueryError(f"retrieve_k must be positive (got {self.retrieve_k})")
        if self.rerank_k is not None and self.rerank_k < 0:
            raise QueryError(f"rerank_k must not be negative (got {self.rerank_k})")

    def over(self, below: PipelineSettings) -> PipelineSettings:
        """These settings where set, ``below``'s elsewhere."""
        return PipelineSettings(*(mine if mine is not None else theirs
                                  for mine, theirs in zip(astuple(self), astuple(below), strict=True)))


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


DEFAULT_PIPELINE = PipelineSettings(first_stage="hybrid", retrieve_k=100, rerank_k=100)
"""What a setting left unset everywhere is: the hybrid first stage's top 100, all of them reranked (the fusion
stays the reranker's declared one)."""


def no_reranker(spec: str | None) -> bool:
    """Whether a reranker spec asks for none: unset, empty or ``none`` in any case — read the same way by the
    CLI, the server's roles and experiment arms, and every loader."""
    return spec is None or spec.strip().lower() in ("", "none")


def choose_many(spec: str | Sequence[str], allowed: Sequence[T], what: str) -> list[T]:
    """A comma list (or sequence) of values from ``allowed``, de-duplicated in order; at least one."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    values = list(dict.fromkeys(s.strip() for s in items if s.strip()))
    if not values:
        raise QueryError(f"no {what} given; choose from {', '.join(allowed)}")
    return [choose(v, allowed, what) for v in values]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def format_duration(seconds: float) -> str:
    """``seconds`` as :func:`parse_duration` reads it, in the largest unit that divides it (``30d``, ``90s``)."""
    for unit, size in sorted(_SECONDS.items(), key=lambda item: -item[1]):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def parse_duration(value: str, flag: str) -> float:
    """``90s``, ``30m``, ``2h``, ``30d``, ``1w`` → seconds; one line naming ``flag`` otherwise."""
    match = _DURATION.match(value)
    if not match or float(match.group(1)) <= 0:
        raise QueryError(f"{flag} '{value}' is not a duration; write a positive number with a unit, like 30m, 2h or 30d")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def parse_share(value: str, flag: str) -> float:
    """``10%`` or ``0.1`` → 0.1; one line naming ``flag`` unless it is a share in [0, 1]."""
    text = value.strip()
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        share = -1.0
    if not 0 <= share <= 1:
        raise QueryError(f"{flag} '{value}' is not a share; write a percentage like 10% or a fraction like 0.1")
    return share


def since_timestamp(value: str, now: datetime | None = None, *, error: type[RankwiseError] = QueryError) -> str:
    """``30m``/``2h``/``7d``/``2w`` (that long ago) or an ISO 8601 time → ISO UTC text with milliseconds.

    Every log rankwise keeps (audit, query log, monitoring) stores times as such text, which sorts as
    time, so a ``--since`` given either way is compared with it directly. A time without an offset is UTC.
    """
    text = value.strip()
    match = _DURATION.match(text)
    if match:
        moment = (now or datetime.now(UTC)) - timedelta(seconds=float(match.group(1)) * _SECONDS[match.group(2)])
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise error(f"'{value}' is neither a duration like 30m, 2h, 7d nor an ISO time like "
                        "2025-01-31T12:00") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")
