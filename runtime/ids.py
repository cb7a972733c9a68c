"""Row ids carried from the corpus into the output (``--id-column``): checks, streaming, the ids file.

An id column may hold integers (written as int64) or strings (written as string); every shard must agree.
A null id is an error naming its row. With ``unique=True`` every id is read once up front and the first
repeated id is reported with both rows. Ids are read again, streamed in row order, when the output is
written: into the ``id`` column of a parquet output, or into ``<out>.ids.parquet`` beside a ``.npy`` output.
While embedding, the pipeline reads them with the texts (:func:`lusifer.runtime.corpus.iter_chunks_with_ids`)
to list truncated rows by id; on Ray :func:`shard_ids_at` looks up the few listed rows of a shard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lusifer.atomic import atomic_path
from lusifer.runtime.corpus import Corpus, Shard, _null_count, _null_positions, open_parquet
from lusifer.runtime.errors import CorpusError

logger = logging.getLogger(__name__)

ID_FIELD = "id"
_READ_ROWS = 65536
# What --unique-ids holds in memory, said in the CLI help (measured by benchmarks/unique_ids_memory.py).
UNIQUE_IDS_MEMORY = ("about 70 bytes per integer id, or 70 bytes plus 4x its text per string id (2M ids: 128 MiB "
                     "for integers, 262 MiB for 16-character strings)")


@dataclass(frozen=True)
class IdColumn:
    """A checked id column: its name and the arrow type it is written as (``int64`` or ``string``)."""

    name: str
    type: str

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.int64() if self.type == "int64" else pa.string()

    def describe(self) -> dict:
        return {"column": self.name, "type": self.type}


def _kind_of(t: pa.DataType) -> str | None:
    if pa.types.is_dictionary(t):
        return _kind_of(t.value_type)
    if pa.types.is_integer(t):
        return "int64"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or (
            hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)):
        return "string"
    return None


def locate(corpus: Corpus, row: int) -> str:
    """``"row R (row r of 'file')"`` for a global row number ``row``."""
    base = 0
    for shard in corpus.shards:
        if row < base + shard.rows:
            return f"row {row} (row {row - base} of {str(shard.path)!r})"
        base += shard.rows
    return f"row {row}"


def check_id_column(corpus: Corpus, column: str, unique: bool = False, progress: bool = False) -> IdColumn:
    """Check ``column`` of every shard as an id column, before any embedding work.

    Args:
        corpus: The checked corpus.
        column: The id column.
        unique: Also check that no id repeats (reads every id; memory: :data:`UNIQUE_IDS_MEMORY`).
        progress: Show a progress bar for the uniqueness scan.

    Raises:
        CorpusError: the column is missing, not integer or string, of different kinds in different shards,
            holds a null (its row is named), or (``unique``) repeats an id (the id and both rows are named).
    """
    if not isinstance(column, str) or not column:
        raise CorpusError(f"id column {column!r}: expected a column name")
    if column == corpus.column:
        raise CorpusError(f"id column {column!r} is the text column; choose another column with --id-column")
    kinds: dict[str, str] = {}
    base = 0
    for shard in corpus.shards:
        pf = open_parquet(shard.path)
        schema = pf.schema_arrow
        if column not in schema.names:
            raise CorpusError(f"corpus file {str(shard.path)!r} has no id column {column!r}; its columns are: "
                              f"{', '.join(schema.names)}")
        ctype = schema.field(column).type
        if shard.rows == 0 and pa.types.is_null(ctype):  # an empty file written without a type
            continue
        kind = _kind_of(ctype)
        if kind is None:
            raise CorpusError(f"id column {column!r} of {str(shard.path)!r} has type {ctype}; expected integers "
                              "or strings")
        kinds[str(shard.path)] = kind
        if _null_count(pf, shard.path, column):
            first = _null_positions(open_parquet(shard.path), shard.path, column, 1)[0]
            raise CorpusError(f"id column {column!r} has a null at {locate(corpus, base + first)}; every row "
                              "needs an id")
        base += shard.rows
    if len(set(kinds.values())) > 1:
        by_kind = {k: next(p for p, v in kinds.items() if v == k) for k in set(kinds.values())}
        raise CorpusError(f"id column {column!r} holds integers in {by_kind['int64']!r} but strings in "
                          f"{by_kind['string']!r}; every file must use the same kind")
    ids = IdColumn(column, next(iter(kinds.values()), "int64"))
    if unique:
        _check_unique(corpus, ids, progress)
    return ids


def _check_unique(corpus: Corpus, ids: IdColumn, progress: bool) -> None:
    """Raise naming the first row whose id appeared earlier (stable sorts keep rows ascending within an id)."""
    from tqdm.auto import tqdm

    chunks = []
    with tqdm(total=corpus.rows, unit="row", desc="check ids", disable=not progress, dynamic_ncols=True) as bar:
        for array in iter_ids(corpus, ids):
            chunks.append(array.cast(pa.large_string()) if ids.type == "string" else array.to_numpy())
            bar.update(len(array))
    if not chunks:
        return
    if ids.type == "int64":
        values = np.concatenate(chunks)
        del chunks
        order = np.argsort(values, kind="stable")
        ordered = values[order]
        same = ordered[1:] == ordered[:-1]
        del ordered
    else:
        values = pa.concat_arrays(chunks)
        del chunks
        order = pc.sort_indices(values).to_numpy()  # a stable sort
        ordered = values.take(order)
        same = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1)).to_numpy(zero_copy_only=False)
        del ordered
    repeat = np.flatnonzero(same) + 1  # sorted positions holding the same id as the one before
    if not len(repeat):
        return
    k = int(repeat[np.argmin(order[repeat])])
    j = int(order[k])  # the first row (corpus order) that repeats an earlier id
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    first = int(order[starts[np.searchsorted(starts, k, side="right") - 1]])  # the first row with that id
    value = values[j].as_py() if isinstance(values, pa.Array) else int(values[j])
    raise CorpusError(f"id column {ids.name!r} is not unique: id {value!r} is at {locate(corpus, first)} and again "
                      f"at {locate(corpus, j)}")


def iter_shard_ids(shard: Shard, ids: IdColumn) -> Iterator[pa.Array]:
    """The ids of one shard in row order, as arrays of :attr:`IdColumn.arrow_type` (bounded batches)."""
    if shard.rows == 0:
        return
    pf = open_parquet(shard.path)
    if pf.metadata.num_rows != shard.rows:
        raise CorpusError(f"corpus file {str(shard.path)!r} changed while embedding (row count differs)")
    try:
        for batch in pf.iter_batches(batch_size=_READ_ROWS, columns=[ids.name]):
            array = batch.column(0)
            if pa.types.is_dictionary(array.type):
                array = array.dictionary_decode()
            if array.null_count:
                raise CorpusError(f"id column {ids.name!r} of {str(shard.path)!r} has a null (the corpus changed "
                                  "after it was checked?)")
            yield array.cast(ids.arrow_type)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"corpus file {str(shard.path)!r} could not be read: {exc}") from exc


def shard_ids_at(shard: Shard, ids: IdColumn, rows: list[int]) -> list:
    """The ids (Python ``int`` / ``str``) of rows ``rows`` (ascending, within the shard) of one shard."""
    found: list = []
    base = 0
    want = iter(rows)
    row = next(want, None)
    for array in iter_shard_ids(shard, ids):
        while row is not None and row < base + len(array):
            found.append(array[row - base].as_py())
            row = next(want, None)
        if row is None:
            break
        base += len(array)
    if len(found) != len(rows):
        raise CorpusError(f"corpus file {str(shard.path)!r} has no row {row} (the corpus changed?)")
    return found


def iter_ids(corpus: Corpus, ids: IdColumn) -> Iterator[pa.Array]:
    """The ids of the whole corpus in row order (shards in corpus order), in bounded batches."""
    for shard in corpus.shards:
        yield from iter_shard_ids(shard, ids)


class IdStream:
    """Hands out the next ``n`` ids of a stream of arrays (to line ids up with row groups of vectors)."""

    def __init__(self, arrays: Iterator[pa.Array], arrow_type: pa.DataType):
        self._arrays = iter(arrays)
        self._type = arrow_type
        self._pending: list[pa.Array] = []
        self._have = 0

    def take(self, n: int) -> pa.Array:
        while self._have < n:
            try:
                array = next(self._arrays)
            except StopIteration:
                raise CorpusError(f"the id column ended {n - self._have} row(s) early (the corpus changed?)") from None
            self._pending.append(array)
            self._have += len(array)
        joined = pa.concat_arrays(self._pending) if self._pending else pa.array([], type=self._type)
        head, rest = joined.slice(0, n), joined.slice(n)
        self._pending = [rest] if len(rest) else []
        self._have = len(rest)
        return head

    def finish(self) -> None:
        """Raise if ids are left over (the corpus grew)."""
        left = self._have + sum(len(a) for a in self._arrays)
        if left:
            raise CorpusError(f"the id column has {left} more row(s) than the vectors (the corpus changed?)")


def write_ids_file(arrays: Iterator[pa.Array], ids: IdColumn, dest: Path, rows: int) -> Path:
    """Write ids (row order) to the parquet file ``dest`` with one column ``id``, atomically
    (:func:`lusifer.atomic.atomic_path`).

    Args:
        arrays: The ids in row order (e.g. :func:`iter_ids`).
        ids: The id column (gives the written type).
        dest: Final path.
        rows: Expected number of ids (a mismatch is an error; ``dest`` is left untouched).
    """
    schema = pa.schema([pa.field(ID_FIELD, ids.arrow_type, nullable=False)],
                       metadata={b"lusifer.id_column": ids.name.encode("utf-8")})
    written = 0
    with atomic_path(dest) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for array in arrays:
                writer.write_table(pa.Table.from_arrays([array], schema=schema), row_group_size=1 << 20)
                written += len(array)
        if written != rows:
            raise CorpusError(f"the id column has {written} rows but the vectors {rows} (the corpus changed?)")
    return dest
