"""``rankwise serve --ray local --replicas 2``: Ray Serve replicas of the whole server, on a real local cluster.

The rules under test: a replica answers ``/v1/rerank`` with the plain server's scores (same app, same
model); killing one replica under load fails no request beyond those it held, and the service goes on
answering; several replicas refuse SQLite logs they cannot share.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import KB
from rankwise.serving.readiness import ServeProcess

pytest.importorskip("ray.serve")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
BODY = {"query": "how do I reset MFA", "documents": [d.text for d in KB[:12]]}


def _serve(args: list[str], log: Path) -> ServeProcess:
    server = ServeProcess(args, log, timeout_s=300, env=ENV)
    if server.problem:
        pytest.fail(f"{server.problem}:\n{log.read_text()[-3000:]}")
    return server


def _replica_pids() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "ServeReplica:rankwise" in line]


def test_replicas_answer_like_the_plain_server_and_a_killed_one_fails_only_what_it_held(
        kb_index, tiny_cross_encoder: Path, tmp_path: Path) -> None:
    args = ["--index", str(kb_index.path), "--reranker", str(tiny_cross_encoder), "--backend", "torch",
            "--audit", "none", "--feedback-db", "none"]
    plain = _serve(args, tmp_path / "plain.log")
    try:
        expected = httpx.post(f"{plain.url}/v1/rerank", json=BODY, timeout=60).json()["results"]
    finally:
        plain.stop()
    replicated = _serve([*args, "--ray", "local", "--replicas", "2"], tmp_path / "ray.log")
    try:
        got = httpx.post(f"{replicated.url}/v1/rerank", json=BODY, timeout=60).json()["results"]
        assert [r["index"] for r in got] == [r["index"] for r in expected]
        np.testing.assert_allclose([r["relevance_score"] for r in got], [r["relevance_score"] for r in expected],
                                   atol=1e-6)
        pids = _replica_pids()
        assert len(pids) == 2, pids

        statuses: list[int] = []
        stop = threading.Event()
        clients = 4

        def load() -> None:
            with httpx.Client(base_url=replicated.url, timeout=60) as client:
                while not stop.is_set():
                    try:
                        statuses.append(client.post("/v1/rerank", json=BODY).status_code)
                    except httpx.HTTPError:
                        statuses.append(-1)

        threads = [threading.Thread(target=load) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(3)
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(8)
        stop.set()
        for t in threads:
            t.join()
        failed = sum(1 for s in statuses if s != 200)
        assert len(statuses) > 20 and failed <= clients, (failed, len(statuses))
        assert statuses[-clients:] == [200] * clients  # answering again after the kill
    finally:
        replicated.stop()


def test_several_replicas_refuse_logs_only_one_process_can_write(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "rankwise", "serve", "--reranker", "none", "--index", "nowhere",
                             "--ray", "local", "--replicas", "2", "--audit", str(tmp_path / "audit.sqlite")],
                            capture_output=True, text=True, env=ENV, timeout=120, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cannot share the SQLite file of --audit" in " ".join(result.stderr.split())
