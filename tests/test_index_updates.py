"""Live corpus updates: upserts and deletions, the previous version kept and rolled back to, and a running
server that follows all of it without a restart.

The rule under test: an update gives exactly the index a fresh build of the changed corpus would (same
fingerprint, same answers) while embedding only new text; a refused update leaves the index as it was; a
version held by a reader keeps answering after newer ones replace it on disk; and ``rankwise serve`` swaps a
new version in (or keeps the loaded one when the new one is damaged) while every request succeeds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import KB, corrupt_middle
from rankwise.errors import CorpusError, IndexNotFoundError
from rankwise.faults import CRASH_EXIT
from rankwise.index import Index, rollback_index, update_index
from rankwise.index.swap import previous_version
from rankwise.pipeline import Pipeline
from rankwise.serving.readiness import ServeProcess
from rankwise.types import Document

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
#: runs the CLI with the portable two-rename swap, as on a system without renameat2(RENAME_EXCHANGE)
RENAME_SWAP_CLI = ("import sys, rankwise.index.swap as swap; swap.RENAMEAT2 = None; "
                   "from rankwise.cli import main; sys.argv[0] = 'rankwise'; main()")

CHANGED = Document("refund-monthly", "Monthly plans are refunded in full within 14 days of the first charge.",
                   "Refund policy for monthly plans", {"category": "billing"})
ADDED = Document("sso-okta", "Single sign-on goes through Okta; new apps are added by the identity team.",
                 "Single sign-on with Okta", {"category": "security"})
GONE = "churn-theory"


def _merged() -> list[Document]:
    """What the KB becomes after the update: the changed document in place, one deleted, one added last."""
    return [CHANGED if d.id == CHANGED.id else d for d in KB if d.id != GONE] + [ADDED]


def _ids(index: Index, query: str) -> list[str]:
    return [r.doc_id for r in Pipeline(index).search(query, k=8).results]


def _rankwise(*args: str, crash_at: str | None = None, rename: bool = False) -> subprocess.CompletedProcess[str]:
    prefix = [sys.executable, "-c", RENAME_SWAP_CLI] if rename else [sys.executable, "-m", "rankwise"]
    env = {**ENV, "RANKWISE_CRASH_AT": crash_at} if crash_at else ENV
    return subprocess.run([*prefix, *args], capture_output=True, text=True, env=env, timeout=300, check=False)


def _said(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's output as one line (rich wraps it at the terminal's width)."""
    return " ".join(result.stdout.split())


@pytest.fixture
def live(tmp_path: Path, kb_index: Index) -> Path:
    """A private copy of the KB index (with vectors) that a test may update."""
    path = tmp_path / "kb"
    shutil.copytree(kb_index.path, path)
    return path


# ---------------------------------------------------------------------------------------------- updates
def test_an_update_is_the_fresh_build_of_the_changed_corpus_and_embeds_only_new_text(
        live: Path, tmp_path: Path) -> None:
    before = Index(live)
    updated, summary = update_index(live, [CHANGED, KB[0], ADDED], delete=[GONE, "never-indexed"])
    assert (summary.added, summary.changed, summary.unchanged, summary.deleted) == (1, 1, 1, 1)
    assert summary.not_found == ["never-indexed"]
    fresh = Index.build(_merged(), tmp_path / "fresh")
    assert updated.fingerprint == fresh.fingerprint != before.fingerprint
    assert updated.manifest.stats["embedded"] == 2 and updated.manifest.stats["reused"] == len(KB) - 2
    assert updated.manifest.source == before.manifest.source  # still names where the corpus came from
    for query in ("are monthly plans refunded", "single sign-on", "churn research", "rotate credentials"):
        assert _ids(updated, query) == _ids(fresh, query)
    assert GONE not in set(updated.passage_doc_ids) and "sso-okta" in set(updated.passage_doc_ids)
    assert Index(previous_version(live)).fingerprint == before.fingerprint


def test_an_update_keeps_the_index_settings_and_sending_the_same_documents_writes_nothing(tmp_path: Path) -> None:
    corpus = tmp_path / "kb.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text, **d.metadata}) + "\n"
                              for d in KB))
    path = tmp_path / "idx"
    built = _rankwise("index", str(corpus), "-i", str(path), "--no-dense", "--passage-tokens", "16", "--overlap", "4")
    assert built.returncode == 0, built.stderr
    first = Index(path)
    again = _rankwise("index", str(corpus), "-i", str(path), "--update")
    assert again.returncode == 0, again.stderr
    assert _said(again).startswith("unchanged") and "8 unchanged" in _said(again)
    assert Index(path).manifest.created_at == first.manifest.created_at and not previous_version(path).exists()

    change = tmp_path / "change.jsonl"
    change.write_text(json.dumps({"id": ADDED.id, "title": ADDED.title, "text": ADDED.text}) + "\n")
    deletions = tmp_path / "deletions.txt"
    deletions.write_text(f"# retired pages\n{GONE}\n\n")
    updated = _rankwise("index", str(change), "-i", str(path), "--update", "--deletions", str(deletions))
    assert updated.returncode == 0, updated.stderr
    assert "1 added, 0 changed, 0 unchanged, 1 deleted" in _said(updated)
    manifest = Index(path).manifest
    assert manifest.chunking == {"max_tokens": 16, "overlap": 4} and manifest.embedding is None


def test_refused_updates_change_nothing(live: Path) -> None:
    fingerprint = Index(live).fingerprint
    with pytest.raises(CorpusError, match="both in the update and in the deletions"):
        update_index(live, [ADDED], delete=[ADDED.id])
    with pytest.raises(CorpusError, match="would delete every document"):
        update_index(live, delete=[d.id for d in KB])
    result = _rankwise("index", "-i", str(live), "--delete", "refund-annual", "--rollback")
    assert result.returncode != 0 and result.stderr.startswith("error: --rollback takes only --index")
    result = _rankwise("index", "-i", str(live))
    assert result.returncode != 0 and result.stderr.startswith("error: nothing to do")
    assert Index(live).fingerprint == fingerprint and not previous_version(live).exists()


# ---------------------------------------------------------------------------------------------- rollback
def test_rollback_returns_to_the_replaced_version_and_a_second_one_rolls_forward(live: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="no previous version to roll back to"):
        rollback_index(live)
    old = Index(live).fingerprint
    new = update_index(live, [ADDED])[0].fingerprint
    result = _rankwise("index", "-i", str(live), "--rollback")
    assert result.returncode == 0, result.stderr
    assert _said(result).startswith("rolled back") and Index(live).fingerprint == old
    assert "sso-okta" not in _ids(Index(live), "single sign-on with okta")
    assert rollback_index(live).fingerprint == new


def test_a_damaged_previous_version_is_refused_and_a_damaged_live_one_can_be_rolled_back(live: Path) -> None:
    old = Index(live).fingerprint
    update_index(live, [ADDED])
    corrupt_middle(previous_version(live) / "docstore.sqlite")
    with pytest.raises(IndexNotFoundError):
        rollback_index(live)
    assert Index(live).manifest.num_documents == len(KB) + 1  # nothing moved

    update_index(live, delete=[ADDED.id])  # the previous version is the good one with ADDED now
    corrupt_middle(live / "docstore.sqlite")
    with pytest.raises(IndexNotFoundError):
        Index(live)
    assert rollback_index(live).manifest.num_documents == len(KB) + 1
    assert old != Index(live).fingerprint


@pytest.mark.parametrize("rename", [False, True], ids=["exchange", "two-renames"])
def test_a_rollback_killed_midway_leaves_a_complete_index(live: Path, rename: bool) -> None:
    old = Index(live).fingerprint
    new = update_index(live, [ADDED])[0].fingerprint
    result = _rankwise("index", "-i", str(live), "--rollback", crash_at="index:old-moved", rename=rename)
    assert result.returncode == (CRASH_EXIT if rename else 0), result.stderr  # the exchange has no midway
    assert Index(live).fingerprint in {old, new}  # opening puts a moved-aside version back
    assert rollback_index(live).fingerprint in {old, new}
    assert not [p.name for p in live.parent.iterdir() if p.name.startswith(".kb.")]


def test_an_update_killed_after_its_swap_leaves_no_older_version_to_roll_back_to(
        live: Path, tmp_path: Path) -> None:
    v1 = update_index(live, [ADDED])[0].fingerprint  # the KB is now kept as the previous version
    change = tmp_path / "change.jsonl"
    change.write_text(json.dumps({"id": CHANGED.id, "title": CHANGED.title, "text": CHANGED.text}) + "\n")
    result = _rankwise("index", str(change), "-i", str(live), "--update", crash_at="index:swapped")
    assert result.returncode == CRASH_EXIT, result.stderr
    assert Index(live).fingerprint != v1  # the new version is live
    with pytest.raises(IndexNotFoundError, match="no previous version"):  # not the KB: that would skip v1
        rollback_index(live)


def test_a_version_held_by_a_reader_keeps_answering_after_newer_ones_replace_it(live: Path) -> None:
    held = Index(live).preload()
    update_index(live, [ADDED])
    update_index(live, delete=["churn-q4"])  # the held version's directory is deleted now
    assert not any(p.exists() and Index(p).fingerprint == held.fingerprint
                   for p in (live, previous_version(live)))
    answer = _ids(held, "customer churn in Q4")
    assert answer[0] == "churn-q4" and "sso-okta" not in answer


# ---------------------------------------------------------------------------------------------- a server
class _Server(ServeProcess):
    def __init__(self, args: list[str], log: Path) -> None:
        super().__init__(args, log, timeout_s=180, env=ENV)
        if self.problem:
            pytest.fail(f"{self.problem}:\n{log.read_text()[-3000:]}")

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return s.value
        return 0.0


@pytest.fixture
def server(live: Path, tmp_path: Path) -> Iterator[_Server]:
    srv = _Server(["--index", str(live), "--follow-interval", "0.2s", "--audit", "none", "--feedback-db", "none",
                   "--open-metrics"], tmp_path / "server.log")
    yield srv
    srv.stop()


def test_a_running_server_follows_updates_rollbacks_and_skips_a_damaged_version_without_failing_a_request(
        server: _Server, live: Path) -> None:
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                statuses.append(client.post("/v1/search", json={"query": "refund policy", "k": 5}).status_code)

    def top(query: str) -> list[str]:
        body = httpx.post(f"{server.url}/v1/search", json={"query": query, "k": 3}, timeout=60).json()
        return [r["doc_id"] for r in body["results"]]

    def served() -> str:
        return httpx.get(f"{server.url}/readyz", timeout=10).json()["index_fingerprint"]

    def wait_for(fingerprint: str) -> None:
        deadline = time.monotonic() + 60
        while served() != fingerprint:
            assert time.monotonic() < deadline, f"the server never served {fingerprint}"
            time.sleep(0.1)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        old = served()
        assert "sso-okta" not in top("single sign-on with okta")
        new = update_index(live, [ADDED])[0].fingerprint
        wait_for(new)
        assert top("single sign-on with okta")[0] == "sso-okta"
        assert rollback_index(live).fingerprint == old
        wait_for(old)
        assert "sso-okta" not in top("single sign-on with okta")

        damaged = update_index(live, delete=["churn-q4"])[0]
        corrupt_middle(live / "docstore.sqlite")
        deadline = time.monotonic() + 30
        while server.metric("rankwise_index_swaps_total", outcome="failed") < 1:
            assert time.monotonic() < deadline, "the damaged version was never tried"
            time.sleep(0.1)
        assert served() == old != damaged.fingerprint  # still answering from the loaded version
        assert top("customer churn in Q4")[0] == "churn-q4"
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert len(statuses) > 10 and set(statuses) == {200}
    assert server.metric("rankwise_index_swaps_total", outcome="swapped") == 2
    assert server.metric("rankwise_index_swaps_total", outcome="failed") == 1
