"""The index manifest: what is in an index and how it was built, as one JSON file.

It is written last during a build, so its presence marks a complete index; its fingerprint identifies
the exact corpus + settings + embedding weights and is stamped on every search response. It also records
every other index file's size and sha256 (see :mod:`rankwise.index.integrity`) and a checksum of its own
content, so a damaged or hand-edited manifest is refused rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rankwise.errors import IndexNotFoundError
from rankwise.index.integrity import SIDECAR, corrupt, one_line, valid_records
from rankwise.index.swap import recover_interrupted_swap

MANIFEST_NAME = "manifest.json"
#: what an index directory holds besides the manifest (and the verified-files cache)
INDEX_ENTRIES = ("docstore.sqlite", "bm25", "vectors.npy")
#: 2 added the per-file digests (``files``) and the manifest's own ``checksum``
FORMAT_VERSION = 2
#: format 1 indexes (built before the digests existed) still open, checked structurally: row counts,
#: finite unit vectors, passage content hashes — rebuilding one adds the digests
READABLE_FORMATS = (1, 2)


@dataclass(slots=True)
class Manifest:
    source: str
    created_at: str
    corpus_fingerprint: str
    num_documents: int
    num_passages: int
    chunking: dict[str, Any]
    bm25: dict[str, Any]
    embedding: dict[str, Any] | None
    stats: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    fingerprint: str = ""
    #: ``{relative path: {"size", "sha256", "edges"}}`` of every other file of the index
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: sha256 of every other field (canonical JSON), set by :meth:`write`
    checksum: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            settings = {"chunking": self.chunking, "bm25": self.bm25,
                        "embedding_sha256": (self.embedding or {}).get("sha256"),
                        "embedding_backend": (self.embedding or {}).get("backend", "torch")}
            payload = self.corpus_fingerprint + json.dumps(settings, sort_keys=True)
            self.fingerprint = hashlib.sha256(payload.encode()).hexdigest()[:16]

    def write(self, directory: Path) -> None:
        """Write ``manifest.json`` (with its checksum) and fsync it: it is what makes a build complete."""
        data = asdict(self)
        self.checksum = data["checksum"] = _checksum(data)
        with open(directory / MANIFEST_NAME, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=True))
            fh.flush()
            os.fsync(fh.fileno())

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """The manifest of the index at ``directory``, refused with one line if missing, damaged or edited."""
        directory = Path(directory)
        file = directory / MANIFEST_NAME
        if not directory.exists():
            recover_interrupted_swap(directory)  # a rebuild killed between its two renames: put the old one back
        if not directory.is_dir():
            raise IndexNotFoundError(f"no index at '{directory}'; build one with: rankwise index SOURCE --index {directory}")
        if not file.is_file():
            if any((directory / name).exists() for name in INDEX_ENTRIES):
                raise corrupt(file, "the file is missing")
            raise IndexNotFoundError(f"'{directory}' is not a rankwise index (no {MANIFEST_NAME}); "
                                     f"build one with: rankwise index SOURCE --index {directory}")
        try:
            raw = file.read_bytes()
        except OSError as err:
            raise IndexNotFoundError(f"cannot read index file '{file}' ({one_line(err.strerror or err)}); "
                                     "check its permissions") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise corrupt(file, f"not UTF-8 text: byte 0x{raw[err.start]:02x} at offset {err.start}") from None
        except (json.JSONDecodeError, RecursionError) as err:
            raise corrupt(file, f"not valid JSON: {err}") from None
        return cls(**_validated(data, file, directory))


def looks_like_index(directory: Path) -> bool:
    """True for a directory holding a manifest, or only index files (an index whose manifest was lost).

    Such a directory may be rebuilt in place; any other non-empty directory is the user's and is left alone.
    """
    if (directory / MANIFEST_NAME).is_file():
        return True
    names = {p.name for p in directory.iterdir()}
    return bool(names) and all(n in INDEX_ENTRIES or n.startswith(SIDECAR) for n in names)


def _checksum(data: dict[str, Any]) -> str:
    payload = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_TYPES: dict[str, tuple[type, ...]] = {
    "source": (str,), "created_at": (str,), "corpus_fingerprint": (str,), "num_documents": (int,),
    "num_passages": (int,), "chunking": (dict,), "bm25": (dict,), "embedding": (dict, type(None)),
    "stats": (dict,), "format_version": (int,), "fingerprint": (str,), "files": (dict,), "checksum": (str,),
}
_REQUIRED = {f.name for f in fields(Manifest) if f.name not in ("stats", "format_version", "files", "checksum")}
_EMBEDDING_TYPES: dict[str, type] = {"model": str, "path": str, "sha256": str, "dim": int, "max_seq_length": int}


def _json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return {str: "a string", int: "a number", float: "a number", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__)


def _validated(data: Any, file: Path, directory: Path) -> dict[str, Any]:
    """``data`` as :class:`Manifest` keyword arguments, or raise naming the first problem."""
    if not isinstance(data, dict):
        raise corrupt(file, f"expected a JSON object, found {_json_type(data)}")
    version = data.get("format_version", 1)
    if type(version) is not int:
        raise corrupt(file, f"'format_version' must be a number, found {_json_type(version)}")
    if version > FORMAT_VERSION:
        raise IndexNotFoundError(f"index '{directory}' has format {version}, this rankwise reads up to "
                                 f"{FORMAT_VERSION}; upgrade rankwise or rebuild the index")
    if version not in READABLE_FORMATS:
        raise IndexNotFoundError(f"index '{directory}' has format {version}, this rankwise reads "
                                 f"{', '.join(map(str, READABLE_FORMATS))}; rebuild the index")
    if (version >= 2 or "checksum" in data) and data.get("checksum") != _checksum(data):
        raise corrupt(file, "its content does not match its checksum (edited or damaged)")
    unknown = sorted(set(data) - set(_TYPES))
    if unknown:
        raise corrupt(file, f"unknown field '{unknown[0]}'")
    missing = sorted(_REQUIRED - set(data))
    if missing:
        raise corrupt(file, f"field '{missing[0]}' is missing")
    for name, value in data.items():
        allowed = _TYPES[name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            expected = " or ".join(_json_type(t()) if t is not type(None) else "null" for t in allowed)
            raise corrupt(file, f"field '{name}' must be {expected}, found {_json_type(value)}")
    for name in ("num_documents", "num_passages"):
        if data[name] < 0:
            raise corrupt(file, f"field '{name}' is negative")
    embedding = data["embedding"]
    if embedding is not None:
        for name, kind in _EMBEDDING_TYPES.items():
            value = embedding.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise corrupt(file, f"field 'embedding.{name}' must be {_json_type(kind())}, found {_json_type(value)}")
        if embedding["dim"] <= 0:
            raise corrupt(file, "field 'embedding.dim' must be positive")
    problem = valid_records(data.get("files", {}))
    if problem:
        raise corrupt(file, problem)
    if version >= 2 and not data.get("files"):
        raise corrupt(file, "it records no index files")
    return data
