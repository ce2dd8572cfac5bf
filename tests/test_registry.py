from __future__ import annotations

import json
import subprocess
import sys
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
    assert v1.weights_sha256 != v2.weights_sha256 and len(v1.card["created_at"]) > 0
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
    with pytest.raises(ModelError, match="corrupt: weights sha256"):
        registry.get("v1")
    card = entry.path / "model_card.json"
    card.chmod(0o644)
    card.write_text("{oops")
    with pytest.raises(ModelError, match="corrupt"):
        registry.get("v1")
    with pytest.raises(ModelError, match="no model version 'v9'"):
        registry.get("v9")


def test_models_cli(tmp_path: Path, registry: Registry) -> None:
    registry.register(_model(tmp_path, 1), {"base_model": "tiny"})
    run = [sys.executable, "-m", "rankwise", "models"]
    listed = subprocess.run([*run, "list", "--registry", str(registry.root)], capture_output=True, text=True, check=False)
    assert listed.returncode == 0 and "v1" in listed.stdout and "candidate" in listed.stdout
    shown = subprocess.run([*run, "show", "candidate", "--registry", str(registry.root)], capture_output=True, text=True, check=False)
    assert json.loads(shown.stdout)["version"] == "v1"
    bad = subprocess.run([*run, "rollback", "--registry", str(registry.root)], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "nothing to roll back" in bad.stderr
