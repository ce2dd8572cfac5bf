"""Tune only the query side of a bi-encoder, against passage vectors that stay as the first stage made them.

Why: with hundreds of judged queries, a bi-encoder's CPU time goes on the passages — 256-token windows,
forward and backward, for every positive and negative of every step — while a query is a dozen tokens.
Keeping the passage side frozen (a copy of the model training starts from, stored beside the tuned query
encoder, see :data:`~rankwise.rerank.declaration.PASSAGE_ENCODER_DIR`) embeds each passage once, before
training; a step is then a forward and backward pass over the batch's queries only — several times the
steps per CPU minute — and every query is scored against every passage of the run (a softmax over all
of them rather than over its group and the batch). The recipe picks it from a few hundred judged queries
up; below that a query encoder alone overfits and the whole-model bi-encoder does better (measured in
``benchmarks/README.md``, "Training that helps").

Training stays the sentence-transformers trainer's (checkpoints, exact resume, early stopping, budget):
only the rows, the loss and the validation's passage side differ.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.models import resolve_model
from rankwise.rerank.declaration import PASSAGE_ENCODER_DIR, read_declaration
from rankwise.training.negatives import TrainingGroup

#: cosine × SCALE are the softmax's logits (sentence-transformers' MultipleNegativesRankingLoss default)
SCALE = 20.0


def passage_encoder_of(base_model: str) -> Path:
    """The frozen passage encoder training from ``base_model`` keeps: the one a model trained this way
    declares (continuing it keeps its passage side), else the base model itself."""
    path = resolve_model(base_model)
    declared = read_declaration(path).passage_encoder if path.is_dir() else None
    return path / declared if declared else path


class PassageVectors:
    """Each distinct passage text of the run, embedded once by the frozen passage encoder as it serves
    (the same ``auto`` backend and length the reranker will use)."""

    def __init__(self, encoder: Path, groups: Sequence[TrainingGroup]) -> None:
        from rankwise.index.dense import Embedder

        texts = list(dict.fromkeys(t for g in groups for t in (*g.positives, *g.negatives)))
        self.row = {t: i for i, t in enumerate(texts)}
        embedder = Embedder(str(encoder), reranking=True)
        self.matrix = np.asarray(embedder.encode(texts, show_progress=True), dtype=np.float32)


def frozen_rows(groups: Sequence[TrainingGroup], vectors: PassageVectors) -> dict[str, list[Any]]:
    """One row per query: its text and the rows of its positives (padded with -1 to one width)."""
    kept = [g for g in groups if g.positives]
    width = max((len(g.positives) for g in kept), default=0)
    return {"anchor": [g.query for g in kept],
            "label": [[vectors.row[p] for p in g.positives] + [-1] * (width - len(g.positives)) for g in kept]}


def frozen_passage_loss(model: Any, vectors: PassageVectors) -> Any:
    """Softmax cross-entropy of each query's positives against every passage of the run.

    With several positives the target is any of them (log of their summed probability), so a query
    judged relevant to many documents is not pulled towards one of them at the others' expense.
    """
    import torch

    matrix = torch.from_numpy(vectors.matrix)

    class FrozenPassageLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs: list[Any], labels: Any) -> Any:
            queries = self.model(inputs[0])["sentence_embedding"]
            logits = SCALE * torch.nn.functional.normalize(queries, dim=-1) @ matrix.to(queries.device).T
            rows = labels.to(queries.device).long()
            positive = torch.zeros_like(logits, dtype=torch.bool)
            query, slot = torch.nonzero(rows >= 0, as_tuple=True)  # -1 pads a query's row list
            positive[query, rows[query, slot]] = True
            return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, -1e4), 1)).mean()

    return FrozenPassageLoss()


def frozen_passage_evaluator(samples: list[dict[str, Any]], vectors: PassageVectors, name: str) -> Any:
    """Validation nDCG@10 as served: queries by the model in training, passages by their frozen vectors."""
    import torch
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator

    class FrozenPassageRerankingEvaluator(RerankingEvaluator):  # type: ignore[misc]
        def embed_inputs(self, model: Any, sentences: Any, encode_fn_name: str | None = None,
                         show_progress_bar: bool | None = None, **kwargs: Any) -> Any:
            if encode_fn_name == "document":
                return torch.from_numpy(vectors.matrix[[vectors.row[t] for t in sentences]])
            return super().embed_inputs(model, sentences, encode_fn_name, show_progress_bar, **kwargs)

    return FrozenPassageRerankingEvaluator(samples=samples, at_k=10, name=name, batch_size=32, write_csv=False)


def keep_passage_encoder(encoder: Path, model_dir: Path) -> str:
    """Copy the frozen passage encoder into the trained model's directory; returns the name to declare."""
    target = model_dir / PASSAGE_ENCODER_DIR
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(encoder, target, ignore=shutil.ignore_patterns(".rankwise*", ".git*"))
    return PASSAGE_ENCODER_DIR
