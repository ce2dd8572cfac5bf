from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import build_tiny_cross_encoder
from rankwise.errors import ModelError
from rankwise.registry import Registry
from rankwise.rerank.loading import load_reranker


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def _model(tmp_path: Path, seed: int) -> Path:
    return build_tiny_cross_encoder(tmp_path / f"m{seed}", seed=seed)


def test_register_assigns_versions_cards_and_candidate_alias(tmp_path: Path, registry: Registry) -> None:
    v1 = registry.register(_model(tmp_path, 1), {"base_model": "tiny", "metrics": {"validation": {"nDCG@10": 0.5}}})
    v2 = registry.register(_model(tmp_path, 2), {"base_model": "tiny", "parent": "v1"})
    assert (v1.version, v2.version) == ("v1", "v2")
    assert registry.aliases() == {"candidate": "v2"}
    assert v1.weights_sha256 != v2.weights_sha256 and len(v1.card.created_at or "") > 0
    assert "base_model" in registry.diff("v1", "v2") or "parent" in registry.diff("v1", "v2")


def test_versions_are_immutable(tmp_path: Path, registry: Registry) -> None:
    registry.register(_model(tmp_path, 1), {}, version="v1")
    with pytest.raises(ModelError, match="immutable"):
        registry.register(_model(tmp_path, 2), {}, version="v1")
    assert registry.get("v1").weights_sha256 == registry.get("candidate").weights_sha256


def test_promote_rollback_and_resolution_through_the_registry(tmp_path: Path, registry: Registry) -> None:
    registry.register(_model(tmp_path, 1), {})
    registry.register(_model(tmp_path, 2), {})
    with pytest.raises(ModelError, match="no model is aliased 'production'"):
        registry.get("production")
    registry.promote("v1")
    registry.promote("v2", forced=True)
    assert registry.aliases()["production"] == "v2"
    assert registry.history()[-1]["forced"] is True
    assert registry.rollback() == "v1"
    assert registry.aliases()["production"] == "v1"
    reranker = load_reranker("production", registry=registry)
    assert reranker is not None and reranker.weights_sha256 == registry.get("v1").weights_sha256
    events = [e["event"] for e in registry.history()]
    assert events.count("promote") == 2 and events[-1] == "rollback", "history is append-only"


def test_corrupt_entries_give_clear_errors(tmp_path: Path, registry: Registry) -> None:
    entry = registry.register(_model(tmp_path, 1), {})
    weights = entry.path / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    with pytest.raises(ModelError, match="'v1' is corrupt: model.safetensors changed"):
        registry.get("v1")
    card = entry.path / "model_card.json"
    card.chmod(0o644)
    card.write_text("{oops")
    with pytest.raises(ModelError, match="corrupt"):
        registry.get("v1")
    with pytest.raises(ModelError, match="no model version 'v9'"):
        registry.get("v9")


def test_every_file_is_listed_and_the_list_is_pinned_by_the_register_event(tmp_path: Path,
                                                                          registry: Registry) -> None:
    entry = registry.register(_model(tmp_path, 1), {})
    listed = json.loads((entry.path / "rankwise-files.json").read_text())["files"]
    on_disk = {p.name for p in entry.path.iterdir()} - {"rankwise-files.json"}
    assert set(listed) == on_disk and {"tokenizer.json", "config.json", "model_card.json"} <= on_disk
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in listed.values())
    assert len(registry.history()[0]["files_sha256"]) == 64
    # derived artifacts (the verified ONNX/OpenVINO cache) may appear inside a version without breaking it
    (entry.path / ".rankwise" / "onnx").mkdir(parents=True)
    (entry.path / ".rankwise" / "onnx" / "model.onnx").write_bytes(b"derived")
    assert registry.get("v1").path == entry.path


def test_versions_registered_before_file_lists_still_load_verified_by_weights(tmp_path: Path,
                                                                              registry: Registry) -> None:
    """A registry written by the weights-only code: no rankwise-files.json, no files_sha256 in the event."""
    from rankwise.models import weights_sha256

    source = _model(tmp_path, 1)
    version = registry.versions_dir / "v1"
    shutil.copytree(source, version)
    card = {"version": "v1", "created_at": "2024-01-01T00:00:00+00:00", "weights_sha256": weights_sha256(version)}
    (version / "model_card.json").write_text(json.dumps(card))
    registry.history_file.write_text(json.dumps({"event": "register", "version": "v1", "parent": None}) + "\n")
    assert registry.get("v1").weights_sha256 == card["weights_sha256"]
    assert [v.version for v in registry.versions()] == ["v1"] and registry.problems() == []
    (version / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ModelError, match="'v1' is corrupt: weights sha256"):
        registry.get("v1")
    assert registry.register(source, {}).version == "v2", "numbering continues after legacy versions"


def test_verified_hashes_are_cached_but_a_changed_file_is_still_seen(tmp_path: Path, registry: Registry) -> None:
    """Repeated loads skip rehashing once files are older than a timestamp tick, keyed by size/mtime/ctime/inode."""
    from rankwise import verified_files

    entry = registry.register(_model(tmp_path, 1), {})

    def cached() -> bool:
        return any(key[0] == str(entry.path.resolve()) for key in verified_files.VERIFIED)

    registry.get("v1")
    assert not cached(), "files written within the settle window are rehashed on every load"
    time.sleep(verified_files.SETTLE_NS / 1e9 + 0.1)
    registry.get("v1")
    assert cached(), "once settled, the next load of v1 skips hashing"
    tokenizer = entry.path / "tokenizer.json"
    data = bytearray(tokenizer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tokenizer.write_bytes(bytes(data))  # same size, same path: only the stamps changed
    with pytest.raises(ModelError, match="tokenizer.json changed"):
        registry.get("v1")


def test_registry_names_win_over_a_local_directory_of_the_same_name(tmp_path: Path, registry: Registry,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    registry.register(_model(tmp_path, 1), {})
    monkeypatch.chdir(tmp_path)
    _model(tmp_path, 2).rename(tmp_path / "v1")
    reranker = load_reranker("v1", registry=registry)
    assert reranker is not None and reranker.weights_sha256 == registry.get("v1").weights_sha256
    local = load_reranker("./v1", registry=registry)
    assert local is not None and local.weights_sha256 != reranker.weights_sha256
    (tmp_path / "production").mkdir()
    with pytest.raises(ModelError, match="no model is aliased 'production'.*pass ./production"):
        load_reranker("production", registry=registry)


def test_one_corrupt_version_does_not_hide_the_others(tmp_path: Path, registry: Registry) -> None:
    bad = registry.register(_model(tmp_path, 1), {})
    registry.register(_model(tmp_path, 2), {})
    card = bad.path / "model_card.json"
    card.chmod(0o644)
    card.write_text("{garbled")
    assert [v.version for v in registry.versions()] == ["v2"]
    problems = registry.problems()
    assert len(problems) == 1 and "'v1' is corrupt: model_card.json changed" in problems[0]
    listed = subprocess.run([sys.executable, "-m", "rankwise", "models", "list", "--registry", str(registry.root)],
                            capture_output=True, text=True, check=False)
    assert listed.returncode == 0, listed.stderr
    assert "v2" in listed.stdout and "Traceback" not in listed.stderr


def test_models_cli(tmp_path: Path, registry: Registry) -> None:
    registry.register(_model(tmp_path, 1), {"base_model": "tiny"})
    run = [sys.executable, "-m", "rankwise", "models"]
    listed = subprocess.run([*run, "list", "--registry", str(registry.root)], capture_output=True, text=True, check=False)
    assert listed.returncode == 0 and "v1" in listed.stdout and "candidate" in listed.stdout
    shown = subprocess.run([*run, "show", "candidate", "--registry", str(registry.root)], capture_output=True, text=True, check=False)
    assert json.loads(shown.stdout)["version"] == "v1"
    bad = subprocess.run([*run, "rollback", "--registry", str(registry.root)], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "nothing to roll back" in bad.stderr
