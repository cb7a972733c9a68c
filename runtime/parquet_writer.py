"""Parquet outputs: ``id`` (when given) and ``embedding`` (a fixed-size list) in streamed row groups.

Vectors are first committed chunk by chunk to a memory-mapped ``.npy`` staging file (the same resumable
store as a ``.npy`` output, see :mod:`lusifer.runtime.writer`). When every row is there, the staging file is
converted, one row group at a time (memory bounded by :data:`ROW_GROUP_BYTES`), into a hidden temporary file
beside ``<out>`` that is then renamed to ``<out>`` (:func:`lusifer.atomic.atomic_path`); the staging file is
removed last. The conversion is deterministic, so a run
killed at any point and resumed gives the same bytes as an uninterrupted one.

The file's schema metadata ``lusifer`` (JSON) holds the output dtype, the embedding dimension, the id column
and, for ``int8`` / ``uint8``, the calibrated ranges needed to dequantize.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lusifer.atomic import atomic_path
from lusifer.runtime.compact import storage_dtype
from lusifer.runtime.ids import ID_FIELD, IdColumn, IdStream

EMBEDDING_FIELD = "embedding"
METADATA_KEY = b"lusifer"
ROW_GROUP_BYTES = 32 << 20  # vector bytes per row group
MAX_ROW_GROUP_ROWS = 65536


def row_group_rows(row_bytes: int) -> int:
    """Rows per row group: about :data:`ROW_GROUP_BYTES` of vectors, between 1 and :data:`MAX_ROW_GROUP_ROWS`."""
    return max(1, min(MAX_ROW_GROUP_ROWS, ROW_GROUP_BYTES // max(1, row_bytes)))


def output_schema(dtype: str, width: int, ids: IdColumn | None, metadata: dict) -> pa.Schema:
    """``id`` (if any) and ``embedding: fixed_size_list<storage dtype>[width]``, with the ``lusifer`` metadata."""
    value_type = pa.from_numpy_dtype(storage_dtype(dtype))
    fields = [pa.field(ID_FIELD, ids.arrow_type, nullable=False)] if ids is not None else []
    fields.append(pa.field(EMBEDDING_FIELD, pa.list_(pa.field("element", value_type, nullable=False), width),
                           nullable=False))
    text = json.dumps(metadata, sort_keys=True, ensure_ascii=False)
    return pa.schema(fields, metadata={METADATA_KEY: text.encode("utf-8")})


def write_parquet_from_staging(staging: Path, dest: Path, dtype: str, ids: IdColumn | None,
                               id_arrays: Iterator[pa.Array] | None, metadata: dict) -> Path:
    """Convert the staging ``.npy`` into the parquet output ``dest`` (through a temporary file, then a rename).

    Args:
        staging: The complete ``.npy`` staging file.
        dest: The final parquet path.
        dtype: The output dtype (gives the stored value type).
        ids: The id column, or ``None``.
        id_arrays: The ids in row order when ``ids`` is given.
        metadata: JSON-able facts stored as the schema metadata ``lusifer``.
    """
    vectors = np.load(staging, mmap_mode="r")
    if vectors.ndim != 2 or vectors.dtype != storage_dtype(dtype):
        raise RuntimeError(f"staging file {str(staging)!r} holds {vectors.shape} {vectors.dtype}, not {dtype} rows")
    rows, width = vectors.shape
    schema = output_schema(dtype, width, ids, metadata)
    step = row_group_rows(width * vectors.dtype.itemsize)
    stream = IdStream(id_arrays, ids.arrow_type) if ids is not None else None
    with atomic_path(dest) as tmp:
        with pq.ParquetWriter(tmp, schema, use_dictionary=False, compression="none") as writer:
            for start in range(0, rows, step):
                block = np.ascontiguousarray(vectors[start:start + step])
                flat = pa.array(block.reshape(-1), type=schema.field(EMBEDDING_FIELD).type.value_type)
                columns = [pa.FixedSizeListArray.from_arrays(flat, width)]
                if stream is not None:
                    columns.insert(0, stream.take(len(block)))
                writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=step)
            if rows == 0:
                writer.write_table(schema.empty_table())
        if stream is not None:
            stream.finish()
    del vectors
    return dest


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``lusifer`` metadata of a parquet output (dtype, dim, ids, calibration)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


def is_complete_parquet(path: Path, rows: int, width: int, dtype: str) -> bool:
    """Whether ``path`` is a readable parquet output of ``rows`` rows of ``width`` values of ``dtype``."""
    try:
        pf = pq.ParquetFile(path)
        field = pf.schema_arrow.field(EMBEDDING_FIELD)
    except (pa.ArrowException, OSError, KeyError):
        return False
    t = field.type
    return (pf.metadata.num_rows == rows and pa.types.is_fixed_size_list(t) and t.list_size == width
            and t.value_type == pa.from_numpy_dtype(storage_dtype(dtype)))
