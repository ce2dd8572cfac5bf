"""API keys and the registry's history in the shared PostgreSQL store, against a real server.

The rules under test: keys named with ``--keys postgresql://...`` authenticate every replica from one
table, a revocation reaches a running server within seconds, and with every key revoked the server refuses
everything (it never falls open); rows are revoked, never deleted. A registry shared with ``models share``
keeps its versions in its directory and its history in the store: every event is moved, two processes
opening the directory see one set of aliases, and the history stays append-only in the database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Postgres, build_tiny_cross_encoder
from rankwise.errors import ModelError, RankwiseError
from rankwise.postgres import PostgresStore, connect
from rankwise.registry import Registry
from rankwise.serving.key_stores import open_keys
from rankwise.serving.readiness import ServeProcess

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _rankwise(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rankwise", *args], capture_output=True, text=True, env=ENV,
                          timeout=300, check=False)


def _said(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


@pytest.fixture
def keys_server(postgres: Postgres, tmp_path: Path, kb_index) -> Iterator[tuple[ServeProcess, str, dict[str, str]]]:
    url = postgres.database("keys")
    tokens = {}
    for name, role in (("reader", "search"), ("admin", "admin")):
        result = _rankwise("keys", "add", "--keys", url, "--role", role, "--name", name)
        assert result.returncode == 0, result.stderr
        tokens[name] = next(w for w in result.stdout.split() if w.startswith("rk_"))
    server = ServeProcess(["--index", str(kb_index.path), "--keys", url, "--audit", "none", "--feedback-db", "none"],
                          tmp_path / "server.log", timeout_s=180, env=ENV)
    if server.problem:
        pytest.fail(f"{server.problem}:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
    yield server, url, tokens
    server.stop()


def test_keys_in_the_store_authenticate_and_a_revocation_reaches_the_server_without_falling_open(
        keys_server: tuple[ServeProcess, str, dict[str, str]]) -> None:
    server, url, tokens = keys_server

    def status(token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(f"{server.url}/v1/search", json={"query": "reset MFA", "k": 3}, headers=headers,
                          timeout=60).status_code

    def eventually(token: str | None, expected: int) -> None:
        deadline = time.monotonic() + 15
        while status(token) != expected:
            assert time.monotonic() < deadline, f"still not {expected}"
            time.sleep(0.2)

    assert status(tokens["reader"]) == 200 and status(None) == 401
    listed = _rankwise("keys", "list", "--keys", url)
    assert "reader" in listed.stdout and "admin" in listed.stdout and "rk_" not in listed.stdout
    keys = {k.name: k.id for k in open_keys(url).list()}
    assert _rankwise("keys", "revoke", "--keys", url, keys["reader"]).returncode == 0
    eventually(tokens["reader"], 401)
    assert status(tokens["admin"]) == 200
    _rankwise("keys", "revoke", "--keys", url, keys["admin"])
    eventually(tokens["admin"], 401)  # no key left: everything is refused, nothing is open
    assert status(None) == 401
    again = _rankwise("keys", "revoke", "--keys", url, keys["admin"])
    assert again.returncode != 0 and "no key with id" in _said(again) and "Traceback" not in again.stderr
    conn = connect(url)
    with pytest.raises(Exception, match="revoked, never deleted"):
        conn.execute("DELETE FROM rankwise_keys")
    assert conn.execute("SELECT count(*) FROM rankwise_keys WHERE revoked_at IS NOT NULL").fetchone()[0] == 2
    conn.close()


def test_a_shared_registry_moves_every_event_and_two_processes_see_one_set_of_aliases(
        postgres: Postgres, tmp_path: Path) -> None:
    root = tmp_path / "registry"
    local = Registry(root)
    for seed in (1, 2, 3):
        local.register(build_tiny_cross_encoder(tmp_path / f"m{seed}", seed=seed), {})
    local.promote("v1")
    before = local.history()
    url = postgres.database("registry")
    shared = _rankwise("models", "share", "--registry", str(root), "--store", url)
    assert shared.returncode == 0, shared.stderr
    assert f"shared {len(before)} events" in _said(shared)
    assert not (root / "history.jsonl").exists() and (root / "history.jsonl.moved").is_file()

    one, two = Registry(root), Registry(root)  # e.g. a server's process and an operator's CLI
    assert one.history() == before and one.aliases() == {"candidate": "v3", "production": "v1"}
    two.promote("v2")
    assert one.aliases()["production"] == "v2"
    assert one.get("production").weights_sha256 == local.get("v2").weights_sha256
    promoted = _rankwise("models", "promote", "v3", "--registry", str(root), "--force")
    assert promoted.returncode == 0, _said(promoted)
    assert two.aliases()["production"] == "v3" and two.rollback() == "v2"
    assert one.history()[-1]["event"] == "rollback"

    conn = connect(url)
    for statement in ("UPDATE rankwise_registry_events SET event = '{}'", "DELETE FROM rankwise_registry_events",
                      "TRUNCATE rankwise_registry_events"):
        with pytest.raises(Exception, match="append-only"):
            conn.execute(statement)
    conn.close()
    with pytest.raises(ModelError, match="already in"):
        one.share(PostgresStore(url))
    other = tmp_path / "other"
    Registry(other).register(build_tiny_cross_encoder(tmp_path / "m9", seed=9), {})
    with pytest.raises(ModelError, match="already holds a registry history named 'registry'"):
        Registry(other).share(PostgresStore(url), "registry")
    assert json.loads((root / "store.json").read_text())["name"] == "registry"
    with pytest.raises(ModelError, match="without a password") as refused:  # store.json is shared with the directory
        Registry(other).share(PostgresStore("postgresql://rankwise:s3cret@db/rankwise"))
    assert "s3cret" not in str(refused.value) and not (other / "store.json").exists()


def test_an_unreachable_or_unnamed_store_is_one_line(tmp_path: Path) -> None:
    result = _rankwise("keys", "list", "--keys", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    assert result.returncode != 0 and "Traceback" not in result.stderr and "cannot connect" in _said(result)
    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "store.json").write_text("{}")
    with pytest.raises(RankwiseError, match="does not name a history store"):
        Registry(tmp_path / "registry").aliases()
