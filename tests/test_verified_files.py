"""Verified files: hashed once per identity, re-hashed after any write, remembered across processes by a sidecar."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rankwise import verified_files
from rankwise.verified_files import VerifiedFiles, identity, path_identity, sha256_of

SIDECAR = ".verified.json"


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty in-process map, as a new process would."""
    monkeypatch.setattr(verified_files, "VERIFIED", {})


def _file(root: Path, data: bytes = b"x" * 10_000) -> tuple[Path, str]:
    file = root / "data.bin"
    file.write_bytes(data)
    return file, hashlib.sha256(data).hexdigest()


def test_a_verified_file_is_remembered_by_its_identity_while_unchanged(tmp_path: Path) -> None:
    file, sha = _file(tmp_path)
    verified = VerifiedFiles(tmp_path)
    assert verified.verified_identity("data.bin") is None
    assert verified.verify("data.bin", sha)
    assert verified.verified_identity("data.bin") == identity(file.stat())
    assert VerifiedFiles(tmp_path).verified_identity("data.bin") == identity(file.stat()), "shared by the process"
    assert not VerifiedFiles(tmp_path).verify("data.bin", "0" * 64), "a remembered identity is tied to its sha256"


def test_a_rewritten_file_of_the_same_size_is_re_hashed_and_refused(tmp_path: Path) -> None:
    file, sha = _file(tmp_path)
    verified = VerifiedFiles(tmp_path)
    assert verified.verify("data.bin", sha)
    before = verified.verified_identity("data.bin")
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))  # same size, same path, same inode: only the timestamps move
    assert file.stat().st_size == 10_000 and identity(file.stat()) != before
    assert not verified.verify("data.bin", sha)
    assert verified.verified_identity("data.bin") == before, "a refused file is not remembered"


def test_the_sidecar_survives_a_process_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file, sha = _file(tmp_path)
    first = VerifiedFiles(tmp_path, sidecar=SIDECAR)
    assert first.verify("data.bin", sha)
    first.save({"data.bin"})
    recorded = json.loads((tmp_path / SIDECAR).read_text())
    assert recorded == {"version": 1, "files": {"data.bin": [*identity(file.stat()), sha]}}

    monkeypatch.setattr(verified_files, "VERIFIED", {})  # a new process: nothing verified in memory
    second = VerifiedFiles(tmp_path, sidecar=SIDECAR)
    assert second.verified_identity("data.bin") is None
    assert second.verify("data.bin", sha)
    assert second.verified_identity("data.bin") == identity(file.stat())

    # the sidecar is trusted for an unchanged identity: the bytes are not read again (so a sha256 the sidecar
    # vouches for is accepted), which is what keeps reopening a large index fast
    monkeypatch.setattr(verified_files, "VERIFIED", {})
    (tmp_path / SIDECAR).write_text(json.dumps({"version": 1, "files": {"data.bin": [*identity(file.stat()), "a" * 64]}}))
    assert VerifiedFiles(tmp_path, sidecar=SIDECAR).verify("data.bin", "a" * 64)


@pytest.mark.parametrize("content", ["{not json", '{"version": 2, "files": {}}', '{"version": 1, "files": []}'])
def test_a_damaged_or_foreign_sidecar_only_costs_a_re_hash(tmp_path: Path, content: str) -> None:
    file, sha = _file(tmp_path)
    (tmp_path / SIDECAR).write_text(content)
    verified = VerifiedFiles(tmp_path, sidecar=SIDECAR)
    assert verified.verify("data.bin", sha)
    verified.save()
    assert json.loads((tmp_path / SIDECAR).read_text())["files"] == {"data.bin": [*identity(file.stat()), sha]}


def test_settling_files_are_checked_but_not_remembered(tmp_path: Path) -> None:
    _, sha = _file(tmp_path)
    verified = VerifiedFiles(tmp_path, settle=True)
    assert verified.verify("data.bin", sha)
    assert verified.verified_identity("data.bin") is None, "written just now: hashed again on the next check"
    assert not verified.verify("data.bin", "0" * 64)


def test_a_directory_is_one_artifact_and_an_added_file_changes_it(tmp_path: Path) -> None:
    artifact = tmp_path / "ir"
    artifact.mkdir()
    (artifact / "model.xml").write_text("<xml/>")
    (artifact / "model.bin").write_bytes(b"\0" * 64)
    sha = sha256_of(artifact)
    before = path_identity(artifact)
    verified = VerifiedFiles(tmp_path)
    assert verified.verify("ir", sha) and verified.verified_identity("ir") == before
    (artifact / "extra.txt").write_text("more")
    assert path_identity(artifact) != before
    assert not verified.verify("ir", sha)
