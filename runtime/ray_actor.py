"""The embedding actor of a Ray job and the slice reader it uses. Imported by Ray workers; never imports ray.

A work item names a row range of one shard (``shard``, ``start``, ``stop``); the actor reads exactly those rows
with pyarrow, embeds them and returns one output row per input row with its shard index and row number, so
row identity never depends on the order in which Ray Data delivers results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from lusifer.runtime.chunking import ChunkSettings, RowEncoder, pool_rows
from lusifer.runtime.compact import quantize
from lusifer.runtime.corpus import open_parquet
from lusifer.runtime.embedder import Embedder
from lusifer.runtime.errors import CorpusError, ExportFolderError
from lusifer.vectors import l2_normalize


def read_slice(path: str, column: str, row_groups: list[int], start: int, stop: int) -> list:
    """Values of ``column`` for rows ``start:stop`` of a parquet file (``None`` for nulls).

    Args:
        path: The parquet file.
        column: The text column.
        row_groups: Row-group sizes of the file (as checked by the driver).
        start: First row (from 0 within the file).
        stop: One past the last row.
    """
    try:
        pf = open_parquet(Path(path))
        found = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        if found != list(row_groups):
            raise CorpusError(f"corpus file {path!r} changed while embedding (row groups {found}, "
                              f"checked {list(row_groups)})")
        groups, first, group_start = [], None, 0
        for g, n in enumerate(row_groups):
            if group_start < stop and group_start + n > start:
                groups.append(g)
                first = group_start if first is None else first
            group_start += n
        values: list = []
        skip = start - (first or 0)
        for batch in pf.iter_batches(batch_size=65536, row_groups=groups, columns=[column]):
            chunk = batch.column(0).to_pylist()
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            values.extend(chunk[: stop - start - len(values)])
            if len(values) == stop - start:
                break
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"corpus file {path!r} could not be read: {exc}") from exc
    if len(values) != stop - start:
        raise CorpusError(f"corpus file {path!r} gave {len(values)} rows for rows {start}:{stop}")
    return values


class EmbedActor:
    """Ray Data ``map_batches`` callable: loads an :class:`Embedder` once, then embeds work items.

    Args:
        shards: ``[(path, row_group_sizes), ...]`` in corpus order.
        model_dir: Export folder (the same path on every node).
        model_sha256: The checksum the driver computed; an actor whose copy differs refuses to run.
        device: ``"cpu"`` or ``"cuda"`` (a GPU actor sees only its own GPU as ``cuda:0``).
        variant: ONNX variant name.
        threads: CPU intra-op threads of this actor.
        options: ``column``, ``kind``, ``instruction``, ``normalize``, ``on_null``, ``dtype``,
            ``token_budget``, ``max_batch_rows``, ``max_length``, ``chunk_tokens``, ``chunk_overlap``.
    """

    def __init__(self, shards: list, model_dir: str, model_sha256: str, device: str, variant: str, threads: int,
                 options: dict):
        self.shards = shards
        self.options = options
        self.embedder = Embedder(model_dir, device=device, variant=variant, threads=threads,
                                 max_length=options.get("max_length"))
        self.encoder = RowEncoder(self.embedder.tokenizer, options["kind"], options["instruction"],
                                  ChunkSettings.from_options(options.get("chunk_tokens"), options.get("chunk_overlap")))
        if self.embedder.model_sha256 != model_sha256:
            raise ExportFolderError(
                f"the export folder {model_dir!r} on this node has model sha256 {self.embedder.model_sha256}, "
                f"the driver's has {model_sha256}; copy the same export to every node"
            )

    def __call__(self, batch: dict) -> dict:
        shard_ids, rows, vectors, truncated, windows = [], [], [], [], []
        for shard, start, stop in zip(batch["shard"], batch["start"], batch["stop"]):
            shard, start, stop = int(shard), int(start), int(stop)
            block, cut, count = self.embed_rows(shard, start, stop)
            vectors.append(block)
            truncated.append(cut)
            windows.append(count)
            shard_ids.append(np.full(stop - start, shard, dtype=np.int64))
            rows.append(np.arange(start, stop, dtype=np.int64))
        return {"shard": np.concatenate(shard_ids), "row": np.concatenate(rows),
                "vector": np.concatenate(vectors, axis=0), "truncated": np.concatenate(truncated),
                "windows": np.concatenate(windows)}

    def embed_rows(self, shard: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embed rows ``start:stop`` of shard ``shard``; nulls handled as the single-process pipeline does.

        Returns:
            The vectors (output dtype), whether each row was cut at the max length, and each row's sequence
            count (windows with chunking; 1 otherwise, 0 for a null written as a zero vector).
        """
        o = self.options
        path, groups = self.shards[shard]
        values = read_slice(path, o["column"], groups, start, stop)
        keep = None
        nulls = [i for i, v in enumerate(values) if v is None]
        texts = values
        if nulls:
            if o["on_null"] == "error":
                raise CorpusError(
                    f"column {o['column']!r} of {path!r} has a null at row {start + nulls[0]} (the corpus changed "
                    "after it was checked?); pass --on-null empty|zero"
                )
            if o["on_null"] == "empty":
                texts = ["" if v is None else v for v in values]
            else:
                keep = np.array([i for i, v in enumerate(values) if v is not None], dtype=np.int64)
                texts = [values[i] for i in keep]
        tokens = self.encoder.encode(texts)
        emb = self.embedder.embed_tokens(tokens.sequences, o["token_budget"], o["max_batch_rows"])
        emb = pool_rows(emb, tokens, o["normalize"])
        counts = np.ones(len(texts), dtype=np.int64) if tokens.first is None else np.diff(tokens.first)
        truncated = np.zeros(len(values), dtype=bool)
        windows = np.zeros(len(values), dtype=np.int64)
        if keep is not None:
            block = np.zeros((len(values), self.embedder.dim), dtype=np.float32)
            block[keep] = emb
            truncated[keep], windows[keep] = tokens.truncated, counts
        else:
            block, truncated[:], windows[:] = emb, tokens.truncated, counts
        if o["normalize"]:
            block = l2_normalize(block)
        return quantize(block, o["dtype"], o.get("ranges")), truncated, windows
