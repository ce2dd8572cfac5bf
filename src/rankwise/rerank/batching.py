"""Token-budget batching for cross-encoders.

Pairs are tokenized once, sorted by length and grouped so that ``batch rows × longest row`` stays under
a token budget. Compared with fixed-size batches in input order this (a) pads far less, because similar
lengths share a batch, and (b) bounds activation memory by the budget whatever the number or length of
candidates. Sorting by length is safe: outputs are put back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int = 256) -> list[list[int]]:
    """Group item indices (longest first) so each batch has ``rows * max_len <= max_tokens``.

    A single item longer than the budget still gets a batch of its own (it cannot be split here).
    """
    if max_tokens <= 0 or max_rows <= 0:
        raise ValueError("token budget and max rows must be positive")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, lengths[i])
        if current and ((len(current) + 1) * new_width > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current, new_width = [], lengths[i]
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    return batches


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of computed token positions that are padding (0 = no waste)."""
    real = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 0.0 if padded == 0 else 1.0 - real / padded
