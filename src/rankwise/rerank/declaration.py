"""What a trained model directory declares about itself in ``rankwise_reranker.json``: its kind, for a
residual reranker the first-stage signal its learned correction is added to, and for a bi-encoder whose
passage side was kept frozen the subdirectory holding that passage encoder.

Directories without the file are plain cross-encoders, which is what every hub reranker is. The file is
written by ``rankwise train`` and read by every loader (CLI, Python API, server), so a model is scored
the same way wherever it is loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

from rankwise.errors import ModelError
from rankwise.options import RERANK_FUSIONS, RerankFusion
from rankwise.storage import atomic_write_text

RerankerKind = Literal["cross-encoder", "bi-encoder"]
RERANKER_KINDS: tuple[RerankerKind, ...] = get_args(RerankerKind)
#: written by ``rankwise train`` into every model directory it saves
KIND_FILE = "rankwise_reranker.json"
#: where a bi-encoder trained with frozen passages keeps the passage encoder, inside its model directory
PASSAGE_ENCODER_DIR = "passage_encoder"


@dataclass(frozen=True, slots=True)
class ResidualBase:
    """The first-stage signal a residual reranker's correction is added to.

    The served raw score is ``correction + weight × (cosine − center)``, where ``cosine`` is the query–passage
    cosine under ``embedder`` (the first stage's embedding model, verified by its weights' sha256 at load).
    The correction is a cross-encoder whose output layer starts at zero, so an untrained model ranks exactly
    like the dense first stage and training moves away from it only where the judged data says so.
    ``weight`` matches the cosine's scale to the training loss (fitted on the training groups) and
    ``center`` (the median training cosine) puts a typical candidate at a calibrated score of 0.5.
    """

    embedder: str
    embedder_sha256: str
    weight: float
    center: float
    signal: Literal["dense-cosine"] = "dense-cosine"

    def offset(self, cosine: float) -> float:
        return self.weight * (cosine - self.center)


@dataclass(frozen=True, slots=True)
class Declaration:
    """``fusion``: how this model's ranks combine with the first stage's when nothing else is asked for,
    chosen by training on its held-out validation queries (None: it was not chosen, order by the model).

    ``passage_encoder``: a bi-encoder whose passages are embedded by this subdirectory's model (a frozen
    copy of the model it was trained from) while queries go through the tuned model at the top level;
    None embeds both sides with the tuned model.
    """

    kind: RerankerKind
    residual: ResidualBase | None = None
    fusion: RerankFusion | None = None
    passage_encoder: str | None = None


def write_declaration(model_dir: str | Path, declaration: Declaration) -> None:
    data: dict[str, object] = {"kind": declaration.kind}
    if declaration.residual is not None:
        data["residual"] = asdict(declaration.residual)
    if declaration.fusion is not None:
        data["fusion"] = declaration.fusion
    if declaration.passage_encoder is not None:
        data["passage_encoder"] = declaration.passage_encoder
    atomic_write_text(Path(model_dir) / KIND_FILE, json.dumps(data) + "\n")


def write_reranker_kind(model_dir: str | Path, kind: RerankerKind) -> None:
    write_declaration(model_dir, Declaration(kind))


def read_declaration(model_dir: str | Path) -> Declaration:
    """What a model directory declares; a plain cross-encoder when it declares nothing (hub rerankers)."""
    file = Path(model_dir) / KIND_FILE
    if not file.is_file():
        return Declaration("cross-encoder")
    try:
        data = json.loads(file.read_text())
        kind = data.get("kind")
        fusion = data.get("fusion")
        passage_encoder = data.get("passage_encoder")
        residual = data.get("residual")
        base = None if residual is None else ResidualBase(
            embedder=str(residual["embedder"]), embedder_sha256=str(residual["embedder_sha256"]),
            weight=float(residual["weight"]), center=float(residual["center"]), signal=residual.get("signal", "dense-cosine"))
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as err:
        raise ModelError(f"{file} is not a JSON object with a 'kind' and an optional 'residual' base ({err})") from err
    if kind not in RERANKER_KINDS:
        raise ModelError(f"{file} declares kind {kind!r}; rankwise knows {', '.join(RERANKER_KINDS)}")
    if base is not None and (kind != "cross-encoder" or base.signal != "dense-cosine"):
        raise ModelError(f"{file}: only a cross-encoder can declare a residual base, over the dense cosine")
    if fusion is not None and fusion not in RERANK_FUSIONS:
        raise ModelError(f"{file} declares fusion {fusion!r}; rankwise knows {', '.join(RERANK_FUSIONS)}")
    if passage_encoder is not None and (kind != "bi-encoder" or not isinstance(passage_encoder, str)
                                        or Path(passage_encoder).name != passage_encoder
                                        or not (file.parent / passage_encoder).is_dir()):
        raise ModelError(f"{file}: 'passage_encoder' must name a subdirectory of a bi-encoder's model directory "
                         f"(got {passage_encoder!r})")
    return Declaration(kind, base, fusion, passage_encoder)


def reranker_kind(model_dir: str | Path) -> RerankerKind:
    """The kind a model directory declares; ``cross-encoder`` when it declares none (hub rerankers)."""
    return read_declaration(model_dir).kind
