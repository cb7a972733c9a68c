"""Retrieval quality of the compact output dtypes on the development suite's bitext tasks.

``python -m benchmarks.compact_bitext --suite DATA/eval [--model EXPORT_DIR] [--rows 200]``

Embeds both sides of every bitext task of the suite (the first ``--rows`` rows of each; every distinct text
once) with
``lusifer-embed`` (float32 parquet output with ``--id-column``, ``--kind query`` and lusifer-eval's bitext
instruction; the rows shuffled with ``--seed`` so that the first chunk, which calibrates int8 / uint8, is a mix
of every language as in a real corpus; ``--chunk-rows`` 256 by default so that the calibration sees a part of
the corpus only, as on a real corpus larger than 2048 rows), then scores every task as ``lusifer-eval`` does
(MTEB bitext-mining F1: each ``sentence1`` retrieves its nearest English ``sentence2``) with:

* ``float32``: cosine of the float vectors (lusifer-eval's score);
* ``float16``: cosine of the float16 vectors;
* ``int8`` / ``uint8``: the codes :mod:`lusifer.runtime.compact` gives with ranges calibrated on the first chunk
  (``--chunk-rows`` rows, as ``lusifer-embed --dtype int8`` does), scored by cosine of the raw codes (what an
  index over the codes computes) and by cosine of the dequantized vectors;
* ``binary`` / ``ubinary`` (the same bits): Hamming distance of the packed bits.

Writes ``benchmarks/results/cpu/compact_bitext.json`` and ``.md`` (paths made portable).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import (
    DEFAULT_WORK_DIR,
    RESULTS_DIR,
    BenchmarkError,
    embed_cmd,
    fail,
    machine_info,
    require_dir,
    run_child,
    setup_logging,
    write_results,
)

logger = logging.getLogger(__name__)

NAME = "compact_bitext"
BITEXT_INSTRUCTION = "Retrieve parallel sentences"  # lusifer-eval's default for bitext
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def load_bitext(suite: Path, rows: int | None) -> list:
    """``[(task, lang, sentence1 list, sentence2 list)]`` of the suite's bitext tasks (first ``rows`` rows)."""
    from lusifer.evaluation.suite import SuiteError, load_suite, load_task

    try:
        tasks = [t for t in load_suite(suite).tasks if t.type == "bitext"]
    except SuiteError as exc:
        raise BenchmarkError(str(exc)) from exc
    if not tasks:
        raise BenchmarkError(f"suite {str(suite)!r} has no bitext tasks")
    out = []
    for task in tasks:
        data = load_task(task, limit=rows)
        out.append((task.name, task.lang, list(data.sentence1), list(data.sentence2)))
    return out


def hamming_nearest(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Index of the candidate with the fewest differing bits for each packed query (ties: lowest index)."""
    out = np.empty(len(queries), dtype=np.int64)
    for i, q in enumerate(queries):
        out[i] = int(np.argmin(_POPCOUNT[np.bitwise_xor(candidates, q)].sum(axis=1)))
    return out


def score_task(e1: np.ndarray, e2: np.ndarray, ranges: np.ndarray) -> dict[str, float]:
    """Bitext F1 (x100) of one task under every dtype / scoring."""
    from lusifer.evaluation.metrics import bitext_mining, bitext_scores_from_predictions
    from lusifer.runtime.compact import dequantize, quantize

    scores = {"float32": bitext_mining(e1, e2)["f1"],
              "float16": bitext_mining(e1.astype(np.float16), e2.astype(np.float16))["f1"]}
    for dtype in ("int8", "uint8"):
        c1, c2 = quantize(e1, dtype, ranges), quantize(e2, dtype, ranges)
        scores[f"{dtype} (codes, cosine)"] = bitext_mining(c1.astype(np.float32), c2.astype(np.float32))["f1"]
        scores[f"{dtype} (dequantized, cosine)"] = bitext_mining(dequantize(c1, dtype, ranges),
                                                                 dequantize(c2, dtype, ranges))["f1"]
    b1, b2 = quantize(e1, "ubinary"), quantize(e2, "ubinary")
    scores["binary (Hamming)"] = bitext_scores_from_predictions(hamming_nearest(b1, b2))["f1"]
    return {k: round(100 * v, 2) for k, v in scores.items()}


def anonymise(data: dict, suite: Path, model: Path) -> dict:
    """``data`` without local absolute paths outside the repository (suite -> DATA/eval, model -> its name);
    :func:`benchmarks.common.write_results` makes the rest portable."""
    text = json.dumps(data, ensure_ascii=False)
    for path, name in ((str(Path(suite).resolve()), "DATA/eval"), (str(suite), "DATA/eval"),
                       (str(Path(model).resolve()), f"MODELS/{Path(model).parent.name}/{Path(model).name}"),
                       (str(DEFAULT_WORK_DIR.parent.parent), ".")):
        text = text.replace(path, name)
    out = json.loads(text)
    out.get("embed_summary", {}).pop("output", None)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", required=True, help="development suite folder (suite.json)")
    parser.add_argument("--model", default=None, help="export folder [default: the default model, lusifer-small]")
    parser.add_argument("--rows", type=int, default=40, help="first rows of each bitext task (0 = all)")
    parser.add_argument("--chunk-rows", type=int, default=256,
                        help="lusifer-embed --chunk-rows: int8/uint8 are calibrated on the first chunk")
    parser.add_argument("--threads", type=int, default=None, help="lusifer-embed --threads")
    parser.add_argument("--seed", type=int, default=0, help="row shuffle seed")
    parser.add_argument("--work", default=str(DEFAULT_WORK_DIR / NAME), help="work folder (corpus, vectors)")
    parser.add_argument("--results", default=str(RESULTS_DIR / "cpu"), help="results folder")
    args = parser.parse_args(argv)
    setup_logging()
    machine = machine_info()
    try:
        suite = require_dir(args.suite, "suite folder", "suite.json")
        if args.model is None:
            from lusifer.runtime.default_model import resolve_default_model

            model = resolve_default_model("cpu", progress=False)
        else:
            model = require_dir(args.model, "export folder", "manifest.json")
        tasks = load_bitext(suite, args.rows or None)
        # every distinct text once (the English sides repeat across tasks), in a shuffled order
        distinct = list(dict.fromkeys(t for _n, _l, s1, s2 in tasks for t in (*s1, *s2)))
        random.Random(args.seed).shuffle(distinct)
        rows = [(f"t{k}", text) for k, text in enumerate(distinct)]
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "bitext.parquet"
        pq.write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]}), corpus)
        out = work / "vectors.parquet"
        # --resume: a rerun on the same corpus and model reuses complete vectors (lusifer-embed's own check)
        cmd = embed_cmd(corpus, "--out", out, "--model", model, "--resume", "--device", "cpu", "--kind", "query",
                        "--instruction", BITEXT_INSTRUCTION, "--id-column", "id", "--unique-ids",
                        "--chunk-rows", args.chunk_rows, "--no-progress",
                        *(["--threads", args.threads] if args.threads else []))
        child = run_child(cmd, "lusifer-embed")
        table = pq.read_table(out)
        ids = table.column("id").to_pylist()
        if ids != [r[0] for r in rows]:
            raise BenchmarkError(f"{out} does not carry the corpus ids in row order")
        vectors = np.stack(table.column("embedding").to_numpy()).astype(np.float32)
        summary = json.loads(Path(f"{out}.json").read_text("utf-8"))["summary"]
        variant, seconds = summary["variant"], summary["seconds"]
        from lusifer.runtime.compact import calibrate, storage_width

        ranges = calibrate(vectors[: args.chunk_rows])  # what lusifer-embed --dtype int8 stores in the sidecar
        where = {text: k for k, (_id, text) in enumerate(rows)}
        per_task = {}
        for name, lang, s1, s2 in tasks:
            e1 = vectors[[where[t] for t in s1]]
            e2 = vectors[[where[t] for t in s2]]
            per_task[name] = {"lang": lang, "rows": len(s1), **score_task(e1, e2, ranges)}
            logger.info("%s: %s", name, per_task[name])
    except BenchmarkError as exc:
        fail(exc)
    keys = [k for k in per_task[tasks[0][0]] if k not in ("lang", "rows")]
    average = {k: round(float(np.mean([t[k] for t in per_task.values()])), 2) for k in keys}
    dim = vectors.shape[1]
    bytes_per_vector = {"float32": 4 * dim, "float16": 2 * dim, "int8": dim, "uint8": dim,
                        "binary": storage_width("binary", dim)}
    data = {
        "benchmark": NAME, "machine": machine, "model": str(model), "suite": str(suite),
        "rows_per_task": args.rows or "all", "texts": len(rows), "dim": dim, "chunk_rows": args.chunk_rows,
        "seed": args.seed, "embed_seconds": seconds, "embed_summary": summary,
        "embed_peak_rss_mib_this_call": child.peak_rss_mib,
        "bytes_per_vector": bytes_per_vector, "average_f1": average, "tasks": per_task,
    }
    lines = [f"# Compact output dtypes: bitext F1 on the development suite ({len(tasks)} bitext tasks)", "",
             f"MTEB bitext-mining F1 x100 (each xx sentence retrieves its nearest English one), first "
             f"{args.rows or 'all'} rows of each task, {len(rows)} distinct texts embedded once by lusifer-embed "
             f"(CPU, variant {variant}, {seconds:.0f} s); int8/uint8 "
             f"calibrated on the first {min(args.chunk_rows, len(rows))} rows of the shuffled corpus "
             f"(seed {args.seed}), as `lusifer-embed --dtype int8` does. Binary = Hamming distance of the bits.", "",
             "| scoring | bytes / vector | avg F1 | drop vs float32 |", "|---|---:|---:|---:|"]
    for k in keys:
        size = bytes_per_vector[k.split(" ")[0]]
        lines.append(f"| {k} | {size} | {average[k]:.2f} | {average[k] - average['float32']:+.2f} |")
    lines += ["", "Per task:", "", "| task | rows | " + " | ".join(keys) + " |",
              "|---|---:|" + "---:|" * len(keys)]
    for name, t in per_task.items():
        lines.append(f"| {name} | {t['rows']} | " + " | ".join(f"{t[k]:.1f}" for k in keys) + " |")
    json_path, md_path = write_results(args.results, NAME, anonymise(data, suite, model), "\n".join(lines))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
