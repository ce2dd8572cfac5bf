from __future__ import annotations

import gzip
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


def test_byte_order_marks_and_every_line_ending_are_read_like_text_mode(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a", "text": "one"}\r{"id": "b", "text": "two"}\r\n'
                      + b'{"id": "c", "text": "three"}\n')
    assert [d.id for d in load_documents(jsonl)] == ["a", "b", "c"]
    csv_file = tmp_path / "c.csv"
    csv_file.write_bytes(b'\xef\xbb\xbfid,text\r\n1,"multi\r\nline"\r\n2,plain\r\n')
    assert [(d.id, d.text) for d in load_documents(csv_file)] == [("1", "multi\r\nline"), ("2", "plain")]


def test_gzipped_jsonl_and_csv_metadata_column_and_long_csv_fields(tmp_path: Path) -> None:
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"id": "a", "text": "x", "metadata": {"team": "sre"}}\n'))
    assert [d.metadata for d in load_documents(gz)] == [{"team": "sre"}]
    long_text = "word " * 60_000  # 300 kB in one cell: over the csv module's default 128 KiB field limit
    csv_file = tmp_path / "c.csv"
    csv_file.write_text(f'id,text,metadata,owner\n1,{long_text},"{{""team"": ""sre""}}",ann\n2,short,,\n')
    docs = list(load_documents(csv_file))
    assert docs[0].metadata == {"team": "sre", "owner": "ann"} and len(docs[0].text) == len(long_text.strip())
    assert docs[1].metadata == {}


@pytest.mark.parametrize(("line", "message"), [
    ('{"id": "a", "text": "x", "metadata": "abc"}', r"c\.jsonl:1: 'metadata' must be a JSON object .* found a string"),
    ('{"id": "a", "text": "x", "metadata": 5}', "found a number"),
    ('{"id": "a", "text": "x", "metadata": null}', None),
    ('{"id": true, "text": "x"}', "the id must be a string or a number, found true/false"),
    ('{"id": 7, "text": "x"}', None),
])
def test_field_types_are_checked(tmp_path: Path, line: str, message: str | None) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text(line + "\n")
    if message is None:
        assert len(list(load_documents(f))) == 1
    else:
        with pytest.raises(CorpusError, match=message):
            list(load_documents(f))


def test_undecodable_and_binary_bytes_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "\xff"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: not UTF-8 text \(byte 0xff at column 22\)"):
        list(load_documents(f))
    f.write_bytes(b'{"id": "a", "text": "ok"}\n\x00\x00\x00\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: binary data"):
        list(load_documents(f))


def test_a_binary_file_posing_as_text_in_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ok.md").write_bytes(b"\xef\xbb\xbf# Title\nbody")
    assert [d.title for d in load_documents(tmp_path)] == ["Title"]
    (tmp_path / "notes.txt").write_bytes("UTF-16 notes".encode("utf-16"))
    with pytest.raises(CorpusError, match=r"notes\.txt: binary data \(a NUL byte\)"):
        list(load_documents(tmp_path))
