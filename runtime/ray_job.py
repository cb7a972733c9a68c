"""`embed_corpus_ray`: the corpus job on a Ray cluster, one ``.npy`` per shard in row order.

Design: the driver checks everything cheap first (options, corpus schema and nulls, export checksums, output
folder), then plans work items, each a row range of one shard. A Ray Data pipeline
(``from_items(work) -> map_batches(EmbedActor, compute=ActorPoolStrategy(size=n))``) embeds them on a pool
of actors (one GPU each, or CPU actors); every output row carries its shard index and row number, and the
driver places it into that shard's memory-mapped output. Ray Data's own ``read_parquet`` is not used: its
blocks carry no row position within a file and may arrive in any order, so row identity would be lost.
GPU actors get ``RAYON_NUM_THREADS=4`` in their ``runtime_env`` (:func:`~lusifer.runtime.tokenize.cuda_tokenizer_env`,
unless the driver's environment sets it); the driver's own environment is not changed.
Actors are created with ``max_restarts=-1`` and ``max_task_retries=-1``: a work item whose actor dies is run
again on the restarted actor. Output files and ``manifest.json`` are written by the driver only (see
:mod:`lusifer.runtime.ray_output`), so only the driver needs the output folder; the corpus and export folder
must be readable at the same paths on every node.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lusifer.extras import require
from lusifer.prompts import check_kind
from lusifer.runtime.chunking import ChunkSettings, RowEncoder
from lusifer.runtime.compact import calibrate, check_dtype, needs_calibration
from lusifer.runtime.corpus import NULL_POLICIES, open_corpus
from lusifer.runtime.default_model import resolve_default_model
from lusifer.runtime.embedder import (
    DEFAULT_MAX_BATCH_ROWS,
    DEFAULT_TOKEN_BUDGET,
    DEFAULT_WINDOW_ROWS,
)
from lusifer.onnx_interface import ONE_ROW_PER_PASS_QUANTIZATIONS
from lusifer.runtime.errors import EmbedError
from lusifer.runtime.export_folder import open_export
from lusifer.runtime.lengths import TRUNCATED_LISTED, TruncationTally, describe_rows
from lusifer.runtime.ids import shard_ids_at
from lusifer.runtime.outputs import OUTPUT_FORMATS, QUANTIZATION_KEY, finish_shard, prepare_ids, quantizer_for
from lusifer.runtime.ray_actor import EmbedActor
from lusifer.runtime.ray_output import MANIFEST_NAME, ShardOutputs
from lusifer.runtime.tokenize import TextTokenizer, cuda_tokenizer_env

logger = logging.getLogger(__name__)


@dataclass
class RaySummary:
    """What an :func:`embed_corpus_ray` call did (also stored in the manifest's ``runs``)."""

    out_dir: str
    shards: int
    shards_embedded: int
    shards_skipped: int
    rows: int
    rows_this_run: int
    dim: int
    dtype: str
    seconds: float
    rows_per_s: float
    num_actors: int
    gpus_per_actor: int
    variant: str
    model_sha256: str
    max_length: int = 0
    truncated: int = 0  # rows cut at the max length, over all complete shards
    truncated_rows: list[int] | None = None  # corpus positions of the first of them
    truncated_ids: list[Any] | None = None  # their ids, when the job has an id column
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None
    windowed_rows: int = 0
    windows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """One paragraph for the terminal."""
        if not self.shards_embedded:
            return f"{self.out_dir}: all {self.shards} shard(s) already complete ({self.rows} rows); nothing to do"
        lengths = f"truncated at max length: {self.truncated} row(s)"
        if self.truncated and self.truncated_rows:
            lengths += f" ({describe_rows(self.truncated, self.truncated_rows, self.truncated_ids)})"
        lengths += f" [max length {self.max_length} tokens]"
        if self.chunk_tokens:
            lengths += (f"; split into windows of {self.chunk_tokens} text tokens (overlap {self.chunk_overlap}): "
                        f"{self.windowed_rows} row(s), {self.windows} window(s)")
        return (
            f"wrote {self.shards_embedded} shard(s) to {self.out_dir} ({self.shards_skipped} already complete): "
            f"{self.rows} rows x {self.dim} {self.dtype} in all\n"
            f"{self.rows_this_run} rows in {self.seconds:.1f} s: {self.rows_per_s:.1f} rows/s on "
            f"{self.num_actors} actor(s) ({'1 GPU' if self.gpus_per_actor else 'CPU'} each), variant {self.variant}\n"
            f"{lengths}"
        )


def _positive(name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def plan_work(shards, todo: list[int], rows_per_task: int) -> list[dict]:
    """Work items ``{"shard", "start", "stop"}``: each shard to embed cut into ``rows_per_task`` row ranges."""
    work = []
    for i in todo:
        for start in range(0, shards[i].rows, rows_per_task):
            work.append({"shard": i, "start": start, "stop": min(start + rows_per_task, shards[i].rows)})
    return work


def _connect(ray, address: str | None) -> bool:
    """Connect to (or start) Ray unless already connected; returns whether this call did it."""
    if ray.is_initialized():
        if address is not None:
            logger.warning("Ray is already initialised in this process; ignoring address=%r", address)
        return False
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    return True



def _cut_rows(shards: np.ndarray, rows: np.ndarray, shard_base: np.ndarray, tally: TruncationTally,
              ids_at) -> tuple[np.ndarray, dict | None]:
    """Corpus positions (ascending) of a batch's truncated rows and, while the tally still lists rows and the job
    has ids, the ids of those it will list (``{position: id}``; a few lookups per run at most)."""
    positions = shard_base[shards] + rows
    order = np.argsort(positions, kind="stable")
    room = TRUNCATED_LISTED - len(tally.rows)
    if ids_at is None or room <= 0:
        return positions[order], None
    listed = order[:room]
    found: dict = {}
    for shard in np.unique(shards[listed]):
        wanted = np.sort(rows[listed][shards[listed] == shard])
        for row, value in zip(wanted, ids_at(int(shard), [int(r) for r in wanted])):
            found[int(shard_base[shard] + row)] = value
    return positions[order], found


def embed_corpus_ray(
    corpus: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    *,
    address: str | None = None,
    num_actors: int | None = None,
    num_gpus_per_actor: int = 0,
    num_cpus_per_actor: int = 1,
    column: str = "text",
    kind: str = "document",
    instruction: str | None = None,
    variant: str | None = None,
    dtype: str = "float32",
    normalize: bool | None = None,
    on_null: str = "error",
    overwrite: bool = False,
    rows_per_task: int | None = None,
    token_budget: int | None = None,
    max_batch_rows: int | None = None,
    progress: bool = True,
    output_format: str = "npy",
    id_column: str | None = None,
    unique_ids: bool = False,
    max_length: int | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
) -> RaySummary:
    """Embed a parquet corpus on a Ray cluster into ``out_dir/<shard-stem>.npy`` (row i = shard row i).

    Checks run before Ray is started: options, corpus files/column/type/nulls, export checksums, the output
    folder's manifest. Shards already complete in ``out_dir`` are skipped; unfinished ones are redone.

    Args:
        corpus: A parquet file, a folder of parquet files, or a glob (same paths on every node).
        out_dir: Output folder (written by the driver only).
        model: Export folder (same path on every node); ``None`` uses the default model.
        address: Ray address (``"auto"``, ``"ray://head:10001"``, ``"head:6379"``); ``None`` connects to
            ``RAY_ADDRESS`` or a running local cluster, else starts one. An already initialised Ray is used.
        num_actors: Embedding actors; default = the cluster's GPUs (GPU actors) or CPUs / ``num_cpus_per_actor``.
        num_gpus_per_actor: ``1``: each actor owns one GPU and runs on CUDA (no CPU fallback); ``0``: CPU.
        num_cpus_per_actor: CPUs reserved per actor, also its ONNX Runtime threads on CPU.
        column, kind, instruction, variant, dtype, normalize, on_null: As :func:`embed_corpus`.
        overwrite: Redo every shard, ignoring an existing manifest.
        rows_per_task: Rows per work item (default 2048 on CPU, 8192 on GPU actors); the unit of retry.
        token_budget: Most padded tokens per forward pass.
        max_batch_rows: Most rows per forward pass.
        progress: Show a tqdm progress bar.
        output_format: ``"npy"`` (one ``.npy`` per shard) or ``"parquet"`` (one ``.parquet`` per shard with
            ``id`` and ``embedding`` columns).
        id_column, unique_ids: As :func:`embed_corpus` (per shard: ``<stem>.npy.ids.parquet`` or the ``id``
            column). ``int8`` / ``uint8`` are calibrated on the first work item of the corpus (up to
            ``rows_per_task`` rows of the first non-empty shard) before the other work starts.
        max_length, chunk_tokens, chunk_overlap: As :func:`embed_corpus` (part of the output's identity: a
            rerun must give the same values).

    Returns:
        A :class:`RaySummary`.
    """
    check_kind(kind)
    check_dtype(dtype)
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format={output_format!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    if on_null not in NULL_POLICIES:
        raise ValueError(f"on_null={on_null!r}; expected one of {', '.join(NULL_POLICIES)}")
    if num_gpus_per_actor not in (0, 1) or isinstance(num_gpus_per_actor, bool):
        raise ValueError(f"num_gpus_per_actor={num_gpus_per_actor!r}; expected 0 (CPU actors) or 1 (one GPU each)")
    for name, value in (("num_actors", num_actors), ("rows_per_task", rows_per_task),
                        ("token_budget", token_budget), ("max_batch_rows", max_batch_rows)):
        _positive(name, value)
    _positive("num_cpus_per_actor", num_cpus_per_actor, allow_none=False)
    device_kind = "cuda" if num_gpus_per_actor else "cpu"
    model_dir = Path(model if model is not None else resolve_default_model()).resolve()
    data = open_corpus(corpus, column, on_null)
    ids = prepare_ids(data, id_column, unique_ids, progress)
    export = open_export(model_dir, device_kind, variant)
    manifest = export.manifest
    if instruction is not None and not isinstance(instruction, str):
        raise ValueError(f"instruction={instruction!r} must be a string or None")
    resolved_instruction = instruction if instruction is not None else (
        manifest.default_query_instruction if kind == "query" else manifest.default_document_instruction)
    chunk = ChunkSettings.from_options(chunk_tokens, chunk_overlap)
    tokenizer = TextTokenizer(export.tokenizer_path, manifest, max_length)  # checks max_length
    RowEncoder(tokenizer, kind, resolved_instruction, chunk)  # checks the lengths against the prompt
    options = {
        "column": column, "kind": kind, "instruction": resolved_instruction,
        "normalize": manifest.normalize if normalize is None else bool(normalize), "on_null": on_null,
        "dtype": dtype, "token_budget": token_budget or DEFAULT_TOKEN_BUDGET[device_kind],
        "max_batch_rows": max_batch_rows or DEFAULT_MAX_BATCH_ROWS[device_kind],
        "max_length": tokenizer.max_length, "chunk_tokens": chunk.tokens if chunk else None,
        "chunk_overlap": chunk.overlap if chunk else None,
    }
    identity = {
        "dim": manifest.embedding_dim, "dtype": dtype,
        "model": {"sha256": export.model_sha256, "variant": export.variant, "files": export.checksums},
        "options": {k: options[k] for k in ("column", "kind", "instruction", "normalize", "on_null", "max_length",
                                            "chunk_tokens", "chunk_overlap")},
    }
    if manifest.variants[export.variant].quantization in ONE_ROW_PER_PASS_QUANTIZATIONS:
        # as in lusifer-embed's output: shards of an older, batched INT8 run must not be resumed
        identity["batching"] = {"one_row_per_pass": True}
    if output_format != "npy":
        identity["format"] = output_format
    if ids is not None:
        identity["ids"] = ids.describe()
    run_info = {"corpus_spec": str(corpus), "model_dir": str(model_dir), "address": address,
                "gpus_per_actor": num_gpus_per_actor, "batching": {k: options[k] for k in
                                                                    ("token_budget", "max_batch_rows")}}
    outputs = ShardOutputs.open(out_dir, identity, data.shards, overwrite, run_info)
    quantizer = quantizer_for(dtype, outputs.manifest, 0, out_dir)

    def finish(i, staging, dest):
        finish_shard(staging, dest, data.shards[i], ids, quantizer, manifest.embedding_dim, export.model_sha256)

    outputs.finish_shard = finish
    if ids is not None:
        outputs.ids_at = lambda i, rows: shard_ids_at(data.shards[i], ids, rows)
    rows_per_task = rows_per_task or DEFAULT_WINDOW_ROWS[device_kind]
    for i in [i for i in outputs.todo if data.shards[i].rows == 0]:
        outputs.finish_empty(i)
    todo = [i for i in outputs.todo if data.shards[i].rows > 0]
    skipped = len(data.shards) - len(outputs.todo)
    base = {"out_dir": str(out_dir), "shards": len(data.shards), "shards_skipped": skipped, "rows": data.rows,
            "dim": manifest.embedding_dim, "dtype": dtype, "gpus_per_actor": num_gpus_per_actor,
            "variant": export.variant, "model_sha256": export.model_sha256, "max_length": options["max_length"],
            "chunk_tokens": options["chunk_tokens"], "chunk_overlap": options["chunk_overlap"]}
    if not todo:
        summary = RaySummary(shards_embedded=len(outputs.todo), rows_this_run=0, seconds=0.0, rows_per_s=0.0,
                             num_actors=0, **outputs.length_totals(), **base)
        outputs.close(summary.to_dict())
        return summary

    ray = require("ray", extra="ray", purpose="embed on a Ray cluster")
    require("ray.data", extra="ray", purpose="embed on a Ray cluster")
    started = _connect(ray, address)
    try:
        summary = _run(ray, data, outputs, todo, model_dir, export, options, num_actors, num_gpus_per_actor,
                       num_cpus_per_actor, rows_per_task, progress, base, quantizer)
    finally:
        if started:
            ray.shutdown()
    logger.info("%s", summary.format())
    return summary


def _default_actors(ray, gpus: int, cpus: int) -> int:
    resources = ray.cluster_resources()
    if gpus:
        n = int(resources.get("GPU", 0))
        if n < 1:
            raise ValueError("num_gpus_per_actor=1 but the Ray cluster has no GPUs; pass num_gpus_per_actor=0")
        return n
    return max(1, int(resources.get("CPU", 1)) // cpus)


def _embed_error_in(exc: BaseException) -> EmbedError | None:
    """The :class:`EmbedError` behind a Ray/Ray Data exception (``cause`` / ``__cause__`` chain), if any."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, EmbedError) and type(exc).__module__.startswith("lusifer."):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    return None


def actor_environment(gpus: int) -> dict:
    """Extra Ray options of the embedding actors: GPU actors cap their tokenizer pool through ``runtime_env``.

    Returns:
        ``{"runtime_env": {"env_vars": {"RAYON_NUM_THREADS": "4"}}}`` for GPU actors (unless the driver's
        environment sets ``RAYON_NUM_THREADS``), else ``{}``.
    """
    env = cuda_tokenizer_env() if gpus else {}
    return {"runtime_env": {"env_vars": env}} if env else {}


def _embed_dataset(ray, work: list[dict], shards, model_dir, export, options, num_actors, gpus, cpus):
    """The Ray Data pipeline that embeds ``work`` items on an actor pool."""
    return ray.data.from_items(work, override_num_blocks=len(work)).map_batches(
        EmbedActor,
        batch_size=1,
        fn_constructor_kwargs={
            "shards": shards, "model_dir": str(model_dir), "model_sha256": export.model_sha256,
            "device": "cuda" if gpus else "cpu", "variant": export.variant, "threads": cpus, "options": options,
        },
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=cpus,
        num_gpus=gpus,
        max_restarts=-1,
        max_task_retries=-1,
        **actor_environment(gpus),
    )


def _calibrate(ray, data, outputs: ShardOutputs, quantizer, shards, model_dir, export, options, gpus, cpus,
               rows_per_task) -> None:
    """int8 / uint8: embed the corpus's first work item as float32 on one actor, store its ranges."""
    nonempty = [i for i, s in enumerate(data.shards) if s.rows]
    first = plan_work(data.shards, nonempty[:1], rows_per_task)[:1]
    ds = _embed_dataset(ray, first, shards, model_dir, export, {**options, "dtype": "float32", "ranges": None},
                        1, gpus, cpus)
    block = np.concatenate([b["vector"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")])
    quantizer.ranges = calibrate(block)
    quantizer.calibration_rows = len(block)
    outputs.manifest[QUANTIZATION_KEY] = quantizer.describe()
    outputs.save()
    logger.info("calibrated %s on %d rows of %s", quantizer.dtype, len(block), data.shards[nonempty[0]].path)


def _run(ray, data, outputs: ShardOutputs, todo, model_dir, export, options, num_actors, gpus, cpus,
         rows_per_task, progress, base, quantizer) -> RaySummary:
    from tqdm.auto import tqdm

    num_actors = num_actors or _default_actors(ray, gpus, cpus)
    work = plan_work(data.shards, todo, rows_per_task)
    shards = [(str(s.path.resolve()), list(s.row_group_rows)) for s in data.shards]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    ctx.raise_original_map_exception = True  # a CorpusError in an actor reaches the driver as itself
    if not logger.isEnabledFor(logging.INFO):
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    if needs_calibration(quantizer.dtype) and not quantizer.calibrated:
        _calibrate(ray, data, outputs, quantizer, shards, model_dir, export, options, gpus, cpus, rows_per_task)
    options = {**options, "ranges": quantizer.ranges.tolist() if quantizer.ranges is not None else None}
    ds = _embed_dataset(ray, work, shards, model_dir, export, options, num_actors, gpus, cpus)
    rows_total = sum(data.shards[i].rows for i in todo)
    done_rows = 0
    tally = TruncationTally(max_length=options["max_length"])  # this run's rows, for the warning
    shard_base = np.concatenate([[0], np.cumsum([s.rows for s in data.shards])[:-1]]).astype(np.int64)
    t0 = time.perf_counter()
    bar = tqdm(total=rows_total, unit="row", desc="embed (ray)", disable=not progress, dynamic_ncols=True)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            outputs.add(batch["shard"], batch["row"], batch["vector"], batch["truncated"], batch["windows"])
            done_rows += len(batch["row"])
            cut = batch["truncated"]
            if cut.any():  # for the warning (the summary lists them from the manifest)
                tally.add(0, *_cut_rows(batch["shard"][cut], batch["row"][cut], shard_base, tally, outputs.ids_at))
                tally.maybe_warn(done_rows)
            bar.update(len(batch["row"]))
    except Exception as exc:
        cause = _embed_error_in(exc)
        if cause is not None:  # a user-facing error raised in an actor: report it as itself
            first_line = (str(cause).splitlines() or [""])[0]  # Ray Data appends its retry advice
            raise type(cause)(f"{first_line} (raised in a Ray actor; finished shards are kept, rerun to continue)") \
                from exc
        raise
    finally:
        bar.close()
        seconds = time.perf_counter() - t0
        partial_summary = {"rows_this_run": done_rows, "seconds": round(seconds, 3), "num_actors": num_actors}
        outputs.close(partial_summary)
    missing = [e["output"] for e in outputs.manifest["shards"] if e["status"] != "complete"]
    if missing:
        raise RuntimeError(f"the Ray job ended with shard(s) {missing} incomplete; rerun to finish them")
    summary = RaySummary(shards_embedded=len(outputs.todo), rows_this_run=done_rows, seconds=round(seconds, 3),
                         rows_per_s=round(done_rows / seconds, 2) if seconds else 0.0, num_actors=num_actors,
                         **outputs.length_totals(), **base)
    outputs.close(summary.to_dict())
    logger.info("manifest: %s", outputs.out_dir / MANIFEST_NAME)
    return summary
