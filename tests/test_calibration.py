"""Static int8 calibration queries: the file format, where they come from, and that they reach the quantiser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import QUERY, TEXTS
from rankwise.errors import ModelError, QueryError
from rankwise.inference.calibration import (
    CALIBRATION_FILE,
    CALIBRATION_QUERIES,
    CalibrationQuery,
    calibration_queries,
    read_calibration,
    spread,
    write_calibration,
)
from rankwise.rerank import CrossEncoderReranker

ITEMS = [CalibrationQuery(f"query {i}", (f"judged passage {i}", "another passage")) for i in range(100)]


def test_file_round_trips_and_is_sampled_evenly(tmp_path: Path) -> None:
    path = write_calibration(tmp_path / "c.jsonl", ITEMS)
    assert read_calibration(path) == ITEMS
    assert not list(tmp_path.glob(".*tmp")), "written aside, then renamed"
    queries, source = calibration_queries(tmp_path, path)
    assert source == "file" and len(queries) == CALIBRATION_QUERIES
    assert queries[0] == ITEMS[0] and queries[-1] == ITEMS[-1], "spread over the whole file, not its head"
    assert spread(ITEMS[:3]) == ITEMS[:3]


def test_model_directory_file_wins_over_the_bundled_queries(tmp_path: Path) -> None:
    bundled, source = calibration_queries(tmp_path)
    assert source == "bundled" and len(bundled) == CALIBRATION_QUERIES
    assert all(len(q.texts) == 4 for q in bundled)
    write_calibration(tmp_path / CALIBRATION_FILE, ITEMS[:5])
    assert calibration_queries(tmp_path) == (ITEMS[:5], "model")


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "c.jsonl:2: expected"),
    (json.dumps({"query": "q"}), "c.jsonl:2: expected"),
    (json.dumps({"query": "q", "texts": []}), "non-empty list"),
    (json.dumps({"query": " ", "texts": ["a"]}), "non-empty string"),
    (json.dumps({"query": "q", "texts": ["a", 3]}), "non-empty strings"),
])
def test_malformed_calibration_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"query": "q", "texts": ["a"]}) + "\n" + line + "\n")
    with pytest.raises(ModelError, match=message):
        read_calibration(path)


def test_missing_or_empty_calibration_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        calibration_queries(tmp_path, tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ModelError, match="has no queries"):
        read_calibration(tmp_path / "empty.jsonl")


def test_calibration_only_applies_to_static_int8(tiny_cross_encoder: Path, tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="only applies to backend 'openvino-int8'"):
        CrossEncoderReranker(tiny_cross_encoder, backend="onnx-int8", calibration=tmp_path / "c.jsonl")


@pytest.mark.openvino
def test_int8_model_is_requantised_for_new_calibration_windows(tmp_path: Path) -> None:
    from conftest import build_tiny_cross_encoder

    path = build_tiny_cross_encoder(tmp_path / "m", seed=5)

    def recipes() -> list[dict[str, object]]:  # one sidecar per calibration set, oldest first
        sidecars = (path / ".rankwise" / "onnx").glob("*/cross-encoder/openvino-int8-*.json")
        return [json.loads(s.read_text())["recipe"] for s in sorted(sidecars, key=lambda s: s.stat().st_mtime_ns)]

    CrossEncoderReranker(path, backend="openvino-int8", max_length=48).score(QUERY, TEXTS)
    assert [r["calibration_source"] for r in recipes()] == ["bundled"]
    write_calibration(path / CALIBRATION_FILE, [CalibrationQuery(QUERY, tuple(TEXTS))])
    scores = CrossEncoderReranker(path, backend="openvino-int8", max_length=48).score(QUERY, TEXTS)
    bundled, model = recipes()
    assert model["calibration_source"] == "model" and model["calibration_batches"] == 1
    assert model["calibration"] != bundled["calibration"]
    assert scores.raw.shape == (len(TEXTS),)
    explicit = write_calibration(tmp_path / "mine.jsonl", [CalibrationQuery("another query", ("a passage",))])
    CrossEncoderReranker(path, backend="openvino-int8", max_length=48, calibration=explicit)
    assert [r["calibration_source"] for r in recipes()] == ["bundled", "model", "file"]
