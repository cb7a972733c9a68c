"""Throughput and memory benchmark of ``embed_corpus`` (proves the speed/memory figures in the README).

``python -m lusifer.runtime.benchmark EXPORT_DIR [--rows N] [--device cpu] [--threads T] [--naive]``

Writes a synthetic multilingual parquet corpus (half are sentence fragments, half one to four sentences
from the package sample, so lengths vary widely and some rows pass max_length), embeds it with the given
settings, and prints rows/s, tokens/s, padding share and peak resident memory. ``--naive`` also runs
unsorted fixed batches of 32 rows (chunk = batch = 32) for comparison.
"""

from __future__ import annotations

import json
import resource
import tempfile
from importlib import resources
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lusifer.runtime.job import embed_corpus


def synthetic_corpus(folder: Path, rows: int, shards: int = 4, seed: int = 0) -> Path:
    """Write ``rows`` multilingual texts of varied length into ``shards`` parquet files under ``folder``."""
    sample = resources.files("lusifer").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8")
    lines = [line for line in sample.splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-rows // shards)
    for s in range(shards):
        n = max(0, min(per_shard, rows - s * per_shard))
        texts = []
        for _ in range(n):
            if rng.random() < 0.5:  # a fragment: the first few words of a sentence
                words = lines[int(rng.integers(len(lines)))].split()
                texts.append(" ".join(words[: int(rng.integers(1, len(words) + 1))]))
            else:  # one to four sentences
                texts.append(" ".join(lines[j] for j in rng.integers(0, len(lines), size=int(rng.integers(1, 5)))))
        pq.write_table(pa.table({"text": pa.array(texts, type=pa.string())}), folder / f"part-{s}.parquet",
                       row_group_size=10_000)
    return folder


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@click.command()
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--rows", default=20_000, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--variant", default=None)
@click.option("--threads", type=int, default=None)
@click.option("--token-budget", type=int, default=None)
@click.option("--chunk-rows", type=int, default=None)
@click.option("--naive", is_flag=True, help="Also run unsorted fixed batches of 32 rows.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Write the figures as JSON.")
def main(export_dir, rows, device, variant, threads, token_budget, chunk_rows, naive, json_out):
    """Benchmark lusifer-embed on a synthetic corpus."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="lusifer-bench-") as tmp:
        corpus = synthetic_corpus(Path(tmp) / "corpus", rows)
        runs = {"sorted": dict(chunk_rows=chunk_rows, token_budget=token_budget)}
        if naive:
            runs["naive-32"] = dict(chunk_rows=32, token_budget=10**9, max_batch_rows=32)
        for name, opts in runs.items():
            s = embed_corpus(corpus, Path(tmp) / f"{name}.npy", export_dir, device=device, variant=variant,
                             threads=threads, progress=False, **opts)
            results[name] = {
                "rows": s.rows, "seconds": s.seconds, "rows_per_s": s.rows_per_s, "tokens_per_s": s.tokens_per_s,
                "padding": round(1 - s.tokens / s.padded_tokens, 4), "truncated": s.truncated,
                "device": s.device, "provider": s.provider, "variant": s.variant, "threads": s.threads,
                "token_budget": s.token_budget, "chunk_rows": s.chunk_rows, "peak_rss_mib": round(peak_rss_mib(), 1),
            }
            click.echo(f"{name}: {json.dumps(results[name])}")
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
