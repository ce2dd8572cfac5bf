from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rankwise.errors import CorpusError, IndexNotFoundError, QueryError
from rankwise.index import Index
from rankwise.types import Document


def test_build_reports_counts_models_and_fingerprint(kb_index: Index) -> None:
    m = kb_index.manifest
    assert (m.num_documents, m.num_passages) == (8, 8)
    assert m.embedding is not None and len(m.embedding["sha256"]) == 64 and m.embedding["dim"] == 384
    assert m.stats["embedded"] == 8 and m.stats["reused"] == 0
    reopened = Index(kb_index.path)
    assert reopened.fingerprint == kb_index.fingerprint
    assert reopened.docstore.document("pg-rotate").metadata == {"category": "runbook"}


def test_reindex_reembeds_only_changed_passages(tmp_path: Path, kb_documents: list[Document]) -> None:
    path = tmp_path / "idx"
    first = Index.build(kb_documents, path)
    changed = [Document(d.id, d.text + " Updated in 2026.", d.title, d.metadata) if d.id == "churn-q4" else d
               for d in kb_documents] + [Document("new", "A brand new onboarding guide.", "Onboarding")]
    second = Index.build(changed, path)
    assert second.manifest.stats["embedded"] == 2 and second.manifest.stats["reused"] == 7
    assert second.fingerprint != first.fingerprint
    assert not any(p.name.startswith(".idx.") for p in tmp_path.iterdir()), "no temporary directories left behind"


def test_failed_rebuild_leaves_previous_index_intact(tmp_path: Path, kb_documents: list[Document]) -> None:
    path = tmp_path / "idx"
    before = Index.build(kb_documents, path, embedding_model=None)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "x", "text": "fine"}) + "\n" + "{broken\n")
    with pytest.raises(CorpusError, match="c.jsonl:2"):
        Index.build(corpus, path, embedding_model=None)
    after = Index(path)
    assert after.fingerprint == before.fingerprint and after.manifest.num_documents == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "idx"]


def test_build_removes_build_dirs_abandoned_by_dead_processes(tmp_path: Path, kb_documents: list[Document]) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    abandoned = tmp_path / f".idx.building-{dead}-0badc0de"  # left by a SIGKILLed build
    live = tmp_path / f".idx.building-{os.getpid()}-feedf00d"  # a concurrent build still running
    for d in (abandoned, live):
        d.mkdir()
        (d / "docstore.sqlite").write_text("half-written")
    Index.build(kb_documents, tmp_path / "idx", embedding_model=None)
    assert not abandoned.exists() and live.exists()


def test_sigterm_during_cli_index_cleans_up_and_keeps_the_previous_index(tmp_path: Path) -> None:
    corpus = tmp_path / "big.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": f"d{i}", "text": f"passage number {i} " * 40}) for i in range(3000)))
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"id": "a", "text": "the previous index"}) + "\n")
    cli = [sys.executable, "-m", "rankwise", "index", "--no-dense", "--index", str(tmp_path / "idx")]
    subprocess.run([*cli, str(small)], check=True, capture_output=True)
    before = Index(tmp_path / "idx").fingerprint
    proc = subprocess.Popen([*cli, str(corpus)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".idx.building-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not list(tmp_path.glob(".idx.*")), "the half-built directory must be removed"
    assert Index(tmp_path / "idx").fingerprint == before


def test_refuses_to_overwrite_a_directory_that_is_not_an_index(tmp_path: Path, kb_documents: list[Document]) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(IndexNotFoundError, match="not a rankwise index"):
        Index.build(kb_documents, tmp_path, embedding_model=None)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_missing_and_corrupt_indexes_give_clear_errors(tmp_path: Path, kb_documents: list[Document]) -> None:
    with pytest.raises(IndexNotFoundError, match="no index at"):
        Index(tmp_path / "missing")
    path = tmp_path / "idx"
    Index.build(kb_documents, path, embedding_model=None)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexNotFoundError, match="corrupt"):
        Index(path)


def test_lexical_only_index_refuses_dense(tmp_path: Path, kb_documents: list[Document]) -> None:
    idx = Index.build(kb_documents, tmp_path / "idx", embedding_model=None)
    with pytest.raises(QueryError, match="without dense vectors"):
        idx.vectors  # noqa: B018


def test_metadata_filter_rows(kb_index: Index) -> None:
    rows = kb_index.docstore.rows_matching({"category": "security"})
    assert sorted(p.doc_id for p in kb_index.docstore.passages(rows.tolist())) == ["mfa-contractor", "mfa-employee"]
    assert kb_index.docstore.rows_matching({"category": ["billing", "finance"]}).size == 3


def test_an_index_that_lost_its_manifest_is_refused_then_rebuilt_in_place(tmp_path: Path,
                                                                        kb_documents: list[Document]) -> None:
    path = tmp_path / "idx"
    Index.build(kb_documents, path, embedding_model=None)
    (path / "manifest.json").unlink()
    with pytest.raises(IndexNotFoundError, match=r"manifest\.json' is corrupt \(the file is missing\); rebuild"):
        Index(path)
    assert Index.build(kb_documents, path, embedding_model=None).manifest.num_documents == 8


def test_opening_and_searching_never_modify_the_index_files(kb_index: Index) -> None:
    from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings

    files = sorted(p for p in kb_index.path.rglob("*") if p.is_file())

    def identities() -> list[tuple[int, int, int]]:
        return [(p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in files]

    before = identities()
    index = Index(kb_index.path)
    hits = FirstStage(index, FirstStageSettings(method="hybrid")).retrieve("rotate redis credentials", 3)
    assert hits[0].passage.doc_id == "redis-rotate"
    assert identities() == before, "a read-only open keeps every recorded sha256 valid"
