"""Fault injection on the model registry: real processes killed at each step of a write, real bytes corrupted.

A write is run in a separate interpreter with ``RANKWISE_CRASH_AT`` naming a crash point; the process dies
there with ``os._exit(137)`` (nothing flushed, no cleanup, like ``kill -9``). The registry is then opened
in this process and must hold exactly what was committed — a version exists once its ``register`` event is
in ``history.jsonl`` — and the next write must succeed and leave no debris. Corruption tests damage each
file of a registered version in turn: every case must be a one-line :class:`ModelError`, never a load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rankwise.errors import ModelError
from rankwise.faults import CRASH_EXIT, ENV
from rankwise.registry import Registry
from rankwise.rerank.loading import load_reranker

REGISTER = "import sys; from rankwise.registry import Registry; Registry(sys.argv[1]).register(sys.argv[2], {})"
PROMOTE = "import sys; from rankwise.registry import Registry; Registry(sys.argv[1]).promote(sys.argv[2])"
ROLLBACK = "import sys; from rankwise.registry import Registry; Registry(sys.argv[1]).rollback()"


def _run(code: str, *args: str, crash_at: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ENV: crash_at}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def _debris(registry: Registry) -> list[str]:
    return sorted(p.name for p in registry.versions_dir.iterdir() if p.name.startswith(".tmp-"))


def _one_line(err: pytest.ExceptionInfo[ModelError]) -> str:
    message = str(err.value)
    assert "\n" not in message and message, message
    return message


@pytest.fixture()
def registry(tmp_path: Path, tiny_cross_encoder: Path) -> Registry:
    """v1 registered and in production (candidate too)."""
    reg = Registry(tmp_path / "registry")
    reg.register(tiny_cross_encoder, {"note": "first"})
    reg.promote("v1")
    return reg


# ---------------------------------------------------------------------- crash points of register
#: crash point → (versions committed, candidate alias) afterwards; v1 exists and is production before
REGISTER_CRASHES = {
    "registry:copied": (["v1"], "v1"),
    "registry:renamed": (["v1"], "v1"),
    "registry:event-written": (["v1", "v2"], "v1"),
    "registry:aliased": (["v1", "v2"], "v2"),
}


@pytest.mark.parametrize("point", list(REGISTER_CRASHES))
def test_register_killed_at_each_step_leaves_exactly_what_was_committed(point: str, registry: Registry,
                                                                         tiny_cross_encoder: Path) -> None:
    committed, candidate = REGISTER_CRASHES[point]
    crashed = _run(REGISTER, str(registry.root), str(tiny_cross_encoder), crash_at=point)
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    assert [v.version for v in registry.versions()] == committed
    assert registry.aliases() == {"production": "v1", "candidate": candidate}
    if point == "registry:renamed":  # the dir is there but uncommitted: invisible, reported, not loadable
        assert (registry.versions_dir / "v2").is_dir()
        assert any("versions/v2 has no register event" in p for p in registry.problems())
        with pytest.raises(ModelError, match="'v2' .* was never committed"):
            registry.get("v2")
    else:
        assert registry.problems() == []
    for version in committed:
        registry.get(version)
    # the next write cleans up and never reuses a committed number
    following = registry.register(tiny_cross_encoder, {"note": "after the crash"})
    assert following.version == f"v{len(committed) + 1}"
    assert _debris(registry) == [] and registry.problems() == []
    assert [v.version for v in registry.versions()] == [*committed, following.version]
    assert registry.aliases() == {"production": "v1", "candidate": following.version}
    registry.promote(following.version)
    assert registry.get("production").version == following.version


def test_leftovers_of_a_crashed_register_are_invisible_before_the_next_write(registry: Registry,
                                                                            tiny_cross_encoder: Path) -> None:
    assert _run(REGISTER, str(registry.root), str(tiny_cross_encoder), crash_at="registry:copied").returncode == 137
    assert len(_debris(registry)) == 1, "the partial copy is still there..."
    assert [v.version for v in registry.versions()] == ["v1"], "...but never listed"
    assert _run(REGISTER, str(registry.root), str(tiny_cross_encoder), crash_at="registry:renamed").returncode == 137
    registry.promote("v1")  # any write repairs, not only register
    assert _debris(registry) == [] and not (registry.versions_dir / "v2").exists()
    set_aside = [p.name for p in registry.versions_dir.iterdir() if p.name.startswith(".orphan-v2-")]
    assert len(set_aside) == 1, "an uncommitted version is set aside, not destroyed"


def test_a_crash_point_name_that_is_not_reached_lets_the_write_finish(registry: Registry,
                                                                     tiny_cross_encoder: Path) -> None:
    """The control for the tests above: 137 comes from the named point, not from the harness."""
    done = _run(REGISTER, str(registry.root), str(tiny_cross_encoder), crash_at="registry:no-such-point")
    assert done.returncode == 0, done.stderr
    assert [v.version for v in registry.versions()] == ["v1", "v2"]


def test_a_register_that_fails_cleans_up_at_once_and_bad_arguments_write_nothing(registry: Registry,
                                                                                tmp_path: Path) -> None:
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no weight files"):
        registry.register(no_weights, {})
    assert _debris(registry) == [] and [v.version for v in registry.versions()] == ["v1"]
    for version, message in [("../x", "is not a registry name"), ("v01", "did you mean v1"),
                             ("production", "is an alias, not a version id"), ("v1", "immutable")]:
        with pytest.raises(ModelError, match=message):
            registry.register(no_weights, {}, version=version)
    with pytest.raises(ModelError, match="unknown registry alias 'staging'"):
        registry.register(no_weights, {}, alias="staging")
    assert len(registry.history()) == 3, "register + alias of v1 and its promotion, nothing more"


# ---------------------------------------------------------------------- crash points of promote / rollback
@pytest.mark.parametrize(("point", "production"), [("registry:promote-verified", "v1"), ("registry:promoted", "v2")])
def test_promote_killed_at_each_step_changes_production_only_once_committed(point: str, production: str,
                                                                            registry: Registry,
                                                                            tiny_cross_encoder: Path) -> None:
    registry.register(tiny_cross_encoder, {"note": "second"})
    before = len(registry.history())
    crashed = _run(PROMOTE, str(registry.root), "v2", crash_at=point)
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    assert registry.aliases()["production"] == production
    assert len(registry.history()) == before + (production == "v2")
    registry.promote("v1")  # the next promotion builds on what was committed: rollback returns there
    assert registry.history()[-1]["previous"] == production
    assert registry.rollback() == production and registry.get("production").version == production
    assert _debris(registry) == [] and registry.problems() == []


def test_rollback_killed_after_its_event_is_committed(registry: Registry, tiny_cross_encoder: Path) -> None:
    registry.register(tiny_cross_encoder, {})
    registry.promote("v2")
    crashed = _run(ROLLBACK, str(registry.root), crash_at="registry:rolled-back")
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    assert registry.aliases()["production"] == "v1"
    registry.promote("v2")
    assert registry.get("production").version == "v2"


# ---------------------------------------------------------------------- byte-level corruption
def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _flip_middle(file: Path) -> None:
    data = bytearray(file.read_bytes())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + 16)):
        data[i] ^= 0xFF
    file.write_bytes(bytes(data))


def _delete(file: Path) -> None:
    file.unlink()


@pytest.mark.parametrize("damage", [_truncate, _flip_middle, _delete], ids=["truncate", "flip-middle", "delete"])
def test_damage_to_any_file_of_a_version_refuses_to_load(damage: Callable[[Path], None], registry: Registry) -> None:
    entry = registry.get("v1")
    files = sorted(p for p in entry.path.iterdir() if p.is_file())
    assert {"config.json", "tokenizer.json", "model.safetensors", "model_card.json", "rankwise-files.json"} <= {
        p.name for p in files}
    for file in files:
        original, mode = file.read_bytes(), file.stat().st_mode
        file.chmod(0o644)
        damage(file)
        with pytest.raises(ModelError, match=r"'v1' is corrupt") as err:
            registry.get("v1")
        assert file.name in _one_line(err), f"the message names the damaged file: {err.value}"
        with pytest.raises(ModelError, match=r"'v1' is corrupt"):
            load_reranker("production", registry=registry)
        assert "v1" not in [v.version for v in registry.versions()]
        assert any(file.name in p for p in registry.problems())
        file.write_bytes(original)
        file.chmod(mode)
        assert registry.get("v1").version == "v1", f"restoring {file.name} restores the version"


def test_an_added_file_is_refused_because_transformers_would_read_it(registry: Registry) -> None:
    path = registry.get("v1").path
    (path / "added_tokens.json").write_text('{"[NEW]": 30522}')
    with pytest.raises(ModelError, match="unexpected file added_tokens.json") as err:
        registry.get("v1")
    _one_line(err)
    (path / "added_tokens.json").unlink()
    os.symlink(path / "config.json", path / "config-link.json")
    with pytest.raises(ModelError, match="config-link.json"):
        registry.get("v1")


def test_a_missing_tokenizer_fails_the_search_cli_instead_of_ranking_garbage(registry: Registry, kb_index) -> None:
    (registry.get("v1").path / "tokenizer.json").unlink()
    result = subprocess.run([sys.executable, "-m", "rankwise", "search", "rotate the postgres password", "--index",
                             str(kb_index.path), "--reranker", "v1", "--registry", str(registry.root)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stdout
    assert "tokenizer.json is missing" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:")


# ---------------------------------------------------------------------- names cannot leave the registry
@pytest.mark.parametrize("name", ["../x", "../../evil", "v1/../v2", "production/../v1", "/tmp", "v1/", "./v1",
                                  "v01", "v0", "V1", "v1\n", "v 1", "", ".", "..", "versions/v1", "v1.0"])
def test_names_outside_the_two_closed_forms_are_refused(name: str, registry: Registry) -> None:
    with pytest.raises(ModelError, match="is not a registry name") as err:
        registry.get(name)
    with pytest.raises(ModelError, match="is not a registry name"):
        registry.promote(name, forced=True)
    assert registry.aliases()["production"] == "v1"
    if name == "v01":
        assert "did you mean v1?" in str(err.value)


def test_promoting_a_directory_outside_the_registry_is_refused_by_the_cli(registry: Registry, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text("{}")
    (evil / "model_card.json").write_text(json.dumps({"version": "evil"}))
    relative = os.path.relpath(evil, registry.versions_dir)
    result = subprocess.run([sys.executable, "-m", "rankwise", "models", "promote", relative, "--force",
                             "--registry", str(registry.root)], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "is not a registry name" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert registry.aliases()["production"] == "v1"


def test_history_events_naming_invalid_versions_are_not_replayed(registry: Registry) -> None:
    with open(registry.history_file, "a") as fh:
        fh.write(json.dumps({"event": "register", "version": "../evil"}) + "\n")
        fh.write(json.dumps({"event": "promote", "alias": "production", "version": "../../evil"}) + "\n")
    assert "../evil" not in [v.version for v in registry.versions()]
    assert "production" not in registry.aliases()
    with pytest.raises(ModelError, match=r"invalid version '../../evil' \(history.jsonl:\d+\); promote") as err:
        registry.get("production")
    _one_line(err)
    assert len(registry.problems()) == 2
    registry.promote("v1", forced=True)
    assert registry.get("production").version == "v1"


def test_a_version_dir_replaced_by_a_symlink_is_refused(registry: Registry, tmp_path: Path) -> None:
    v1 = registry.versions_dir / "v1"
    v1.rename(tmp_path / "moved")
    v1.symlink_to(tmp_path / "moved")
    with pytest.raises(ModelError, match="'v1' is corrupt: .* not a directory"):
        registry.get("v1")


# ---------------------------------------------------------------------- torn and corrupt history
def test_a_torn_last_history_line_is_ignored_then_cut_before_the_next_append(registry: Registry,
                                                                              tiny_cross_encoder: Path) -> None:
    intact = registry.history_file.read_bytes()
    with open(registry.history_file, "ab") as fh:
        fh.write(b'{"event": "promote", "alias": "produc')  # a crash mid-append: no newline
    assert registry.aliases() == {"production": "v1", "candidate": "v1"}
    assert len(registry.history()) == intact.count(b"\n") and registry.problems() == []
    registry.register(tiny_cross_encoder, {})
    data = registry.history_file.read_bytes()
    assert data.startswith(intact) and data.endswith(b"\n") and b"produc\"" not in data
    assert all(json.loads(line) for line in data.splitlines())
    assert registry.aliases()["candidate"] == "v2"


def test_a_complete_last_line_missing_only_its_newline_is_kept(registry: Registry) -> None:
    registry.history_file.write_bytes(registry.history_file.read_bytes().rstrip(b"\n"))
    assert registry.aliases()["production"] == "v1"
    registry.promote("v1", forced=True)
    lines = registry.history_file.read_bytes().splitlines()
    assert all(json.loads(line) for line in lines) and json.loads(lines[-1])["forced"] is True


def test_a_corrupt_line_in_the_middle_is_an_error_naming_the_line(registry: Registry, tiny_cross_encoder: Path) -> None:
    lines = registry.history_file.read_bytes().splitlines(keepends=True)
    registry.history_file.write_bytes(lines[0] + b'{"event": "regis\x00\x00\n' + b"".join(lines[1:]))
    for action in (registry.aliases, lambda: registry.get("v1"), registry.versions,
                   lambda: registry.register(tiny_cross_encoder, {})):
        with pytest.raises(ModelError, match=r"history.jsonl:2 is corrupt .*restore the file from backup") as err:
            action()
        _one_line(err)
    assert _debris(registry) == [], "a refused write leaves nothing behind"
