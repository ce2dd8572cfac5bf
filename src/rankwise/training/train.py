"""One entry point for training a reranker of either architecture (the CLI and the demo call this), and
what it starts from: a backbone, or a registered reranker it continues.

Continuing production instead of restarting from the backbone keeps what production learned; the
continued model is the same kind as its parent (a cross-encoder's head or a tuned bi-encoder's space
cannot be turned into the other) and records the parent's version in its card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rankwise.errors import QueryError
from rankwise.registry import Registry, names_registry
from rankwise.rerank.declaration import ResidualBase, read_declaration
from rankwise.training.bi_encoder import train_bi_encoder
from rankwise.training.finetune import Architecture, TrainingConfig, TrainingResult, train_cross_encoder
from rankwise.training.negatives import TrainingGroup


@dataclass(frozen=True, slots=True)
class StartingPoint:
    """The model training starts from: ``path`` to load, the ``architecture`` trained, ``parent``, the
    registry version continued (None for a backbone), and the parent's residual base or frozen passage
    encoder, kept by its child."""

    path: str
    architecture: Architecture
    parent: str | None = None
    residual: ResidualBase | None = None
    frozen_passages: bool = False


def starting_point(base_model: str, architecture: Architecture | None = None,
                   registry: Registry | None = None) -> StartingPoint:
    """``base_model`` as a starting point: a registry name (``production``, ``candidate``, ``v3``) continues
    that version with its own kind; anything else is a backbone (local dir, bundled name or hub id)."""
    if not names_registry(base_model):
        return StartingPoint(base_model, architecture or "cross-encoder")
    entry = (registry or Registry()).get(base_model)
    declared = read_declaration(entry.path)
    kind = declared.kind
    if architecture is not None and architecture != kind:
        raise QueryError(f"'{base_model}' is {entry.version}, a {kind}: continuing it trains a {kind}; drop "
                         f"--architecture {architecture}, or start a {architecture} from a backbone")
    return StartingPoint(str(entry.path), kind, entry.version, declared.residual,
                         declared.passage_encoder is not None)


def train_reranker(train: Sequence[TrainingGroup], validation: Sequence[TrainingGroup], config: TrainingConfig,
                   output_dir: str | Path, *, show_progress: bool = True) -> TrainingResult:
    """Train the architecture ``config`` names (same checkpointing, resume, validation and budget for both)."""
    if config.architecture == "bi-encoder":
        return train_bi_encoder(train, validation, config, output_dir, show_progress=show_progress)
    return train_cross_encoder(train, validation, config, output_dir, show_progress=show_progress)
