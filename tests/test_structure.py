"""The package's layering, checked on the source: arrows point down only, and no module cycle exists.

Imports are read with ``ast`` (module-level *and* function-level ones: a lazy import is still an arrow),
so the check costs milliseconds and sees every path, not only those a test happens to run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rankwise"

#: each package may import only the ones at or below its own level (front ends at the top)
LAYERS: list[set[str]] = [
    {"errors"},
    {"types", "options", "jsonl", "models", "faults", "sqlite_files", "storage", "clock", "batched_writer",
     "postgres",  # connecting to the shared store and migrating it; psycopg imported only when one is named
     "ray_cluster"},  # connecting to Ray for batch work; ray imported only when --ray is given
    {"verified_files"},  # sha256 checks remembered per file identity; writes its sidecars through storage
    {"corpus"},  # loaders and chunking; inference calibrates static int8 on the bundled corpus
    {"inference"},
    {"index"},
    {"retrieval", "rerank", "registry"},
    {"pipeline"},
    {"evaluation"},
    {"training"},  # the promotion gate evaluates
    {"feedback"},  # the query log, feedback events, click models, export to gold sets
    {"experiments"},  # assignment, interleaving, statistics, reports over the feedback store
    {"monitoring"},  # scheduled evaluation history, drift signals, behaviour probes
    {"serving"},
    {"integrations"},  # RAG-framework adapters over a local reranker or a server
    {"cli"},
    {"demo", "__main__", "__init__"},
]


def _module_name(file: Path) -> str:
    parts = list(file.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(file: Path) -> set[str]:
    """Every ``rankwise.*`` module ``file`` imports, resolved to the longest existing module name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n == "rankwise" or n.startswith("rankwise."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(f): f for f in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        targets = {t for t in _imports(file) if t in modules and t != name}
        graph[name] = targets
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _level(package: str) -> int:
    for level, packages in enumerate(LAYERS):
        if package in packages:
            return level
    raise AssertionError(f"package '{package}' is not assigned a layer in LAYERS")


def test_every_import_points_down_or_sideways_within_a_package() -> None:
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            if target == "rankwise":  # the package's public surface; only front ends import it
                continue
            src, dst = _package(module), _package(target)
            if src != dst and _level(dst) >= _level(src) and not (_level(dst) == _level(src) and dst != src and
                                                                 {src, dst} <= {"retrieval", "rerank", "registry"}):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up or across layers:\n" + "\n".join(sorted(upward))


def test_index_does_not_import_rerank_and_inference_imports_neither() -> None:
    graph = _graph()
    offending = [f"{m} -> {t}" for m, ts in graph.items() for t in ts
                 if (_package(m) == "index" and _package(t) == "rerank")
                 or (_package(m) == "inference" and _package(t) in {"index", "rerank"})]
    assert not offending, offending


def test_no_module_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", ["rankwise.inference.backends", "rankwise.inference.runners", "rankwise.index.dense",
                                    "rankwise.rerank.cross_encoder", "rankwise.registry", "rankwise.registry.card",
                                    "rankwise.pipeline", "rankwise.cli.common",
                                    "rankwise.cli.serve", "rankwise.serving.app", "rankwise.serving.handlers"])
def test_module_imports_alone(module: str) -> None:
    """A fresh interpreter imports the module by itself (no hidden dependence on import order)."""
    result = subprocess.run([sys.executable, "-c", f"import {module}"], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
