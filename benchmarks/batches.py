"""Tokenised corpora and batch plans shared by the model-only rows (the same ids and batches as lusifer-embed).

A *window* plan is what ``lusifer-embed`` does: consecutive windows of ``window_rows`` rows, each split by
:func:`lusifer.runtime.batching.plan_batches` (longest first, ``rows x longest <= token_budget``). A *fixed*
plan is the original LUSIFER ``encode``: batches of ``batch_rows`` rows in corpus order, padded to the
longest row rounded up to a multiple of 8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lusifer.runtime.batching import Batch, make_batch, plan_batches
from lusifer.runtime.export_folder import load_manifest
from lusifer.runtime.tokenize import TextTokenizer, TokenizedTexts

KIND = "document"  # lusifer-embed's default prompt template, used by every row of every script
ORIGINAL_PAD_MULTIPLE = 8


@dataclass
class Plan:
    """Batches as arrays of corpus positions, and how each is padded."""

    name: str
    batches: list[np.ndarray]
    pad_multiple: int = 1

    def shapes(self, lengths: np.ndarray) -> list[tuple[int, int]]:
        """``(rows, padded length)`` of every batch."""
        out = []
        for pos in self.batches:
            longest = max(int(lengths[pos].max()), 1)
            out.append((len(pos), -(-longest // self.pad_multiple) * self.pad_multiple))
        return out

    def padded_tokens(self, lengths: np.ndarray) -> int:
        return sum(r * s for r, s in self.shapes(lengths))


def read_texts(corpus: str | Path, column: str = "text") -> list[str]:
    """The text column of a parquet file (or folder of files read in name order)."""
    return pq.read_table(corpus, columns=[column]).column(column).to_pylist()


def tokenize_corpus(export_dir: str | Path, texts: list[str], kind: str = KIND) -> TokenizedTexts:
    """Format and tokenise with the export's tokenizer, exactly as the runtime does (default instruction)."""
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    tokenizer = TextTokenizer(export_dir / manifest.tokenizer_file, manifest)
    return tokenizer.encode(texts, kind, None)


def pad_id(export_dir: str | Path) -> int:
    return int(load_manifest(export_dir).pad_token_id)


def window_plan(lengths: np.ndarray, window_rows: int, token_budget: int, max_batch_rows: int) -> Plan:
    """lusifer-embed's batches: length-sorted token-budget batches inside consecutive windows."""
    batches = []
    for start in range(0, len(lengths), window_rows):
        window = lengths[start : start + window_rows]
        batches += [pos + start for pos in plan_batches(window, token_budget, max_batch_rows)]
    return Plan(f"length-sorted windows of {window_rows} rows, token budget {token_budget}", batches)


def fixed_plan(n: int, batch_rows: int, pad_multiple: int = ORIGINAL_PAD_MULTIPLE) -> Plan:
    """The original LUSIFER encode: ``batch_rows`` rows in corpus order, padded to a multiple of 8."""
    batches = [np.arange(s, min(s + batch_rows, n)) for s in range(0, n, batch_rows)]
    return Plan(f"fixed batches of {batch_rows} rows in corpus order, padded to a multiple of {pad_multiple}",
                batches, pad_multiple)


def build_batches(tokens: TokenizedTexts, plan: Plan, pad_token_id: int) -> list[Batch]:
    """Padded int64 arrays of every batch of ``plan`` (right padding, as the runtime)."""
    out = []
    for pos in plan.batches:
        batch = make_batch(tokens, pos, pad_token_id)
        extra = -batch.input_ids.shape[1] % plan.pad_multiple
        if extra:
            rows = batch.input_ids.shape[0]
            batch = Batch(
                positions=batch.positions,
                input_ids=np.concatenate([batch.input_ids, np.full((rows, extra), pad_token_id, np.int64)], axis=1),
                attention_mask=np.concatenate([batch.attention_mask, np.zeros((rows, extra), np.int64)], axis=1),
            )
        out.append(batch)
    return out
