"""How many user interactions does it take to tell a better ranker from a worse one: interleaving vs A/B?

    nice -n 19 .venv/bin/python benchmarks/interleaving_power.py [--data ../shared/data/beir/scifact]
        [--effects 0:1,1:0.1,1:0.25,1:0.5,1:1] [--interactions 25,50,100,...,25600] [--repetitions 200]
        [--shown 10] [--ctr-at 5] [--eta 1] [--click-relevant 0.9] [--click-other 0.05] [--alpha 0.05]
        [--seed 0] [--out interleaving_power.json]

Simulates the online loop on SciFact's 300 test queries with a position-based click model over the test
qrels: a user examines rank r with probability (1/r)^eta and clicks an examined document with probability
0.9 when it is relevant, 0.05 otherwise. System A is BM25 (rankwise's lexical index over title + text,
built in memory in about a second); system B is A's ranking with every relevant document pushed down by d
positions, on a share s of the queries (an effect ``d:s``; ``0:1`` is A against itself, the false-positive
check). The true nDCG@10 of both is measured on the qrels with rankwise's evaluation (ir-measures).

Each interaction samples a query uniformly with replacement and simulates one user session. Interleaving:
the session sees the team-draft interleaving of A and B (``rankwise.experiments.team_draft``, run
beforehand for every one of the 2^(shown/2) equally likely sequences of its per-round coin flips, one of
them picked at random per session, which is the exact distribution), clicks are credited as
``rankwise.experiments.credit`` does (checked against it on the first sessions), and the sign test decides.
A/B: half the interactions see A, half see B; a session succeeds when it clicks in the top ``--ctr-at``
(CTR@5), and the two-proportion z-test decides. A method *detects* the difference when its test says "A is
better" at alpha (``rankwise.experiments.recommend(..., treatment="a", min_units=0)`` returns "switch").
Each repetition is one stream of sessions, read at every N of the grid (nested prefixes: the power at one N
is still estimated over independent repetitions). Writes ``benchmarks/results/interleaving_power.json``.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from common import cpu_description, print_cpu, scifact_dir, write_json

from rankwise.corpus.beir import load_qrels, load_queries
from rankwise.corpus.loaders import load_documents
from rankwise.evaluation.metrics import mean, per_query
from rankwise.evaluation.runs import run_from_rankings
from rankwise.experiments import Team, credit, recommend, sign_test, team_draft, two_proportion
from rankwise.index.lexical import BM25Index

DEFAULT_EFFECTS = "0:1,1:0.1,1:0.25,1:0.5,1:1"
DEFAULT_INTERACTIONS = "25,50,100,200,400,800,1600,3200,6400,12800,25600"
DEPTH = 100  # BM25 candidates per query: room to push relevant documents down
TARGET_POWER = 0.8
MAX_SHOWN = 20  # 2^10 coin sequences per query: every team-draft list is enumerated
Draft = list[tuple[str, Team]]


class ScriptedCoin(random.Random):
    """Replays a fixed sequence of coin flips, so every team-draft outcome can be enumerated exactly."""

    def __init__(self, flips: tuple[bool, ...]) -> None:
        super().__init__(0)
        self._flips = iter(flips)

    def random(self) -> float:
        return 0.25 if next(self._flips) else 0.75  # team_draft: below 0.5 → team "a" picks first this round


@dataclass(frozen=True, slots=True)
class Effect:
    push: int  # positions each relevant document moves down in B
    share: float  # share of queries on which B is worse

    @property
    def label(self) -> str:
        return f"d={self.push}, {self.share:.0%} of queries"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="BEIR scifact directory (default: ../shared/data/beir/scifact)")
    parser.add_argument("--effects", default=DEFAULT_EFFECTS,
                        help="comma list of d:share: push relevant documents down d ranks on that share of "
                             "queries")
    parser.add_argument("--interactions", default=DEFAULT_INTERACTIONS,
                        help="comma list of N (total interactions)")
    parser.add_argument("--repetitions", type=int, default=200, help="simulated experiments per effect and N")
    parser.add_argument("--shown", type=int, default=10, help="results shown per session")
    parser.add_argument("--ctr-at", type=int, default=5, help="A/B success: a click in the top this many")
    parser.add_argument("--eta", type=float, default=1.0, help="examination probability (1/rank)^eta")
    parser.add_argument("--click-relevant", type=float, default=0.9,
                        help="click probability of an examined relevant document")
    parser.add_argument("--click-other", type=float, default=0.05,
                        help="click probability of an examined non-relevant document")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="interleaving_power.json",
                        help="file name under benchmarks/results/")
    args = parser.parse_args()
    try:
        pairs = (effect.split(":") for effect in args.effects.split(","))
        args.effect_list = [Effect(int(d), float(s)) for d, s in pairs]
        args.grid = sorted({int(n) for n in args.interactions.split(",")})
    except ValueError:
        parser.error("--effects is a comma list of d:share (e.g. 1:0.25) and --interactions a comma list of "
                     "integers")
    if any(e.push < 0 or not 0 < e.share <= 1 for e in args.effect_list) or min(args.grid) < 2:
        parser.error("each effect needs d ≥ 0 and 0 < share ≤ 1, and every N must be at least 2")
    probabilities_ok = 0 <= args.click_other <= 1 and 0 <= args.click_relevant <= 1
    if not (probabilities_ok and MAX_SHOWN >= args.shown >= args.ctr_at >= 1):
        parser.error(f"click probabilities lie in [0, 1], and 1 ≤ --ctr-at ≤ --shown ≤ {MAX_SHOWN}")
    return args


def bm25_rankings(data: Path, qrels: dict[str, dict[str, int]]) -> dict[str, list[str]]:
    """System A: BM25 top-100 documents (title + text) for every judged query."""
    documents = list(load_documents(data))
    index = BM25Index.build([f"{doc.title} {doc.text}" for doc in documents])
    queries = load_queries(data)
    rankings = {}
    for qid in qrels:
        rows, _ = index.search(queries[qid], DEPTH)
        rankings[qid] = [documents[row].id for row in rows]
    return rankings


def pushed_down(ranking: list[str], relevant: set[str], push: int) -> list[str]:
    """The ranking with every relevant document moved ``push`` places down (stable for everything else)."""
    keyed = [(rank + (push + 0.5 if doc in relevant else 0.0), doc) for rank, doc in enumerate(ranking)]
    return [doc for _, doc in sorted(keyed)]


def click_probabilities(lists: list[list[str]], relevant: list[set[str]],
                        args: argparse.Namespace) -> np.ndarray:
    """``[list, position]`` → P(click) = (1/rank)^eta × P(click | examined, relevance); 0 past the end."""
    examine = (1.0 / np.arange(1, args.shown + 1)) ** args.eta
    table = np.zeros((len(lists), args.shown))
    for i, (docs, rel) in enumerate(zip(lists, relevant, strict=True)):
        for pos, doc in enumerate(docs[:args.shown]):
            table[i, pos] = examine[pos] * (args.click_relevant if doc in rel else args.click_other)
    return table


def draft_tables(a_lists: list[list[str]], b_lists: list[list[str]], relevant: list[set[str]],
                 args: argparse.Namespace) -> tuple[list[list[Draft]], np.ndarray, np.ndarray]:
    """Every team-draft list of each query, one per coin sequence (all equally likely), with each list's
    click probabilities and team signs (+1 for A's documents, −1 for B's) per position, as
    ``(drafts[query][sequence], p_click[query·M + sequence, position], team_sign[...])``."""
    flips = list(itertools.product((True, False), repeat=(args.shown + 1) // 2))
    drafts = [[team_draft(a, b, args.shown, ScriptedCoin(f)) for f in flips]
              for a, b in zip(a_lists, b_lists, strict=True)]
    flat = [draft for per_query_drafts in drafts for draft in per_query_drafts]
    p_click = click_probabilities([[doc for doc, _ in draft] for draft in flat],
                                  [rel for rel in relevant for _ in flips], args)
    team_sign = np.zeros_like(p_click)
    for i, draft in enumerate(flat):
        team_sign[i, :len(draft)] = [1.0 if team == "a" else -1.0 for _, team in draft]
    return drafts, p_click, team_sign


def power_rows(counts: dict[str, np.ndarray], grid: np.ndarray,
               args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per N: the share of repetitions in which each test finds A better (power) or B better (wrong way)."""
    half_grid = grid // 2
    rows = []
    for j, n in enumerate(grid):
        detected = {"interleaving": [0, 0], "ab": [0, 0]}  # [A found better, B found better]
        for rep in range(args.repetitions):
            tests = {
                "interleaving": sign_test(int(counts["wins_a"][rep, j]), int(counts["wins_b"][rep, j]),
                                          int(counts["ties"][rep, j])),
                "ab": two_proportion(int(counts["success_a"][rep, j]), int(half_grid[j]),
                                     int(counts["success_b"][rep, j]), int(half_grid[j])),
            }
            for method, result in tests.items():
                for side, slot in (("a", 0), ("b", 1)):
                    if recommend(result, alpha=args.alpha, min_units=0, treatment=side).decision == "switch":
                        detected[method][slot] += 1
        reps = args.repetitions
        rows.append({
            "interactions": int(n),
            "power_interleaving": detected["interleaving"][0] / reps,
            "wrong_interleaving": detected["interleaving"][1] / reps,
            "power_ab": detected["ab"][0] / reps, "wrong_ab": detected["ab"][1] / reps,
            "mean_non_tied_share": float((counts["wins_a"][:, j] + counts["wins_b"][:, j]).mean() / n),
            "mean_ctr_a": float(counts["success_a"][:, j].mean() / half_grid[j]),
            "mean_ctr_b": float(counts["success_b"][:, j].mean() / half_grid[j]),
        })
    return rows


def simulate(effect: Effect, a_lists: dict[str, list[str]], qrels: dict[str, dict[str, int]],
             args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """Build B for ``effect``, then run ``--repetitions`` streams of sessions for both methods."""
    qids = sorted(a_lists)
    relevant = [{d for d, g in qrels[q].items() if g > 0} for q in qids]
    affected = set(rng.choice(len(qids), size=round(effect.share * len(qids)), replace=False).tolist())
    b_lists = {q: pushed_down(a_lists[q], relevant[i], effect.push) if i in affected else list(a_lists[q])
               for i, q in enumerate(qids)}
    ndcg = {name: mean(per_query(["nDCG@10"], qrels, run_from_rankings(lists))["nDCG@10"])
            for name, lists in (("A", a_lists), ("B", b_lists))}

    drafts, p_click, team_sign = draft_tables([a_lists[q] for q in qids], [b_lists[q] for q in qids],
                                              relevant, args)
    m = len(drafts[0])
    # A/B: each arm's own top list
    p_a = click_probabilities([a_lists[q] for q in qids], relevant, args)[:, :args.ctr_at]
    p_b = click_probabilities([b_lists[q] for q in qids], relevant, args)[:, :args.ctr_at]

    grid = np.asarray(args.grid)
    n_max, half_grid = int(grid.max()), grid // 2
    counts = {key: np.zeros((args.repetitions, grid.size), dtype=np.int64)
              for key in ("wins_a", "wins_b", "ties", "success_a", "success_b")}
    checked = 0
    for rep in range(args.repetitions):
        session = rng.integers(len(qids), size=n_max) * m + rng.integers(m, size=n_max)
        clicks = rng.random((n_max, args.shown), dtype=np.float32) < p_click[session]
        votes = (clicks * team_sign[session]).sum(axis=1)
        if rep == 0:  # the vectorised credit is rankwise's credit(), session by session
            for s in range(min(2_000, n_max)):
                draft = drafts[session[s] // m][session[s] % m]
                clicked = [doc for pos, (doc, _) in enumerate(draft) if clicks[s, pos]]
                expected = {"a": 1, "b": -1, "tie": 0}[credit(dict(draft), clicked)]
                if expected != int(np.sign(votes[s])):
                    sys.exit("error: the vectorised credit disagrees with rankwise.experiments.credit()")
                checked += 1
        at_n = grid - 1
        counts["wins_a"][rep] = np.cumsum(votes > 0)[at_n]
        counts["wins_b"][rep] = np.cumsum(votes < 0)[at_n]
        counts["ties"][rep] = grid - counts["wins_a"][rep] - counts["wins_b"][rep]
        for arm, p_arm in (("a", p_a), ("b", p_b)):
            shown = p_arm[rng.integers(len(qids), size=n_max // 2)]
            success = (rng.random(shown.shape, dtype=np.float32) < shown).any(axis=1)
            counts[f"success_{arm}"][rep] = np.concatenate([[0], np.cumsum(success)])[half_grid]

    rows = power_rows(counts, grid, args)
    return {"effect": {"push": effect.push, "share_of_queries": effect.share, "label": effect.label},
            "ndcg@10": {"A": ndcg["A"], "B": ndcg["B"], "A_minus_B": ndcg["A"] - ndcg["B"]},
            "queries_affected": len(affected), "credit_checked_sessions": checked, "grid": rows,
            "needed_for_80pct": {method: needed(rows, f"power_{method}")
                                 for method in ("interleaving", "ab")}}


def needed(rows: list[dict[str, Any]], key: str) -> float | None:
    """Interactions for 80% power, interpolated on log N between the bracketing grid points (None: beyond)."""
    previous = None
    for row in rows:
        if row[key] >= TARGET_POWER:
            if previous is None or previous[key] >= row[key]:
                return float(row["interactions"])
            low, high = np.log(previous["interactions"]), np.log(row["interactions"])
            fraction = (TARGET_POWER - previous[key]) / (row[key] - previous[key])
            return float(np.exp(low + fraction * (high - low)))
        previous = row
    return None


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    cpu = cpu_description()
    print_cpu(cpu)
    data = scifact_dir(args.data)
    qrels = load_qrels(data, "test")
    a_lists = bm25_rankings(data, qrels)
    print(f"SciFact test: {len(qrels)} queries, BM25 top-{DEPTH} in {time.perf_counter() - started:.1f} s; "
          f"click model (1/rank)^{args.eta:g} × {args.click_relevant:g} relevant / "
          f"{args.click_other:g} other, "
          f"{args.shown} shown, CTR@{args.ctr_at}, alpha {args.alpha:g}, {args.repetitions} repetitions")
    rng = np.random.default_rng(args.seed)
    results = [simulate(effect, a_lists, qrels, args, rng) for effect in args.effect_list]

    largest = args.grid[-1]
    print(f"\n{'effect':26} {'nDCG@10 A−B':>11} {'N':>6} {'power IL':>8} {'power A/B':>9}")
    for result in results:
        null = result["effect"]["push"] == 0
        for row in result["grid"]:
            il = row["power_interleaving"] + (row["wrong_interleaving"] if null else 0.0)
            ab = row["power_ab"] + (row["wrong_ab"] if null else 0.0)
            note = "  (false-positive rate)" if null else ""
            print(f"{result['effect']['label']:26} {result['ndcg@10']['A_minus_B']:11.3f} "
                  f"{row['interactions']:6d} {il:8.2f} {ab:9.2f}{note}")
    print(f"\ninteractions needed for {TARGET_POWER:.0%} power (log-interpolated on the grid; > {largest}: "
          "not reached)")
    ab_title = f"A/B CTR@{args.ctr_at}"
    print(f"{'effect':26} {'nDCG@10 A−B':>11} {'interleaving':>12} {ab_title:>12} {'ratio':>6}")
    for result in results:
        if result["effect"]["push"] == 0:
            continue
        il, ab = result["needed_for_80pct"]["interleaving"], result["needed_for_80pct"]["ab"]
        ratio = f"{ab / il:5.0f}×" if il and ab else "     —"
        print(f"{result['effect']['label']:26} {result['ndcg@10']['A_minus_B']:11.3f} "
              f"{_count(il, largest):>12} {_count(ab, largest):>12} {ratio}")
    seconds = time.perf_counter() - started
    print(f"\n{seconds:.0f} s")
    write_json(args.out, {
        "benchmark": "interleaving_power", "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/interleaving_power.py", *sys.argv[1:]]), "cpu": cpu,
        "settings": {k: v for k, v in vars(args).items() if k not in ("effect_list", "grid")},
        "queries": len(qrels), "seconds": round(seconds, 1), "results": results,
    })


def _count(value: float | None, largest: int) -> str:
    return f"> {largest:,}" if value is None else f"{value:,.0f}"


if __name__ == "__main__":
    main()
