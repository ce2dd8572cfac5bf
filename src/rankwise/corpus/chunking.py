"""Token-aware passage splitting with overlap.

Why tokens and not words: every model downstream (bi-encoder, cross-encoder) has a *token* limit, so
counting words either wastes context or silently truncates. We count with the embedding model's fast
tokenizer and cut on its character offsets, so each passage maps back to an exact span of the source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from rankwise.errors import CorpusError
from rankwise.types import Document, Passage


def content_hash(title: str, text: str) -> str:
    """Hash of exactly what gets embedded; re-indexing re-embeds only when this changes."""
    return hashlib.sha256(f"{title}\x1f{text}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ChunkingSettings:
    max_tokens: int = 256
    overlap: int = 48

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise CorpusError(f"passage size must be at least 8 tokens (got {self.max_tokens})")
        if not 0 <= self.overlap < self.max_tokens:
            raise CorpusError(f"overlap must be >= 0 and smaller than the passage size (got {self.overlap})")


class PassageSplitter:
    """Split documents into windows of at most ``max_tokens`` tokens, ``overlap`` tokens shared.

    Windows prefer to end at a sentence boundary found in the last quarter of the window so passages
    read naturally; a window never exceeds the budget.
    """

    def __init__(self, tokenizer_dir: str | Path, settings: ChunkingSettings | None = None) -> None:
        tokenizer_file = Path(tokenizer_dir) / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise CorpusError(f"no fast tokenizer (tokenizer.json) in '{tokenizer_dir}' to count tokens with")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.settings = settings or ChunkingSettings()

    def split_all(self, documents: Iterable[Document], batch_size: int = 256) -> Iterator[tuple[Document, list[Passage]]]:
        batch: list[Document] = []
        for doc in documents:
            batch.append(doc)
            if len(batch) >= batch_size:
                yield from self._split_batch(batch)
                batch = []
        if batch:
            yield from self._split_batch(batch)

    def split(self, document: Document) -> list[Passage]:
        return next(self._split_batch([document]))[1]

    def _split_batch(self, docs: list[Document]) -> Iterator[tuple[Document, list[Passage]]]:
        encodings = self.tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False)
        for doc, enc in zip(docs, encodings, strict=True):
            spans = self._windows(enc.offsets, enc.word_ids, doc.text)
            passages = [
                Passage(
                    id=f"{doc.id}#{i}", doc_id=doc.id, index=i, title=doc.title,
                    text=doc.text[s:e], start=s, end=e, content_hash=content_hash(doc.title, doc.text[s:e]),
                )
                for i, (s, e) in enumerate(spans)
            ]
            yield doc, passages

    def _windows(self, offsets: list[tuple[int, int]], words: list[int | None], text: str) -> list[tuple[int, int]]:
        n = len(offsets)
        size, overlap = self.settings.max_tokens, self.settings.overlap
        if n <= size:
            return [(0, len(text))]
        spans: list[tuple[int, int]] = []
        first = 0
        while first < n:
            last = min(first + size, n)  # exclusive token index
            if last < n:
                last = self._sentence_end(offsets, text, first, last)
            spans.append((offsets[first][0], offsets[last - 1][1]))
            if last >= n:
                break
            first = max(last - overlap, first + 1)
            while 0 < first < n - 1 and words[first] is not None and words[first] == words[first - 1]:
                first += 1  # never start a passage in the middle of a word
        return spans

    @staticmethod
    def _sentence_end(offsets: list[tuple[int, int]], text: str, first: int, last: int) -> int:
        """Move the window end back to just after a sentence-final token, within its last quarter."""
        floor = first + (last - first) * 3 // 4
        for t in range(last - 1, floor, -1):
            if text[offsets[t][0]:offsets[t][1]] in (".", "!", "?"):
                return t + 1
        return last
