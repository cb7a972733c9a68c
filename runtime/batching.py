"""Length-sorted, token-budget batches: little padding, bounded memory per forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lusifer.runtime.tokenize import TokenizedTexts


@dataclass
class Batch:
    """One padded batch.

    Attributes:
        positions: Index of each row in the tokenised window it came from.
        input_ids: int64 ``(rows, seq)``, right-padded with the pad id.
        attention_mask: int64 ``(rows, seq)``, 1 on real tokens.
    """

    positions: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)


def plan_batches(lengths: np.ndarray, token_budget: int, max_rows: int) -> list[np.ndarray]:
    """Group positions into batches: longest first, each batch's ``rows * longest`` within ``token_budget``.

    A text longer than the budget on its own still gets a batch of one.

    Args:
        lengths: Token count of every text in the window.
        token_budget: Most padded tokens (rows x longest row) per batch.
        max_rows: Most rows per batch.

    Returns:
        Arrays of positions into ``lengths``; together they cover every position once.
    """
    if token_budget < 1 or max_rows < 1:
        raise ValueError(f"token_budget={token_budget} and max_rows={max_rows} must be positive")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_rows, token_budget // longest, n - start))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def make_batch(tokens: TokenizedTexts, positions: np.ndarray, pad_token_id: int) -> Batch:
    """Pad the texts at ``positions`` into one right-padded batch (vectorised: no per-row Python loop)."""
    positions = np.asarray(positions, dtype=np.int64)
    starts = tokens.offsets[positions]
    lengths = tokens.offsets[positions + 1] - starts  # only these rows' lengths, not the whole window's
    seq = max(int(lengths.max()), 1)
    real = np.arange(seq, dtype=np.int64)[None, :] < lengths[:, None]
    # right padding: the real cells, read row by row, are the rows' ids laid end to end
    before = np.cumsum(lengths) - lengths
    index = np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    input_ids = np.full((len(positions), seq), pad_token_id, dtype=np.int64)
    input_ids[real] = tokens.ids[index]
    attention_mask = real.astype(np.int64)
    return Batch(positions=positions, input_ids=input_ids, attention_mask=attention_mask)
