"""The typed model card: cards of every shape round-trip unchanged, and a malformed one is one line."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import build_tiny_cross_encoder
from rankwise.errors import ModelError
from rankwise.models import weights_sha256
from rankwise.registry import CardError, CardMetrics, ModelCard, Registry, TrainingData, Validation, read_card

#: what `rankwise train` records (continued_from and replay null; negatives, queries, positives not typed)
TRAINED: dict[str, Any] = {
    "base_model": "minilm", "continued_from": None, "created_at": "2025-01-02T03:04:05+00:00",
    "hyperparameters": {"loss": "softmax", "max_steps": 12}, "parent": "v1",
    "metrics": {"validation": {"against_first_stage": None, "nDCG@10": 0.5}},
    "recipe": {"architecture": "cross-encoder", "reasons": ["few queries"]}, "residual": None,
    "training": {"steps": 12, "train_seconds": 1.5}, "version": "v2", "weights_sha256": "ab" * 32,
    "training_data": {"fingerprint": "f" * 16, "goldset": None, "index_fingerprint": "i" * 16, "max_positives": 1,
                      "negatives": 8, "positives": 2, "queries": 2, "query_digests": ["0123456789abcdef"],
                      "replay": None, "title_queries": 0},
}
#: what `rankwise models add` records
ADDED: dict[str, Any] = {
    "added_with": "rankwise models add", "base_model": "org/model", "max_length": 512, "name": "org/model",
    "parent": None, "source": "org/model", "source_weights_sha256": "cd" * 32, "version": "v1",
    "metrics": {"evaluation": {"nDCG@10": 0.4, "nDCG@5": 0.3}, "first_stage": {"nDCG@10": 0.2, "nDCG@5": 0.1},
                "goldset": "gold.jsonl", "queries": 30, "split": None},
}


@pytest.mark.parametrize("card", [TRAINED, ADDED, {}], ids=["trained", "added", "empty"])
def test_a_card_round_trips_exactly(card: dict[str, Any]) -> None:
    typed = ModelCard.from_dict(card)
    assert typed.to_dict() == card and list(typed.to_dict()) == sorted(card)
    assert ModelCard.from_dict(typed.to_dict()) == typed
    assert typed.to_json() == json.dumps(card, indent=2, sort_keys=True), "the bytes model_card.json holds"


def test_typed_accessors_replace_nested_lookups() -> None:
    trained, added = ModelCard.from_dict(TRAINED), ModelCard.from_dict(ADDED)
    assert trained.validation_ndcg10 == 0.5 and added.validation_ndcg10 is None
    assert trained.query_digests == ("0123456789abcdef",) and added.query_digests == ()
    assert added.evaluation == {"nDCG@10": 0.4, "nDCG@5": 0.3} and trained.evaluation == {}
    assert trained.training_data is not None and trained.training_data.extra == {"negatives": 8, "positives": 2,
                                                                                 "queries": 2}
    assert trained.continued_from is None and trained.residual is None


def test_a_key_given_as_none_is_recorded_as_null_and_one_not_given_is_left_out() -> None:
    built = ModelCard(base_model="tiny", continued_from=None,
                      metrics=CardMetrics(validation=Validation(ndcg10=0.25, against_first_stage=None)))
    assert built.to_dict() == {"base_model": "tiny", "continued_from": None,
                               "metrics": {"validation": {"against_first_stage": None, "nDCG@10": 0.25}}}
    assert ModelCard.from_dict(built.to_dict()) == built
    registered = dataclasses.replace(built, version="v3")
    assert registered.to_dict() == {**built.to_dict(), "version": "v3"}, "replace keeps nulls and absences"


def test_unknown_keys_are_kept_at_every_level() -> None:
    future = {"base_model": "tiny", "tokenizer": {"lowercase": True},
              "training_data": {"dataset": "/data/kb", "split": "train", "sampler": "hard"},
              "metrics": {"validation": {"nDCG@10": 0.5, "MRR@10": 0.4}, "latency_ms": 3.0}}
    card = ModelCard.from_dict(future)
    assert card.extra == {"tokenizer": {"lowercase": True}}
    assert card.training_data is not None and card.training_data.extra == {"sampler": "hard"}
    assert card.to_dict() == future


def test_a_card_owns_its_values() -> None:
    data = {"recipe": {"loss": "bce"}, "training_data": {"query_digests": ["a"]}}
    card = ModelCard.from_dict(data)
    data["recipe"]["loss"] = "changed"
    card.to_dict()["recipe"]["loss"] = "changed too"
    assert card.recipe == {"loss": "bce"}


@pytest.mark.parametrize(("data", "message"), [
    ([1, 2], "it must be a JSON object, not a list"),
    ({"base_model": 3}, "field 'base_model' must be a string, not a number"),
    ({"max_length": True}, "field 'max_length' must be an integer, not a boolean"),
    ({"training_data": []}, "field 'training_data' must be a JSON object, not a list"),
    ({"training_data": {"query_digests": "abc"}}, "field 'training_data.query_digests' must be a list of strings"),
    ({"metrics": {"validation": {"nDCG@10": "high"}}}, "field 'metrics.validation.nDCG@10' must be a number, not a string"),
    ({"metrics": {"evaluation": {"nDCG@5": None}}}, "field 'metrics.evaluation.nDCG@5' must be a number, not null"),
    ({"recipe": "bce"}, "field 'recipe' must be an object, not a string"),
])
def test_a_wrongly_typed_card_is_one_line_naming_the_field(data: Any, message: str) -> None:
    with pytest.raises(CardError, match="malformed model card") as err:
        ModelCard.from_dict(data)
    assert message in str(err.value) and "\n" not in str(err.value)
    if isinstance(data, dict):
        with pytest.raises(CardError, match=message.split(",")[0]):
            ModelCard(**data)  # a card built in code is checked the same way


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", "is malformed: it must be a JSON object, not a list"),
    ('{"metrics": {"validation": {"nDCG@10": "high"}}}', "is malformed: field 'metrics.validation.nDCG@10'"),
    ("{oops", "is not valid JSON"),
])
def test_a_malformed_card_file_is_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "model_card.json"
    path.write_text(text)
    with pytest.raises(ModelError) as err:
        read_card(path)
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def _legacy_version(tmp_path: Path, registry: Registry, card: dict[str, Any] | str) -> Path:
    """A version as the weights-only registry wrote it (no file list), so its card can be written by hand."""
    version = registry.versions_dir / "v1"
    shutil.copytree(build_tiny_cross_encoder(tmp_path / "m1", seed=1), version)
    text = card if isinstance(card, str) else json.dumps({**card, "weights_sha256": weights_sha256(version)})
    (version / "model_card.json").write_text(text)
    registry.history_file.write_text(json.dumps({"event": "register", "version": "v1", "parent": None}) + "\n")
    return version


def test_a_card_written_by_an_older_version_loads_and_shows_as_written(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    old = {"version": "v1", "created_at": "2024-01-01T00:00:00+00:00", "base_model": "tiny", "note": "by hand",
           "training_data": {"dataset": "sample_kb/train", "fingerprint": "f" * 16},
           "metrics": {"validation": {"nDCG@10": 0.5}}, "parent": None}
    path = _legacy_version(tmp_path, registry, old)
    entry = registry.get("v1")
    written = json.loads((path / "model_card.json").read_text())
    assert entry.card.to_dict() == written and entry.card.extra == {"note": "by hand"}
    assert entry.card.validation_ndcg10 == 0.5 and entry.weights_sha256 == written["weights_sha256"]
    shown = subprocess.run([sys.executable, "-m", "rankwise", "models", "show", "v1", "--registry",
                            str(registry.root)], capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view == {"path": str(path), **written} and list(view) == ["path", *sorted(written)]


def test_a_malformed_card_in_the_registry_is_one_line_and_hides_no_other_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    _legacy_version(tmp_path, registry, {"version": "v1", "metrics": {"validation": {"nDCG@10": "high"}}})
    with pytest.raises(ModelError, match=r"'v1' is corrupt: model card .*model_card.json is malformed: field "
                                         r"'metrics.validation.nDCG@10' must be a number") as err:
        registry.get("v1")
    assert "\n" not in str(err.value)
    registry.register(build_tiny_cross_encoder(tmp_path / "m2", seed=2), {})
    assert [v.version for v in registry.versions()] == ["v2"] and len(registry.problems()) == 1


def test_a_card_without_its_weights_hash_is_refused_in_one_line(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    _legacy_version(tmp_path, registry, json.dumps({"version": "v1"}))
    with pytest.raises(ModelError, match="'v1' is corrupt: model_card.json records no weights_sha256"):
        registry.get("v1")


def test_register_writes_the_card_as_before_and_refuses_a_malformed_one(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    model = build_tiny_cross_encoder(tmp_path / "m1", seed=1)
    card = {**TRAINED, "version": None, "created_at": None, "weights_sha256": None, "extra": {"kept": True}}
    entry = registry.register(model, card)
    text = (entry.path / "model_card.json").read_text()
    stamped = {"version": "v1", "created_at": entry.card.created_at, "weights_sha256": entry.weights_sha256}
    assert text == json.dumps({**card, **stamped}, indent=2, sort_keys=True)
    typed = ModelCard(training_data=TrainingData(query_digests=["b", "a"]), parent=None)
    assert registry.register(model, typed).card.query_digests == ("b", "a")
    with pytest.raises(ModelError, match="field 'training_data.replay' must be an object"):
        registry.register(model, {"training_data": {"replay": 2}})
    assert sorted(p.name for p in registry.versions_dir.iterdir()) == ["v1", "v2"]
