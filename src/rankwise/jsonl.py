"""One JSONL line → one JSON object, with an error that names ``file:line`` (shared by every JSONL reader)."""

from __future__ import annotations

import json
from typing import Any

from rankwise.errors import RankwiseError


def parse_json_object(line: str, where: str, error: type[RankwiseError]) -> dict[str, Any]:
    """Parse ``line`` (read at ``where``, e.g. ``corpus.jsonl:12``) or raise ``error`` saying how to fix it."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise error(f"{where}: malformed JSON ({err.msg}); fix or remove that line") from None
    if not isinstance(record, dict):
        raise error(f"{where}: expected one JSON object per line")
    return record
