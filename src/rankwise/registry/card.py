"""The model card: what a registered version is, where it came from, what it was trained on, how it scored.

Cards are JSON (``model_card.json`` in every version) and are turned into objects and back only here.
:meth:`ModelCard.from_dict` checks the type of every key the code reads, so a hand-edited or foreign card
fails once, in one line naming the field, instead of deep inside training or serving; keys it does not
know are kept in ``extra``. :meth:`ModelCard.to_dict` gives back exactly the object a card was read from
(unknown keys and keys recorded as ``null`` included), so cards written by any earlier rankwise keep
loading and ``rankwise models show``/``diff`` print them as they were written.

A known key that was never given stays out of the JSON; one given as ``None`` is recorded as ``null``.
The difference is kept (``nulls``) because the two writers record different keys — a trained model says
``"continued_from": null``, an added one has no such key — and a card must re-serialise as it was read.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Self

from rankwise.errors import ModelError

CARD = "model_card.json"


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


#: the default of every known field: "not in the card", as opposed to ``None``, "recorded as null"
_UNSET: Any = _Unset()


class CardError(ModelError):
    """A card (or a part of one) whose JSON does not have the shape the code reads."""

    def __init__(self, expected: str, got: Any, path: tuple[str, ...] = ()) -> None:
        self.expected, self.got, self.path = expected, got, path
        where = f"field '{'.'.join(path)}'" if path else "it"
        #: what is wrong, without saying which card (:func:`read_card` adds the file)
        self.detail = f"{where} must be {expected}, not {_describe(got)}"
        super().__init__(f"malformed model card: {self.detail}")

    def within(self, key: str) -> CardError:
        """The same error, seen from the object that holds the field under ``key``."""
        return CardError(self.expected, self.got, (key, *self.path))


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


# ---------------------------------------------------------------------- field kinds: check, then normalise
def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise CardError("a string", value)


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise CardError("an integer", value)


def _number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value  # an int stays an int, so the card re-serialises as written
    raise CardError("a number", value)


def _object(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))  # a card is a value: later edits of the caller's dict must not reach it
    raise CardError("an object", value)


def _texts(value: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise CardError("a list of strings", value)


def _scores(value: Any) -> dict[str, float]:
    scores = _object(value)
    for metric, score in scores.items():
        try:
            _number(score)
        except CardError as err:
            raise err.within(metric) from None
    return scores


def _section(cls: type[_Section]) -> Callable[[Any], _Section]:
    def check(value: Any) -> _Section:
        return value if isinstance(value, cls) else cls.from_dict(value)

    return check


def _known(kind: Callable[[Any], Any] | type[_Section], key: str | None = None) -> Any:
    """A field the card's JSON holds under ``key`` (default: the field's name), checked by ``kind`` (a
    check, or the section class an object under that key is read as)."""
    if isinstance(kind, type):
        kind = _section(kind)
    return field(default=_UNSET, metadata={"kind": kind, "key": key})


@cache
def _known_fields(cls: type[_Section]) -> tuple[tuple[Field[Any], str], ...]:
    return tuple((f, f.metadata["key"] or f.name) for f in fields(cls) if "kind" in f.metadata)


@dataclass(frozen=True, kw_only=True)
class _Section:
    """A JSON object with typed known keys, the unknown ones in ``extra``, and which known keys are null."""

    #: keys this version of rankwise does not read, kept so the card round-trips
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: the known keys recorded as ``null``; derived from the arguments when not given (``None`` → null)
    nulls: frozenset[str] = field(default=_UNSET, repr=False)

    def __post_init__(self) -> None:
        given = None if self.nulls is _UNSET else self.nulls
        nulls = set()
        for f, key in _known_fields(type(self)):
            value = getattr(self, f.name)
            if value is _UNSET:
                object.__setattr__(self, f.name, None)
            elif value is None:
                if given is None or key in given:
                    nulls.add(key)
            else:
                try:
                    object.__setattr__(self, f.name, f.metadata["kind"](value))
                except CardError as err:
                    raise err.within(key) from None
        extra = _object(self.extra)
        clash = sorted(set(extra) & {key for _, key in _known_fields(type(self))})
        if clash:
            raise ValueError(f"{type(self).__name__}.extra repeats known keys {clash}; set them as fields")
        object.__setattr__(self, "extra", extra)
        object.__setattr__(self, "nulls", frozenset(nulls))

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """The card (or part of one) ``data`` describes; a :class:`CardError` names a wrongly typed field."""
        if not isinstance(data, Mapping):
            raise CardError("a JSON object", data)
        known = {key: f.name for f, key in _known_fields(cls)}
        return cls(**{known[k]: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known},
                   nulls=frozenset(k for k in known if k in data and data[k] is None))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys sorted as in the file: exactly what :meth:`from_dict` read."""
        out: dict[str, Any] = copy.deepcopy(dict(self.extra))
        for f, key in _known_fields(type(self)):
            value = getattr(self, f.name)
            if value is not None:
                out[key] = _plain(value)
            elif key in self.nulls:
                out[key] = None
        return {key: out[key] for key in sorted(out)}


def _plain(value: Any) -> Any:
    if isinstance(value, _Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    return value


@dataclass(frozen=True, kw_only=True)
class Validation(_Section):
    """How the checkpoint training kept scored on its held-out queries, and its verdict against the first
    stage it reranks (``against_first_stage``: ``None`` when nothing was held out)."""

    ndcg10: float | None = _known(_number, "nDCG@10")
    against_first_stage: Mapping[str, Any] | None = _known(_object)


@dataclass(frozen=True, kw_only=True)
class CardMetrics(_Section):
    """A trained model's ``validation``; an added model's ``evaluation`` (metric → mean) on a gold set,
    beside its ``first_stage``'s, with which gold set, split and how many queries."""

    validation: Validation | None = _known(Validation)  # noqa: RUF009 - _known returns a dataclasses.field
    evaluation: Mapping[str, float] | None = _known(_scores)
    first_stage: Mapping[str, float] | None = _known(_scores)
    goldset: str | None = _known(_text)
    split: str | None = _known(_text)
    queries: int | None = _known(_count)


@dataclass(frozen=True, kw_only=True)
class TrainingData(_Section):
    """What a model was trained on: a BEIR ``dataset`` and ``split``, or a ``goldset`` file (absolute, so a
    continued model can replay them), and the digests of every query it saw (the leakage guard's input)."""

    dataset: str | None = _known(_text)
    split: str | None = _known(_text)
    goldset: str | None = _known(_text)
    fingerprint: str | None = _known(_text)
    index_fingerprint: str | None = _known(_text)
    query_digests: Sequence[str] | None = _known(_texts)
    max_positives: int | None = _known(_count)
    title_queries: int | None = _known(_count)
    replay: Mapping[str, Any] | None = _known(_object)


@dataclass(frozen=True, kw_only=True)
class ModelCard(_Section):
    """One version's card. ``version``, ``created_at`` and ``weights_sha256`` are set by the registry when
    it registers the model; ``parent`` is the version that was production (or was continued) at the time,
    ``continued_from`` the version training started from; ``source``, ``name``, ``added_with`` describe a
    model added rather than trained."""

    version: str | None = _known(_text)
    created_at: str | None = _known(_text)
    weights_sha256: str | None = _known(_text)
    name: str | None = _known(_text)
    source: str | None = _known(_text)
    source_weights_sha256: str | None = _known(_text)
    added_with: str | None = _known(_text)
    base_model: str | None = _known(_text)
    continued_from: str | None = _known(_text)
    parent: str | None = _known(_text)
    max_length: int | None = _known(_count)
    training_data: TrainingData | None = _known(TrainingData)  # noqa: RUF009 - _known returns a dataclasses.field
    metrics: CardMetrics | None = _known(CardMetrics)  # noqa: RUF009 - _known returns a dataclasses.field
    recipe: Mapping[str, Any] | None = _known(_object)
    residual: Mapping[str, Any] | None = _known(_object)
    #: a bi-encoder with frozen passages: where its passage encoder lives and what it was copied from
    passage_encoder: Mapping[str, Any] | None = _known(_object)
    hyperparameters: Mapping[str, Any] | None = _known(_object)
    training: Mapping[str, Any] | None = _known(_object)

    @property
    def validation_ndcg10(self) -> float | None:
        """nDCG@10 of the kept checkpoint on training's held-out queries (``None``: not trained here)."""
        validation = self.metrics.validation if self.metrics else None
        return None if validation is None or validation.ndcg10 is None else float(validation.ndcg10)

    @property
    def evaluation(self) -> Mapping[str, float]:
        """An added model's scores on the gold set it was evaluated on when added (empty: not evaluated)."""
        return dict(self.metrics.evaluation or {}) if self.metrics else {}

    @property
    def query_digests(self) -> tuple[str, ...]:
        """Digests of every query the model was trained or validated on (empty for cards that predate them)."""
        return tuple(self.training_data.query_digests or ()) if self.training_data else ()

    def to_json(self) -> str:
        """The card as ``model_card.json`` holds it."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def read_card(path: Path) -> ModelCard:
    """The card in ``path``; anything unusable is one :class:`ModelError` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ModelError(f"cannot read model card {path} ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise ModelError(f"model card {path} is not UTF-8 text") from err
    except json.JSONDecodeError as err:
        raise ModelError(f"model card {path} is not valid JSON ({err.msg} at line {err.lineno} column "
                         f"{err.colno})") from err
    try:
        return ModelCard.from_dict(data)
    except CardError as err:
        raise ModelError(f"model card {path} is malformed: {err.detail}") from err
