"""The verified artifact cache: exported and quantised models, built once, checked every time they are used.

Exported files are cached at ``<model_dir>/.rankwise/onnx/<key>/<task>/<name>``, each with a JSON sidecar
holding the source key, the recipe that built it, its sha256 and the versions of the tools that built it.
``key`` digests the model's weight files *and* its JSON configs (a pooling mode or classifier setting is
baked into the graph), so a changed model is re-exported, never silently reused. When the model directory
cannot be written (a read-only mount), and always for a model that ships inside an installed Python package
(the bundled bi-encoder in site-packages: an installation is not the user's to write into, and may be
read-only in a system install or a container image), the cache lives in the user cache dir (platformdirs),
or in ``$RANKWISE_CACHE_DIR`` when that is set.

Every use checks the sidecar and the artifact's size; its sha256 is checked again only when the
artifact's identity (that of each of its files) is not already verified in this process
(:mod:`rankwise.verified_files`; remembered only once settled, as an export is verified moments after it
is written). A cached artifact that fails verification (size or sha256 differs from its sidecar: a torn
write, a bad disk, a hand edit) is never used. It is rebuilt with a logged warning rather than raised as an
error: the file is derived data that rankwise owns, and deriving it again is always correct.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rankwise.clock import utc_now
from rankwise.errors import ModelError
from rankwise.inference.backends import Task
from rankwise.models import weights_sha256
from rankwise.storage import atomic_write_text
from rankwise.verified_files import VerifiedFiles, sha256_of

log = logging.getLogger(__name__)


def source_key(model_dir: Path) -> str:
    """Digest of a model's weights and JSON configs: what an exported graph depends on."""
    digest = hashlib.sha256(weights_sha256(model_dir).encode())
    for file in sorted(p for p in model_dir.rglob("*.json") if ".rankwise" not in p.relative_to(model_dir).parts):
        digest.update(str(file.relative_to(model_dir)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def cached_artifact(model_dir: Path, task: Task, name: str, wanted: dict[str, Any],
                    build: Callable[[Path], None], tools: Sequence[str] = ("onnxruntime", "onnx")) -> Path:
    """The verified cached artifact ``name`` (a file, or a directory of files) for this model and recipe.

    ``build(work)`` creates it at ``work`` when no verified copy exists; it is then moved into place and
    its sidecar (the commit marker) written, so a crash mid-export never leaves a half file in use. The
    sidecar records the versions of ``tools`` (the packages that built it), for whoever debugs a score shift.
    """
    key = source_key(model_dir)
    for root in _cache_roots(model_dir):
        path = root / key[:16] / task / name
        if _verified(path, key, wanted):
            return path
    target = _writable_dir(model_dir, key, task)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=target) as tmp:
        work = Path(tmp) / name
        build(work)
        return _publish(work, target / name, key, wanted, tools)


CACHE_DIR_ENV = "RANKWISE_CACHE_DIR"


def user_cache_root() -> Path:
    """Where exports go when they cannot sit beside the model: ``$RANKWISE_CACHE_DIR``, else the user cache dir."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get(CACHE_DIR_ENV) or user_cache_dir("rankwise")) / "onnx"


def _installed(model_dir: Path) -> bool:
    """Whether ``model_dir`` is part of an installed Python package (site-packages or the like)."""
    resolved = model_dir.resolve()
    roots = {Path(sysconfig.get_paths()[name]).resolve() for name in ("purelib", "platlib")}
    return any(resolved.is_relative_to(root) for root in roots) or \
        any(part in {"site-packages", "dist-packages"} for part in resolved.parts)


def _cache_roots(model_dir: Path) -> list[Path]:
    if _installed(model_dir):
        return [user_cache_root()]
    return [model_dir / ".rankwise" / "onnx", user_cache_root()]


def _writable_dir(model_dir: Path, key: str, task: Task) -> Path:
    """First cache root we can create files in: next to the model, else the user cache dir."""
    for root in _cache_roots(model_dir):
        directory = root / key[:16] / task
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory):
                return directory
        except OSError:
            continue
    raise ModelError(f"cannot write an ONNX export for '{model_dir}' in {' or '.join(map(str, _cache_roots(model_dir)))}; "
                     f"make one writable, set {CACHE_DIR_ENV} to a writable directory, or use --backend torch")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _verified(file: Path, key: str, wanted: dict[str, Any]) -> bool:
    """True only if ``file`` and its sidecar exist, match this model and recipe, and the bytes check out."""
    sidecar = file.with_suffix(".json")
    if not sidecar.is_file():
        return False  # never exported here, or an export died before its commit marker (the sidecar)
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("ONNX cache sidecar %s is unreadable; re-exporting", sidecar)
        return False
    if meta.get("source_key") != key or meta.get("recipe") != wanted:
        return False  # another model version or recipe: stale, not corrupt
    if not file.exists() or _size(file) != meta.get("bytes") or \
            not VerifiedFiles(file.parent, settle=True).verify(file.name, meta.get("sha256")):
        log.warning("cached model %s is missing or does not match its sha256; re-exporting", file)
        return False
    return True


def _publish(work: Path, dest: Path, key: str, wanted: dict[str, Any], tools: Sequence[str]) -> Path:
    """Move a finished file into place, then write its sidecar (the commit marker), both atomically."""
    meta = {"source_key": key, "recipe": wanted, "sha256": sha256_of(work), "bytes": _size(work),
            "created_at": utc_now(),
            "versions": {tool: importlib.metadata.version(tool) for tool in tools}}
    if dest.is_dir():  # a stale directory artifact (another recipe): os.replace cannot overwrite it
        shutil.rmtree(dest)
    os.replace(work, dest)
    atomic_write_text(dest.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True))
    return dest

