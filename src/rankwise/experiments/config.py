"""Experiment definitions: which reranker versions are compared online, how traffic is split, and how.

An experiment file is TOML or JSON (chosen by suffix) and is the single source of truth for a comparison,
so the server, the report and the person reading the results agree on arms, shares and settings::

    name = "v4-vs-v3"
    mode = "ab"            # ab | interleave
    unit = "user"          # user | key | request: what assignment is sticky on
    traffic = 0.2          # optional: the share of users (keys, requests) in the experiment; default 1
    [[arms]]
    name = "control"
    reranker = "production"   # a registry alias or version, a model directory, or "none"
    share = 0.5
    [[arms]]
    name = "treatment"
    reranker = "candidate"
    share = 0.5

* ``mode = "ab"`` splits traffic between the arms by ``share`` (the shares must add up to 1; when every
  arm omits its share, the traffic is split equally).
* ``mode = "interleave"`` needs exactly two arms and ignores shares: every request gets one team-draft
  interleaved list of both arms' rankings (Radlinski, Kurup & Joachims, CIKM 2008), the first arm playing
  team "a" and the second team "b" (see :mod:`rankwise.experiments.interleave`).
* ``traffic`` enrols only that share of the units (sticky, by a hash independent of the arm's); the rest is
  served as if there were no experiment (production, or the canary). Interleaving scores both arms on each
  enrolled request, so on a busy server a share keeps that cost off most of the traffic.

Each arm may override the pipeline settings ``first_stage``, ``rerank_k`` and ``rerank_fusion`` (the
values of :mod:`rankwise.options`). Whether the named rerankers exist is checked by the server when it loads
them, not here: a definition can be written and validated before the candidate model is registered.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from rankwise.errors import QueryError, RankwiseError
from rankwise.options import (
    FIRST_STAGE_METHODS,
    RERANK_FUSIONS,
    FirstStageMethod,
    PipelineSettings,
    RerankFusion,
    choose,
)

ExperimentMode = Literal["ab", "interleave"]
AssignmentUnit = Literal["user", "key", "request"]
EXPERIMENT_MODES: tuple[ExperimentMode, ...] = get_args(ExperimentMode)
ASSIGNMENT_UNITS: tuple[AssignmentUnit, ...] = get_args(AssignmentUnit)

#: the arm label a logged request carries when its list interleaves both arms
INTERLEAVED_ARM = "interleaved"
SHARE_TOLERANCE = 1e-6
_EXPERIMENT_KEYS = ("name", "mode", "unit", "arms", "traffic")
T = TypeVar("T", bound=str)
_ARM_KEYS = ("name", "reranker", "share", "first_stage", "rerank_k", "rerank_fusion")


class ExperimentError(RankwiseError):
    """An experiment definition, or the data handed to an experiment's statistics, is invalid."""


@dataclass(frozen=True, slots=True)
class Arm:
    """One variant under comparison: a reranker and, optionally, its own pipeline settings.

    ``None`` settings mean "whatever the server is configured with", so an arm differs from production
    only in what it names. ``share`` is the fraction of traffic (A/B mode only).
    """

    name: str
    reranker: str
    share: float
    first_stage: FirstStageMethod | None = None
    rerank_k: int | None = None
    rerank_fusion: RerankFusion | None = None

    @property
    def settings(self) -> PipelineSettings:
        """The pipeline settings this arm sets (the rest: the server's)."""
        return PipelineSettings(first_stage=self.first_stage, rerank_k=self.rerank_k, rerank_fusion=self.rerank_fusion)


@dataclass(frozen=True, slots=True)
class Experiment:
    """A validated experiment definition; build it with :func:`load_experiment` or :meth:`from_dict`."""

    name: str
    mode: ExperimentMode
    unit: AssignmentUnit
    arms: tuple[Arm, ...]
    #: the share of units enrolled; the others are served outside the experiment
    traffic: float = 1.0

    def arm(self, name: str) -> Arm:
        """The arm called ``name`` (one-line error naming the arms otherwise)."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ExperimentError(f"experiment '{self.name}' has no arm '{name}'; its arms are "
                              f"{', '.join(a.name for a in self.arms)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "experiment") -> Experiment:
        """Validate a parsed definition; every error is one line starting with ``source`` and the field."""
        if not isinstance(data, Mapping):
            raise ExperimentError(f"{source}: expected a table of experiment settings, got {_kind(data)}")
        _no_unknown_keys(data, _EXPERIMENT_KEYS, source)
        name = _text(data, "name", source)
        mode = _option(data.get("mode", "ab"), EXPERIMENT_MODES, "experiment mode", _field(source, "mode"))
        unit = _option(data.get("unit", "user"), ASSIGNMENT_UNITS, "assignment unit", _field(source, "unit"))
        raw_arms = data.get("arms")
        if not isinstance(raw_arms, list) or not all(isinstance(a, Mapping) for a in raw_arms):
            raise ExperimentError(f"{source}: arms: expected a list of arm tables ([[arms]] in TOML), "
                                  f"got {_kind(raw_arms)}")
        if len(raw_arms) < 2:
            raise ExperimentError(f"{source}: arms: an experiment compares at least 2 arms, "
                                  f"got {len(raw_arms)}")
        if mode == "interleave" and len(raw_arms) != 2:
            raise ExperimentError(f"{source}: arms: interleave mode compares exactly 2 arms, "
                                  f"got {len(raw_arms)}")
        shares = _shares(raw_arms, mode, source)
        arms = tuple(_arm(raw, f"{source}: arms[{i}]", share)
                     for i, (raw, share) in enumerate(zip(raw_arms, shares, strict=True)))
        seen: set[str] = set()
        for i, arm in enumerate(arms):
            if arm.name in seen:
                raise ExperimentError(f"{source}: arms[{i}].name: duplicate arm name '{arm.name}'")
            seen.add(arm.name)
        traffic = _fraction(data.get("traffic", 1.0), _field(source, "traffic"),
                            f" (the share of {unit}s in the experiment)")
        return cls(name=name, mode=mode, unit=unit, arms=arms, traffic=traffic)


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file (``.toml`` or ``.json``)."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".toml", ".json"):
        suffix_text = file.suffix or "no suffix"
        raise ExperimentError(f"{file}: experiment files are .toml or .json, not '{suffix_text}'")
    if not file.is_file():
        raise ExperimentError(f"{file}: no such experiment file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ExperimentError(f"{file}: cannot read the experiment file ({_one_line(str(err))})") from None
    try:
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ExperimentError(f"{file}: malformed TOML: {_one_line(str(err))}") from None
    except json.JSONDecodeError as err:
        raise ExperimentError(f"{file}: malformed JSON at line {err.lineno}, column {err.colno}: "
                              f"{err.msg}") from None
    except RecursionError:  # the parsers recurse per level of nesting
        raise ExperimentError(f"{file}: nested too deeply to be an experiment file") from None
    return Experiment.from_dict(data, source=str(file))


def _arm(raw: Mapping[str, Any], where: str, share: float) -> Arm:
    _no_unknown_keys(raw, _ARM_KEYS, where)
    name = _text(raw, "name", where)
    if name == INTERLEAVED_ARM:
        raise ExperimentError(f"{where}.name: '{INTERLEAVED_ARM}' is reserved for interleaved lists in the "
                              "request log; choose another arm name")
    first_stage = raw.get("first_stage")
    fusion = raw.get("rerank_fusion")
    return Arm(
        name=name,
        reranker=_text(raw, "reranker", where),
        share=share,
        first_stage=None if first_stage is None else _option(first_stage, FIRST_STAGE_METHODS, "first stage",
                                                             _field(where, "first_stage")),
        rerank_k=_positive_int(raw.get("rerank_k"), _field(where, "rerank_k")),
        rerank_fusion=None if fusion is None else _option(fusion, RERANK_FUSIONS, "rerank fusion",
                                                          _field(where, "rerank_fusion")),
    )


def _shares(raw_arms: list[Mapping[str, Any]], mode: ExperimentMode, source: str) -> list[float]:
    """The arms' traffic shares: given ones lie in (0, 1] and add up to 1; none given → an equal split."""
    given = ["share" in raw for raw in raw_arms]
    if mode == "interleave" or not any(given):
        return [1.0 / len(raw_arms)] * len(raw_arms)
    if not all(given):
        missing = ", ".join(f"arms[{i}]" for i, g in enumerate(given) if not g)
        raise ExperimentError(f"{source}: {missing}: no share; give every arm a share, or none for an "
                              "equal split")
    shares = [_fraction(raw["share"], _field(f"{source}: arms[{i}]", "share")) for i, raw in enumerate(raw_arms)]
    total = math.fsum(shares)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ExperimentError(f"{source}: arms: shares sum to {total:.10g}, not 1; make them add up to 1")
    return shares


def _fraction(value: object, where: str, meaning: str = "") -> float:
    """``value`` as a share of traffic, in (0, 1]; otherwise one line naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise ExperimentError(f"{where}: must be a number in (0, 1]{meaning}, got {value!r}")
    return float(value)


def _no_unknown_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [str(k) for k in data if k not in allowed]
    if unknown:
        raise ExperimentError(f"{where}: unknown key '{unknown[0]}'; expected {', '.join(allowed)}")


def _field(where: str, key: str) -> str:
    """``file: name`` for a top-level key, ``file: arms[0].name`` for an arm's."""
    return f"{where}.{key}" if where.endswith("]") else f"{where}: {key}"


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        got = "nothing" if value is None else repr(value)
        raise ExperimentError(f"{_field(where, key)}: must be a non-empty string, got {got}")
    return value.strip()


def _option(value: object, allowed: tuple[T, ...], what: str, where: str) -> T:
    if not isinstance(value, str):
        raise ExperimentError(f"{where}: must be one of {', '.join(allowed)}, got {value!r}")
    try:
        return choose(value, allowed, what)
    except QueryError as err:
        raise ExperimentError(f"{where}: {err}") from None


def _positive_int(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExperimentError(f"{where}: must be a positive integer, got {value!r}")
    return value


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())
