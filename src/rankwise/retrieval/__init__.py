"""First-stage retrieval: BM25, dense and hybrid with RRF or convex fusion."""

from rankwise.retrieval.convex import convex_combination
from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings
from rankwise.retrieval.rrf import reciprocal_rank_fusion

__all__ = ["FirstStage", "FirstStageSettings", "convex_combination", "reciprocal_rank_fusion"]
