"""Graph A/B on CPU: several ONNX graphs of one model over the very same batches, in alternation.

``python -m benchmarks.graph_ab --tokenizer-export EXPORT --graph NAME=PATH [--graph NAME=PATH ...] --corpus C``

Used to decide between graph variants (fusions, INT8 block sizes, fewer learnable tokens) on a shared CPU:
every graph runs the same length-sorted token-budget batches of the runtime (tokenised once with the export
``--tokenizer-export``, outside the timed span), one graph after the other, ``--rounds`` times in turn; the best
round of each graph is reported with its ratio to the first graph, so load that comes and goes costs every
graph alike. A graph may take its own export with ``NAME=PATH@EXPORT`` (another tokenizer or prompt, e.g. a
model with fewer learnable tokens: its rows then carry other token counts, which the file reports). Min and mean
cosine of each graph's vectors to the first graph's (same texts) are reported too; they mean something only for
graphs of the same weights. The variants are made with :mod:`benchmarks.graph_variants`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lusifer.vectors import l2_normalize, row_cosines

from benchmarks.common import BenchmarkError, RESULTS_DIR, fail, machine_info, md_table, setup_logging, write_results

logger = logging.getLogger(__name__)


def parse_graph(spec: str, default_export: str) -> tuple[str, Path, str]:
    """``NAME=PATH`` or ``NAME=PATH@EXPORT`` -> (name, graph path, export folder for its tokenizer)."""
    if "=" not in spec:
        raise BenchmarkError(f"--graph {spec!r}: expected NAME=PATH or NAME=PATH@EXPORT")
    name, rest = spec.split("=", 1)
    path, _, export = rest.partition("@")
    graph = Path(path)
    if not graph.is_file():
        raise BenchmarkError(f"--graph {spec!r}: {path!r} is not a file")
    return name, graph, export or default_export


def run(args) -> dict:
    from lusifer.runtime import Embedder
    from lusifer.runtime.export_folder import load_manifest
    from lusifer.runtime.session import create_session, resolve_device

    texts = pq.read_table(args.corpus, columns=["text"]).column("text").to_pylist()[: args.rows]
    graphs = [parse_graph(g, args.tokenizer_export) for g in args.graph]
    if len({g[0] for g in graphs}) != len(graphs):
        raise BenchmarkError(f"--graph names repeat: {[g[0] for g in graphs]}")
    device = resolve_device("cpu")
    plans = {}
    for export in sorted({g[2] for g in graphs}):
        # the batches of the fp32 graph; an --int8-only export has only its (batch-invariant) block INT8 graph
        variant = "fp32" if "fp32" in load_manifest(export).variants else None
        embedder = Embedder(export, device="cpu", variant=variant, verify=False, threads=1)
        if embedder.one_row_per_pass:
            raise BenchmarkError(f"--tokenizer-export {export}: no fp32 graph and its {embedder.variant!r} graph "
                                 "runs one row per pass; give an export with the fp32 or block INT8 graph")
        tokens = embedder.tokenize(texts, kind="document")
        plans[export] = (embedder.make_batches(tokens), int(tokens.lengths.sum()))
    sessions = {name: create_session(path, device, args.threads) for name, path, _ in graphs}
    times: dict[str, list[float]] = {name: [] for name, _, _ in graphs}
    vectors: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for name, _, export in graphs:
            batches, _ = plans[export]
            session = sessions[name]
            parts = []
            started = time.perf_counter()
            for batch in batches:
                parts.append((batch.positions, session.run(None, {"input_ids": batch.input_ids,
                                                                  "attention_mask": batch.attention_mask})[0]))
            times[name].append(time.perf_counter() - started)
            out = np.empty((len(texts), parts[0][1].shape[1]), dtype=np.float32)
            for positions, emb in parts:
                out[positions] = l2_normalize(emb)
            vectors[name] = out
            logger.info("round %d/%d: %s %.2f s", r + 1, args.rounds, name, times[name][-1])
    first = graphs[0][0]
    rows = {}
    for name, path, export in graphs:
        batches, tokens = plans[export]
        best = min(times[name])
        cos = row_cosines(vectors[name], vectors[first])
        rows[name] = {"graph": str(path), "export": export, "best_seconds": best, "seconds_each_round": times[name],
                      "rows_per_s": len(texts) / best, "tokens": tokens,
                      "padded_tokens": int(sum(b.input_ids.size for b in batches)),
                      "speed_vs_first": min(times[first]) / best,
                      "min_cosine_to_first": float(cos.min()), "mean_cosine_to_first": float(cos.mean()),
                      "bytes": Path(path).stat().st_size}
    return {"benchmark": "graph_ab", "machine": machine_info(), "corpus": args.corpus, "corpus_rows": len(texts),
            "threads": args.threads, "rounds": args.rounds, "first": first, "graphs": rows, "note": args.note}


def markdown(doc: dict) -> str:
    lines = [f"# Graph A/B on CPU\n\n{doc['corpus_rows']} rows of {doc['corpus']}, {doc['threads']} threads, best of "
             f"{doc['rounds']} alternating rounds.\n"]
    if doc.get("note"):
        lines.append(doc["note"] + "\n")
    table = [[n, g["rows_per_s"], f"{g['speed_vs_first']:.2f}x", g["tokens"], g["padded_tokens"],
              f"{g['min_cosine_to_first']:.6f}", f"{g['bytes'] / 1e6:.1f}"] for n, g in doc["graphs"].items()]
    lines.append(md_table(["graph", "rows/s", f"vs {doc['first']}", "tokens", "padded tokens",
                           f"min cos vs {doc['first']}", "graph MB"], table))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer-export", required=True, help="export folder whose tokenizer and prompt make the ids")
    parser.add_argument("--graph", action="append", required=True, help="NAME=PATH[@EXPORT]; the first is the baseline")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--note", default="", help="a sentence for the results file (what the graphs are)")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default="graph_ab")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        doc = run(args)
    except BenchmarkError as exc:
        fail(exc)
    json_path, md_path = write_results(args.out_dir, args.name, doc, markdown(doc))
    logger.info("wrote %s and %s", json_path, md_path)
    print(markdown(doc))


if __name__ == "__main__":
    main()
