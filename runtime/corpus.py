"""Parquet corpora: shard discovery, schema and null checks before any heavy work, and bounded streaming."""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from lusifer.runtime.errors import CorpusError

logger = logging.getLogger(__name__)

NULL_POLICIES = ("error", "empty", "zero")
_GLOB_CHARS = re.compile(r"[*?\[]")
_MAX_NULLS_LISTED = 10
# Bytes read from a parquet file at a time while streaming a column. Reads go through a buffered stream of this
# size instead of pyarrow's default pre-buffering: a pre-buffering reader fetches every requested column chunk
# of the file in coalesced reads of up to 32 MiB and keeps them all until the reader is closed, so its memory
# grows with the file (~110 MB for a 1M-row corpus of short texts), whatever the chunk size.
READ_BUFFER_BYTES = 1 << 20


def _natural_key(path: Path) -> list:
    """Sort key that orders ``part-2`` before ``part-10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


def _visible(path: Path, root: Path) -> bool:
    """False for hidden or marker files/folders (``.x``, ``_SUCCESS``, ``_metadata``) below ``root``."""
    return not any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def find_shards(spec: str | os.PathLike) -> list[Path]:
    """The parquet files of a corpus, in corpus order.

    Args:
        spec: A parquet file, a folder (every ``*.parquet`` below it, hidden and ``_``-prefixed names
            skipped) or a glob pattern (``**`` allowed). Files are in natural order (``part-2`` before
            ``part-10``); that order is the row order of the output.

    Raises:
        CorpusError: nothing matches, or the path does not exist.
    """
    text = str(spec)
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.rglob("*.parquet") if p.is_file() and _visible(p, path)]
        if not files:
            raise CorpusError(f"corpus folder {text!r} contains no .parquet files")
        return sorted(files, key=_natural_key)
    if _GLOB_CHARS.search(text):
        files = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
        if not files:
            raise CorpusError(f"corpus pattern {text!r} matches no files")
        return sorted(files, key=_natural_key)
    raise CorpusError(f"corpus {text!r} does not exist (expected a parquet file, a folder of them, or a glob)")


@dataclass(frozen=True)
class Shard:
    """One parquet file of a corpus."""

    path: Path
    rows: int
    bytes: int
    row_group_rows: tuple[int, ...]

    def describe(self) -> dict:
        return {"path": str(self.path.resolve()), "rows": self.rows, "bytes": self.bytes}


@dataclass
class Corpus:
    """A checked corpus: its shards, the text column, and how nulls are handled.

    Attributes:
        spec: What the user gave (file, folder or glob).
        column: The text column.
        shards: The files in corpus order.
        on_null: ``"error"``, ``"empty"`` (embed ``""``) or ``"zero"`` (write a zero vector).
        null_rows: Number of null values in the column over all shards.
    """

    spec: str
    column: str
    shards: list[Shard]
    on_null: str = "error"
    null_rows: int = 0
    null_counts: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def describe(self) -> dict:
        return {"spec": self.spec, "column": self.column, "rows": self.rows,
                "files": [s.describe() for s in self.shards]}


def _is_text_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text_type(t.value_type)
    checks = [pa.types.is_string, pa.types.is_large_string]
    if hasattr(pa.types, "is_string_view"):
        checks.append(pa.types.is_string_view)
    return any(check(t) for check in checks)


def open_parquet(path: Path) -> pq.ParquetFile:
    """Open ``path`` for metadata and streaming reads whose memory does not grow with the file.

    Pre-buffering is off and reads are buffered (:data:`READ_BUFFER_BYTES`), so iterating batches holds about
    one buffer plus the batch being decoded, however many row groups are read and however large they are.
    """
    try:
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
    except FileNotFoundError as exc:
        raise CorpusError(f"corpus file {str(path)!r} does not exist") from exc
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"corpus file {str(path)!r} is not a readable parquet file: {exc}") from exc


def _leaf_index(pf: pq.ParquetFile, column: str) -> int | None:
    schema = pf.metadata.schema
    for j in range(len(schema)):
        if schema.column(j).path == column:
            return j
    return None


def _null_count(pf: pq.ParquetFile, path: Path, column: str) -> int:
    """Nulls of ``column`` from the row-group statistics; row groups without them are scanned."""
    leaf = _leaf_index(pf, column)
    total = 0
    for g in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(g).column(leaf).statistics if leaf is not None else None
        if stats is not None and stats.has_null_count:
            total += stats.null_count
            continue
        try:
            for batch in pf.iter_batches(batch_size=65536, row_groups=[g], columns=[column]):
                total += batch.column(0).null_count
        except (pa.ArrowException, OSError) as exc:
            raise CorpusError(f"corpus file {str(path)!r} is corrupt (row group {g}): {exc}") from exc
    return total


def _null_positions(pf: pq.ParquetFile, path: Path, column: str, limit: int) -> list[int]:
    """Row numbers (from 0, within the file) of the first ``limit`` nulls of ``column``."""
    found: list[int] = []
    offset = 0
    for batch in pf.iter_batches(batch_size=65536, columns=[column]):
        col = batch.column(0)
        if col.null_count:
            mask = col.is_null().to_numpy(zero_copy_only=False)
            found.extend(offset + int(i) for i in mask.nonzero()[0][: limit - len(found)])
            if len(found) >= limit:
                break
        offset += len(batch)
    return found


def open_corpus(spec: str | os.PathLike, column: str = "text", on_null: str = "error") -> Corpus:
    """Find the shards and check every one before any embedding work.

    Checks: each file opens as parquet, has ``column``, the column is a string column, and (with
    ``on_null="error"``) holds no nulls. Null counts come from parquet statistics when present.

    Raises:
        CorpusError: with the file, the columns present, the type found, or where the nulls are.
    """
    if on_null not in NULL_POLICIES:
        raise ValueError(f"on_null={on_null!r}; expected one of {', '.join(NULL_POLICIES)}")
    shards: list[Shard] = []
    null_counts: dict[Path, int] = {}
    for path in find_shards(spec):
        pf = open_parquet(path)
        schema = pf.schema_arrow
        if column not in schema.names:
            raise CorpusError(
                f"corpus file {str(path)!r} has no column {column!r}; its columns are: {', '.join(schema.names)} "
                "(choose one with --column)"
            )
        ctype = schema.field(column).type
        if not _is_text_type(ctype):
            raise CorpusError(
                f"column {column!r} of {str(path)!r} has type {ctype}; expected a string column"
            )
        groups = tuple(pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups))
        shards.append(Shard(path=path, rows=pf.metadata.num_rows, bytes=path.stat().st_size, row_group_rows=groups))
        nulls = _null_count(pf, path, column)
        if nulls:
            null_counts[path] = nulls
    total_nulls = sum(null_counts.values())
    if total_nulls and on_null == "error":
        where = []
        for path, count in null_counts.items():
            rows = _null_positions(open_parquet(path), path, column, _MAX_NULLS_LISTED)
            more = f" and {count - len(rows)} more" if count > len(rows) else ""
            where.append(f"{str(path)!r}: {count} null(s) at row(s) {', '.join(map(str, rows))}{more}")
        raise CorpusError(
            f"column {column!r} has {total_nulls} null value(s) (rows count from 0 within each file): "
            + "; ".join(where)
            + ". Pass --on-null empty to embed them as empty text, or --on-null zero to write zero vectors "
            "(rows are never dropped)"
        )
    corpus = Corpus(spec=str(spec), column=column, shards=shards, on_null=on_null, null_rows=total_nulls,
                    null_counts={str(k): v for k, v in null_counts.items()})
    logger.info("corpus %s: %d file(s), %d rows, %d null(s)", spec, len(shards), corpus.rows, total_nulls)
    return corpus


def iter_chunks(corpus: Corpus, chunk_rows: int, start_row: int = 0) -> Iterator[tuple[int, list]]:
    """Stream the text column as ``(first_row, values)`` chunks of exactly ``chunk_rows`` rows.

    Chunks are global row ranges ``[k * chunk_rows, (k + 1) * chunk_rows)`` across shard boundaries (the last
    one shorter), so chunk boundaries do not depend on where a run was resumed. ``start_row`` must be a chunk
    boundary; row groups before it are skipped without reading. Values are ``str`` or ``None`` (null).
    """
    for first, (values,) in _iter_column_chunks(corpus, [corpus.column], chunk_rows, start_row):
        yield first, values


def iter_chunks_with_ids(corpus: Corpus, chunk_rows: int, start_row: int = 0,
                         id_column: str | None = None) -> Iterator[tuple[int, list, list | None]]:
    """As :func:`iter_chunks`, with the chunk's values of ``id_column`` (read in the same pass) as a third item.

    Ids are Python ``int`` or ``str`` (dictionary columns decoded); the third item is ``None`` without an id
    column. The id column is expected to be checked already (:func:`lusifer.runtime.ids.check_id_column`).
    """
    if id_column is None:
        for first, values in iter_chunks(corpus, chunk_rows, start_row):
            yield first, values, None
        return
    for first, (values, ids) in _iter_column_chunks(corpus, [corpus.column, id_column], chunk_rows, start_row):
        yield first, values, ids


def _iter_column_chunks(corpus: Corpus, columns: list[str], chunk_rows: int,
                        start_row: int) -> Iterator[tuple[int, list[list]]]:
    """``(first_row, [values of each column])`` chunks of ``chunk_rows`` rows (see :func:`iter_chunks`)."""
    if start_row % chunk_rows and start_row != corpus.rows:
        raise ValueError(f"start_row={start_row} is not a multiple of chunk_rows={chunk_rows}")
    pending: list[list] = [[] for _ in columns]
    first = start_row
    base = 0  # global row number of the current shard's first row
    for shard in corpus.shards:
        if shard.rows == 0 or base + shard.rows <= start_row:
            base += shard.rows
            continue
        pf = open_parquet(shard.path)
        if pf.metadata.num_rows != shard.rows:
            raise CorpusError(f"corpus file {str(shard.path)!r} changed while embedding (row count differs)")
        skip = max(0, start_row - base)
        groups, group_start = [], 0
        for g, n in enumerate(shard.row_group_rows):
            if group_start + n > skip:
                groups.append(g)
            group_start += n
        skip -= sum(shard.row_group_rows[: groups[0]])
        try:
            for batch in pf.iter_batches(batch_size=min(chunk_rows, 65536), row_groups=groups, columns=columns):
                values = [batch.column(c).to_pylist() for c in range(len(columns))]
                if skip:
                    cut = min(skip, len(values[0]))
                    values, skip = [v[cut:] for v in values], skip - cut
                while values[0]:
                    take = chunk_rows - len(pending[0])
                    for held, new in zip(pending, values):
                        held.extend(new[:take])
                    values = [v[take:] for v in values]
                    if len(pending[0]) == chunk_rows:
                        yield first, pending
                        first, pending = first + chunk_rows, [[] for _ in columns]
        except (pa.ArrowException, OSError) as exc:
            raise CorpusError(f"corpus file {str(shard.path)!r} could not be read: {exc}") from exc
        base += shard.rows
    if pending[0]:
        yield first, pending
