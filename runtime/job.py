"""`embed_corpus`: a parquet corpus -> a ``.npy`` or ``.parquet`` of embeddings, streamed, overlapped, resumable.

Checks everything cheap first (output state, device, model, corpus schema and nulls, export checksums), then
runs the overlapped stages of :mod:`lusifer.runtime.pipeline` and finalises the output atomically.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lusifer.prompts import check_kind
from lusifer.runtime.chunking import ChunkSettings, RowEncoder
from lusifer.runtime.compact import check_dtype, storage_width
from lusifer.runtime.corpus import NULL_POLICIES, open_corpus
from lusifer.runtime.default_model import resolve_default_model
from lusifer.runtime.embedder import DEFAULT_MAX_BATCH_ROWS, DEFAULT_TOKEN_BUDGET, DEFAULT_WINDOW_ROWS, Embedder
from lusifer.runtime.errors import OutputError
from lusifer.runtime.lengths import describe_rows
from lusifer.runtime.outputs import output_finisher, prepare_ids, quantizer_for, sidecar_encoder
from lusifer.runtime.pipeline import run_pipeline
from lusifer.runtime.session import resolve_device
from lusifer.runtime.writer import VectorWriter, check_output

logger = logging.getLogger(__name__)


@dataclass
class EmbedSummary:
    """What an :func:`embed_corpus` call did (also stored in the sidecar)."""

    output: str
    rows: int
    dim: int
    dtype: str
    rows_this_run: int
    resumed_from: int
    seconds: float
    rows_per_s: float
    tokens_per_s: float
    tokens: int
    padded_tokens: int
    truncated: int
    null_rows: int
    device: str
    provider: str
    variant: str
    threads: int
    model_sha256: str
    chunk_rows: int
    token_budget: int
    max_batch_rows: int
    already_complete: bool = False
    id_column: str | None = None
    warmup_seconds: float = 0.0
    timing: dict[str, Any] | None = None
    max_length: int = 0
    truncated_rows: list[int] | None = None  # corpus positions of the first truncated rows
    truncated_ids: list[Any] | None = None  # their ids, when the job has an id column
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None
    windowed_rows: int = 0  # rows split into windows (with chunk_tokens)
    windows: int = 0  # windows of those rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """One paragraph for the terminal."""
        if self.already_complete:
            return f"{self.output} is already complete ({self.rows} rows x {self.dim}); nothing to do"
        padding = 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0
        resumed = f", resumed at row {self.resumed_from}" if self.resumed_from else ""
        t = self.timing or {}
        where = ""
        if t:
            where = (f"of which model {t['infer_s']:.1f} s, waiting for tokens {t['wait_tokens_s']:.1f} s, "
                     f"handing to the writer {t['handoff_s']:.1f} s, last commit {t['tail_s']:.1f} s")
            if self.warmup_seconds:
                where += f" (warm-up before: {self.warmup_seconds:.1f} s)"
            where += "\n"
        return (
            f"wrote {self.output}: {self.rows} rows x {self.dim} {self.dtype}{resumed}\n"
            f"{self.rows_this_run} rows in {self.seconds:.1f} s: {self.rows_per_s:.1f} rows/s, "
            f"{self.tokens_per_s:.0f} tokens/s (padding {padding:.1%})\n{where}"
            f"{self._lengths_line()}; null rows: {self.null_rows}\n"
            f"device {self.device} ({self.provider}, {self.threads} thread(s)), variant {self.variant}"
            + (f"\nids from column {self.id_column!r}" if self.id_column else "")
        )

    def _lengths_line(self) -> str:
        line = f"truncated at max length: {self.truncated} row(s)"
        if self.truncated and self.truncated_rows:
            line += f" ({describe_rows(self.truncated, self.truncated_rows, self.truncated_ids)})"
        if self.max_length:
            line += f" [max length {self.max_length} tokens]"
        if self.chunk_tokens:
            line += (f"; split into windows of {self.chunk_tokens} text tokens (overlap {self.chunk_overlap}): "
                     f"{self.windowed_rows} row(s), {self.windows} window(s)")
        return line


def _resolve_batching(previous: dict | None, device_kind: str, chunk_rows, token_budget, max_batch_rows) -> dict:
    """Batching settings: explicit values, else the resumed run's (so the output is identical), else defaults."""
    given = {"chunk_rows": chunk_rows, "token_budget": token_budget, "max_batch_rows": max_batch_rows}
    for name, value in given.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if previous is not None:
        stored = previous.get("identity", {}).get("batching", {})
        clash = [f"{k}={v} (the earlier run used {stored.get(k)})" for k, v in given.items()
                 if v is not None and stored.get(k) is not None and v != stored.get(k)]
        if clash:
            raise OutputError(
                "cannot resume with different batching: " + ", ".join(clash)
                + "; leave these options out when resuming so the output matches an uninterrupted run"
            )
        given = {k: given[k] if given[k] is not None else stored.get(k) for k in given}
    defaults = {"chunk_rows": DEFAULT_WINDOW_ROWS[device_kind], "token_budget": DEFAULT_TOKEN_BUDGET[device_kind],
                "max_batch_rows": DEFAULT_MAX_BATCH_ROWS[device_kind]}
    return {k: given[k] if given[k] is not None else defaults[k] for k in given}


def _resolve_lengths(previous: dict | None, max_length, chunk_tokens, chunk_overlap) -> tuple:
    """Length options: the values given, else (when resuming) the earlier run's; a clash is left to the
    identity check, which names both values."""
    if previous is not None:
        stored = previous.get("identity", {}).get("options", {})
        max_length = stored.get("max_length") if max_length is None else max_length
        if chunk_tokens is None and chunk_overlap is None:
            chunk_tokens, chunk_overlap = stored.get("chunk_tokens"), stored.get("chunk_overlap")
    return max_length, ChunkSettings.from_options(chunk_tokens, chunk_overlap)


def _length_progress(progress: dict) -> dict:
    """Summary fields of the truncation listing and windows, from the sidecar's progress."""
    return {"truncated_rows": list(progress.get("truncated_rows", [])),
            "truncated_ids": list(progress["truncated_ids"]) if progress.get("truncated_ids") else None,
            "windowed_rows": progress.get("windowed_rows", 0), "windows": progress.get("windows", 0)}


def embed_corpus(
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    model: str | os.PathLike | None = None,
    *,
    column: str = "text",
    kind: str = "document",
    instruction: str | None = None,
    device: str = "auto",
    variant: str | None = None,
    threads: int | None = None,
    dtype: str = "float32",
    normalize: bool | None = None,
    on_null: str = "error",
    resume: bool = False,
    overwrite: bool = False,
    chunk_rows: int | None = None,
    token_budget: int | None = None,
    max_batch_rows: int | None = None,
    progress: bool = True,
    verify: bool = True,
    inflight: int = 1,
    id_column: str | None = None,
    unique_ids: bool = False,
    max_length: int | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
) -> EmbedSummary:
    """Embed one text column of a parquet corpus into a ``.npy`` or ``.parquet`` file, row i = corpus row i.

    Checks run before any heavy work: output state, device, model, corpus files/column/type/nulls, export
    checksums. Then chunks of ``chunk_rows`` rows are read, tokenised, embedded in length-sorted batches of at
    most ``token_budget`` padded tokens, and committed in order (see :mod:`lusifer.runtime.writer`).

    Args:
        corpus: A parquet file, a folder of parquet files, or a glob.
        out: The output path: ``.npy`` (a ``.json`` sidecar and a ``.partial`` file sit beside it) or
            ``.parquet`` (``id`` and ``embedding`` columns; see :mod:`lusifer.runtime.parquet_writer`).
        model: Export folder; ``None`` uses :func:`~lusifer.runtime.default_model.resolve_default_model`.
        column: The text column.
        kind: ``"query"`` or ``"document"`` prompt template.
        instruction: Task instruction; ``None`` = the export's default for ``kind``, ``""`` = none.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (no silent fallback from CUDA).
        variant: ONNX variant; ``None`` = fp16 on CUDA, int8 (if exported) else fp32 on CPU.
        threads: CPU intra-op threads (default: physical cores).
        dtype: Output dtype: ``"float32"``, ``"float16"``, or a compact one (``"int8"``, ``"uint8"``,
            ``"binary"``, ``"ubinary"``; see :mod:`lusifer.runtime.compact`).
        normalize: L2-normalise rows; ``None`` = the manifest's setting.
        on_null: ``"error"`` (default), ``"empty"`` (embed ``""``) or ``"zero"`` (zero vector).
        resume: Continue an unfinished run of the same job (starts fresh when there is none).
        overwrite: Replace existing output.
        chunk_rows: Rows per committed chunk and length-sorting window.
        token_budget: Most padded tokens per forward pass.
        max_batch_rows: Most rows per forward pass.
        progress: Show a tqdm progress bar.
        verify: Check the export's sha256 checksums.
        inflight: Batches run at once (see :class:`~lusifer.runtime.embedder.Embedder`; 2 on CUDA overlaps
            the host work of one batch with the GPU work of the previous one).
        id_column: A column (integers or strings, no nulls) copied into the output in row order: the ``id``
            column of a parquet output, or ``<out>.ids.parquet`` beside a ``.npy`` output.
        unique_ids: Also check that the ids are unique before embedding (reads every id into memory).
        max_length: Most tokens per text, prompt and special tokens included (1 to the export's
            ``max_length``, the default); longer rows are cut, counted and listed (first few) in the summary,
            and a warning is logged once when more than 1% are cut.
        chunk_tokens: Split rows longer than this many text tokens into windows of it (the prompt kept in each;
            see :mod:`lusifer.runtime.chunking`); the row's vector is the token-weighted mean of its windows'
            vectors, re-normalised. ``None``: no splitting.
        chunk_overlap: Text tokens shared by consecutive windows (default 0; needs ``chunk_tokens``).

        When resuming, ``max_length``, ``chunk_tokens`` and ``chunk_overlap`` left out are the earlier run's;
        given, they must equal them.

    Returns:
        An :class:`EmbedSummary` (also written to the sidecar).
    """
    check_kind(kind)
    check_dtype(dtype)
    if on_null not in NULL_POLICIES:
        raise ValueError(f"on_null={on_null!r}; expected one of {', '.join(NULL_POLICIES)}")
    out = Path(out)
    previous = check_output(out, resume, overwrite)
    device_kind = resolve_device(device).kind
    data = open_corpus(corpus, column, on_null)  # corpus errors before any model is built or loaded
    ids = prepare_ids(data, id_column, unique_ids, progress)
    model_dir = Path(model) if model is not None else resolve_default_model(device, progress)
    batching = _resolve_batching(previous, device_kind, chunk_rows, token_budget, max_batch_rows)
    max_length, chunk = _resolve_lengths(previous, max_length, chunk_tokens, chunk_overlap)
    embedder = Embedder(model_dir, device=device, variant=variant, threads=threads, verify=verify,
                        inflight=inflight, max_length=max_length)
    encoder = RowEncoder(embedder.tokenizer, kind, instruction, chunk)  # checks the lengths against the prompt
    normalize = embedder.manifest.normalize if normalize is None else bool(normalize)
    identity = {
        "shape": [data.rows, storage_width(dtype, embedder.dim)],
        "dtype": dtype,
        "model": {"sha256": embedder.model_sha256, "variant": embedder.variant, "files": embedder.export.checksums},
        "corpus": {"column": column, "rows": data.rows, "files": [s.describe() for s in data.shards]},
        "options": {
            "kind": kind,
            "instruction": embedder.tokenizer.resolve_instruction(kind, instruction),
            "normalize": normalize,
            "on_null": on_null,
            "max_length": embedder.max_length,
            "chunk_tokens": chunk.tokens if chunk else None,
            "chunk_overlap": chunk.overlap if chunk else None,
        },
        # an INT8 variant runs one row per pass: its partial outputs must not be resumed by a batched run
        "batching": {**batching, "one_row_per_pass": True} if embedder.one_row_per_pass else batching,
    }
    if ids is not None:
        identity["ids"] = ids.describe()
    run_info = {
        "corpus_spec": str(corpus),
        "model_dir": str(model_dir.resolve()),
        "device": str(embedder.device),
        "provider": embedder.provider,
        "threads": embedder.threads,
        "inflight": embedder.inflight,
        "pid": os.getpid(),
    }
    writer = VectorWriter.open(out, identity, previous, run_info)
    start_row = writer.completed_rows
    quantizer = quantizer_for(dtype, writer.sidecar, start_row, out)
    finish = output_finisher(out, data, ids, quantizer, embedder.dim, embedder.model_sha256)
    base = dict(output=str(out), rows=data.rows, dim=embedder.dim, dtype=dtype, device=str(embedder.device),
                provider=embedder.provider, variant=embedder.variant, threads=embedder.threads,
                model_sha256=embedder.model_sha256, id_column=id_column, max_length=embedder.max_length,
                chunk_tokens=chunk.tokens if chunk else None, chunk_overlap=chunk.overlap if chunk else None,
                **batching)
    if writer.already_complete:
        p = writer.progress
        summary = EmbedSummary(rows_this_run=0, resumed_from=start_row, seconds=0.0, rows_per_s=0.0,
                               tokens_per_s=0.0, tokens=p.get("tokens", 0), padded_tokens=p.get("padded_tokens", 0),
                               truncated=p.get("truncated", 0), null_rows=p.get("null_rows", 0),
                               already_complete=True, **_length_progress(p), **base)
        if writer.sidecar.get("status") != "complete":  # killed between the final rename and the sidecar update
            writer.finalize({**summary.to_dict(), "already_complete": False}, finish)
        return summary
    warmup_seconds = 0.0
    if embedder.device.kind == "cuda":  # device set-up belongs to loading, not to the first batch
        warmup_seconds = embedder.warmup(batching["token_budget"], batching["max_batch_rows"])
    counters = run_pipeline(data, embedder, writer, kind, instruction, normalize, dtype, batching, start_row, progress,
                            encoder=encoder, encode=sidecar_encoder(quantizer), ids=ids)
    p = writer.progress
    seconds = counters["seconds"]
    summary = EmbedSummary(
        rows_this_run=counters["rows"], resumed_from=start_row, seconds=round(seconds, 3),
        rows_per_s=round(counters["rows"] / seconds, 2) if seconds else 0.0,
        tokens_per_s=round(counters["tokens"] / seconds, 1) if seconds else 0.0,
        tokens=p["tokens"], padded_tokens=p["padded_tokens"], truncated=p["truncated"], null_rows=p["null_rows"],
        warmup_seconds=round(warmup_seconds, 4), timing=counters["timing"], **_length_progress(p), **base,
    )
    writer.finalize(summary.to_dict(), finish)
    logger.info("%s", summary.format())
    return summary
