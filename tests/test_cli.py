"""The real ``rankwise`` executable, run as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RANKWISE = [sys.executable, "-m", "rankwise"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*RANKWISE, *args], capture_output=True, text=True, env=env, timeout=600, check=False)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import KB

    path = tmp_path_factory.mktemp("cli") / "kb.jsonl"
    path.write_text("\n".join(json.dumps({"id": d.id, "title": d.title, "text": d.text, **d.metadata}) for d in KB))
    return path


def test_index_then_search_json(tmp_path: Path, corpus_file: Path, tiny_cross_encoder: Path) -> None:
    idx = tmp_path / "idx"
    built = run("index", str(corpus_file), "--index", str(idx))
    assert built.returncode == 0, built.stderr
    assert "8 documents" in built.stdout
    result = run("search", "rotate the postgres password", "--index", str(idx), "--reranker", str(tiny_cross_encoder),
                 "--k", "3", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["query"] == "rotate the postgres password" and len(payload["results"]) == 3
    first = payload["results"][0]
    assert {"rank", "doc_id", "score", "first_stage", "reranker", "rank_change", "snippet"} <= set(first)
    assert first["first_stage"]["method"] == "hybrid" and set(first["reranker"]) == {"rank", "score", "raw_score"}
    assert payload["provenance"]["reranker_sha256"] != "none" and payload["provenance"]["num_candidates"] == 8
    table = run("search", "rotate the postgres password", "--index", str(idx), "--first-stage", "bm25",
                "--filter", "category=runbook")
    assert table.returncode == 0 and "pg-rotate" in table.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["search", "", "--index", "IDX"], "query is empty"),
    (["search", "q", "--index", "MISSING"], "no index at"),
    (["search", "q", "--index", "IDX", "--reranker", "org/not-cached"], "not in the Hugging Face cache"),
    (["search", "q", "--index", "IDX", "--first-stage", "nope"], "unknown first stage"),
    (["index", "MISSING", "--index", "OUT"], "does not exist"),
])
def test_errors_are_one_line_with_nonzero_exit(tmp_path: Path, corpus_file: Path, args: list[str], message: str) -> None:
    idx = tmp_path / "idx"
    assert run("index", str(corpus_file), "--index", str(idx), "--no-dense").returncode == 0
    subst = {"IDX": str(idx), "MISSING": str(tmp_path / "missing"), "OUT": str(tmp_path / "out")}
    result = run(*[subst.get(a, a) for a in args])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3
