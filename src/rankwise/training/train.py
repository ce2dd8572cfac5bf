"""One entry point for training a reranker of either architecture (the CLI and the demo call this)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rankwise.training.bi_encoder import train_bi_encoder
from rankwise.training.finetune import TrainingConfig, TrainingResult, train_cross_encoder
from rankwise.training.negatives import TrainingGroup


def train_reranker(train: Sequence[TrainingGroup], validation: Sequence[TrainingGroup], config: TrainingConfig,
                   output_dir: str | Path, *, show_progress: bool = True) -> TrainingResult:
    """Train the architecture ``config`` names (same checkpointing, resume, validation and budget for both)."""
    if config.architecture == "bi-encoder":
        return train_bi_encoder(train, validation, config, output_dir, show_progress=show_progress)
    return train_cross_encoder(train, validation, config, output_dir, show_progress=show_progress)
