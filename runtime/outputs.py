"""Glue between a corpus job and its output extras: ids, calibration of compact dtypes, the final files.

Used by :func:`lusifer.runtime.job.embed_corpus` and the Ray job, so both treat ids, parquet outputs and
compact dtypes the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lusifer.atomic import replace_file
from lusifer.runtime.compact import Quantizer, needs_calibration
from lusifer.runtime.corpus import Corpus, Shard
from lusifer.runtime.errors import OutputError
from lusifer.runtime.ids import IdColumn, check_id_column, iter_ids, iter_shard_ids, write_ids_file
from lusifer.runtime.parquet_writer import write_parquet_from_staging
from lusifer.runtime.writer import SIDECAR_FORMAT, ids_path

OUTPUT_FORMATS = ("npy", "parquet")
QUANTIZATION_KEY = "quantization"


def prepare_ids(corpus: Corpus, id_column: str | None, unique: bool, progress: bool) -> IdColumn | None:
    """The checked id column, or ``None`` without one (``unique`` needs a column)."""
    if id_column is None:
        if unique:
            raise ValueError("unique_ids=True needs an id column (--unique-ids needs --id-column)")
        return None
    return check_id_column(corpus, id_column, unique=unique, progress=progress)


def quantizer_for(dtype: str, record_holder: dict, done_rows: int, where) -> Quantizer:
    """The quantizer of a (possibly resumed) output: its stored calibration, or none yet.

    Args:
        dtype: Output dtype.
        record_holder: The sidecar / manifest that stores the calibration under ``quantization``.
        done_rows: Rows already written; with rows written, a scalar dtype must find its calibration.
        where: The output, for the error message.
    """
    record = record_holder.get(QUANTIZATION_KEY)
    try:
        quantizer = Quantizer.from_record(dtype, record)
    except (ValueError, KeyError, TypeError) as exc:
        raise OutputError(f"cannot resume {str(where)!r}: its stored calibration is unusable ({exc}); "
                          "pass --overwrite to start over") from exc
    if done_rows and needs_calibration(dtype) and not quantizer.calibrated:
        raise OutputError(f"cannot resume {str(where)!r}: {done_rows} {dtype} rows are written but the calibrated "
                          "ranges are missing from its sidecar; pass --overwrite to start over")
    return quantizer


def sidecar_encoder(quantizer: Quantizer) -> Callable:
    """``block -> (stored block, sidecar fields or None)`` for the pipeline: the calibration goes to the
    sidecar with the chunk it was computed from."""
    def encode(block):
        stored, record = quantizer.encode(block)
        return stored, ({QUANTIZATION_KEY: record} if record is not None else None)
    return encode


def output_metadata(dtype: str, dim: int, ids: IdColumn | None, quantizer: Quantizer, model_sha256: str) -> dict:
    """What a parquet output records about itself (schema metadata ``lusifer``)."""
    return {"format": SIDECAR_FORMAT, "dtype": dtype, "dim": dim, "model_sha256": model_sha256,
            "id_column": ids.name if ids is not None else None, QUANTIZATION_KEY: quantizer.describe()}


def output_finisher(out: Path, corpus: Corpus, ids: IdColumn | None, quantizer: Quantizer, dim: int,
                    model_sha256: str) -> Callable | None:
    """The ``finish`` step of :meth:`~lusifer.runtime.writer.VectorWriter.finalize` for ``out``, if any."""
    out = Path(out)
    if out.suffix == ".parquet":
        def finish(writer) -> None:
            meta = output_metadata(quantizer.dtype, dim, ids, quantizer, model_sha256)
            write_parquet_from_staging(writer.partial, out, quantizer.dtype, ids,
                                       iter_ids(corpus, ids) if ids is not None else None, meta)
        return finish
    if ids is not None:
        def finish(writer) -> None:
            write_ids_file(iter_ids(corpus, ids), ids, ids_path(out), corpus.rows)
        return finish
    return None


def finish_shard(staging: Path, dest: Path, shard: Shard, ids: IdColumn | None, quantizer: Quantizer, dim: int,
                 model_sha256: str) -> None:
    """Ray: put one shard's complete staging ``.npy`` in place as ``dest`` (``.npy`` or ``.parquet``).

    A ``.npy`` shard gets its ids in ``<dest>.ids.parquet`` (written before the rename); a parquet shard is
    converted from the staging file, which is then removed.
    """
    id_arrays = iter_shard_ids(shard, ids) if ids is not None else None
    if dest.suffix == ".parquet":
        meta = output_metadata(quantizer.dtype, dim, ids, quantizer, model_sha256)
        write_parquet_from_staging(staging, dest, quantizer.dtype, ids, id_arrays, meta)
        staging.unlink()
        return
    if ids is not None:
        write_ids_file(id_arrays, ids, ids_path(dest), shard.rows)
    replace_file(staging, dest)
