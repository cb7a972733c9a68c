"""The three overlapped stages of a corpus job: read + tokenise, infer, write.

A reader thread streams the text column, tokenises chunks (Rust ``encode_batch``, GIL released) and pads
them into length-sorted token-budget batches; the calling thread only runs the graph on those batches (ONNX
Runtime releases the GIL too; with ``inflight`` > 1 the Embedder's worker threads run several at once), and a
writer thread puts finished chunks into the memory-mapped output and
commits them in order. Queues of two chunks between the stages bound memory whatever the corpus size. An
error in any stage stops the others; chunks already computed are still committed, so the output stays
resumable.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from lusifer.runtime.chunking import RowEncoder, RowTokens, pool_rows
from lusifer.runtime.corpus import Corpus, iter_chunks_with_ids
from lusifer.runtime.embedder import Embedder
from lusifer.runtime.errors import CorpusError
from lusifer.runtime.ids import IdColumn
from lusifer.runtime.lengths import TruncationTally
from lusifer.runtime.writer import VectorWriter
from lusifer.vectors import l2_normalize

_QUEUE_CHUNKS = 2  # chunks waiting between stages
_POLL_S = 0.1


@dataclass
class _Chunk:
    start: int
    rows: int
    keep: np.ndarray | None  # positions of non-null rows when nulls become zero vectors
    tokens: RowTokens  # the sequences of the embedded rows (several windows for a long row with chunking)
    batches: list
    null_rows: int
    ids: list | None = None  # the chunk's --id-column values (one per row), when the job has one

    def truncated_positions(self) -> np.ndarray:
        """Positions within the chunk of the rows cut at the max length."""
        cut = np.nonzero(self.tokens.truncated)[0]
        return cut if self.keep is None else self.keep[cut]


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put unless ``stop`` is set; returns whether the item was queued."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _read_and_tokenize(corpus: Corpus, embedder: Embedder, encoder: RowEncoder, batching: dict,
                       start_row: int, out_q: queue.Queue, stop: threading.Event, id_column: str | None) -> None:
    """Reader stage: stream chunks (with their ids), apply the null policy, tokenise, make the padded batches,
    queue."""
    try:
        for start, values, ids in iter_chunks_with_ids(corpus, batching["chunk_rows"], start_row, id_column):
            if stop.is_set():
                return
            nulls = [i for i, v in enumerate(values) if v is None]
            keep = None
            texts = values
            if nulls:
                if corpus.on_null == "error":
                    raise CorpusError(
                        f"column {corpus.column!r} has a null at global row {start + nulls[0]} (the corpus changed "
                        "after it was checked?); pass --on-null empty|zero"
                    )
                if corpus.on_null == "empty":
                    texts = ["" if v is None else v for v in values]
                else:
                    keep = np.array([i for i, v in enumerate(values) if v is not None], dtype=np.int64)
                    texts = [values[i] for i in keep]
            tokens = encoder.encode(texts)
            batches = embedder.make_batches(tokens.sequences, batching["token_budget"], batching["max_batch_rows"])
            if not _put(out_q, _Chunk(start, len(values), keep, tokens, batches, len(nulls), ids), stop):
                return
        _put(out_q, _DONE, stop)
    except BaseException as exc:  # handed to the main thread, which re-raises it
        _put(out_q, _Failure(exc), stop)


def _write(writer: VectorWriter, in_q: queue.Queue, failure: list) -> None:
    """Writer stage: commit chunks in order until the done marker."""
    while True:
        item = in_q.get()
        if item is _DONE:
            return
        if failure:
            continue  # drain after a failure so the producer side never blocks
        try:
            writer.commit(*item)
        except BaseException as exc:
            failure.append(exc)


def run_pipeline(data: Corpus, embedder: Embedder, writer: VectorWriter, kind: str, instruction: str | None,
                 normalize: bool, dtype: str, batching: dict, start_row: int, progress: bool,
                 encoder: RowEncoder | None = None, encode=None, ids: IdColumn | None = None) -> dict:
    """Run reader, inference (this thread) and writer until every row is committed; returns run counters.

    ``encoder`` turns rows into sequences (default: one per row, truncated at the embedder's max length; see
    :mod:`lusifer.runtime.chunking` for windows). ``encode`` (optional) turns a float32 block of row vectors
    into ``(stored block, sidecar record or None)``, e.g. :meth:`lusifer.runtime.compact.Quantizer.encode`;
    without it blocks are cast to ``dtype``. ``ids``: the job's id column, read with each chunk so that
    truncated rows are listed by id too.
    """
    from tqdm.auto import tqdm

    encoder = encoder or RowEncoder(embedder.tokenizer, kind, instruction, None)
    tally = TruncationTally.from_progress(writer.progress, embedder.max_length)
    stop = threading.Event()
    tokens_q: queue.Queue = queue.Queue(maxsize=_QUEUE_CHUNKS)
    blocks_q: queue.Queue = queue.Queue(maxsize=_QUEUE_CHUNKS)
    write_failure: list = []
    reader = threading.Thread(
        target=_read_and_tokenize, name="lusifer-reader", daemon=True,
        args=(data, embedder, encoder, batching, start_row, tokens_q, stop, ids.name if ids is not None else None),
    )
    writer_thread = threading.Thread(target=_write, name="lusifer-writer", daemon=True,
                                     args=(writer, blocks_q, write_failure))
    counters = {"rows": 0, "tokens": 0, "padded": 0}
    bar_scale = [1.0, 0.0, 0]  # rows per sequence of the current chunk, rows due on the bar, rows shown
    # where the span goes (inference thread): running batches, waiting for tokens, and the tail after the
    # last batch (committing the last chunk); handoff_s = blocked handing finished chunks to the writer;
    # first_batch_s = start to the first finished batch
    timing = {"infer_s": 0.0, "wait_tokens_s": 0.0, "handoff_s": 0.0, "tail_s": 0.0, "first_batch_s": None}
    t0 = time.perf_counter()
    bar = tqdm(total=data.rows, initial=start_row, unit="row", desc="embed", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    last_postfix = [0.0]

    def on_batch(rows: int, tokens: int, padded: int) -> None:
        counters["tokens"] += tokens
        counters["padded"] += padded
        bar_scale[1] += rows * bar_scale[0]  # with windows, a batch of sequences is a fraction of the rows
        if int(bar_scale[1]) > bar_scale[2]:
            bar.update(int(bar_scale[1]) - bar_scale[2])
            bar_scale[2] = int(bar_scale[1])
        now = time.perf_counter()
        if timing["first_batch_s"] is None:
            timing["first_batch_s"] = now - t0
        if now - last_postfix[0] > 0.5:
            last_postfix[0] = now
            bar.set_postfix(tok_s=f"{counters['tokens'] / max(now - t0, 1e-9):.0f}", refresh=False)

    last_elapsed = 0.0
    reader.start()
    writer_thread.start()
    try:
        while True:
            if write_failure:
                raise write_failure[0]
            t_wait = time.perf_counter()
            try:
                item = tokens_q.get(timeout=_POLL_S)
            except queue.Empty:
                item = None
            timing["wait_tokens_s"] += time.perf_counter() - t_wait
            if item is None:
                continue
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.exc
            tokens_before, padded_before = counters["tokens"], counters["padded"]
            sequences = len(item.tokens.sequences)
            bar_scale[:] = [len(item.tokens) / sequences if sequences else 0.0, 0.0, 0]
            t_infer = time.perf_counter()
            emb = embedder.run_batches(item.batches, sequences, on_batch)
            timing["infer_s"] += time.perf_counter() - t_infer
            emb = pool_rows(emb, item.tokens, normalize)
            bar.update(item.rows - bar_scale[2])  # the rest of the chunk, null rows included
            counters["rows"] += item.rows
            if item.keep is not None:
                block = np.zeros((item.rows, embedder.dim), dtype=np.float32)
                block[item.keep] = emb
            else:
                block = emb
            if normalize:
                block = l2_normalize(block)
            block, record = (block.astype(dtype, copy=False), None) if encode is None else encode(block)
            elapsed = time.perf_counter() - t0
            stats = {
                "tokens": counters["tokens"] - tokens_before,
                "padded_tokens": counters["padded"] - padded_before,
                "truncated": tally.add(item.start, item.truncated_positions(), item.ids),
                "null_rows": item.null_rows,
                "seconds": round(elapsed - last_elapsed, 6),
                "windowed_rows": item.tokens.windowed_rows,
                "windows": item.tokens.windows,
                **tally.progress_fields(),  # lists: replaced at each commit, not added
            }
            tally.maybe_warn(item.start + item.rows)
            last_elapsed = elapsed
            run_update = {
                "rows": counters["rows"], "seconds": round(elapsed, 3),
                "rows_per_s": round(counters["rows"] / elapsed, 2) if elapsed else 0.0,
                "tokens_per_s": round(counters["tokens"] / elapsed, 1) if elapsed else 0.0,
            }
            t_handoff = time.perf_counter()
            handed = _put(blocks_q, (item.start, block, stats, run_update, record), stop)
            timing["handoff_s"] += time.perf_counter() - t_handoff
            if not handed:
                break
        t_tail = time.perf_counter()
        blocks_q.put(_DONE)
        writer_thread.join()
        timing["tail_s"] = time.perf_counter() - t_tail
        if write_failure:
            raise write_failure[0]
    finally:
        stop.set()
        while True:  # unblock the reader if it waits on a full queue
            try:
                tokens_q.get_nowait()
            except queue.Empty:
                break
        reader.join(timeout=30)
        if writer_thread.is_alive():
            blocks_q.put(_DONE)  # commit what is already computed, then stop
            writer_thread.join()
        bar.close()
    counters["seconds"] = time.perf_counter() - t0
    counters["timing"] = {k: (None if v is None else round(v, 4)) for k, v in timing.items()}
    return counters
