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
from typing import Any

import numpy as np

from lusifer.runtime.corpus import Corpus, iter_chunks
from lusifer.runtime.embedder import Embedder, l2_normalize
from lusifer.runtime.errors import CorpusError
from lusifer.runtime.writer import VectorWriter

_QUEUE_CHUNKS = 2  # chunks waiting between stages
_POLL_S = 0.1


@dataclass
class _Chunk:
    start: int
    rows: int
    keep: np.ndarray | None  # positions of non-null rows when nulls become zero vectors
    tokens: Any
    batches: list
    null_rows: int


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


def _read_and_tokenize(corpus: Corpus, embedder: Embedder, kind: str, instruction: str | None, batching: dict,
                       start_row: int, out_q: queue.Queue, stop: threading.Event) -> None:
    """Reader stage: stream chunks, apply the null policy, tokenise, make the padded batches, queue."""
    try:
        for start, values in iter_chunks(corpus, batching["chunk_rows"], start_row):
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
            tokens = embedder.tokenize(texts, kind, instruction)
            batches = embedder.make_batches(tokens, batching["token_budget"], batching["max_batch_rows"])
            if not _put(out_q, _Chunk(start, len(values), keep, tokens, batches, len(nulls)), stop):
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
                 encode=None) -> dict:
    """Run reader, inference (this thread) and writer until every row is committed; returns run counters.

    ``encode`` (optional) turns a float32 block into ``(stored block, sidecar record or None)``, e.g.
    :meth:`lusifer.runtime.compact.Quantizer.encode`; without it blocks are cast to ``dtype``.
    """
    from tqdm.auto import tqdm

    stop = threading.Event()
    tokens_q: queue.Queue = queue.Queue(maxsize=_QUEUE_CHUNKS)
    blocks_q: queue.Queue = queue.Queue(maxsize=_QUEUE_CHUNKS)
    write_failure: list = []
    reader = threading.Thread(
        target=_read_and_tokenize, name="lusifer-reader", daemon=True,
        args=(data, embedder, kind, instruction, batching, start_row, tokens_q, stop),
    )
    writer_thread = threading.Thread(target=_write, name="lusifer-writer", daemon=True,
                                     args=(writer, blocks_q, write_failure))
    counters = {"rows": 0, "tokens": 0, "padded": 0}
    # where the span goes (inference thread): running batches, waiting for tokens, and the tail after the
    # last batch (committing the last chunk); handoff_s = blocked handing finished chunks to the writer;
    # first_batch_s = start to the first finished batch
    timing = {"infer_s": 0.0, "wait_tokens_s": 0.0, "handoff_s": 0.0, "tail_s": 0.0, "first_batch_s": None}
    t0 = time.perf_counter()
    bar = tqdm(total=data.rows, initial=start_row, unit="row", desc="embed", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    last_postfix = [0.0]

    def on_batch(rows: int, tokens: int, padded: int) -> None:
        counters["rows"] += rows
        counters["tokens"] += tokens
        counters["padded"] += padded
        bar.update(rows)
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
            t_infer = time.perf_counter()
            emb = embedder.run_batches(item.batches, len(item.tokens), on_batch)
            timing["infer_s"] += time.perf_counter() - t_infer
            if item.keep is not None:
                block = np.zeros((item.rows, embedder.dim), dtype=np.float32)
                block[item.keep] = emb
                counters["rows"] += item.rows - len(item.keep)
                bar.update(item.rows - len(item.keep))
            else:
                block = emb
            if normalize:
                block = l2_normalize(block)
            block, record = (block.astype(dtype, copy=False), None) if encode is None else encode(block)
            elapsed = time.perf_counter() - t0
            stats = {
                "tokens": counters["tokens"] - tokens_before,
                "padded_tokens": counters["padded"] - padded_before,
                "truncated": int(item.tokens.truncated.sum()),
                "null_rows": item.null_rows,
                "seconds": round(elapsed - last_elapsed, 6),
            }
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
