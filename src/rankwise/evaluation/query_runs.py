"""Running an evaluation's queries: here, one after another, or spread over a Ray cluster (``--ray``).

Either way each query goes through the pipeline's public steps (retrieve, rerank, respond), timed per
stage and in CPU time, and the results come back in the gold set's order. The first stage is identical;
reranker scores equal up to float rounding (a Ray worker runs one thread), so only candidates whose scores
tie to rounding may swap, and latencies are those of whichever worker ran the query. On Ray each
worker loads the index and the reranker once (an actor), from the same locations and settings as the
driver; a query a retried worker ran again replaces its own result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rankwise.errors import ModelError
from rankwise.faults import checkpoint
from rankwise.index import Index
from rankwise.options import PipelineSettings
from rankwise.pipeline import Pipeline
from rankwise.rerank.base import PassageCaching, Reranker
from rankwise.rerank.loading import LoadOptions, load_reranker
from rankwise.types import SearchResponse


@dataclass(frozen=True, slots=True)
class TimedSearch:
    """One query's answer, with the CPU time of its first stage and of the whole search, and pairs scored."""

    response: SearchResponse
    first_stage_cpu_ms: float
    total_cpu_ms: float
    pairs: int


#: ``run(settings, texts)``: each text's :class:`TimedSearch` through a pipeline with ``settings``, in order
QueryRunner = Callable[[PipelineSettings, Sequence[str]], Iterator[TimedSearch]]


def timed_search(pipeline: Pipeline, text: str, groups: Collection[str] | None = None) -> TimedSearch:
    """The pipeline's public steps, so the first stage's CPU time is measured apart from the reranker's;
    ``groups``: searched as a caller in these groups (only documents they may see)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    candidates = pipeline.retrieve(text, groups=groups)
    timings = {"first_stage": (time.perf_counter() - t0) * 1000}
    cpu1, t1 = time.process_time(), time.perf_counter()
    scores = pipeline.rerank(text, candidates)
    if scores is not None:
        timings["rerank"] = (time.perf_counter() - t1) * 1000
    cpu2 = time.process_time()
    response = pipeline.respond(text, candidates, scores, k=pipeline.retrieve_k, timings=timings, started=t0)
    return TimedSearch(response, (cpu1 - cpu0) * 1000, (cpu2 - cpu0) * 1000, 0 if scores is None else len(scores.raw))


def warm_up(pipeline: Pipeline, query: str) -> None:
    """Load lazily loaded parts (embedding model, BM25 arrays, reranker weights) outside the timed loop."""
    candidates = pipeline.first_stage.retrieve(query, 1)
    if pipeline.reranker is not None and candidates:
        pipeline.reranker.score(query, [candidates[0].passage.full_text])


def run_here(index: Index, reranker: Reranker | None, groups: Collection[str] | None = None) -> QueryRunner:
    """Run the queries in this process (as a caller in ``groups``, when given), after a warm-up; the
    reranker's passage cache is emptied before each system, or the first system would pay for every later
    one's passages."""

    def run(settings: PipelineSettings, texts: Sequence[str]) -> Iterator[TimedSearch]:
        pipeline = Pipeline(index, reranker, settings=settings)
        if texts:
            warm_up(pipeline, texts[0])
        if isinstance(reranker, PassageCaching):
            reranker.clear_cache()
        for text in texts:
            yield timed_search(pipeline, text, groups)

    return run


def worker_location(location: str) -> str:
    """``location`` as a worker must open it: a directory made absolute (a worker's working directory is not
    the driver's); a PostgreSQL index as it is."""
    from pathlib import Path

    from rankwise.index.location import in_postgres

    return location if in_postgres(location) else str(Path(location).resolve())


#: builds, on a worker, what the driver evaluates: ``() -> (index, reranker or None)``
Loader = Callable[[], tuple[Index, Reranker | None]]


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """A :data:`Loader` from the locations the driver used: the index, and the reranker spec with its load
    options; refused on a worker that finds other weights there (a promotion meanwhile, another file)."""

    index: str
    reranker: str | None
    options: LoadOptions
    exact: bool = False
    reranker_sha256: str | None = None
    #: the version the driver evaluates: a worker that opens another (an update meanwhile) stops the run
    index_fingerprint: str | None = None

    def __call__(self) -> tuple[Index, Reranker | None]:
        from rankwise.errors import IndexNotFoundError
        from rankwise.index import open_index

        index = open_index(self.index, exact=self.exact)
        if self.index_fingerprint is not None and index.fingerprint != self.index_fingerprint:
            raise IndexNotFoundError(f"a Ray worker opened {index.location} at version {index.fingerprint}, not the "
                                     f"driver's {self.index_fingerprint}; rerun once updates stop")
        reranker = load_reranker(self.reranker, self.options) if self.reranker else None
        found = reranker.weights_sha256 if reranker is not None else None
        if self.reranker_sha256 is not None and found != self.reranker_sha256:
            raise ModelError(f"a Ray worker loaded '{self.reranker}' with other weights than the driver "
                             f"({found} vs {self.reranker_sha256}); make every node see the same model")
        return index, reranker


class _Searcher:
    """A Ray actor: the index and reranker loaded once, a pipeline per settings."""

    def __init__(self, load: Loader) -> None:
        self.index, self.reranker = load()
        self.pipelines: dict[PipelineSettings, Pipeline] = {}

    def search(self, settings: PipelineSettings, text: str, groups: frozenset[str] | None) -> TimedSearch:
        checkpoint("ray:search")
        pipeline = self.pipelines.get(settings)
        if pipeline is None:
            pipeline = self.pipelines[settings] = Pipeline(self.index, self.reranker, settings=settings)
            warm_up(pipeline, text)
        return timed_search(pipeline, text, groups)


def run_on_ray(address: str, load: Loader, *, workers: int | None = None,
               groups: Collection[str] | None = None) -> QueryRunner:
    """Run the queries on the Ray cluster at ``address``, over ``workers`` actors (default: one per CPU), as a
    caller in ``groups`` when given."""
    from rankwise.ray_cluster import RayError, check_address, cluster_cpus, connect_ray, ray_failure

    check_address(address)
    actors: list[Any] = []
    caller = None if groups is None else frozenset(groups)

    def run(settings: PipelineSettings, texts: Sequence[str]) -> Iterator[TimedSearch]:
        ray = connect_ray(address)
        from ray.util import ActorPool

        if not actors:
            remote = ray.remote(num_cpus=1, max_restarts=3, max_task_retries=3)(_Searcher)
            actors.extend(remote.remote(load) for _ in range(workers or cluster_cpus(ray)))
        pool = ActorPool(actors)
        try:
            yield from pool.map(lambda actor, text: actor.search.remote(settings, text, caller), list(texts))
        except ray.exceptions.RayError as err:
            raise RayError(f"the evaluation on Ray failed: {ray_failure(err)}") from None

    return run
