"""Token-budget batching for both encoders.

Pairs are tokenized once, sorted by length and grouped so that ``batch rows × longest row`` stays under
a token budget. Compared with fixed-size batches in input order this (a) pads far less, because similar
lengths share a batch, and (b) bounds activation memory by the budget whatever the number or length of
candidates. Sorting by length is safe: outputs are put back in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rankwise.inference.backends import Mapper

#: default cap on the share of padded positions in one batch
MAX_PADDING = 0.1
#: token budget per batch when batches run concurrently (a ``mapper``): small enough that 100 candidates make
#: several batches to share among the streams (larger batches left one stream idle at the end of a query)
CONCURRENT_BATCH_TOKENS = 4096


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int = 256,
                         max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Group item indices (longest first) so each batch has ``rows * max_len <= max_tokens`` and at most
    ``max_padding`` of its positions are padding.

    Why the padding cap: sorted by length, a budget-filled batch can still span e.g. 256-token and
    60-token windows (a long passage's last window), and every padded position costs a full forward
    pass position. Cutting the batch when waste would pass the cap costs one more, smaller, forward pass.
    A single item longer than the budget still gets a batch of its own (it cannot be split here).
    """
    if max_tokens <= 0 or max_rows <= 0 or not 0 <= max_padding < 1:
        raise ValueError("token budget and max rows must be positive, max_padding in [0, 1)")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    width = real = 0
    for i in order:
        new_width = max(width, lengths[i])
        rows = len(current) + 1
        if current and (rows * new_width > max_tokens or len(current) >= max_rows
                        or 1 - (real + lengths[i]) / (rows * new_width) > max_padding):
            batches.append(current)
            current, new_width, real = [], lengths[i], 0
        current.append(i)
        real += lengths[i]
        width = new_width
    if current:
        batches.append(current)
    return batches


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of computed token positions that are padding (0 = no waste)."""
    real = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 0.0 if padded == 0 else 1.0 - real / padded


def pad_batch(rows: Sequence[Sequence[int]], token_types: Sequence[Sequence[int]] | None, pad_id: int,
              *, multiple: int = 1, max_width: int | None = None) -> dict[str, np.ndarray]:
    """Right-pad token id rows into the ``input_ids``/``attention_mask``/``token_type_ids`` int64 arrays.

    Every backend (torch, ONNX Runtime, OpenVINO) takes these same arrays, so padding lives in one place and
    the backends only differ in the forward call. ``multiple`` rounds the width up (to a runner's
    ``width_multiple``: some kernels run aligned widths faster than slightly narrower ones), never past
    ``max_width`` (the model's position limit); masked positions do not change any row's output.
    """
    width = max(len(r) for r in rows)
    width = max(width, min(-(-width // multiple) * multiple, max_width or width))
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    type_ids = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
        if token_types is not None:
            type_ids[i, : len(row)] = token_types[i]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": type_ids}


def run_batched(rows: Sequence[Sequence[int]], forward: Callable[[list[int]], np.ndarray], max_tokens: int,
                max_rows: int = 256, max_padding: float = MAX_PADDING, mapper: Mapper | None = None
                ) -> tuple[np.ndarray, list[list[int]]]:
    """Run ``forward(indices)`` over token-budget batches of ``rows``; outputs come back in input order.

    ``forward`` receives the indices of one batch and returns one output row per index (a logit or a
    vector). ``mapper`` (a runner's ``map``, e.g. OpenVINO with several streams) runs batches concurrently;
    they are then capped at :data:`CONCURRENT_BATCH_TOKENS` so there are enough to share out. Returns the
    stacked outputs and the batches (for :func:`padding_ratio` and stats).
    """
    lengths = [len(r) for r in rows]
    if mapper is not None:
        max_tokens = min(max_tokens, CONCURRENT_BATCH_TOKENS)
    batches = token_budget_batches(lengths, max_tokens, max_rows, max_padding)
    out: np.ndarray | None = None
    for batch, values in zip(batches, (mapper or map)(forward, batches), strict=True):
        values = np.asarray(values, dtype=np.float32)
        if out is None:
            out = np.empty((len(rows), *values.shape[1:]), dtype=np.float32)
        out[batch] = values
    return (out if out is not None else np.empty(0, dtype=np.float32)), batches
