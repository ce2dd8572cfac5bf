"""The default training recipe, chosen from the data at hand and a CPU budget.

Why a table and not one set of defaults: what works with 60 judged queries over 300 pages (a support
knowledge base) is not what works with 800 over 5,000 abstracts, and a user with minutes of CPU should not
have to find that out by trial. The rules below come from the runs in ``benchmarks/README.md`` ("Training
that helps"); every choice is printed with its reason, and any flag the user sets wins over it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from rankwise.training.finetune import Architecture, Loss, TrainingConfig

#: negatives per query by source (the mix ``rankwise train`` mines by default)
DEFAULT_NEGATIVES = "bm25:3,dense:2,random:2"
#: wall-clock training budget when none is given: minutes of a 2-core CPU
DEFAULT_BUDGET_S = 600.0
#: from this many judged training queries a bi-encoder tunes its query side only, against frozen passages:
#: measured helping at 809 (SciFact) and 2,590 (NFCorpus), overfitting at 80 and 106 (the bundled KBs)
FROZEN_PASSAGES_FROM = 400


@dataclass(frozen=True, slots=True)
class Recipe:
    architecture: Architecture
    residual: bool
    loss: Loss
    max_steps: int
    max_length: int
    learning_rate: float
    batch_size: int
    eval_steps: int
    time_budget_s: float | None
    #: positives per training group, the best-ranked kept (the rest are never negatives)
    max_positives: int | None = None
    #: a bi-encoder that tunes its query side only (:mod:`rankwise.training.frozen_passages`)
    frozen_passages: bool = False
    reasons: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        if self.frozen_passages:
            return "bi-encoder with frozen passages"
        return f"{'residual ' if self.residual else ''}{self.architecture}"

    def continuing(self, architecture: Architecture, residual: bool, parent: str,
                   frozen_passages: bool = False) -> Recipe:
        """The recipe for continuing ``parent``: its kind, its residual base or frozen passage side, the
        rest as chosen."""
        loss: Loss = "softmax" if architecture == "bi-encoder" or residual else "bce"
        continued = replace(self, architecture=architecture, residual=residual, loss=loss,
                            frozen_passages=frozen_passages)
        return replace(continued, reasons=(f"continues {parent}, a {continued.kind}", *self.reasons[1:]))

    def overridden(self, **values: Any) -> Recipe:
        """The recipe with every value the user set (not None) replacing the chosen one, said in the reasons.

        A cross-encoder asked for instead of the chosen bi-encoder is trained as a residual (it then also starts
        at the first stage) unless ``residual`` or a loss a residual cannot train with says otherwise; a
        bi-encoder, or such a loss, turns the residual off.
        """
        given = {k: v for k, v in values.items() if v is not None and getattr(self, k) != v}
        if not given:
            return self
        said = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in given.items())
        if given.get("frozen_passages") and "architecture" not in given and self.architecture != "bi-encoder":
            given["architecture"] = "bi-encoder"  # --freeze-passages alone: only a bi-encoder has a passage side
        if values.get("residual") is None and (given.get("architecture") == "bi-encoder"
                                               or given.get("loss", "softmax") not in ("softmax", "bce")):
            given["residual"] = False
        elif given.get("residual") is True and "architecture" not in given and self.architecture == "bi-encoder":
            given["architecture"] = "cross-encoder"  # --residual alone: a residual is a cross-encoder
        elif (values.get("residual") is None and given.get("architecture") == "cross-encoder"
              and given.get("loss", self.loss) in ("softmax", "bce")):
            given["residual"] = True
        if (given.get("architecture", self.architecture) == "cross-encoder" and self.frozen_passages
                and values.get("frozen_passages") is None):
            given["frozen_passages"] = False  # a cross-encoder has no passage side to freeze
        # the first reason is why this kind of model: it no longer holds once the kind is the user's choice
        kept = self.reasons[1:] if {"architecture", "residual", "frozen_passages"} & set(given) else self.reasons
        return replace(self, **given, reasons=(*kept, f"set by you: {said}"))

    def config(self, *, base_model: str, residual_over: str | None, seed: int = 42, **extra: Any) -> TrainingConfig:
        return TrainingConfig(base_model=base_model, architecture=self.architecture, loss=self.loss,
                              max_steps=self.max_steps, batch_size=self.batch_size, learning_rate=self.learning_rate,
                              max_length=self.max_length, eval_steps=self.eval_steps, seed=seed,
                              time_budget_s=self.time_budget_s,
                              residual_over=residual_over if self.residual else None,
                              frozen_passages=self.frozen_passages, **extra)

    def explain(self) -> str:
        return (f"{self.kind}, {self.loss} loss, up to {self.max_steps} steps of {self.batch_size} "
                f"at lr {self.learning_rate:g}, {self.max_length}-token inputs"
                + (f", at most {self.time_budget_s:.0f} s" if self.time_budget_s else "")
                + (f" ({'; '.join(self.reasons)})" if self.reasons else ""))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": list(self.reasons)}


def choose_recipe(train_queries: int, documents: int, *, budget_s: float | None = DEFAULT_BUDGET_S,
                  has_dense: bool = True, frozen_passages: bool | None = None) -> Recipe:
    """The recipe for ``train_queries`` judged training queries over ``documents`` pages.

    The kind: a bi-encoder — a domain-tuned copy of the index's embedding model — wherever the index has
    vectors. Like a residual cross-encoder it starts at the dense first stage's ranking, and in ten CPU
    minutes it went further on all four benchmark domains (the residual cross-encoder was significantly
    worse than the first stage on NFCorpus). From :data:`FROZEN_PASSAGES_FROM` judged queries up, only its
    query side is tuned, against passages embedded once: several times the steps in the same minutes, which
    the larger sets need (NFCorpus did not move in 138 whole-model steps). Without vectors there is no
    first-stage model to start from: a cross-encoder from the backbone.

    ``frozen_passages`` decides that instead of the number of queries (the user's ``--freeze-passages``, or
    the kind of a model being continued), so the steps, batch and learning rate are the ones measured for
    the kind that is trained.
    """
    asked = frozen_passages is not None
    if frozen_passages is None:
        frozen_passages = train_queries >= FROZEN_PASSAGES_FROM
    if has_dense and frozen_passages:
        batch = 32
        # about twelve passes: where validation peaked on SciFact and NFCorpus (early stopping ends sooner)
        steps = min(max(math.ceil(12 * train_queries / batch), 200), 1500)
        why = (("a bi-encoder with frozen passages, as asked: the query side of the index's embedding model is "
                "tuned alone, against passages embedded once (chosen by default from "
                f"{FROZEN_PASSAGES_FROM} judged queries; with fewer it overfitted on the domains measured)")
               if asked else
               (f"a bi-encoder with frozen passages: {train_queries} judged queries are enough to tune the query "
                "side of the index's embedding model alone, against passages embedded once — many more steps per "
                f"CPU minute than tuning both sides (below {FROZEN_PASSAGES_FROM} queries it overfits; both sides "
                "are tuned then)"))
        reasons = (
            why,
            ("every positive of a query counts: the softmax runs over every passage of the run, so many "
             "positives cost nothing"),
            (f"{steps} steps: about twelve passes over {train_queries} training queries, stopped early when "
             "validation stops improving"))
        return Recipe(architecture="bi-encoder", residual=False, loss="softmax", max_steps=steps, max_length=128,
                      learning_rate=5e-5, batch_size=batch, eval_steps=100, time_budget_s=budget_s,
                      max_positives=None, frozen_passages=True, reasons=reasons)
    if has_dense:
        architecture: Architecture = "bi-encoder"
        reasons = [("a bi-encoder, a domain-tuned copy of the index's embedding model, starts at the dense first "
                    "stage's ranking and learns only what the judged queries show (the best of the kinds "
                    "measured on four domains)")]
    else:
        architecture = "cross-encoder"
        reasons = [("the index has no vectors, so no model of the first stage to start from: a cross-encoder "
                    "from the backbone (index with an embedding model to train a bi-encoder)")]
    batch = 8
    max_positives = 3
    reasons.append(f"at most {max_positives} positives per query: a group stays ~10 documents, which bounds "
                   "memory on datasets that judge dozens of documents per query (NFCorpus)")
    # about two passes over the judged queries, at least enough steps for the correction to form
    steps = min(max(math.ceil(2 * train_queries / batch), 60), 400)
    reasons.append(f"{steps} steps: about two passes over {train_queries} training queries")
    return Recipe(architecture=architecture, residual=False, loss="softmax", max_steps=steps, max_length=128,
                  learning_rate=1e-4, batch_size=batch, eval_steps=max(10, steps // 8), time_budget_s=budget_s,
                  max_positives=max_positives, reasons=tuple(reasons))
