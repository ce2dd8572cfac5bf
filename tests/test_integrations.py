"""The RAG-framework adapters (LangChain, LlamaIndex, Haystack), with the real frameworks and no mocks.

Each adapter, over a local reranker whose logits vary strongly with the input (``spread_cross_encoder``),
must reorder its framework's documents exactly as ``Reranker.score`` ranks them and keep both scores in
their metadata; over a real ``rankwise serve`` process (API key on) it must give the same order and scores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import KB, QUERY
from rankwise.integrations import (
    FIRST_STAGE_RANK,
    FIRST_STAGE_SCORE,
    RAW_SCORE,
    RELEVANCE_SCORE,
    MissingExtraError,
    RerankServiceError,
    Scorer,
)
from rankwise.rerank.base import Reranker
from rankwise.rerank.loading import load_reranker
from rankwise.serving.auth import KeyStore
from rankwise.serving.readiness import ServeProcess, free_port

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
#: the KB passages in a "first-stage" order that is neither the KB's nor the reranker's
FIRST_STAGE = [KB[i] for i in (5, 0, 7, 2, 6, 1, 4, 3)]
TEXTS = [f"{d.title}\n{d.text}" for d in FIRST_STAGE]
#: made-up first-stage scores (descending, like a retriever's), to check they survive in metadata
FIRST_SCORES = [10.0 - i for i in range(len(TEXTS))]


@pytest.fixture(scope="module")
def reranker(spread_cross_encoder: Path) -> Reranker:
    loaded = load_reranker(str(spread_cross_encoder), backend="torch")
    assert loaded is not None
    return loaded


@pytest.fixture(scope="module")
def expected(reranker: Reranker) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The reference: input positions best first by ``reranker.score``, and the raw and calibrated scores."""
    scores = reranker.score(QUERY, TEXTS)
    order = sorted(range(len(TEXTS)), key=lambda i: (-float(scores.raw[i]), i))
    # the check can fail: the scores are spread, and the reranker's order is not the input order
    assert float(np.std(scores.raw)) > 1.0 and np.min(np.diff(np.sort(scores.raw))) > 1e-3
    assert order != list(range(len(TEXTS)))
    return order, scores.raw, scores.calibrated


def _check(order: list[int], positions: list[int], relevance: list[float], raw: list[float],
           expected: tuple[list[int], np.ndarray, np.ndarray], *, atol: float = 1e-6) -> None:
    """``positions`` (0-based input positions of the adapter's results, best first) and scores match."""
    assert positions == order
    np.testing.assert_allclose(relevance, expected[2][order], atol=atol)
    np.testing.assert_allclose(raw, expected[1][order], atol=atol * 100)


# ----------------------------------------------------------------------------------------------- core
def test_scorer_ranks_as_reranker_score_does(reranker: Reranker, expected) -> None:
    scorer = Scorer(reranker)
    ranked = scorer.rank(QUERY, TEXTS)
    assert [s.rank for s in ranked] == list(range(1, len(TEXTS) + 1))
    _check(expected[0], [s.index for s in ranked], [s.relevance_score for s in ranked],
           [s.raw_score for s in ranked], expected)
    assert [s.index for s in scorer.rank(QUERY, TEXTS, top_n=3)] == expected[0][:3]
    assert scorer.rank(QUERY, []) == []
    assert ranked[0].metadata() == {RELEVANCE_SCORE: ranked[0].relevance_score, RAW_SCORE: ranked[0].raw_score,
                                    FIRST_STAGE_RANK: expected[0][0] + 1}


def test_scorer_refuses_ambiguous_or_missing_targets(reranker: Reranker) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Scorer()
    with pytest.raises(ValueError, match="exactly one"):
        Scorer(reranker, url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="top_n"):
        Scorer(reranker).rank(QUERY, TEXTS, top_n=0)
    with pytest.raises(TypeError, match="Reranker"):
        Scorer(object())  # type: ignore[arg-type]


def test_unreachable_server_is_a_one_line_error() -> None:
    with Scorer(url=f"http://127.0.0.1:{free_port()}", timeout_s=5) as scorer, \
            pytest.raises(RerankServiceError, match="cannot reach the rankwise server") as err:
        scorer.rank(QUERY, TEXTS)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------- local, per framework
def _langchain_docs():
    from langchain_core.documents import Document

    return [Document(page_content=t, metadata={"id": d.id}, id=d.id) for d, t in zip(FIRST_STAGE, TEXTS, strict=True)]


def test_langchain_compressor_reorders_like_the_reranker(reranker: Reranker, expected) -> None:
    from langchain_core.documents import BaseDocumentCompressor

    from rankwise.integrations.langchain import RankwiseRerank

    compressor = RankwiseRerank(reranker=reranker)
    assert isinstance(compressor, BaseDocumentCompressor)
    docs = _langchain_docs()
    out = compressor.compress_documents(docs, QUERY)
    positions = [m.metadata[FIRST_STAGE_RANK] - 1 for m in out]
    _check(expected[0], positions, [d.metadata[RELEVANCE_SCORE] for d in out], [d.metadata[RAW_SCORE] for d in out],
           expected)
    assert [d.id for d in out] == [FIRST_STAGE[i].id for i in expected[0]]
    assert [d.metadata["id"] for d in out] == [FIRST_STAGE[i].id for i in expected[0]]  # metadata kept
    assert all(set(d.metadata) == {"id"} for d in docs)  # inputs untouched
    top = RankwiseRerank(reranker=reranker, top_n=3).compress_documents(docs, QUERY)
    assert [d.id for d in top] == [FIRST_STAGE[i].id for i in expected[0][:3]]


def test_llamaindex_postprocessor_reorders_like_the_reranker(reranker: Reranker, expected) -> None:
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    from rankwise.integrations.llamaindex import RankwiseRerank

    nodes = [NodeWithScore(node=TextNode(id_=d.id, text=t, metadata={"category": d.metadata["category"]}), score=s)
             for d, t, s in zip(FIRST_STAGE, TEXTS, FIRST_SCORES, strict=True)]
    postprocessor = RankwiseRerank(reranker=reranker, top_n=len(TEXTS))
    assert isinstance(postprocessor, BaseNodePostprocessor)
    out = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    _check(expected[0], [n.node.metadata[FIRST_STAGE_RANK] - 1 for n in out], [n.score for n in out],
           [n.node.metadata[RAW_SCORE] for n in out], expected)
    assert [n.node.node_id for n in out] == [FIRST_STAGE[i].id for i in expected[0]]
    assert [n.node.metadata[FIRST_STAGE_SCORE] for n in out] == [FIRST_SCORES[i] for i in expected[0]]
    assert [n.node.metadata[RELEVANCE_SCORE] for n in out] == [n.score for n in out]
    # the scores stay out of what the LLM and the embedder read; the input nodes are untouched
    assert "score" not in out[0].node.get_content(metadata_mode=MetadataMode.LLM)
    assert "category" in out[0].node.get_content(metadata_mode=MetadataMode.LLM)
    assert [n.score for n in nodes] == FIRST_SCORES and all(set(n.node.metadata) == {"category"} for n in nodes)
    top = RankwiseRerank(reranker=reranker, top_n=2).postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.node_id for n in top] == [FIRST_STAGE[i].id for i in expected[0][:2]]


def test_haystack_ranker_reorders_like_the_reranker(reranker: Reranker, expected) -> None:
    from haystack import Document, Pipeline

    from rankwise.integrations.haystack import RankwiseRanker

    docs = [Document(id=d.id, content=t, meta={"category": d.metadata["category"]}, score=s)
            for d, t, s in zip(FIRST_STAGE, TEXTS, FIRST_SCORES, strict=True)]
    pipeline = Pipeline()
    pipeline.add_component("ranker", RankwiseRanker(reranker))
    out = pipeline.run({"ranker": {"query": QUERY, "documents": docs}})["ranker"]["documents"]
    _check(expected[0], [d.meta[FIRST_STAGE_RANK] - 1 for d in out], [d.score for d in out],
           [d.meta[RAW_SCORE] for d in out], expected)
    assert [d.id for d in out] == [FIRST_STAGE[i].id for i in expected[0]]
    assert [d.meta[FIRST_STAGE_SCORE] for d in out] == [FIRST_SCORES[i] for i in expected[0]]
    assert all(d.meta["category"] == FIRST_STAGE[i].metadata["category"] for d, i in zip(out, expected[0], strict=True))
    assert [d.score for d in docs] == FIRST_SCORES and all(set(d.meta) == {"category"} for d in docs)
    top = RankwiseRanker(reranker, top_k=5).run(QUERY, docs, top_k=2)["documents"]
    assert [d.id for d in top] == [FIRST_STAGE[i].id for i in expected[0][:2]]
    with pytest.raises(TypeError, match="serializes only"):
        RankwiseRanker(reranker).to_dict()


def test_haystack_ranker_serializes_with_a_spec_or_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from haystack.utils import Secret

    from rankwise.integrations.haystack import RankwiseRanker

    monkeypatch.setenv("RANKWISE_TEST_KEY", "rk_test")
    ranker = RankwiseRanker(url="http://127.0.0.1:8080", api_key=Secret.from_env_var("RANKWISE_TEST_KEY"), top_k=4)
    data = ranker.to_dict()
    assert "rk_test" not in repr(data)
    again = RankwiseRanker.from_dict(data)
    assert (again.url, again.top_k, again.api_key.resolve_value()) == ("http://127.0.0.1:8080", 4, "rk_test")


def test_frameworks_are_optional_and_missing_ones_name_the_extra() -> None:
    """``import rankwise`` imports no framework; an adapter without its framework fails in one line."""
    code = """
import sys
import rankwise, rankwise.integrations
loaded = [m for m in ("langchain_core", "llama_index", "haystack", "cohere") if m in sys.modules]
assert not loaded, loaded
for framework, module in (("langchain_core", "langchain"), ("llama_index", "llamaindex"), ("haystack", "haystack")):
    sys.modules[framework] = None  # what an environment without the package looks like to `import`
    try:
        __import__(f"rankwise.integrations.{module}")
    except ImportError as err:
        assert type(err).__name__ == "MissingExtraError", type(err)
        print(err)
    else:
        raise AssertionError(module)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all("pip install 'rankwise[integrations]'" in line for line in lines)
    assert issubclass(MissingExtraError, ImportError)


# ---------------------------------------------------------------------------------- against `rankwise serve`
@pytest.fixture(scope="module")
def served(spread_cross_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real ``rankwise serve`` over the same model, API keys on; yields its URL and a rerank key."""
    root = tmp_path_factory.mktemp("integrations-serve")
    _, token = KeyStore(root / "keys.json").add(["rerank"], name="integrations", rate_per_s=1000.0, burst=1000)
    server = ServeProcess(["--reranker", str(spread_cross_encoder), "--backend", "torch", "--audit", "none",
                           "--keys", str(root / "keys.json"), "--served-model-name", "rerank-english-v3.0"],
                          root / "server.log", timeout_s=180, env=ENV)
    if server.problem:
        pytest.fail(f"{server.problem}:\n{(root / 'server.log').read_text()[-3000:]}")
    yield server.url, token
    server.stop()


def test_langchain_over_rankwise_serve_matches_local(served: tuple[str, str], reranker: Reranker, expected) -> None:
    from rankwise.integrations.langchain import RankwiseRerank

    url, token = served
    docs = _langchain_docs()
    local = RankwiseRerank(reranker=reranker).compress_documents(docs, QUERY)
    remote = RankwiseRerank(url=url, api_key=token).compress_documents(docs, QUERY)
    assert [d.id for d in remote] == [d.id for d in local]
    _check(expected[0], [d.metadata[FIRST_STAGE_RANK] - 1 for d in remote],
           [d.metadata[RELEVANCE_SCORE] for d in remote], [d.metadata[RAW_SCORE] for d in remote], expected, atol=1e-4)
    top = RankwiseRerank(url=url, api_key=token, top_n=3).compress_documents(docs, QUERY)
    assert [d.id for d in top] == [d.id for d in local[:3]]
    with pytest.raises(RerankServiceError, match="HTTP 401") as err:
        RankwiseRerank(url=url, api_key="rk_wrong").compress_documents(docs, QUERY)
    assert "\n" not in str(err.value)


def test_llamaindex_and_haystack_over_rankwise_serve_match_local(served: tuple[str, str], expected) -> None:
    from haystack import Document
    from haystack.utils import Secret
    from llama_index.core.schema import NodeWithScore, TextNode

    from rankwise.integrations.haystack import RankwiseRanker
    from rankwise.integrations.llamaindex import RankwiseRerank

    url, token = served
    nodes = [NodeWithScore(node=TextNode(id_=d.id, text=t), score=s)
             for d, t, s in zip(FIRST_STAGE, TEXTS, FIRST_SCORES, strict=True)]
    out = RankwiseRerank(url=url, api_key=token).postprocess_nodes(nodes, query_str=QUERY)
    _check(expected[0], [n.node.metadata[FIRST_STAGE_RANK] - 1 for n in out], [n.score for n in out],
           [n.node.metadata[RAW_SCORE] for n in out], expected, atol=1e-4)
    docs = [Document(id=d.id, content=t, score=s) for d, t, s in zip(FIRST_STAGE, TEXTS, FIRST_SCORES, strict=True)]
    found = RankwiseRanker(url=url, api_key=Secret.from_token(token)).run(QUERY, docs)["documents"]
    _check(expected[0], [d.meta[FIRST_STAGE_RANK] - 1 for d in found], [d.score for d in found],
           [d.meta[RAW_SCORE] for d in found], expected, atol=1e-4)


def test_official_cohere_clients_talk_to_rankwise_serve(served: tuple[str, str], expected) -> None:
    """Cohere's SDK, v1 and v2 clients, unmodified but for ``base_url`` and the key; and langchain-cohere."""
    import cohere
    from langchain_cohere import CohereRerank

    url, token = served
    order, _, calibrated = expected
    v2 = cohere.ClientV2(api_key=token, base_url=url).rerank(model="rerank-english-v3.0", query=QUERY,
                                                            documents=TEXTS, top_n=3)
    assert [r.index for r in v2.results] == order[:3]
    assert [r.relevance_score for r in v2.results] == pytest.approx([float(calibrated[i]) for i in order[:3]], abs=1e-4)
    v1 = cohere.Client(api_key=token, base_url=url).rerank(model="rerank-english-v3.0", query=QUERY, documents=TEXTS)
    assert [r.index for r in v1.results] == order
    with pytest.raises(cohere.core.ApiError) as refused:  # a name the server does not serve: 404, names listed
        cohere.ClientV2(api_key=token, base_url=url).rerank(model="rerank-v3.5", query=QUERY, documents=TEXTS)
    assert refused.value.status_code == 404
    compressor = CohereRerank(client=cohere.ClientV2(api_key=token, base_url=url), model="rerank-english-v3.0",
                              top_n=3)
    from langchain_core.documents import Document

    ranked = compressor.compress_documents([Document(page_content=t) for t in TEXTS], QUERY)
    assert [d.page_content for d in ranked] == [TEXTS[i] for i in order[:3]]
