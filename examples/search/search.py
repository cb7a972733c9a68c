"""Multilingual search over lusifer-embed output: embed a corpus, index it with FAISS, query in several languages.

    pip install 'lusifer[search]'          # faiss-cpu
    python examples/search/search.py --work /tmp/lusifer-search
    python examples/search/search.py --work /tmp/lusifer-search "¿Quién inventó la imprenta?" "火山"

Steps: ``corpus.jsonl`` (short passages in 14 languages and two long articles) is written as parquet; the corpus
job embeds it into ``vectors.npy`` (rerunning finds it complete), long articles as token windows
(``--chunk-tokens``) so their ends count too; the vectors go into a FAISS inner-product index (the vectors are
L2-normalised, so scores are cosines), saved as ``index.faiss``; the queries are embedded with the query prompt
and searched. Without arguments the queries of ``queries.jsonl`` are run and the hits checked against their
expected passage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lusifer.extras import require
from lusifer.runtime import Embedder, embed_corpus
from lusifer.runtime.default_model import resolve_default_model

HERE = Path(__file__).resolve().parent


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def build_index(vectors: np.ndarray):
    """An exact inner-product FAISS index of the (normalised) corpus vectors."""
    faiss = require("faiss", extra="search", purpose="build the search index")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return faiss, index


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("queries", nargs=-1)
@click.option("--work", "work_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for corpus.parquet, vectors.npy (+ sidecar) and index.faiss.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Export folder [default: the default model, lusifer-small].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Hits per query.")
@click.option("--chunk-tokens", type=click.IntRange(min=1), default=96, show_default=True,
              help="Window size for long passages (the default model takes 128 tokens per sequence).")
@click.option("--chunk-overlap", type=click.IntRange(min=0), default=16, show_default=True,
              help="Tokens shared by consecutive windows.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the hits as JSON.")
def main(queries: tuple[str, ...], work_dir: str, model_dir: str | None, device: str, top_k: int,
         chunk_tokens: int, chunk_overlap: int, json_out: str | None) -> None:
    """Embed the example corpus, index it and search it with QUERIES (default: those of queries.jsonl)."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    docs = read_jsonl(HERE / "corpus.jsonl")
    corpus = work / "corpus.parquet"
    pq.write_table(pa.table({k: [d[k] for d in docs] for k in ("id", "lang", "text")}), corpus)
    model = Path(model_dir) if model_dir else resolve_default_model(device)

    # 1. the corpus job: one vector per row (long rows pooled over their windows), resumable
    summary = embed_corpus(corpus, work / "vectors.npy", model, kind="document", device=device, resume=True,
                           chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, progress=False)
    click.echo(summary.format())
    vectors = np.load(work / "vectors.npy")

    # 2. the index: exact inner product = cosine on normalised vectors; saved for reuse
    faiss, index = build_index(vectors)
    faiss.write_index(index, str(work / "index.faiss"))
    click.echo(f"index: {index.ntotal} vectors of {index.d} dimensions -> {work / 'index.faiss'}")

    # 3. queries, embedded with the query prompt
    asked = [{"lang": "?", "text": q, "expected": None} for q in queries] or read_jsonl(HERE / "queries.jsonl")
    embedder = Embedder(model, device=device)
    query_vectors = embedder.embed([q["text"] for q in asked], kind="query")
    scores, rows = index.search(query_vectors, min(top_k, index.ntotal))
    results, correct = [], 0
    for q, score_row, hit_row in zip(asked, scores, rows):
        hits = [{"id": docs[r]["id"], "lang": docs[r]["lang"], "score": round(float(s), 4), "text": docs[r]["text"]}
                for s, r in zip(score_row, hit_row)]
        mark = ""
        if q["expected"]:
            correct += hits[0]["id"] == q["expected"]
            mark = "  [ok]" if hits[0]["id"] == q["expected"] else f"  [expected {q['expected']}]"
        click.echo(f"\n[{q['lang']}] {q['text']}{mark}")
        for h in hits:
            preview = h["text"] if len(h["text"]) <= 90 else h["text"][:87] + "..."
            click.echo(f"  {h['score']:.3f}  {h['id']:<12} {preview}")
        results.append({**q, "hits": hits})
    if any(q["expected"] for q in asked):
        click.echo(f"\ntop-1 correct: {correct} of {len(asked)} queries")
    if json_out:
        Path(json_out).write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    sys.exit(main())
