"""Peak memory and time of ``rankwise feedback export`` as the query log grows.

Builds feedback databases of N logged /v1/search requests (10 results each, 3,000 distinct queries over
20,000 documents, one click per request, a thumbs vote on every tenth) and runs the real CLI on each in a
fresh process, reading its peak RSS. The export reads the log a page at a time, so its memory should follow
the distinct (query, document) pairs, not N.

    .venv/bin/python benchmarks/feedback_export.py [--sizes 50000 300000] [--baseline-src OTHER/src]

Writes benchmarks/results/feedback_export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUERIES, DOCUMENTS, RESULTS = 3_000, 20_000, 10


def build(path: Path, size: int, seed: int = 0) -> None:
    from rankwise.feedback import SQLiteFeedbackStore
    from rankwise.feedback.events import FeedbackEvent, LoggedRequest, LoggedResult

    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=5)
    store = SQLiteFeedbackStore(path)
    clicked: list[tuple[str, int]] = []
    try:
        for i in range(size):
            q = rng.randrange(QUERIES)
            docs = rng.sample(range(q * 5, q * 5 + 40), RESULTS)
            when = (start + timedelta(seconds=i)).isoformat()
            results = tuple(LoggedResult(f"d{d % DOCUMENTS}", rank, 1.0 / rank) for rank, d in enumerate(docs, 1))
            store.log_request(LoggedRequest(f"r{i:08d}", "/v1/search", results, model="v1", time=when,
                                            user_id=f"u{i % 500}", query=f"query number {q}"))
            rank = min(RESULTS, 1 + int(rng.expovariate(0.7)))
            clicked.append((results[rank - 1].doc_id, rank))
            if i % 1_000 == 999:
                store.flush()
        store.flush()
        for i, (doc_id, rank) in enumerate(clicked):
            signal = ("thumbs_up" if rng.random() < 0.5 else "thumbs_down") if i % 10 == 0 else "click"
            store.add_event(FeedbackEvent(f"e{i:08d}", f"r{i:08d}", signal, doc_id, rank, user_id=f"u{i % 500}",
                                          time=(start + timedelta(seconds=i + 5)).isoformat()))
    finally:
        store.close()


def export(db: Path, out: Path, src: Path | None = None) -> dict[str, float]:
    """One CLI export in a fresh process (``src``: another checkout's ``src`` directory, for a baseline)."""
    env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
    started = time.perf_counter()
    code = ("import resource, sys; from rankwise.cli import app\n"
            "try:\n    app(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", code, "feedback", "export", "--feedback-db", str(db), "--out", str(out)],
                          capture_output=True, text=True, check=True, env=env)
    peak_kb = int(done.stdout.rsplit("PEAK", 1)[1])
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
            "judgements": sum(1 for _ in out.open())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 300_000])
    parser.add_argument("--baseline-src", type=Path, help="Also export with this checkout's src/ (e.g. a "
                        "`git worktree` of an earlier commit), on the same databases.")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            db = Path(tmp) / f"feedback-{size}.db"
            built = time.perf_counter()
            build(db, size)
            row: dict[str, object] = {"requests": size, "db_mb": round(db.stat().st_size / 2**20, 1),
                                      "build_seconds": round(time.perf_counter() - built, 1),
                                      **export(db, Path(tmp) / "gold.jsonl")}
            if args.baseline_src is not None:
                row["baseline"] = export(db, Path(tmp) / "gold.jsonl", args.baseline_src)
            print(json.dumps(row), flush=True)
            rows.append(row)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"benchmark": "feedback_export", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"cpus": 2}, "rows": rows, "runner_peak_rss_mb": round(base, 1)}
    out = ROOT / "benchmarks" / "results" / "feedback_export.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
