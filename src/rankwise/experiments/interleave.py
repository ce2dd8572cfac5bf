"""Team-draft interleaving: compare two rankers on the same request by merging their rankings.

Radlinski, Kurup & Joachims, "How does clickthrough data reflect retrieval quality?", CIKM 2008. The two
rankings pick documents in turns, like captains choosing teams: in each round a coin flip decides which
ranker picks first, and each picks its highest-ranked document not yet in the list. Every shown document
belongs to the team that picked it, and a click is a vote for that team. Because both rankers' documents
appear at the same positions equally often, position bias cancels, and one interleaved impression compares
the rankers on the *same* query and user. That is why interleaving needs one to two orders of magnitude
fewer impressions than an A/B test of click-through rates (Chapelle, Joachims, Radlinski & Yue, "Large-scale
validation and analysis of interleaved search evaluation", ACM TOIS 30(1), 2012).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from rankwise.experiments.config import ExperimentError

Team = Literal["a", "b"]
Outcome = Literal["a", "b", "tie"]
_TEAMS: tuple[Team, Team] = ("a", "b")


def team_draft(a: Sequence[str], b: Sequence[str], k: int, rng: random.Random) -> list[tuple[str, Team]]:
    """The first ``k`` documents of the team-draft interleaving of rankings ``a`` and ``b`` (best first).

    Returns ``[(doc_id, team), ...]``. As in Radlinski et al. (2008), the team with fewer picks goes next,
    and a coin flip decides when both have picked equally often, so neither ranker is favoured by always
    picking first. A document the other team already picked is skipped (each document is shown once, owned
    by whoever picked it first), and so is a duplicate within one ranking. The original algorithm stops
    when either ranking runs out; here the other ranking keeps filling the list up to ``k``, because a
    shorter list would change what the user sees, and the extra documents are credited to the only team
    that proposed them.
    """
    if k < 0:
        raise ExperimentError(f"an interleaved list needs k of at least 0, got {k}")
    rankings: dict[Team, Sequence[str]] = {"a": a, "b": b}
    position: dict[Team, int] = {"a": 0, "b": 0}
    picks: dict[Team, int] = {"a": 0, "b": 0}
    seen: set[str] = set()
    shown: list[tuple[str, Team]] = []

    def next_new(team: Team) -> str | None:
        """The team's best document not shown yet (advancing past shown ones), or None when exhausted."""
        ranking, i = rankings[team], position[team]
        while i < len(ranking) and ranking[i] in seen:
            i += 1
        position[team] = i
        return ranking[i] if i < len(ranking) else None

    while len(shown) < k:
        candidates = {team: doc for team in _TEAMS if (doc := next_new(team)) is not None}
        if not candidates:
            break
        if len(candidates) == 1:
            team = next(iter(candidates))
        elif picks["a"] != picks["b"]:
            team = "a" if picks["a"] < picks["b"] else "b"
        else:
            team = "a" if rng.random() < 0.5 else "b"
        shown.append((candidates[team], team))
        seen.add(candidates[team])
        picks[team] += 1
    return shown


def credit(teams: Mapping[str, Team], clicked: Iterable[str]) -> Outcome:
    """Which ranker won one interleaved impression: the team whose documents got more clicks.

    ``teams`` maps each shown document to its team (``dict(team_draft(...))``); each clicked document
    counts once, and clicks on documents that were not shown are ignored. Equal counts are a tie — and so
    is an impression without clicks: such impressions carry no preference, and the sign test
    (:func:`rankwise.experiments.stats.sign_test`) leaves every tie out.
    """
    votes: dict[Team, int] = {"a": 0, "b": 0}
    for doc in set(clicked):
        team = teams.get(doc)
        if team is not None:
            votes[team] += 1
    if votes["a"] == votes["b"]:
        return "tie"
    return "a" if votes["a"] > votes["b"] else "b"
