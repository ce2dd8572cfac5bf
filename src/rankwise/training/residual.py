"""Training a cross-encoder as a residual correction of the dense first stage (see
:mod:`rankwise.rerank.residual` for why and how it is served).

Three pieces the sentence-transformers trainer does not have, each small:

- :func:`fit_residual_base`: the cosines of every training pair under the first stage's embedding model,
  the weight that best explains the training groups' positives with the cosine alone (a 1-D search of the
  listwise loss), and the median cosine as the centre.
- :class:`ResidualLoss`: softmax cross-entropy over a group (or BCE per pair) of ``logit + offset``, the
  offset being the base's fixed contribution — the loss the served score is trained under.
- :class:`ResidualRerankingEvaluator`: validation nDCG@10 of the served score, not of the correction alone.

The correction's output layer is zeroed before the first step (:func:`zero_output_layer`), so step 0 is the
first stage's ranking exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from rankwise.errors import QueryError
from rankwise.models import resolve_model, weights_sha256
from rankwise.rerank.declaration import ResidualBase
from rankwise.training.negatives import TrainingGroup

#: weights tried for the cosine (logits per unit of cosine); the measured best sits well inside
WEIGHT_GRID = np.geomspace(1.0, 400.0, 61)

Pair = tuple[str, str]


def pair_cosines(embedder: str, pairs: Iterable[Pair], *, batch_size: int = 64) -> dict[Pair, float]:
    """Cosine of each (query, text) pair under ``embedder``, each distinct text embedded once."""
    from sentence_transformers import SentenceTransformer

    pairs = list(dict.fromkeys(pairs))
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    model = SentenceTransformer(str(resolve_model(embedder)), device="cpu", local_files_only=True)
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    row = {t: i for i, t in enumerate(texts)}
    return {(q, t): float(vectors[row[q]] @ vectors[row[t]]) for q, t in pairs}


def group_pairs(groups: Iterable[TrainingGroup]) -> list[Pair]:
    return [(g.query, t) for g in groups for t in (*g.positives, *g.negatives)]


def fit_residual_base(embedder: str, cosines: dict[Pair, float], train: Sequence[TrainingGroup]) -> ResidualBase:
    """The base for ``train``: weight minimising the listwise loss of ``weight × cosine`` alone, centre the
    median cosine. Fitted on training groups only (never validation)."""
    lists = [(np.array([cosines[(g.query, t)] for t in (*g.positives, *g.negatives)]), len(g.positives))
             for g in train if g.positives and g.negatives]
    if not lists:
        raise QueryError("no training group has both a positive and a negative; a residual base cannot be fitted")

    def loss(weight: float) -> float:
        total = 0.0
        for values, positives in lists:
            z = weight * values
            top = z.max()
            log_norm = top + np.log(np.exp(z - top).sum())
            total += log_norm - float(np.mean(z[:positives]))  # CE against the positives sharing the target
        return total / len(lists)

    weight = float(min(WEIGHT_GRID, key=loss))
    center = float(np.median(np.concatenate([values for values, _ in lists])))
    return ResidualBase(embedder=embedder, embedder_sha256=weights_sha256(resolve_model(embedder)),
                        weight=round(weight, 4), center=round(center, 6))


def zero_output_layer(network: Any) -> None:
    """Zero the classifier's last linear layer, so the correction is exactly 0 before training."""
    import torch

    head = getattr(network, "classifier", None)  # BERT-family sequence classifiers name their head so
    layers = [m for m in head.modules() if isinstance(m, torch.nn.Linear)] if isinstance(head, torch.nn.Module) else []
    if not layers:
        raise QueryError(f"a residual reranker needs a classifier head to zero; {type(network).__name__} has none")
    with torch.no_grad():
        layers[-1].weight.zero_()
        if layers[-1].bias is not None:
            layers[-1].bias.zero_()


def residual_rows(groups: Sequence[TrainingGroup], base: ResidualBase, cosines: dict[Pair, float],
                  loss: str, positive_label: float) -> dict[str, list[Any]]:
    """Training rows with each text's base offset beside it (``offsets`` column, read by :class:`ResidualLoss`)."""
    if loss == "bce":
        rows: dict[str, list[Any]] = {"query": [], "passage": [], "offset": [], "label": []}
        for g in groups:
            for text, label in [(p, 1.0) for p in g.positives] + [(n, 0.0) for n in g.negatives]:
                rows["query"].append(g.query)
                rows["passage"].append(text)
                rows["offset"].append(base.offset(cosines[(g.query, text)]))
                rows["label"].append(label)
        return rows
    return {"query": [g.query for g in groups],
            "docs": [[*g.positives, *g.negatives] for g in groups],
            "offsets": [[base.offset(cosines[(g.query, t)]) for t in (*g.positives, *g.negatives)] for g in groups],
            "labels": [[positive_label] * len(g.positives) + [0.0] * len(g.negatives) for g in groups]}


def residual_loss(model: Any, loss: str, pos_weight: float) -> Any:
    """The training loss of ``logit + offset``: ``softmax`` (listwise) or ``bce`` (pointwise; the losses
    :class:`~rankwise.training.finetune.TrainingConfig` accepts for a residual)."""
    import torch
    from sentence_transformers.util import batch_to_device

    class ResidualLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs: list[Any], labels: Any, prompt: str | None = None, task: str | None = None) -> Any:
            if loss == "bce":
                queries, passages, offsets = inputs
                pairs = list(zip(queries, passages, strict=True))
                flat_offsets = [float(o) for o in offsets]
            else:
                queries, docs_list, offsets_list = inputs
                pairs = [(q, d) for q, docs in zip(queries, docs_list, strict=True) for d in docs]
                flat_offsets = [float(o) for offsets in offsets_list for o in offsets]
            tokens = batch_to_device(self.model.preprocess(pairs, prompt=prompt, task=task), self.model.device)
            scores = self.model(tokens)["scores"].view(-1).float()
            scores = scores + torch.tensor(flat_offsets, device=scores.device)
            if loss == "bce":
                target = labels.view(-1).float().to(scores.device)
                weight = torch.tensor(pos_weight, device=scores.device)
                return torch.nn.functional.binary_cross_entropy_with_logits(scores, target, pos_weight=weight)
            total, start = scores.new_zeros(()), 0
            for group_labels in labels:
                n = len(group_labels)
                target = torch.as_tensor(group_labels, dtype=torch.float32, device=scores.device).softmax(0)
                total = total - (target * scores[start:start + n].log_softmax(0)).sum()
                start += n
            return total / len(labels)

    return ResidualLoss()


def residual_evaluator(samples: list[dict[str, Any]], base: ResidualBase, cosines: dict[Pair, float],
                       name: str) -> Any:
    """Validation nDCG@10 of what is served (``logit + offset``), with sentence-transformers' reranking metrics."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    class Served:
        """The model as the evaluator sees it: ``predict`` adds each pair's base offset."""

        def __init__(self, model: Any) -> None:
            self.model = model
            self.model_card_data = model.model_card_data

        def predict(self, pairs: Sequence[Sequence[str]], **kwargs: Any) -> np.ndarray:
            import torch

            logits = np.asarray(self.model.predict(pairs, activation_fn=torch.nn.Identity(), **kwargs),
                                dtype=np.float64).reshape(-1)
            return logits + np.array([base.offset(cosines[(q, t)]) for q, t in pairs])

    class ResidualRerankingEvaluator(CrossEncoderRerankingEvaluator):  # type: ignore[misc]
        def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> Any:
            return super().__call__(Served(model), output_path, epoch, steps)

    return ResidualRerankingEvaluator(samples=samples, at_k=10, name=name, batch_size=32, write_csv=False)
