"""Fine-tune a cross-encoder with sentence-transformers' ``CrossEncoderTrainer``.

Why the trainer and not a hand-written loop: it gives checkpointing + exact resume (optimizer, scheduler,
RNG and data order), evaluation-driven early stopping and best-model restore, all tested upstream.
rankwise adds what a reranker needs around it: mined groups in, validation nDCG@10 on *realistic*
candidate lists (not random negatives), a fixed seed, CPU-friendly defaults and a summary out.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rankwise.errors import QueryError
from rankwise.inference.calibration import CALIBRATION_FILE, CalibrationQuery, spread, write_calibration
from rankwise.models import resolve_model
from rankwise.rerank.declaration import (
    RERANKER_KINDS,
    Declaration,
    RerankerKind,
    ResidualBase,
    write_declaration,
)
from rankwise.training.negatives import TrainingGroup

Loss = Literal["bce", "lambda", "listnet", "softmax"]
LOSSES: tuple[str, ...] = ("bce", "lambda", "listnet", "softmax")
#: what is trained: a cross-encoder (query and passage read together) or a copy of the embedding model
#: (:mod:`rankwise.training.bi_encoder`) — the reranker kinds a model directory can declare
Architecture = RerankerKind
ARCHITECTURES = RERANKER_KINDS
VALIDATION_NAME = "val"
BEST_METRIC = f"eval_{VALIDATION_NAME}_ndcg@10"
#: ListNet compares softmax(scores) with softmax(labels); a positive labelled 50 against negatives at 0
#: makes the target one-hot (shared equally among a group's positives) to within e^-50 — softmax CE
SOFTMAX_POSITIVE_LABEL = 50.0


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Hyperparameters. Defaults are sized for a CPU: short inputs, small batches, one epoch.

    ``pos_weight=None`` means "negatives per positive", which balances BCE's gradient between the
    one relevant and the many irrelevant documents of each query.
    """

    base_model: str = "minilm"
    architecture: Architecture = "cross-encoder"
    loss: Loss = "bce"
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    learning_rate: float = 4e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 256
    pos_weight: float | None = None
    seed: int = 42
    eval_steps: int = 100
    patience: int = 4
    threads: int | None = None
    #: keep only the first N transformer layers of the backbone: a compact reranker that scores ~6/N
    #: times faster (FlashRank's default reranker is a 2-layer TinyBERT); None keeps them all
    layers: int | None = None
    #: bfloat16 autocast for the forward/backward pass (fp32 master weights). None = on where the hardware
    #: has native bf16 (a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX): 1.6× faster steps measured
    #: on the 2-core AVX512-BF16 CPU here; off elsewhere, where bf16 is emulated and slower than fp32.
    bf16: bool | None = None
    #: stop at the first step that ends past this many seconds of training (the best validated checkpoint
    #: is kept), so a run fits a wall-clock budget on a slow CPU as well as a fast one; None: steps decide
    time_budget_s: float | None = None
    #: cross-encoder only: train a correction added to the dense cosine under this embedding model (the
    #: first stage's), starting at zero (see :mod:`rankwise.rerank.residual`); None trains a plain reranker
    residual_over: str | None = None
    #: continuing a residual reranker: the base it was trained over, kept as it is (not refitted)
    residual_base: ResidualBase | None = None
    #: bi-encoder only: tune the query side and embed passages with a frozen copy of the base model
    #: (see :mod:`rankwise.training.frozen_passages`)
    frozen_passages: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise QueryError(f"unknown loss '{self.loss}'; choose {', '.join(LOSSES)}")
        if self.architecture not in ARCHITECTURES:
            raise QueryError(f"unknown architecture '{self.architecture}'; choose {', '.join(ARCHITECTURES)}")
        if self.architecture == "bi-encoder" and (self.loss != "softmax" or self.layers is not None):
            raise QueryError("a bi-encoder trains with the softmax loss (in-batch and mined negatives) and all "
                             "its layers; leave --loss and --layers at their defaults")
        if self.batch_size <= 0 or self.learning_rate <= 0 or self.max_length < 16:
            raise QueryError("batch size and learning rate must be positive and max_length at least 16")
        if not 0 <= self.warmup_ratio < 1:
            raise QueryError(f"warmup_ratio is a share of the steps, in [0, 1) (got {self.warmup_ratio})")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise QueryError(f"time budget must be positive seconds (got {self.time_budget_s})")
        if self.layers is not None and self.layers < 1:
            raise QueryError(f"layers must be at least 1 (got {self.layers})")
        if (self.residual_over or self.residual_base) and self.architecture != "cross-encoder":
            raise QueryError("a bi-encoder is already a residual of the embedding model it copies; --residual "
                             "applies to a cross-encoder")
        if self.frozen_passages and self.architecture != "bi-encoder":
            raise QueryError("frozen passages are a bi-encoder's: a cross-encoder reads query and passage together")
        if (self.residual_over or self.residual_base) and self.loss not in ("softmax", "bce"):
            raise QueryError(f"a residual reranker trains with --loss softmax or bce (got {self.loss})")


@dataclass(slots=True)
class TrainingResult:
    model_dir: Path
    config: TrainingConfig
    steps: int
    train_seconds: float
    resumed_from: str | None
    losses: list[float] = field(default_factory=list)
    best_validation_ndcg10: float | None = None
    validation_history: list[dict[str, float]] = field(default_factory=list)
    #: wall-clock seconds of each optimiser step this run took (a resumed run: its own steps only)
    step_seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir), "steps": self.steps, "train_seconds": round(self.train_seconds, 1),
            "resumed_from": self.resumed_from, "loss_first": self.losses[0] if self.losses else None,
            "loss_last": self.losses[-1] if self.losses else None,
            "best_validation_ndcg@10": self.best_validation_ndcg10, "config": asdict(self.config),
        }


def _train_rows(groups: Sequence[TrainingGroup], loss: Loss) -> dict[str, list[Any]]:
    if loss == "bce":
        rows: dict[str, list[Any]] = {"query": [], "passage": [], "label": []}
        for g in groups:
            for text, label in [(p, 1.0) for p in g.positives] + [(n, 0.0) for n in g.negatives]:
                rows["query"].append(g.query)
                rows["passage"].append(text)
                rows["label"].append(label)
        return rows
    positive = SOFTMAX_POSITIVE_LABEL if loss == "softmax" else 1.0
    return {"query": [g.query for g in groups],
            "docs": [list(g.positives) + list(g.negatives) for g in groups],
            "labels": [[positive] * len(g.positives) + [0.0] * len(g.negatives) for g in groups]}


def _pos_weight(config: TrainingConfig, groups: Sequence[TrainingGroup]) -> float:
    positives = sum(len(g.positives) for g in groups)
    negatives = sum(len(g.negatives) for g in groups)
    return config.pos_weight if config.pos_weight is not None else max(negatives / max(positives, 1), 1.0)


def _loss(model: Any, config: TrainingConfig, groups: Sequence[TrainingGroup]) -> Any:
    import torch
    from sentence_transformers.cross_encoder import losses

    if config.loss == "bce":
        return losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(_pos_weight(config, groups)))
    if config.loss == "listnet":
        return losses.ListNetLoss(model)
    if config.loss == "softmax":
        # Softmax cross-entropy over each group, as ListNet with a hard target (see SOFTMAX_POSITIVE_LABEL).
        # Not MultipleNegativesRankingLoss: in sentence-transformers 6.2 it always adds in-batch negatives
        # (num_negatives=0 crashes), squashes scores through 10·sigmoid, and runs one forward pass per
        # column — 8 passes of 4 pairs instead of one of 32, which is what costs on a CPU.
        return losses.ListNetLoss(model, mini_batch_size=0)
    return losses.LambdaLoss(model)


def train_cross_encoder(
    train: Sequence[TrainingGroup],
    validation: Sequence[TrainingGroup],
    config: TrainingConfig,
    output_dir: str | Path,
    *,
    show_progress: bool = True,
) -> TrainingResult:
    """Train, checkpointing to ``output_dir/checkpoints`` and resuming from the last checkpoint there.

    The best model by validation nDCG@10 (or the last, without validation) is saved to
    ``output_dir/final`` in Hugging Face format, loadable by plain sentence-transformers.
    """
    if not train:
        raise QueryError("no training groups: no judged query has a positive document in the index")
    output, checkpoints = prepare_run(config, output_dir)
    from datasets import Dataset
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    model = CrossEncoder(str(resolve_model(config.base_model)), num_labels=1, max_length=config.max_length,
                         local_files_only=True)
    if config.layers is not None:
        _truncate_layers(model.transformers_model, config.layers)
    base = None
    if config.residual_over or config.residual_base:
        base, rows, loss, evaluator = _residual_setup(model, config, train, validation)
    else:
        rows, loss = _train_rows(train, config.loss), _loss(model, config, train)
        evaluator = None
        if validation:
            evaluator = CrossEncoderRerankingEvaluator(samples=validation_samples(validation), at_k=10,
                                                       name=VALIDATION_NAME, batch_size=32, write_csv=False)
    args = training_arguments(config, checkpoints, validate=evaluator is not None,
                              arguments=CrossEncoderTrainingArguments)
    clock = StepClock()
    callbacks = callbacks_for(config, clock, validate=evaluator is not None)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), loss=loss,
                                  evaluator=evaluator, callbacks=callbacks)
    seconds, last = run_resumable(trainer, checkpoints, show_progress=show_progress)
    final = output / "final"
    model.save_pretrained(str(final))
    # the model carries its own domain's windows for static int8 calibration (see rerank/calibration.py):
    # held-out queries with their real candidates are closest to what it will be asked to score
    write_calibration(final / CALIBRATION_FILE, spread([
        CalibrationQuery.pick(g.query, g.positives, g.negatives) for g in validation or train]))
    write_declaration(final, Declaration("cross-encoder", base))
    return finish(trainer, config, output, final, seconds, last, clock)


def _residual_setup(model: Any, config: TrainingConfig, train: Sequence[TrainingGroup],
                    validation: Sequence[TrainingGroup]) -> tuple[ResidualBase, dict[str, list[Any]], Any, Any]:
    """Base, rows, loss and evaluator of a residual run; a new correction starts at exactly zero, a
    continued one keeps its parent's base and weights."""
    from rankwise.rerank.residual import load_residual_base
    from rankwise.training import residual

    if config.residual_base is not None:
        load_residual_base(config.residual_base)  # refuses a base whose weights changed since the parent
    embedder = config.residual_base.embedder if config.residual_base else str(config.residual_over)
    cosines = residual.pair_cosines(embedder, residual.group_pairs([*train, *validation]))
    base = config.residual_base or residual.fit_residual_base(embedder, cosines, train)
    if config.residual_base is None:
        residual.zero_output_layer(model.transformers_model)
    rows = residual.residual_rows(train, base, cosines, config.loss, SOFTMAX_POSITIVE_LABEL)
    loss = residual.residual_loss(model, config.loss, _pos_weight(config, train))
    evaluator = residual.residual_evaluator(validation_samples(validation), base, cosines,
                                            VALIDATION_NAME) if validation else None
    return base, rows, loss, evaluator


def prepare_run(config: TrainingConfig, output_dir: str | Path) -> tuple[Path, Path]:
    """Threads, quiet logs, the seed and the run folders, as both trainers need them: ``(output, checkpoints)``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import set_seed

    if config.threads:
        torch.set_num_threads(config.threads)
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    set_seed(config.seed)
    output = Path(output_dir)
    checkpoints = output / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    return output, checkpoints


def validation_samples(validation: Sequence[TrainingGroup]) -> list[dict[str, Any]]:
    """Validation groups in the shape both sentence-transformers reranking evaluators read."""
    return [{"query": g.query, "positive": list(g.positives), "negative": list(g.negatives)} for g in validation]


def run_resumable(trainer: Any, checkpoints: Path, *, show_progress: bool) -> tuple[float, str | None]:
    """Train from the last checkpoint in ``checkpoints`` (if any): ``(seconds, checkpoint resumed from)``.

    The trainer's own tqdm bar and its printed log dictionaries are replaced by one rich progress line on
    stderr (steps, steps/s, ETA, last loss), or by nothing when ``show_progress`` is off.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if show_progress:
        trainer.add_callback(_rich_progress())
    last = get_last_checkpoint(str(checkpoints))
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    return time.perf_counter() - started, last


def training_arguments(config: TrainingConfig, checkpoints: Path, *, validate: bool, arguments: Any) -> Any:
    """The trainer arguments both architectures share (``arguments``: the trainer's arguments class)."""
    import torch

    return arguments(
        output_dir=str(checkpoints), num_train_epochs=config.epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay, seed=config.seed, data_seed=config.seed,
        eval_strategy="steps" if validate else "no", eval_steps=config.eval_steps,
        save_strategy="steps", save_steps=config.eval_steps, save_total_limit=2,
        load_best_model_at_end=validate, metric_for_best_model=BEST_METRIC if validate else None,
        greater_is_better=True, logging_steps=max(1, min(25, config.eval_steps)), report_to="none",
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True,
        bf16=native_bf16() if config.bf16 is None else config.bf16,
    )


class StepClock:
    """Wall-clock seconds of each optimiser step, so a run reports what a step costs on this CPU."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started: float | None = None

    def callback(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):  # type: ignore[misc]
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                clock._started = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if clock._started is not None:
                    clock.seconds.append(time.perf_counter() - clock._started)

        return Clock()


def callbacks_for(config: TrainingConfig, clock: StepClock, *, validate: bool) -> list[Any]:
    from transformers import EarlyStoppingCallback

    callbacks: list[Any] = [clock.callback()]
    if validate:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.patience))
    if config.time_budget_s is not None:
        callbacks.append(_time_budget(config.time_budget_s))
    return callbacks


def finish(trainer: Any, config: TrainingConfig, output: Path, final: Path, seconds: float,
           resumed_from: str | None, clock: StepClock) -> TrainingResult:
    """The result of a finished run, also written to ``output/training.json``."""
    history = trainer.state.log_history
    validation_history = [{"step": h["step"], "ndcg@10": h[BEST_METRIC]} for h in history if BEST_METRIC in h]
    result = TrainingResult(
        model_dir=final, config=config, steps=trainer.state.global_step, train_seconds=seconds,
        resumed_from=resumed_from, losses=[h["loss"] for h in history if "loss" in h],
        best_validation_ndcg10=max((v["ndcg@10"] for v in validation_history), default=None),
        validation_history=validation_history, step_seconds=clock.seconds,
    )
    (output / "training.json").write_text(json.dumps(
        {**result.summary(), "validation_history": validation_history, "losses": result.losses,
         "step_seconds": [round(t, 3) for t in result.step_seconds]}, indent=2))
    return result


def _rich_progress() -> Any:
    """A trainer callback drawing one rich progress line: steps done, steps/s, ETA and the last logged loss."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.progress = Progress(
                TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
                console=Console(stderr=True), transient=True)
            self.progress.start()
            self.task = self.progress.add_task("training", total=state.max_steps, completed=state.global_step,
                                               rate="", loss="")
            self.first, self.started = state.global_step, time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            rate = (state.global_step - self.first) / max(time.perf_counter() - self.started, 1e-9)
            self.progress.update(self.task, completed=state.global_step, rate=f"{rate:.2f} steps/s")

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.progress.update(self.task, loss=f"loss {float(logs['loss']):.3f}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.progress.stop()

    return RichProgress()


#: seconds of training spent up to a checkpoint, written into it, so a resumed run spends only what is left
BUDGET_FILE = "rankwise_elapsed.json"


def _time_budget(seconds: float) -> Any:
    """A callback that ends training at the first step past ``seconds``, validating and saving there first.

    The budget covers the whole run, not each resume: every checkpoint records the seconds spent so far, and
    a run resumed from it starts its clock there (a run cut off at minute 7 of 10 trains 3 more minutes).
    """
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint

    class TimeBudget(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            spent = 0.0
            last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
            if last is not None and (Path(last) / BUDGET_FILE).is_file():
                spent = float(json.loads((Path(last) / BUDGET_FILE).read_text())["elapsed_s"])
            self.started = time.perf_counter() - spent

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                elapsed = {"elapsed_s": round(time.perf_counter() - self.started, 3)}
                (folder / BUDGET_FILE).write_text(json.dumps(elapsed))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if time.perf_counter() - self.started > seconds:
                control.should_training_stop = True
                # log the loss so far (a budget can end a run before the first logging step), validate (when
                # there is validation) and save, so the last steps can be the best
                control.should_log = True
                control.should_evaluate = args.eval_strategy != "no"
                control.should_save = True
            return control

    return TimeBudget()


def native_bf16() -> bool:
    """Whether bfloat16 math is native here (so autocast speeds training up instead of emulating)."""
    import torch

    from rankwise.inference.backends import cpu_flags

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def _truncate_layers(model: Any, layers: int) -> None:
    """Keep the first ``layers`` encoder layers (BERT-style ``<base>.encoder.layer``) before training."""
    base = getattr(model, model.base_model_prefix, model)
    stack = getattr(getattr(base, "encoder", None), "layer", None)
    if stack is None:
        raise QueryError(f"cannot truncate layers of a {type(model).__name__}: no encoder.layer stack")
    if layers > len(stack):
        raise QueryError(f"the backbone has {len(stack)} layers; cannot keep {layers}")
    del stack[layers:]
    model.config.num_hidden_layers = layers
