"""Index faults: a rebuild killed at every step of the swap, and byte-level damage to every index file.

Crashes are real ``rankwise index`` processes that die at a named step (``RANKWISE_CRASH_AT``, like
``kill -9``); damage is done to the files of a real index and observed through the real CLI. The rule
under test: afterwards an index opens complete (old or new, never none), the next build leaves nothing
behind, and a damaged index answers with one ``error:`` line, never with results.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import KB, corrupt_middle
from rankwise.errors import IndexNotFoundError
from rankwise.faults import CRASH_EXIT
from rankwise.index import Index, swap
from rankwise.index.dense import Embedder
from rankwise.index.integrity import SIDECAR
from rankwise.index.manifest import Manifest
from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings
from rankwise.types import Document

#: runs the CLI with the portable two-rename swap, as on a system without renameat2(RENAME_EXCHANGE)
RENAME_SWAP_CLI = ("import sys, rankwise.index.swap as swap; swap.RENAMEAT2 = None; "
                   "from rankwise.cli import main; sys.argv[0] = 'rankwise'; main()")


def _write_corpus(file: Path, docs: list[Document]) -> Path:
    file.write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text, **d.metadata}) + "\n"
                            for d in docs))
    return file


def _leftovers(parent: Path, name: str = "idx") -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def _cli_index(corpus: Path, path: Path, *, mode: str = "exchange", crash_at: str | None = None
               ) -> subprocess.CompletedProcess[str]:
    prefix = [sys.executable, "-c", RENAME_SWAP_CLI] if mode == "rename" else [sys.executable, "-m", "rankwise"]
    env = _env(RANKWISE_CRASH_AT=crash_at) if crash_at else _env()
    return subprocess.run([*prefix, "index", str(corpus), "--index", str(path), "--no-dense"],
                          check=False, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpora")
    new = [*KB, Document("onboarding", "A brand new onboarding guide for engineers.", "Onboarding")]
    return _write_corpus(root / "old.jsonl", list(KB)), _write_corpus(root / "new.jsonl", new)


@pytest.fixture(scope="module")
def lexical_old(tmp_path_factory: pytest.TempPathFactory, corpora: tuple[Path, Path]) -> Index:
    return Index.build(corpora[0], tmp_path_factory.mktemp("lexical") / "idx", embedding_model=None)


# ---------------------------------------------------------------------------------------------- crashes
CRASH_POINTS = [
    ("exchange", "index:built", "old"),
    ("exchange", "index:swapped", "new"),
    ("rename", "index:built", "old"),
    ("rename", "index:old-moved", "old"),
    ("rename", "index:swapped", "new"),
]


@pytest.mark.parametrize(("mode", "point", "survivor"), CRASH_POINTS, ids=[f"{m}-{p}" for m, p, _ in CRASH_POINTS])
def test_a_rebuild_killed_at_any_step_leaves_a_complete_index(tmp_path: Path, corpora: tuple[Path, Path],
                                                             lexical_old: Index, mode: str, point: str,
                                                             survivor: str) -> None:
    if mode == "exchange" and swap.RENAMEAT2 is None:
        pytest.skip("renameat2 is not available on this system")
    path = tmp_path / "idx"
    shutil.copytree(lexical_old.path, path)
    crashed = _cli_index(corpora[1], path, mode=mode, crash_at=point)
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    moved_aside = any(".idx.old-" in n for n in _leftovers(tmp_path))
    if mode == "exchange":
        assert path.is_dir() and not moved_aside, "the exchange never moves the index aside, it is there throughout"
    else:
        assert moved_aside == (point != "index:built")
        assert path.is_dir() == (point != "index:old-moved")

    opened = Index(path)
    expected = {"old": (8, lexical_old.fingerprint), "new": (9, None)}[survivor]
    assert opened.manifest.num_documents == expected[0]
    if survivor == "old":
        assert opened.fingerprint == lexical_old.fingerprint
    assert opened.docstore.passages(list(range(opened.manifest.num_passages)))  # every passage readable
    assert not [n for n in _leftovers(tmp_path) if ".old-" in n], "opening restores or deletes the moved-aside index"

    rebuilt = _cli_index(corpora[1], path, mode=mode)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert Index(path).manifest.num_documents == 9
    assert _leftovers(tmp_path) == []


def test_a_first_build_killed_before_the_swap_leaves_nothing_behind_after_the_next(
        tmp_path: Path, corpora: tuple[Path, Path]) -> None:
    path = tmp_path / "idx"
    assert _cli_index(corpora[0], path, crash_at="index:built").returncode == CRASH_EXIT
    with pytest.raises(IndexNotFoundError, match="no index at"):
        Index(path)
    Index.build(corpora[0], path, embedding_model=None)
    assert _leftovers(tmp_path) == []


def test_the_next_build_restores_a_half_swapped_index_before_reusing_it(
        tmp_path: Path, corpora: tuple[Path, Path], lexical_old: Index) -> None:
    path = tmp_path / "idx"
    shutil.copytree(lexical_old.path, path)
    assert _cli_index(corpora[1], path, mode="rename", crash_at="index:old-moved").returncode == CRASH_EXIT
    assert not path.exists()
    Index.build(corpora[1], path, embedding_model=None)  # not an open first: the build itself recovers
    assert Index(path).manifest.num_documents == 9 and _leftovers(tmp_path) == []


def test_recovery_leaves_a_live_process_alone_and_removes_dead_and_old_style_leftovers(
        tmp_path: Path, lexical_old: Index) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    path = tmp_path / "idx"
    live_old = tmp_path / f".idx.old-{os.getpid()}-0000live"  # another process between its two renames
    dead_old = tmp_path / f".idx.old-{dead}-0000dead"
    unowned_old = tmp_path / ".idx.old-deadbeef"  # the naming of earlier versions (no pid)
    # a build that looks dead to this process may run in another pid namespace: only a build removes it
    dead_build = tmp_path / f".idx.building-{dead}-0000dead"
    for leftover in (live_old, dead_old, unowned_old, dead_build):
        shutil.copytree(lexical_old.path, leftover)
    shutil.copytree(lexical_old.path, path)
    Index(path)
    assert _leftovers(tmp_path) == sorted([dead_build.name, live_old.name])
    shutil.rmtree(dead_build)

    shutil.rmtree(path)
    shutil.move(live_old, unowned_old)  # now: no index, only an old-style leftover of a dead build
    assert Manifest.read(path).fingerprint == lexical_old.fingerprint, "`rankwise info` recovers too"
    assert Index(path).fingerprint == lexical_old.fingerprint
    assert _leftovers(tmp_path) == []


def test_a_reused_pid_is_not_mistaken_for_the_process_that_left_a_swap_half_done(
        tmp_path: Path, lexical_old: Index) -> None:
    if swap._start_time(os.getpid()) is None:
        pytest.skip("process start times are not available on this system")
    # this process's pid, but another start time: the pid was reused after the builder died (reboot, new container)
    shutil.copytree(lexical_old.path, tmp_path / f".idx.old-{os.getpid()}-1-0000beef")
    assert Index(tmp_path / "idx").fingerprint == lexical_old.fingerprint
    assert _leftovers(tmp_path) == []


def test_exchange_swaps_two_directories_in_one_step(tmp_path: Path) -> None:
    if swap.RENAMEAT2 is None:
        pytest.skip("renameat2 is not available on this system")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from-a").touch()
    (b / "from-b").touch()
    assert swap.exchange(a, b)
    assert [p.name for p in a.iterdir()] == ["from-b"] and [p.name for p in b.iterdir()] == ["from-a"]
    with pytest.raises(FileNotFoundError):
        swap.exchange(a, tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- damage
@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder("minilm", backend="torch")


@pytest.fixture(scope="module")
def dense_builds(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> dict[str, Path]:
    """The index under test, a build of the same size with other vectors, and a bigger build."""
    root = tmp_path_factory.mktemp("dense")
    other = [Document(d.id, d.text + " Revised.", d.title, d.metadata) for d in KB]
    bigger = [*KB, Document("onboarding", "A brand new onboarding guide for engineers.", "Onboarding")]
    return {name: Index.build(docs, root / name, embedder=embedder).path
            for name, docs in (("index", list(KB)), ("other", other), ("bigger", bigger))}


def _index_files(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != SIDECAR)


def _damaged_copy(source: Path, dest: Path, file: str, fault: str, donor: Path | None = None) -> Path:
    shutil.copytree(source, dest)
    target = dest / file
    if fault == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif fault == "overwrite":
        corrupt_middle(target)
        data = bytearray(target.read_bytes())  # and 64 bytes of non-zero garbage a little further on
        at = max(min(len(data) * 3 // 4, len(data) - 64), 0)
        data[at:at + 64] = bytes(range(97, 161))
        target.write_bytes(bytes(data))
    elif fault == "delete":
        target.unlink()
    elif fault == "replace":
        assert donor is not None
        shutil.copy2(donor / file, target)
    return dest


def _cli_search(runs: list[tuple[Path, str]]) -> list[subprocess.CompletedProcess[str]]:
    """``rankwise search --first-stage STAGE`` on each ``(index, stage)``, two processes at a time."""
    results: list[subprocess.CompletedProcess[str]] = []
    for start in range(0, len(runs), 2):
        procs = [subprocess.Popen([sys.executable, "-m", "rankwise", "search", "reset MFA", "--index", str(path),
                                   "--first-stage", stage, "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=_env())
                 for path, stage in runs[start:start + 2]]
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def _search_both_stages(path: Path) -> list[subprocess.CompletedProcess[str]]:
    return _cli_search([(path, "bm25"), (path, "dense")])


def _assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout[:300], result.stderr[-2000:])
    assert "Traceback" not in result.stderr and result.stdout == "", "never a traceback, never an answer"
    assert len(lines) == 1 and lines[0].startswith("error: ") and "rebuild the index" in lines[0], lines
    for needle in needles:
        assert needle in lines[0], lines[0]


EXPECTED_FILES = ["bm25/data.csc.index.npy", "bm25/indices.csc.index.npy", "bm25/indptr.csc.index.npy",
                  "bm25/params.index.json", "bm25/vocab.index.json", "docstore.sqlite", "manifest.json",
                  "vectors.npy"]


FAULTS = ["truncate", "overwrite", "delete"]


@pytest.mark.parametrize("fault", FAULTS)
def test_damage_to_any_index_file_is_one_error_line_through_the_cli(tmp_path: Path, dense_builds: dict[str, Path],
                                                                    embedder: Embedder, fault: str) -> None:
    """Every file x fault: both first stages in-process, and one of them (alternating) through the CLI."""
    assert _index_files(dense_builds["index"]) == EXPECTED_FILES, "a new index file needs a case here"
    damaged = {file: _damaged_copy(dense_builds["index"], tmp_path / file.replace("/", "_"), file, fault)
               for file in EXPECTED_FILES}
    for file, path in damaged.items():
        for method in ("bm25", "dense"):
            with pytest.raises(IndexNotFoundError, match=rf"{Path(file).name}' is corrupt .*; rebuild the index$"):
                FirstStage(Index(path, embedder=embedder), FirstStageSettings(method=method))
    stages = ("bm25", "dense")
    runs = [(path, stages[(i + FAULTS.index(fault)) % 2]) for i, path in enumerate(damaged.values())]
    for file, result in zip(damaged, _cli_search(runs), strict=True):
        _assert_refused(result, Path(file).name)


@pytest.mark.parametrize("donor", ["other", "bigger"])
def test_vectors_of_another_build_are_refused(tmp_path: Path, dense_builds: dict[str, Path], donor: str) -> None:
    damaged = _damaged_copy(dense_builds["index"], tmp_path / "idx", "vectors.npy", "replace", dense_builds[donor])
    for result in _search_both_stages(damaged):
        _assert_refused(result, "vectors.npy")


def test_nan_vectors_and_edited_passage_text_are_refused(tmp_path: Path, dense_builds: dict[str, Path]) -> None:
    nan = tmp_path / "nan"
    shutil.copytree(dense_builds["index"], nan)
    vectors = np.load(nan / "vectors.npy")
    vectors[3, :8] = np.nan
    np.save(nan / "vectors.npy", vectors)  # same size, valid .npy

    edited = tmp_path / "edited"
    shutil.copytree(dense_builds["index"], edited)
    store = edited / "docstore.sqlite"
    stat = store.stat()
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE passages SET text = 'Contractors reset MFA by e-mailing their password.' "
                     "WHERE passage_id = 'mfa-contractor#0'")
    conn.close()
    os.utime(store, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its old mtime put back
    for path, file in ((nan, "vectors.npy"), (edited, "docstore.sqlite")):
        for result in _search_both_stages(path):
            _assert_refused(result, file)


def test_a_damaged_index_is_rebuilt_in_place_without_reusing_its_vectors(tmp_path: Path, dense_builds: dict[str, Path],
                                                                        embedder: Embedder) -> None:
    """The advice "rebuild the index" works as given, and damaged vectors never leak into the new build."""
    path = _damaged_copy(dense_builds["index"], tmp_path / "idx", "vectors.npy", "overwrite")
    rebuilt = Index.build(list(KB), path, embedder=embedder)
    assert rebuilt.manifest.stats["embedded"] == 8 and rebuilt.manifest.stats["reused"] == 0
    assert (path / "vectors.npy").read_bytes() == (dense_builds["index"] / "vectors.npy").read_bytes()
    assert _leftovers(tmp_path) == []


def test_an_edited_manifest_is_refused(tmp_path: Path, dense_builds: dict[str, Path]) -> None:
    path = shutil.copytree(dense_builds["index"], tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["num_passages"] = 7  # valid JSON, valid types: only the checksum tells
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexNotFoundError, match=r"manifest\.json' is corrupt .*checksum"):
        Index(path)


# ------------------------------------------------------- format 1 indexes: no digests, structural checks
def _legacy_copy(source: Path, dest: Path) -> Path:
    """A copy whose manifest is as earlier versions wrote it (format 1: no file digests, no checksum)."""
    shutil.copytree(source, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    for key in ("files", "checksum"):
        manifest.pop(key)
    manifest["format_version"] = 1
    (dest / "manifest.json").write_text(json.dumps(manifest))
    (dest / SIDECAR).unlink()
    return dest


def test_format_1_index_still_opens_and_searches(tmp_path: Path, dense_builds: dict[str, Path],
                                                 embedder: Embedder) -> None:
    legacy = Index(_legacy_copy(dense_builds["index"], tmp_path / "idx"), embedder=embedder)
    for method in ("bm25", "dense"):
        (top, *_) = FirstStage(legacy, FirstStageSettings(method=method)).retrieve("contractors reset MFA", 3)
        assert top.passage.doc_id == "mfa-contractor"


def test_format_1_index_with_bad_vectors_or_text_or_counts_is_refused(tmp_path: Path, dense_builds: dict[str, Path],
                                                                      embedder: Embedder) -> None:
    nan = _legacy_copy(dense_builds["index"], tmp_path / "nan")
    vectors = np.load(nan / "vectors.npy")
    vectors[5, 100] = np.inf
    np.save(nan / "vectors.npy", vectors)
    with pytest.raises(IndexNotFoundError, match=r"vectors\.npy' is corrupt \(1 vectors are not finite unit"):
        FirstStage(Index(nan, embedder=embedder), FirstStageSettings(method="dense"))

    zeroed = _legacy_copy(dense_builds["index"], tmp_path / "zeroed")
    corrupt_middle(zeroed / "vectors.npy")
    with pytest.raises(IndexNotFoundError, match="not finite unit vectors"):
        Index(zeroed).vectors  # noqa: B018

    edited = _legacy_copy(dense_builds["index"], tmp_path / "edited")
    with sqlite3.connect(edited / "docstore.sqlite") as conn:
        conn.execute("UPDATE documents SET title = 'Something else' WHERE doc_id = 'pg-rotate'")
    conn.close()
    index = Index(edited)
    with pytest.raises(IndexNotFoundError, match="passage 'pg-rotate#0' does not match its content hash"):
        FirstStage(index, FirstStageSettings(method="bm25")).retrieve("rotate postgres credentials", 3)

    mixed = _legacy_copy(dense_builds["index"], tmp_path / "mixed-vectors")
    shutil.copy2(dense_builds["bigger"] / "vectors.npy", mixed / "vectors.npy")
    with pytest.raises(IndexNotFoundError, match=r"vectors of shape \(9, 384\) float32, the manifest expects \(8, 384\)"):
        Index(mixed)
    mixed = _legacy_copy(dense_builds["index"], tmp_path / "mixed-bm25")
    shutil.rmtree(mixed / "bm25")
    shutil.copytree(dense_builds["bigger"] / "bm25", mixed / "bm25")
    with pytest.raises(IndexNotFoundError, match="the BM25 index covers 9 passages, the manifest records 8"):
        Index(mixed)


# ---------------------------------------------------------------------------------- the verified cache
def test_build_records_every_file_and_the_verified_cache_follows_copies(tmp_path: Path,
                                                                       dense_builds: dict[str, Path]) -> None:
    source = dense_builds["index"]
    files = json.loads((source / "manifest.json").read_text())["files"]
    assert sorted(files) == [f for f in EXPECTED_FILES if f != "manifest.json"]
    cached = json.loads((source / SIDECAR).read_text())["files"]
    assert {name: entry[-1] for name, entry in cached.items()} == {n: r["sha256"] for n, r in files.items()}

    copy = shutil.copytree(source, tmp_path / "copy")  # new inodes: every file is hashed again, once
    (copy / SIDECAR).write_text("{not json")  # a damaged cache only costs a re-hash
    Index(copy)
    refreshed = json.loads((copy / SIDECAR).read_text())["files"]
    assert {n: e[1] for n, e in refreshed.items()} == {n: (copy / n).stat().st_ino for n in files}
