"""Embedding a corpus on a Ray cluster (``rankwise index SOURCE --ray ADDRESS``), with Ray Data.

The passages go through ``map_batches`` over a pool of actors, each of which loads the embedding model
once — the same weights and backend as the index records (checked by sha256 on every worker) — in the
same chunks as a local build, so the vectors equal a local build's up to float rounding (a worker runs
one thread; kernels may sum in another order). Each chunk carries its first row and each result is put
back by row, so a batch that Ray retries after a worker died is written once, and a build in which
any row came back missing is refused rather than saved with zero vectors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rankwise.errors import IndexNotFoundError
from rankwise.faults import checkpoint
from rankwise.index.dense import Embedder, EmbeddingModelInfo
from rankwise.index.index import EmbedPassages, Progress
from rankwise.ray_cluster import RayError, check_address, cluster_cpus, connect_ray, ray_failure


class _Encoder:
    """One Ray Data actor: the model loaded once, then batches of ``{"row", "text"}`` → ``{"row", "vector"}``."""

    def __init__(self, info: EmbeddingModelInfo, threads: int) -> None:
        self.embedder = Embedder(info.path, backend=info.backend, max_seq_length=info.max_seq_length,  # type: ignore[arg-type]
                                 threads=threads)
        if self.embedder.info.sha256 != info.sha256:
            raise IndexNotFoundError(f"a Ray worker's embedding model at {info.path} has other weights than the "
                                     "driver's; install the same model on every node")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One chunk ``{"start", "texts"}`` in, its passages' ``{"row", "vector"}`` out."""
        checkpoint("ray:embedding")
        start, texts = int(batch["start"][0]), [str(t) for t in batch["texts"][0]]
        return {"row": np.arange(start, start + len(texts)), "vector": self.embedder.encode(texts)}


def embed_with_ray(address: str, *, workers: int | None = None, batch_size: int = 256) -> EmbedPassages:
    """An ``embed`` step for :meth:`~rankwise.index.Index.build` that runs on the Ray cluster at ``address``
    with ``workers`` actors (default: one per CPU of the cluster), one thread each."""
    check_address(address)

    def embed(embedder: Embedder, texts: list[str], progress: Progress) -> np.ndarray:
        ray = connect_ray(address)
        quiet_ray_data(ray)
        pool = workers or cluster_cpus(ray)
        # the chunks of embed_here, so each forward pass sees the same passages as a local build's
        chunks = [{"start": s, "texts": texts[s:s + batch_size]} for s in range(0, len(texts), batch_size)]
        dataset = ray.data.from_items(chunks, override_num_blocks=min(len(chunks), 4 * pool))
        encoded = dataset.map_batches(_Encoder, fn_constructor_kwargs={"info": embedder.info, "threads": 1},
                                      batch_size=1, batch_format="numpy", num_cpus=1,
                                      compute=ray.data.ActorPoolStrategy(size=pool))
        vectors = np.zeros((len(texts), embedder.info.dim), dtype=np.float32)
        seen = np.zeros(len(texts), dtype=bool)
        try:
            for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
                rows = batch["row"].astype(np.int64)
                vectors[rows] = batch["vector"]
                seen[rows] = True
                progress("embedding", int(seen.sum()), len(texts))
        except ray.exceptions.RayError as err:
            raise RayError(f"embedding on Ray failed: {ray_failure(err)}") from None
        if not seen.all():
            missing = np.flatnonzero(~seen)
            raise IndexNotFoundError(f"the Ray cluster returned no vector for {missing.size} passages (the first: row "
                                     f"{missing[0]}); the index was not written, run the build again")
        return vectors

    return embed


def quiet_ray_data(ray: Any) -> None:
    """rankwise draws its own progress bar: no Ray Data bars or per-stage log lines on the terminal."""
    import logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)

