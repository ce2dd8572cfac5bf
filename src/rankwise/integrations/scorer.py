"""The one scoring path behind every framework adapter: a local :class:`Reranker` or a rankwise server.

:class:`Scorer` turns ``(query, texts)`` into :class:`ScoredText` items, best first, each with the calibrated
0..1 score, the raw logit, the reranker's rank and the text's position in the input. Local and remote
scoring order texts the same way as ``POST /v1/rerank`` does (raw logit descending, ties by input position),
so an adapter gives the same answer whether its model runs in-process or behind ``rankwise serve``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import httpx

from rankwise.errors import ModelError, RankwiseError
from rankwise.rerank.base import Reranker, rank_order

EXTRA_HINT = "pip install 'rankwise[integrations]'"


class MissingExtraError(RankwiseError, ImportError):
    """A framework adapter was imported without its framework installed."""


class RerankServiceError(RankwiseError):
    """The rankwise server could not be reached, refused the request or answered something unexpected."""


def missing_extra(framework: str, package: str) -> MissingExtraError:
    """The one-line error an adapter module raises when ``package`` cannot be imported."""
    return MissingExtraError(f"the {framework} adapter needs the '{package}' package: {EXTRA_HINT}")


#: the metadata keys every adapter writes (the reranker's scores, and where the first stage had the item)
RELEVANCE_SCORE, RAW_SCORE = "relevance_score", "raw_score"
FIRST_STAGE_RANK, FIRST_STAGE_SCORE = "first_stage_rank", "first_stage_score"


@dataclass(frozen=True, slots=True)
class ScoredText:
    """One text's reranking: ``index`` is its 0-based input position, ``rank`` its 1-based reranked rank.

    ``relevance_score`` is calibrated to 0..1 (sigmoid of the logit) and comparable across queries;
    ``raw_score`` is the model's logit. Both are ``None`` only when a server answered *degraded* (its
    latency budget ran out): the texts then come back in input order, unscored.
    """

    index: int
    rank: int
    relevance_score: float | None
    raw_score: float | None

    def metadata(self) -> dict[str, Any]:
        """The reranker's two scores and the 1-based rank the text had in the input (the first stage's)."""
        return {RELEVANCE_SCORE: self.relevance_score, RAW_SCORE: self.raw_score, FIRST_STAGE_RANK: self.index + 1}


class Scorer:
    """Scores texts with a local reranker *or* a rankwise server: pass exactly one of ``reranker`` and ``url``.

    ``reranker`` is a :class:`Reranker` object or a spec for :func:`~rankwise.rerank.loading.load_reranker`
    (a model directory, or a registry name such as ``production``; ``load_options`` such as ``backend`` and
    ``registry`` go to it). ``url`` is the server's base URL (``http://host:8080``); ``api_key`` is sent as
    ``Authorization: Bearer`` when the server runs with ``--keys``.
    """

    def __init__(self, reranker: Reranker | str | None = None, *, url: str | None = None,
                 api_key: str | None = None, timeout_s: float = 60.0, **load_options: Any) -> None:
        if (reranker is None) == (url is None):
            raise ValueError("pass exactly one of `reranker` (a Reranker or a model spec) and `url` (a rankwise server)")
        if url is not None and load_options:
            raise ValueError(f"{', '.join(sorted(load_options))}: only for a local reranker, not with `url`")
        self.reranker: Reranker | None = None
        self.url = url.rstrip("/") if url is not None else None
        self._client: httpx.Client | None = None
        if isinstance(reranker, str):
            from rankwise.rerank.loading import load_reranker

            reranker = load_reranker(reranker, **load_options)
            if reranker is None:
                raise ModelError("the adapters need a reranker: pass a model directory or a registry name, not 'none'")
        if reranker is not None:
            if not isinstance(reranker, Reranker):
                raise TypeError(f"`reranker` must implement rankwise.Reranker, got {type(reranker).__name__}")
            self.reranker = reranker
        else:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            self._client = httpx.Client(base_url=self.url or "", headers=headers, timeout=timeout_s)

    @property
    def model(self) -> str:
        """The local reranker's name, or the server URL."""
        return self.reranker.name if self.reranker is not None else str(self.url)

    def rank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[ScoredText]:
        """The best ``top_n`` texts (all by default), best first."""
        if top_n is not None and top_n < 1:
            raise ValueError(f"top_n must be at least 1, got {top_n}")
        if not texts:
            return []
        n = min(top_n or len(texts), len(texts))
        if self.reranker is not None:
            scores = self.reranker.score(query, list(texts))
            order = rank_order(scores.raw)[:n]
            return [ScoredText(i, rank, float(scores.calibrated[i]), float(scores.raw[i]))
                    for rank, i in enumerate(order, start=1)]
        return self._rank_remote(query, texts, n)

    def _rank_remote(self, query: str, texts: Sequence[str], n: int) -> list[ScoredText]:
        assert self._client is not None
        where = f"the rankwise server at {self.url}"
        try:
            response = self._client.post("/v1/rerank", json={"query": query, "documents": list(texts), "top_n": n,
                                                             "raw_scores": True})
        except httpx.HTTPError as err:
            raise RerankServiceError(f"cannot reach {where}: {err}") from err
        if response.status_code != 200:
            try:
                message = response.json()["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise RerankServiceError(f"{where} answered HTTP {response.status_code}: {message}")
        try:
            results = response.json()["results"]
            scored = [ScoredText(int(r["index"]), rank, r["relevance_score"], r.get("raw_score"))
                      for rank, r in enumerate(results, start=1)]
        except (ValueError, KeyError, TypeError) as err:
            raise RerankServiceError(f"{where} answered something that is not a /v1/rerank response: {err!r}") from err
        indices = [s.index for s in scored]
        if len(indices) != n or len(set(indices)) != n or not all(0 <= i < len(texts) for i in indices):
            raise RerankServiceError(f"{where} returned {len(scored)} results with invalid or repeated indices "
                                     f"for {len(texts)} documents and top_n={n}")
        return scored

    def close(self) -> None:
        """Close the HTTP connection pool (a no-op for a local reranker)."""
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Scorer({self.model!r})"
