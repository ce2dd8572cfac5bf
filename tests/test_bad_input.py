"""Bad input through the real CLI: each malformed corpus or manifest is one ``error:`` line and exit 2.

Never a traceback, never Click's bare ``Aborted.``, and the index already at ``--index`` is untouched.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rankwise.errors import IndexNotFoundError
from rankwise.index import Index

KB_LINE = json.dumps({"id": "kb-1", "title": "Refunds", "text": "Annual plans are refunded pro rata."}) + "\n"
GZIPPED = gzip.compress("".join(json.dumps({"id": f"d{i}", "text": f"passage number {i} " * 20}) + "\n"
                                for i in range(400)).encode())

#: file name -> (content, what the error line must say)
BAD_CORPORA: dict[str, tuple[bytes, str]] = {
    "latin1.jsonl": (KB_LINE.encode() + '{"id": "b", "text": "café"}\n'.encode("latin-1"),
                     "latin1.jsonl:2: not UTF-8 text (byte 0xe9 at column 25); save the file as UTF-8"),
    "image.jsonl": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image.jsonl:1: not UTF-8 text (byte 0x89"),
    "zeros.jsonl": (bytes(4096), "zeros.jsonl:1: binary data (a NUL byte)"),
    "utf16.jsonl": (codecs.BOM_UTF16_LE + KB_LINE.encode("utf-16-le"), "utf16.jsonl: the file is UTF-16 text"),
    "meta-string.jsonl": (b'{"id": "a", "text": "x", "metadata": "abc"}\n',
                          "meta-string.jsonl:1: 'metadata' must be a JSON object such as"),
    "meta-number.jsonl": (KB_LINE.encode() + b'{"id": "a", "text": "x", "metadata": 5}\n',
                          ("meta-number.jsonl:2: 'metadata' must be a JSON object such as {\"team\": \"sre\"}, "
                          "found a number")),
    "meta-list.jsonl": (b'{"id": "a", "text": "x", "metadata": ["a"]}\n', "found an array"),
    "id-object.jsonl": (b'{"id": {"n": 1}, "text": "x"}\n', "id-object.jsonl:1: the id must be a string or a number"),
    "truncated.jsonl.gz": (GZIPPED[: len(GZIPPED) // 2], "truncated.jsonl.gz: the compressed data is truncated"),
    "plain.jsonl.gz": (KB_LINE.encode(), "plain.jsonl.gz: not a gzip file"),
    "latin1.csv": (b"id,title,text\n1,A,fine\n2,B,caf\xe9\n", "latin1.csv:3: not UTF-8 text (byte 0xe9 at column 8)"),
    "binary.csv": (b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)), "binary.csv:1: binary data (a NUL byte)"),
    "meta-column.csv": (b'id,text,metadata\n1,hello,"{not json"\n',
                        "meta-column.csv:2: column 'metadata': malformed JSON"),
}


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rankwise", *args], check=False, capture_output=True, text=True,
                          env=_env(), timeout=300)


def _cli_many(commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Each command as ``rankwise ...``, two processes at a time (the CLI's start-up dominates)."""
    results: list[subprocess.CompletedProcess[str]] = []
    for start in range(0, len(commands), 2):
        procs = [subprocess.Popen([sys.executable, "-m", "rankwise", *cmd], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=_env())
                 for cmd in commands[start:start + 2]]
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Aborted" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def existing(tmp_path_factory: pytest.TempPathFactory) -> Index:
    from conftest import KB

    return Index.build(list(KB), tmp_path_factory.mktemp("existing") / "idx", embedding_model=None)


def test_bad_corpus_files_are_one_error_line_and_keep_the_existing_index(tmp_path: Path, existing: Index) -> None:
    files = []
    for name, (content, _) in BAD_CORPORA.items():
        (tmp_path / name).write_bytes(content)
        files.append(tmp_path / name)
    beir = tmp_path / "beir"  # a BEIR directory whose corpus.jsonl.gz was cut short by a download
    beir.mkdir()
    (beir / "corpus.jsonl.gz").write_bytes(GZIPPED[:-20])
    results = _cli_many([["index", str(f), "--index", str(existing.path), "--no-dense"] for f in [*files, beir]])
    for (name, (_, expected)), result in zip(BAD_CORPORA.items(), results, strict=False):
        line = _one_error_line(result)
        assert f"{tmp_path / name}" in line and expected in line, line
    assert "corpus.jsonl.gz: the compressed data is truncated or corrupt after line" in _one_error_line(results[-1])

    after = Index(existing.path)
    assert after.fingerprint == existing.fingerprint and after.manifest.num_documents == 8
    assert not [p for p in existing.path.parent.iterdir() if p.name.startswith(".idx.")], "no build left behind"


def test_csv_with_a_byte_order_mark_indexes_its_ids(tmp_path: Path) -> None:
    corpus = tmp_path / "excel.csv"
    corpus.write_bytes(codecs.BOM_UTF8 + b"id,title,text,team\r\nkb-1,Refunds,Annual plans are refunded.,billing\r\n")
    result = _cli("index", str(corpus), "--index", str(tmp_path / "idx"), "--no-dense")
    assert result.returncode == 0, result.stderr
    document = Index(tmp_path / "idx").docstore.document("kb-1")
    assert document is not None and document.metadata == {"team": "billing"}


def _manifest_variants(source: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """Index copies whose manifest is damaged in one way each -> (index dir, what the error must say)."""
    data = json.loads((source / "manifest.json").read_text())
    legacy = {k: v for k, v in data.items() if k not in ("files", "checksum")} | {"format_version": 1}
    variants: dict[str, bytes] = {
        "ff-byte": (source / "manifest.json").read_bytes().replace(b'"source"', b'"sou\xffrce"'),
        "edited-count": json.dumps(data | {"num_passages": 7}).encode(),
        "array": b"[1, 2]",
        "newer-format": json.dumps(data | {"format_version": 99}).encode(),
        "string-count": json.dumps(legacy | {"num_passages": "8"}).encode(),
        "bm25-number": json.dumps(legacy | {"bm25": 5}).encode(),
        "bad-bm25-keys": json.dumps(legacy | {"bm25": {"k1": 1.2, "flavour": "x"}}).encode(),
        "unknown-field": json.dumps(legacy | {"extra": True}).encode(),
        "negative": json.dumps(legacy | {"num_documents": -1}).encode(),
    }
    expected = {
        "ff-byte": "not UTF-8 text: byte 0xff", "edited-count": "does not match its checksum",
        "array": "expected a JSON object, found an array", "newer-format": "has format 99",
        "string-count": "field 'num_passages' must be a number, found a string",
        "bm25-number": "field 'bm25' must be an object, found a number",
        "bad-bm25-keys": "invalid bm25 settings", "unknown-field": "unknown field 'extra'",
        "negative": "field 'num_documents' is negative",
    }
    out = {}
    for name, content in variants.items():
        copy = shutil.copytree(source, root / name)
        (copy / "manifest.json").write_bytes(content)
        out[name] = (copy, expected[name])
    return out


def test_bad_manifests_are_one_error_line_through_search_and_info(tmp_path: Path, existing: Index) -> None:
    variants = _manifest_variants(existing.path, tmp_path)
    for path, expected in variants.values():  # every variant in-process (fast) ...
        with pytest.raises(IndexNotFoundError, match="rebuild the index|upgrade rankwise") as caught:
            Index(path)
        assert expected in str(caught.value)
    cli = ["ff-byte", "string-count", "bm25-number", "edited-count"]  # ... and the reported ones through the CLI
    results = _cli_many([["search", "refund", "--index", str(variants[n][0]), "--first-stage", "bm25"] for n in cli]
                        + [["info", "--index", str(variants["ff-byte"][0])]])
    for name, result in zip([*cli, "ff-byte"], results, strict=True):
        line = _one_error_line(result)
        assert variants[name][1] in line and line.endswith("rebuild the index"), line
