"""Long documents: rows longer than ``--chunk-tokens`` text tokens become token windows, pooled back to one vector.

A row whose text part has at most N tokens is tokenised exactly as without chunking (same ids, so the same
vector). A longer row is cut into windows of N text tokens (consecutive windows share ``overlap`` tokens, the
last one may be shorter); every window keeps the row's prompt and special tokens, so a window is exactly the
sequence the model would see for a text made of those tokens. The model embeds windows like any other
sequence (they are batched by length with the other rows' sequences); the row's vector is then the mean of
its windows' vectors weighted by each window's text-token count, where a window's vector is what the job
would write for it (L2-normalised when the job normalises). The row's vector is re-normalised by the caller.

The text part of an encoding is found from the character offsets of its tokens: the prompt template puts the
text at a known place in the formatted string, tokens inside it are text, tokens before it (the prompt and
leading special tokens) and after it (template tail, trailing special tokens) are kept in every window.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from lusifer.prompts import format_text
from lusifer.runtime.embedder import l2_normalize
from lusifer.runtime.errors import OptionError
from lusifer.runtime.tokenize import TextTokenizer, TokenizedTexts

_SENTINEL = "\x00\x01lusifer-text\x01\x00"
_PROBE_TEXT = "x"


@dataclass(frozen=True)
class ChunkSettings:
    """How long rows are split.

    Attributes:
        tokens: Most text tokens per window (``--chunk-tokens``); rows with at most this many are unchanged.
        overlap: Text tokens shared by consecutive windows (``--chunk-overlap``), from 0 to ``tokens - 1``.
    """

    tokens: int
    overlap: int = 0

    def __post_init__(self):
        for name, value in (("chunk_tokens", self.tokens), ("chunk_overlap", self.overlap)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise OptionError(f"{name}={value!r}: expected an integer")
        if self.tokens < 1:
            raise OptionError(f"chunk_tokens={self.tokens}: expected a positive number of tokens per window")
        if not 0 <= self.overlap < self.tokens:
            raise OptionError(
                f"chunk_overlap={self.overlap}: expected 0 to {self.tokens - 1} (less than chunk_tokens={self.tokens})"
            )

    @classmethod
    def from_options(cls, chunk_tokens: int | None, chunk_overlap: int | None) -> ChunkSettings | None:
        """Settings from the two options; ``None`` when ``chunk_tokens`` is ``None`` (no chunking)."""
        if chunk_tokens is None:
            if chunk_overlap not in (None, 0):
                raise OptionError(f"chunk_overlap={chunk_overlap!r} needs chunk_tokens (--chunk-tokens N)")
            return None
        return cls(chunk_tokens, 0 if chunk_overlap is None else chunk_overlap)


@dataclass
class RowTokens:
    """The sequences the model runs for a list of rows: one per row, or several windows for long rows.

    Attributes:
        sequences: The sequences, rows in order (a row's windows are consecutive).
        rows: Number of rows.
        first: ``first[r]:first[r + 1]`` are row ``r``'s sequences (length ``rows + 1``); ``None`` when every
            row is exactly one sequence (sequence ``r`` = row ``r``).
        weights: Text tokens of each sequence (the pooling weights); ``None`` with ``first``.
        truncated: Per row, whether it was cut at the max length (never with chunking).
    """

    sequences: TokenizedTexts
    rows: int
    first: np.ndarray | None
    weights: np.ndarray | None
    truncated: np.ndarray

    def __len__(self) -> int:
        return self.rows

    @property
    def windowed_rows(self) -> int:
        """Rows split into two windows or more."""
        return 0 if self.first is None else int((np.diff(self.first) > 1).sum())

    @property
    def windows(self) -> int:
        """Windows of the rows split into two or more."""
        if self.first is None:
            return 0
        counts = np.diff(self.first)
        return int(counts[counts > 1].sum())


def prompt_parts(tokenizer: TextTokenizer, kind: str, instruction: str | None) -> tuple[str, str]:
    """The formatted strings before and after the text for ``kind`` and ``instruction`` (as ``format``)."""
    m = tokenizer.manifest
    template = m.query_template if kind == "query" else m.document_template
    parts = format_text(_SENTINEL, template, tokenizer.resolve_instruction(kind, instruction),
                        m.prompt_style).split(_SENTINEL)
    if len(parts) != 2:
        raise OptionError(f"the {kind} template {template!r} holds {{text}} {len(parts) - 1} times; chunking "
                          "needs it exactly once")
    return parts[0], parts[1]


def text_token_span(special: Sequence[int], offsets: Sequence[tuple[int, int]], text_start: int,
                    text_end: int) -> tuple[int, int]:
    """Token range ``[a, b)`` of the text part of one encoding.

    Tokens added by the post-processor (``special`` = 1) and tokens lying in the formatted string before
    ``text_start`` or after ``text_end`` are outside; scanning stops at the first text token from each end, so
    anything between (even a literal special token written in the text) is text.
    """
    n = len(special)
    a = 0
    while a < n and (special[a] or (offsets[a][0] < text_start and offsets[a][1] <= text_start)):
        a += 1
    b = n
    while b > a and (special[b - 1] or (offsets[b - 1][0] >= text_end and offsets[b - 1][1] > offsets[b - 1][0])):
        b -= 1
    return a, b


def window_bounds(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` token windows of ``size`` covering ``range(length)``, sharing ``overlap``."""
    step = size - overlap
    bounds, start = [], 0
    while True:
        stop = min(start + size, length)
        bounds.append((start, stop))
        if stop >= length:
            return bounds
        start += step


class RowEncoder:
    """Texts of rows -> :class:`RowTokens` for the model, truncated at the max length or split into windows.

    The constructor checks the lengths against the prompt, so a bad value fails before any work.

    Args:
        tokenizer: The job's tokenizer (its ``max_length`` is the job's max length).
        kind: ``"query"`` or ``"document"``.
        instruction: Task instruction (``None`` = the export's default for ``kind``).
        chunk: Window settings, or ``None`` to truncate long rows.

    Raises:
        OptionError: the prompt and special tokens leave no room for text within the max length, or a window
            of ``chunk.tokens`` text tokens plus the prompt does not fit it.
    """

    def __init__(self, tokenizer: TextTokenizer, kind: str, instruction: str | None, chunk: ChunkSettings | None):
        self.tokenizer = tokenizer
        self.kind = kind
        self.instruction = tokenizer.resolve_instruction(kind, instruction)
        self.chunk = chunk
        self.max_length = tokenizer.max_length
        self.before, self.after = prompt_parts(tokenizer, kind, self.instruction)
        self._full = None
        if chunk is not None:  # windows need every token of a row: an untruncated copy (about 1 s for XLM-R's)
            self._full = Tokenizer.from_str(tokenizer.tokenizer.to_str())
            self._full.no_truncation()
            self._full.no_padding()
        # prompt and special tokens, from a one-token text with the job's (truncating) tokenizer: exact as long as
        # they leave room for text, which is what is checked
        self._specials = tokenizer.manifest.add_special_tokens  # False when the templates write <s>/</s> as text
        probe = tokenizer.tokenizer.encode(self.before + _PROBE_TEXT + self.after, add_special_tokens=self._specials)
        a, b = text_token_span(probe.special_tokens_mask, probe.offsets, len(self.before),
                               len(self.before) + len(_PROBE_TEXT))
        self.prompt_tokens = len(probe.ids) - (b - a)
        if probe.overflowing or self.prompt_tokens >= self.max_length:
            raise OptionError(
                f"max_length={self.max_length} leaves no room for text: the {kind} prompt and special tokens "
                f"take {'at least ' if probe.overflowing else ''}{self.prompt_tokens} tokens"
            )
        if chunk is not None and self.prompt_tokens + chunk.tokens > self.max_length:
            raise OptionError(
                f"chunk_tokens={chunk.tokens} does not fit: with the {self.prompt_tokens} tokens of the {kind} "
                f"prompt and special tokens a window would be {self.prompt_tokens + chunk.tokens} tokens, above the "
                f"max length {self.max_length}; use chunk_tokens <= {self.max_length - self.prompt_tokens}"
            )

    def encode(self, texts: Sequence[str]) -> RowTokens:
        """Tokenise rows: one sequence per row, or windows for rows longer than ``chunk.tokens`` text tokens."""
        if self.chunk is None:
            tokens = self.tokenizer.encode(texts, self.kind, self.instruction)
            return RowTokens(sequences=tokens, rows=len(tokens), first=None, weights=None, truncated=tokens.truncated)
        size, overlap, limit = self.chunk.tokens, self.chunk.overlap, self.max_length
        start = len(self.before)
        encodings = self._full.encode_batch([self.before + t + self.after for t in texts],
                                            add_special_tokens=self._specials)
        seqs: list[list[int]] = []
        weights: list[int] = []
        first = np.zeros(len(texts) + 1, dtype=np.int64)
        for r, (text, enc) in enumerate(zip(texts, encodings)):
            ids = enc.ids
            if len(ids) <= size:  # text part <= size tokens and the whole fits: as without chunking
                seqs.append(ids)
                weights.append(len(ids))
            else:
                a, b = text_token_span(enc.special_tokens_mask, enc.offsets, start, start + len(text))
                head, tail, length = ids[:a], ids[b:], b - a
                width = min(size, limit - (len(ids) - length))
                if width < 1:
                    raise OptionError(
                        f"a text starting {text[:40]!r} leaves no room for text: its prompt and special tokens take "
                        f"{len(ids) - length} of the max length {limit} tokens"
                    )
                if length <= width:
                    seqs.append(ids)
                    weights.append(length)
                else:
                    for lo, hi in window_bounds(length, width, min(overlap, width - 1)):
                        seqs.append(head + ids[a + lo : a + hi] + tail)
                        weights.append(hi - lo)
            first[r + 1] = len(seqs)
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(offsets[-1]))
        sequences = TokenizedTexts(ids=flat, offsets=offsets, truncated=np.zeros(len(seqs), dtype=bool))
        return RowTokens(sequences=sequences, rows=len(texts), first=first,
                         weights=np.asarray(weights, dtype=np.float64), truncated=np.zeros(len(texts), dtype=bool))


def pool_rows(vectors: np.ndarray, rows: RowTokens, normalize: bool) -> np.ndarray:
    """One vector per row from the sequences' vectors (raw graph outputs, in sequence order).

    A row of one sequence gets that sequence's vector unchanged (bit for bit). A row of several windows gets
    the mean of its windows' vectors weighted by their text-token counts, each window's vector L2-normalised
    first when ``normalize`` (as the job would write it); the caller re-normalises the row.

    Returns:
        float32 ``(rows, dim)``.
    """
    if rows.first is None:
        return vectors
    out = vectors[rows.first[:-1]].astype(np.float32, copy=True)
    for r in np.nonzero(np.diff(rows.first) > 1)[0]:
        window = vectors[rows.first[r] : rows.first[r + 1]]
        if normalize:
            window = l2_normalize(window)
        weights = rows.weights[rows.first[r] : rows.first[r + 1]]
        out[r] = (weights[:, None] * window.astype(np.float64)).sum(axis=0) / weights.sum()
    return out
