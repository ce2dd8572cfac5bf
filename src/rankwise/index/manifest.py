"""The index manifest: what is in an index and how it was built, as one JSON file.

It is written last during a build, so its presence marks a complete index; its fingerprint identifies
the exact corpus + settings + embedding weights and is stamped on every search response.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rankwise.errors import IndexNotFoundError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


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

    def __post_init__(self) -> None:
        if not self.fingerprint:
            settings = {"chunking": self.chunking, "bm25": self.bm25,
                        "embedding_sha256": (self.embedding or {}).get("sha256"),
                        "embedding_backend": (self.embedding or {}).get("backend", "torch")}
            payload = self.corpus_fingerprint + json.dumps(settings, sort_keys=True)
            self.fingerprint = hashlib.sha256(payload.encode()).hexdigest()[:16]

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_NAME).write_text(json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        file = directory / MANIFEST_NAME
        if not directory.is_dir():
            raise IndexNotFoundError(f"no index at '{directory}'; build one with: rankwise index SOURCE --index {directory}")
        if not file.is_file():
            raise IndexNotFoundError(f"'{directory}' is not a rankwise index (no {MANIFEST_NAME}); "
                                     f"build one with: rankwise index SOURCE --index {directory}")
        try:
            data = json.loads(file.read_text())
            manifest = cls(**data)
        except (json.JSONDecodeError, TypeError) as err:
            raise IndexNotFoundError(f"index manifest '{file}' is corrupt ({err}); rebuild the index") from err
        if manifest.format_version != FORMAT_VERSION:
            raise IndexNotFoundError(f"index '{directory}' has format {manifest.format_version}, this rankwise "
                                     f"reads {FORMAT_VERSION}; rebuild the index")
        return manifest
