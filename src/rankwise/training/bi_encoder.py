"""Fine-tune a copy of the embedding model as a reranker (:class:`~rankwise.rerank.bi_encoder.BiEncoderReranker`).

Why: it starts at the first stage's own ranking, so a short CPU run only has to learn the domain's
residual — which near-identical sibling a period, version, plan or error code points to — while a
cross-encoder from a bare backbone must first learn relevance itself (see ``benchmarks/README.md``).

Loss: softmax cross-entropy of the positive against the group's mined negatives *and* every other
document of the batch (sentence-transformers' ``MultipleNegativesRankingLoss``, the standard recipe for
embedding fine-tuning with hard negatives). With ``frozen_passages`` only the query side is tuned, against
passage vectors embedded once (:mod:`rankwise.training.frozen_passages`). Checkpointing, exact resume, validation nDCG@10 with
early stopping and the wall-clock budget are the cross-encoder trainer's (:mod:`rankwise.training.finetune`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rankwise.errors import QueryError
from rankwise.models import resolve_model
from rankwise.rerank.declaration import Declaration, write_declaration
from rankwise.training import frozen_passages
from rankwise.training.finetune import (
    VALIDATION_NAME,
    StepClock,
    TrainingConfig,
    TrainingResult,
    callbacks_for,
    finish,
    prepare_run,
    run_resumable,
    training_arguments,
    validation_samples,
)
from rankwise.training.negatives import TrainingGroup


def train_bi_encoder(
    train: Sequence[TrainingGroup],
    validation: Sequence[TrainingGroup],
    config: TrainingConfig,
    output_dir: str | Path,
    *,
    show_progress: bool = True,
) -> TrainingResult:
    """Train from ``config.base_model`` (an embedding model), checkpointing and resuming like the
    cross-encoder trainer; the best model by validation nDCG@10 is saved to ``output_dir/final``."""
    if not any(g.positives for g in train):
        raise QueryError("no training groups: no judged query has a positive document in the index")
    output, checkpoints = prepare_run(config, output_dir)
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    model = SentenceTransformer(str(resolve_model(config.base_model)), device="cpu", local_files_only=True)
    # training reads the first max_length tokens (a CPU-cost choice); the saved model embeds as much as
    # the base model did, so the whole passage counts at search time
    serving_length = model.max_seq_length
    model.max_seq_length = config.max_length
    evaluator = None
    encoder = frozen_passages.passage_encoder_of(config.base_model) if config.frozen_passages else None
    if encoder is not None:
        vectors = frozen_passages.PassageVectors(encoder, [*train, *validation])
        rows, loss = frozen_passages.frozen_rows(train, vectors), frozen_passages.frozen_passage_loss(model, vectors)
        if validation:
            evaluator = frozen_passages.frozen_passage_evaluator(validation_samples(validation), vectors,
                                                                 VALIDATION_NAME)
    else:
        rows, loss = _train_rows(train), MultipleNegativesRankingLoss(model)
        if not rows["anchor"]:
            raise QueryError("no training groups: no judged query has both a positive and a negative document")
        if validation:
            evaluator = RerankingEvaluator(samples=validation_samples(validation), at_k=10, name=VALIDATION_NAME,
                                           batch_size=32, write_csv=False)
    args = training_arguments(config, checkpoints, validate=evaluator is not None,
                              arguments=SentenceTransformerTrainingArguments)
    # the model card's widget example, set here so the trainer does not sample one behind a progress bar
    first = next(g for g in train if g.positives)
    model.model_card_data.widget = [{"source_sentence": first.query,
                                     "sentences": [first.positives[0], *first.negatives[:2]]}]
    clock = StepClock()
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict(rows), loss=loss,
        evaluator=evaluator, callbacks=callbacks_for(config, clock, validate=evaluator is not None))
    seconds, last = run_resumable(trainer, checkpoints, show_progress=show_progress)
    final = output / "final"
    model.max_seq_length = serving_length
    model.save(str(final))
    kept = None if encoder is None else frozen_passages.keep_passage_encoder(encoder, final)
    write_declaration(final, Declaration("bi-encoder", passage_encoder=kept))
    return finish(trainer, config, output, final, seconds, last, clock)


def _train_rows(groups: Sequence[TrainingGroup]) -> dict[str, list[Any]]:
    """One row per (query, positive) with a fixed number of negative columns, as the loss needs.

    The column count is the most common group size; a group with fewer negatives repeats its last one
    (a duplicate negative only weighs that document twice) and a group with none is skipped.
    """
    sizes = [len(g.negatives) for g in groups if g.negatives]
    width = max(set(sizes), key=sizes.count) if sizes else 0
    rows: dict[str, list[Any]] = {"anchor": [], "positive": []} | {f"negative_{i}": [] for i in range(width)}
    for g in groups:
        if not g.negatives:
            continue
        negatives = (list(g.negatives) + [g.negatives[-1]] * width)[:width]
        for positive in g.positives:
            rows["anchor"].append(g.query)
            rows["positive"].append(positive)
            for i, negative in enumerate(negatives):
                rows[f"negative_{i}"].append(negative)
    return rows
