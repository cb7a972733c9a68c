"""``lusifer-embed``: command line for batch embedding. Parses options and delegates to :func:`embed_corpus`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from lusifer.onnx_interface import ManifestError
from lusifer.runtime.corpus import NULL_POLICIES
from lusifer.runtime.embedder import MAX_INFLIGHT
from lusifer.runtime.errors import EmbedError
from lusifer.runtime.ids import UNIQUE_IDS_MEMORY
from lusifer.runtime.job import embed_corpus
from lusifer.runtime.outputs import OUTPUT_FORMATS
from lusifer.runtime.session import resolve_device
from lusifer.runtime.tokenize import cuda_tokenizer_env
from lusifer.runtime.writer import OUTPUT_DTYPES


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("corpus")
@click.option("--out", "out_path", required=True, type=click.Path(),
              help="Output .npy or .parquet file (a <out>.json sidecar and, while running, a partial file sit "
                   "beside it); with --ray an output folder (one <shard-stem>.npy or .parquet per shard and "
                   "manifest.json).")
@click.option("--format", "out_format", type=click.Choice(OUTPUT_FORMATS), default=None,
              help="Output format [default: from --out's suffix; with --ray npy]. A parquet output has the "
                   "columns id (with --id-column) and embedding (a fixed-size list).")
@click.option("--id-column", default=None,
              help="Column (integers or strings, no nulls) copied into the output in row order: the id column "
                   "of a parquet output, or <out>.ids.parquet beside a .npy output. Truncated rows are listed "
                   "by id too.")
@click.option("--unique-ids", is_flag=True,
              help=f"With --id-column: also check that no id repeats, before embedding. Holds every id in memory: "
                   f"{UNIQUE_IDS_MEMORY}.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False),
              help="Export folder written by lusifer-export (default: the default model).")
@click.option("--column", default="text", show_default=True, help="Text column of the parquet files.")
@click.option("--kind", type=click.Choice(["query", "document"]), default="document", show_default=True,
              help="Prompt template to apply.")
@click.option("--instruction", default=None,
              help="Task instruction (default: the model's default for --kind; '' for none).")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:N. cuda never falls back to CPU.")
@click.option("--variant", default=None,
              help="ONNX variant (fp32, fp16, int8). Default: fp16 on CUDA; int8 if exported, else fp32 on CPU.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime intra-op threads [default: physical cores on CPU, 1 on CUDA].")
@click.option("--inflight", type=click.IntRange(1, MAX_INFLIGHT), default=1, show_default=True,
              help="Batches run at once. On CUDA, 2 launches a batch while the GPU computes the previous one; "
                   "on CPU keep 1.")
@click.option("--dtype", type=click.Choice(OUTPUT_DTYPES), default="float32", show_default=True,
              help="Output dtype. int8/uint8: scalar quantization with per-dimension ranges calibrated on the "
                   "first chunk (stored in the sidecar); binary/ubinary: 1 bit per dimension packed into bytes "
                   "(int8 / uint8), as sentence-transformers' quantize_embeddings defines them.")
@click.option("--normalize/--no-normalize", default=None,
              help="L2-normalise rows [default: the model's setting, normally on].")
@click.option("--on-null", type=click.Choice(NULL_POLICIES), default="error", show_default=True,
              help="Null texts: error; embed as empty text; or write a zero vector. Rows are never dropped.")
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="Most tokens per text, prompt and special tokens included [default: the export's limit]; "
                   "above the export's limit is an error. Longer texts are cut: the summary counts them and lists "
                   "the first few, and a warning is logged once when more than 1% are cut.")
@click.option("--chunk-tokens", type=click.IntRange(min=1), default=None,
              help="Embed texts longer than N text tokens whole: split them into windows of N tokens (the prompt "
                   "repeated in each, all within --max-length); the row's vector is the token-count-weighted mean "
                   "of its windows' vectors, re-normalised. Shorter texts are unchanged.")
@click.option("--chunk-overlap", type=click.IntRange(min=0), default=None,
              help="With --chunk-tokens N: tokens shared by consecutive windows, 0 to N-1 [default: 0].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same job (length options left "
                                             "out are the earlier run's).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
              help="Rows per committed chunk and length-sorting window [default: 2048 on CPU, 8192 on CUDA].")
@click.option("--token-budget", type=click.IntRange(min=1), default=None,
              help="Padded tokens per forward pass [default: 8192 on CPU, 65536 on CUDA].")
@click.option("--max-batch-rows", type=click.IntRange(min=1), default=None,
              help="Rows per forward pass [default: 512 on CPU, 2048 on CUDA; 1 for int8].")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run on a Ray cluster (needs lusifer[ray]): ADDRESS such as auto, HEAD:6379 or ray://HEAD:10001; "
                   "alone: RAY_ADDRESS or a running local cluster, else a new local one. Reruns skip complete shards.")
@click.option("--num-actors", type=click.IntRange(min=1), default=None,
              help="With --ray: embedding actors [default: the cluster's GPUs, or CPUs / --threads].")
@click.option("--gpus-per-actor", type=click.IntRange(0, 1), default=0, show_default=True,
              help="With --ray: 1 = each actor owns one GPU and runs CUDA (no CPU fallback); 0 = CPU actors.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Log what is done (INFO).")
def main(corpus: str, out_path: str, out_format: str | None, id_column: str | None, unique_ids: bool,
         model_dir: str | None, column: str, kind: str, instruction: str | None,
         device: str, variant: str | None, threads: int | None, inflight: int, dtype: str,
         normalize: bool | None, on_null: str, max_length: int | None, chunk_tokens: int | None,
         chunk_overlap: int | None, resume: bool, overwrite: bool, chunk_rows: int | None,
         token_budget: int | None, max_batch_rows: int | None, ray_address: str | None, num_actors: int | None,
         gpus_per_actor: int, progress: bool, verbose: bool) -> None:
    """Embed the text column of a parquet CORPUS (a file, a folder of files, or a glob) into a .npy or .parquet file.

    Row i of the output is row i of the corpus (files in natural name order); --id-column carries ids along.
    Without --resume or --overwrite an existing output is refused.

    With --ray, the job runs on a Ray actor pool and --out is a folder: row i of <shard-stem>.npy is row i of
    that shard; shards already complete are skipped (--resume is implied); --threads is the CPUs per actor
    and --chunk-rows the rows per retried work item.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if unique_ids and id_column is None:
        raise click.UsageError("--unique-ids needs --id-column")
    if chunk_overlap is not None and chunk_tokens is None and not resume:
        raise click.UsageError(f"--chunk-overlap {chunk_overlap} needs --chunk-tokens N")
    lengths = {"max_length": max_length, "chunk_tokens": chunk_tokens, "chunk_overlap": chunk_overlap}
    if ray_address is not None:
        if inflight != 1:
            raise click.UsageError(f"--inflight {inflight}: not supported with --ray (its actors run one batch "
                                   "at a time)")
        _run_ray(corpus, out_path, model_dir, ray_address, num_actors, gpus_per_actor, device,
                 output_format=out_format or "npy", id_column=id_column, unique_ids=unique_ids, column=column,
                 kind=kind, instruction=instruction, variant=variant, threads=threads, dtype=dtype,
                 normalize=normalize, on_null=on_null, overwrite=overwrite, chunk_rows=chunk_rows,
                 token_budget=token_budget, max_batch_rows=max_batch_rows, progress=progress, **lengths)
        return
    if num_actors is not None or gpus_per_actor:
        raise click.UsageError("--num-actors and --gpus-per-actor need --ray")
    suffix = Path(out_path).suffix
    if out_format is not None and suffix != f".{out_format}":
        raise click.UsageError(f"--format {out_format} but --out {out_path!r} ends in {suffix or 'no suffix'!r}; "
                               f"name the output *.{out_format}")
    try:
        apply_process_settings(device)
        summary = embed_corpus(
            corpus, out_path, model_dir, column=column, kind=kind, instruction=instruction, device=device,
            variant=variant, threads=threads, dtype=dtype, normalize=normalize, on_null=on_null, resume=resume,
            overwrite=overwrite, chunk_rows=chunk_rows, token_budget=token_budget, max_batch_rows=max_batch_rows,
            progress=progress, inflight=inflight, id_column=id_column, unique_ids=unique_ids, **lengths,
        )
    except (EmbedError, ManifestError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary.format())


def apply_process_settings(device: str) -> dict[str, str]:
    """Set the process environment variables a ``lusifer-embed`` run wants, before anything is tokenised.

    On CUDA: ``RAYON_NUM_THREADS=4`` (:func:`~lusifer.runtime.tokenize.cuda_tokenizer_env`): the tokenizer's
    pool stays off the cores that the thread launching the CUDA kernels needs; a value the user set is kept.
    Only this entry point writes the environment; the library never does.

    Raises:
        DeviceError: ``device`` is not understood, or CUDA was asked for but is not available.

    Returns:
        The variables set.
    """
    settings = cuda_tokenizer_env() if resolve_device(device).kind == "cuda" else {}
    os.environ.update(settings)
    return settings


def _run_ray(corpus: str, out_dir: str, model_dir: str | None, address: str, num_actors: int | None,
             gpus_per_actor: int, device: str, *, threads: int | None, chunk_rows: int | None, **options) -> None:
    """Delegate ``--ray`` to :func:`~lusifer.runtime.ray_job.embed_corpus_ray` (ray is imported lazily)."""
    from lusifer.extras import MissingExtraError
    from lusifer.runtime.ray_job import embed_corpus_ray

    if device != "auto":
        raise click.UsageError("with --ray the device is chosen by --gpus-per-actor (1 = CUDA, 0 = CPU), not --device")
    try:
        summary = embed_corpus_ray(
            corpus, out_dir, model_dir, address=address or None, num_actors=num_actors,
            num_gpus_per_actor=gpus_per_actor, num_cpus_per_actor=threads or 1, rows_per_task=chunk_rows, **options,
        )
    except (EmbedError, ManifestError, MissingExtraError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary.format())
