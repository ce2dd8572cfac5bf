"""``rankwise eval`` / ``label`` / ``label-import`` run as a user runs them, and the HTML report in Chromium."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_cli import run
from test_evaluation import KB_QUERIES, kb_goldset

from rankwise import Index


@pytest.fixture(scope="module")
def goldset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The KB gold set plus one judgement of a document that is not in the index."""
    from rankwise.evaluation import GoldSet, Judgement

    gold = kb_goldset()
    path = tmp_path_factory.mktemp("gold") / "gold.jsonl"
    GoldSet([*gold.judgements, Judgement("q-pg", KB_QUERIES["q-pg"][0], "pg-rotate-old", 1)]).save(path)
    return path


@pytest.fixture(scope="module")
def passing_eval(tmp_path_factory: pytest.TempPathFactory, kb_index: Index, goldset_file: Path,
                 tiny_cross_encoder: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("eval")
    result = run("eval", "--index", str(kb_index.path), "--goldset", str(goldset_file), "--first-stage", "bm25,dense",
                 "--reranker", str(tiny_cross_encoder), "--gate", "nDCG@10:-1", "--max-latency-ms", "600000",
                 "--min-queries", "1",
                 "--json", str(out / "report.json"), "--markdown", str(out / "report.md"),
                 "--html", str(out / "report.html"), "--run-dir", str(out / "runs"))
    return result, out


def test_eval_writes_every_output_and_passes_its_gates(passing_eval: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = passing_eval
    assert result.returncode == 0, result.stderr
    # the unknown document is announced with counts on stderr, and kept as a miss
    assert "1 judgements (1 relevant) reference 1 documents that are not in the index" in result.stderr
    for text in ("nDCG@5", "bm25+reranker", "dense+reranker", "p95", "PASS nDCG@10:-1", "PASS latency"):
        assert text in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "rankwise.evaluation/1" and report["gates"]["passed"] is True
    assert report["candidate"] == "dense+reranker" and report["baseline"] == "dense"
    assert report["dataset"]["counts"]["unknown_documents"] == 1
    assert "| dense+reranker |" in (out / "report.md").read_text()
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["bm25+reranker.run", "bm25.run", "dense+reranker.run", "dense.run", "qrels.txt"]
    first = (out / "runs" / "bm25.run").read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "bm25"
    assert "q-pg 0 pg-rotate-old 1" in (out / "runs" / "qrels.txt").read_text()


def test_failed_gates_exit_1_with_one_line_per_rule(kb_index: Index, goldset_file: Path) -> None:
    result = run("eval", "--index", str(kb_index.path), "--goldset", str(goldset_file), "--first-stage",
                 "bm25,hybrid", "--baseline", "bm25", "--gate", "nDCG@5:+15%", "--gate", "R@20:-1",
                 "--max-latency-ms", "0.001", "--limit-queries", "4", "--min-queries", "4")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("FAIL nDCG@5:+15%: hybrid nDCG@5") for line in lines) == 1
    assert sum(line.startswith("PASS R@20:-1") for line in lines) == 1
    assert sum(line.startswith("FAIL latency: hybrid end-to-end p95") for line in lines) == 1
    assert "4 queries" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize(("lines", "extra", "message"), [
    (['{"query_id": "q-pg", "query": "rotate postgres", "document_id": "pg-rotate", "label": 1}'] * 2, [],
     "1 duplicate judgements"),
    (['{"query_id": "q-pg", "query": "rotate postgres", "document_id": "pg-rotate", "label": 3}'], ["--scale", "0-2"],
     "1 labels in 'bad' are outside the declared scale {0,1,2}"),
    ([], [], "has no judgements"),
    (['{"query_id": "q-pg", "query": "rotate postgres", "document_id": "pg-rotate", "label": 1}'],
     ["--gate", "nDCG@5>15%"], "gate 'nDCG@5>15%' is not valid"),
    (['{"query_id": "q-pg", "query": "rotate postgres", "document_id": "pg-rotate", "label": 1}'],
     ["--metrics", "nDCG@5,ndcg_cut_x"], "unknown metric 'ndcg_cut_x'"),
    # a gain on one query is noise, however large: refused before anything is evaluated
    (['{"query_id": "q-pg", "query": "rotate postgres", "document_id": "pg-rotate", "label": 1}'],
     ["--gate", "nDCG@5:+15%"], "a gate needs at least 30 judged queries and this gold set has 1"),
    (['{"query_id": "q-pg", "query": "rotate postgres", "document_id": "pg-rotate", "label": 1}'],
     ["--gate", "nDCG@5:+15%", "--max-p", "0"], "--max-p must be in (0, 1]"),
])
def test_bad_input_is_one_error_line(tmp_path: Path, kb_index: Index, lines: list[str], extra: list[str],
                                     message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    result = run("eval", "--index", str(kb_index.path), "--goldset", str(path), "--first-stage", "bm25",
                 "--baseline", "bm25", *extra)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


def test_label_then_label_import(tmp_path: Path, kb_index: Index) -> None:
    queries = tmp_path / "production.txt"
    queries.write_text("\n".join(text for text, _ in KB_QUERIES.values()) + "\n")
    made = run("label", str(queries), "--index", str(kb_index.path), "--first-stage", "bm25", "--k", "3",
               "--out-dir", str(tmp_path / "sheet"))
    assert made.returncode == 0, made.stderr
    with (tmp_path / "sheet" / "labels.csv").open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["query_id", "query", "rank", "document_id", "title", "snippet", "label", "annotator",
                             "notes"]
    assert len((tmp_path / "sheet" / "labels.jsonl").read_text().splitlines()) == len(rows) >= 6
    relevant = {(text, doc) for text, docs in KB_QUERIES.values() for doc, lab in docs.items() if lab > 0}
    sheets = []
    for name, flip_every in (("alice", 0), ("bob", 4)):  # bob disagrees on every 4th row
        for i, row in enumerate(rows):
            label = int((row["query"], row["document_id"]) in relevant)
            row["label"] = str(1 - label if flip_every and i % flip_every == 0 else label)
        path = tmp_path / f"{name}.csv"
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        sheets.append(str(path))
    merged = run("label-import", *sheets, "--out", str(tmp_path / "gold.jsonl"), "--scale", "binary")
    assert merged.returncode == 0, merged.stderr
    disagreeing = len(range(0, len(rows), 4))
    assert "2 annotators (alice, bob)" in merged.stdout and "Cohen's kappa" in merged.stdout
    assert f"{disagreeing} disagreements ({disagreeing} ties" in merged.stdout
    gold = [json.loads(line) for line in (tmp_path / "gold.jsonl").read_text().splitlines()]
    assert len(gold) == len(rows) - disagreeing
    with (tmp_path / "gold.disagreements.csv").open(encoding="utf-8-sig", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == disagreeing


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_PROBE = ("<script>window.addEventListener('load', () => { const p = document.createElement('pre'); p.id = 'probe';"
          "p.textContent = JSON.stringify([...document.querySelectorAll('img.plot')].map("
          "i => [i.naturalWidth, i.naturalHeight])); document.body.appendChild(p); });</script>")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_html_report_renders_its_plots_in_chromium(passing_eval: tuple[subprocess.CompletedProcess[str], Path],
                                                   tmp_path: Path) -> None:
    _, out = passing_eval
    page = (out / "report.html").read_text()
    assert "<script" not in page  # the report itself is static; the probe below is added to a copy
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120,
                         check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    sizes = json.loads(dom.stdout.split('<pre id="probe">')[1].split("</pre>")[0])
    assert len(sizes) == 3 and all(w > 200 and h > 100 for w, h in sizes), sizes
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1200,2400", f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    image = Image.open(shot).convert("L")
    low, high = image.getextrema()
    assert image.size == (1200, 2400) and high - low > 100  # not a blank page
