from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from rankwise.corpus import ChunkingSettings, PassageSplitter, load_documents, validated
from rankwise.errors import CorpusError
from rankwise.models import bundled_minilm_dir
from rankwise.types import Document


def test_jsonl_keeps_extra_fields_as_metadata(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"id": "a", "title": "T", "text": "body", "team": "sre"}) + "\n\n"
                 + json.dumps({"_id": "b", "text": "two", "metadata": {"x": 1}}) + "\n")
    docs = list(load_documents(f))
    assert [d.id for d in docs] == ["a", "b"]
    assert docs[0].metadata == {"team": "sre"} and docs[1].metadata == {"x": 1}


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": \n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: malformed JSON"):
        list(load_documents(f))


def test_csv_and_missing_id(tmp_path: Path) -> None:
    f = tmp_path / "c.csv"
    f.write_text('id,title,text,owner\n1,Hello,"a, b",ann\n')
    (doc,) = load_documents(f)
    assert (doc.id, doc.text, doc.metadata) == ("1", "a, b", {"owner": "ann"})
    bad = tmp_path / "bad.csv"
    bad.write_text("title,text\nx,y\n")
    with pytest.raises(CorpusError, match="no id"):
        list(load_documents(bad))


def test_directory_of_text_markdown_html(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "sub" / "b.md").write_text("# Runbook\nrestart it")
    (tmp_path / "c.html").write_text("<html><head><title>Page</title><script>x()</script></head>"
                                     "<body><p>Hello <b>world</b></p></body></html>")
    (tmp_path / "ignored.bin").write_bytes(b"\0")
    docs = {d.id: d for d in load_documents(tmp_path)}
    assert set(docs) == {"a.txt", "sub/b.md", "c.html"}
    assert docs["sub/b.md"].title == "Runbook"
    assert docs["c.html"].title == "Page" and "x()" not in docs["c.html"].text and "world" in docs["c.html"].text


def test_empty_and_duplicate_corpora_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="empty"):
        list(validated(iter([]), "src"))
    dup = [Document("a", "x"), Document("a", "y")]
    with pytest.raises(CorpusError, match="duplicate document id 'a'"):
        list(validated(dup, "src"))
    with pytest.raises(CorpusError, match="does not exist"):
        load_documents(tmp_path / "nope")
    pdf = tmp_path / "x.pdf"
    pdf.write_text("")
    with pytest.raises(CorpusError, match="don't know how to read"):
        load_documents(pdf)


def test_passages_are_exact_spans_within_budget_with_overlap() -> None:
    settings = ChunkingSettings(max_tokens=40, overlap=10)
    splitter = PassageSplitter(bundled_minilm_dir(), settings)
    text = " ".join(f"Sentence number {i} talks about topic{i % 7} in detail." for i in range(30))
    doc = Document("d", text, "Title")
    passages = splitter.split(doc)
    assert len(passages) > 3
    tok = splitter.tokenizer
    for p in passages:
        assert p.text == text[p.start:p.end]
        assert len(tok.encode(p.text, add_special_tokens=False).ids) <= 40
        assert p.doc_id == "d" and p.id == f"d#{p.index}"
    for a, b in itertools.pairwise(passages):
        assert b.start < a.end, "consecutive passages must overlap"
        assert text[b.start - 1] == " ", "a passage never starts mid-word"
    assert passages[0].start == 0 and passages[-1].end == len(text)


def test_short_document_is_one_passage_and_hash_tracks_content() -> None:
    splitter = PassageSplitter(bundled_minilm_dir())
    (a,) = splitter.split(Document("d", "short text", "T"))
    (b,) = splitter.split(Document("d", "short text!", "T"))
    assert (a.start, a.end) == (0, 10) and a.content_hash != b.content_hash


def test_invalid_chunking_settings() -> None:
    with pytest.raises(CorpusError):
        ChunkingSettings(max_tokens=32, overlap=32)
