"""Prompt formatting and batch tokenisation with the Rust ``tokenizers`` library (same ids as LusiferModel)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer

from lusifer.onnx_interface import ExportManifest
from lusifer.prompts import check_kind, format_texts
from lusifer.runtime.errors import ExportFolderError
from lusifer.runtime.lengths import resolve_max_length


# Threads of the tokenizer's Rust (rayon) pool when the model runs on CUDA. With every core tokenising, the
# pool competed with the thread that launches the CUDA kernels: lusifer-small on an H200, 200k rows, the model
# calls took 20.9 s vs 18.6 s model-only (86.8% end to end); with 4 threads 18.1 s vs 17.4 s and the reader
# still ahead (93.9%; gpu_small_200k_e2e_rayon4.md, in the git history of benchmarks/results/h200/).
CUDA_TOKENIZER_THREADS = 4


TOKENIZER_THREADS_ENV = "RAYON_NUM_THREADS"


def cuda_tokenizer_env(threads: int = CUDA_TOKENIZER_THREADS, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment setting that caps the tokenizer's thread pool for a run on CUDA; never sets it itself.

    The Rust pool of ``tokenizers`` reads ``RAYON_NUM_THREADS`` once, when it starts (at the first parallel
    ``encode_batch`` of the process), and has no other setting. So the caller that owns the process applies it
    before anything is tokenised: ``lusifer-embed`` (``os.environ.update``) and the Ray job (the GPU actors'
    ``runtime_env``). A library user of :class:`~lusifer.runtime.Embedder` on CUDA can do the same.

    Args:
        threads: The cap (at most the CPU count).
        environ: The environment to read (the process's by default).

    Returns:
        ``{"RAYON_NUM_THREADS": "<n>"}``, or ``{}`` when ``RAYON_NUM_THREADS`` is already set (the user's
        choice wins).
    """
    if environ.get(TOKENIZER_THREADS_ENV):
        return {}
    return {TOKENIZER_THREADS_ENV: str(max(1, min(threads, os.cpu_count() or 1)))}


@dataclass
class TokenizedTexts:
    """Token ids of several texts, stored flat (CSR style) to keep memory small.

    Attributes:
        ids: All token ids, concatenated, int64.
        offsets: ``offsets[i]:offsets[i+1]`` are the ids of text ``i`` (length n + 1).
        truncated: Whether each text was cut at ``max_length``.
    """

    ids: np.ndarray
    offsets: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


class TextTokenizer:
    """Formats texts with the export's prompt templates and tokenises them like ``LusiferModel.tokenize``.

    Truncation is at ``max_length`` (special tokens included, right side; default ``manifest.max_length``);
    special tokens come from the tokenizer's post-processor. No padding here: batches are padded by
    :mod:`lusifer.runtime.batching`.

    Args:
        tokenizer_path: The export's ``tokenizer.json``.
        manifest: The export manifest (templates, default instructions, max_length).
        max_length: Most tokens per text, at most the manifest's (see
            :func:`~lusifer.runtime.lengths.resolve_max_length`); ``None`` = the manifest's.
    """

    def __init__(self, tokenizer_path: str | os.PathLike, manifest: ExportManifest, max_length: int | None = None):
        max_length = resolve_max_length(max_length, manifest.max_length)
        try:
            tok = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise ExportFolderError(f"cannot load tokenizer {str(tokenizer_path)!r}: {exc}") from exc
        tok.no_padding()
        tok.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
        self.tokenizer = tok
        self.manifest = manifest
        self.max_length = max_length

    def resolve_instruction(self, kind: str, instruction: str | None) -> str:
        """The instruction used for ``kind``: the given one, else the export's default ("" = none)."""
        check_kind(kind)
        if instruction is not None:
            if not isinstance(instruction, str):
                raise ValueError(f"instruction={instruction!r} must be a string or None")
            return instruction
        m = self.manifest
        return m.default_query_instruction if kind == "query" else m.default_document_instruction

    def format(self, texts: Sequence[str], kind: str, instruction: str | None) -> list[str]:
        """Apply the prompt template of ``kind`` (as ``LusiferModel.format``)."""
        m = self.manifest
        return format_texts(
            texts, kind, self.resolve_instruction(kind, instruction), m.query_template, m.document_template
        )

    def encode(self, texts: Sequence[str], kind: str, instruction: str | None) -> TokenizedTexts:
        """Format and tokenise texts in one ``encode_batch`` call (parallel in Rust, GIL released)."""
        encodings = self.tokenizer.encode_batch(self.format(texts, kind, instruction), add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(
            itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=int(offsets[-1])
        )
        truncated = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(encodings))
        return TokenizedTexts(ids=ids, offsets=offsets, truncated=truncated)
