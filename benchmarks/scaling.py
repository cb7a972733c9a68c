"""Scaling: ``lusifer-embed`` on 10k, 100k and 1M rows: time should grow linearly, peak RSS stay flat.

``python -m benchmarks.scaling --model EXPORT_INT8 --suite DATA/eval [--sizes 10000,100000,1000000]``

For every size a corpus of that many rows is built from the development suite (:mod:`benchmarks.corpus`:
the ~18k distinct texts repeated and reshuffled with the seed; cached in the work folder) and the real
command line ``lusifer-embed CORPUS --out OUT.npy --model EXPORT --variant V --device D --threads T`` runs
as a child process (the ``lusifer.runtime.cli:main`` entry point with this interpreter). Measured: the
child's wall time and peak RSS (``wait4``: that process alone), and the run's own summary (embedding seconds,
rows/s, tokens/s, padding) from the output's sidecar. The output is deleted after each size
(``--keep-outputs`` keeps it; 1M x 576 float32 is 2.3 GB). Each finished size is recorded in the work
folder; ``--resume`` reuses those made with the same model, variant, threads and seed (the results mark them),
so a day-long run can be continued after an interruption.

Targets: seconds per row flat across sizes (the embedding span's seconds per row, largest / smallest, within
1.10; linear growth means ~1.0) and peak RSS within 10% from 100k to 1M rows.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
from pathlib import Path

from benchmarks.common import (
    DEFAULT_WORK_DIR,
    RESULTS_DIR,
    BenchmarkError,
    embed_cmd,
    embed_summary,
    fail,
    machine_info,
    md_table,
    remove_output,
    require_dir,
    require_export,
    run_child,
    setup_logging,
    write_results,
)
from benchmarks.corpus import ensure_corpus

logger = logging.getLogger(__name__)

DEFAULT_SIZES = "10000,100000,1000000"
RSS_TOLERANCE = 0.10
LINEAR_TOLERANCE = 0.10  # largest / smallest seconds per row


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise BenchmarkError(f"--sizes {text!r}: expected comma-separated row counts like 10000,100000") from exc
    if not sizes or any(s < 1 for s in sizes):
        raise BenchmarkError(f"--sizes {text!r}: expected positive row counts")
    return sorted(sizes)


def run_size(args, size: int, work: Path) -> dict:
    """Measure one size; with ``--resume`` a size finished earlier with the same settings is reused."""
    record = work / f"size-{size}.json"
    settings = {"model": args.model, "variant": args.variant, "threads": args.threads, "seed": args.seed}
    if args.device != "cpu":  # CPU records made before --device existed stay reusable
        settings["device"] = args.device
    if args.resume and record.is_file():
        done = json.loads(record.read_text("utf-8"))
        if done.get("settings") == settings:
            logger.info("reusing the %d-row measurement of %s (--resume)", size, done["measured_at"])
            return {**done["result"], "reused_from": done["measured_at"]}
    result = measure_size(args, size, work)
    record.write_text(json.dumps({"settings": settings, "measured_at": _dt.datetime.now(_dt.timezone.utc)
                                  .isoformat(timespec="seconds"), "result": result}, indent=2) + "\n", "utf-8")
    return result


def measure_size(args, size: int, work: Path) -> dict:
    corpus = work / f"corpus-{size}.parquet"
    facts = ensure_corpus(args.suite, corpus, size, args.seed)
    out = work / f"vectors-{size}.npy"
    remove_output(out)
    cmd = embed_cmd(corpus, "--out", out, "--model", args.model, "--variant", args.variant, "--device", args.device,
                    *(["--threads", args.threads] if args.threads else []), "--kind", "document", "--no-progress")
    child = run_child(cmd, f"lusifer-embed {size} rows")
    s = embed_summary(out)
    if not args.keep_outputs:
        remove_output(out)
    return {
        "rows": size, "distinct_texts": facts["distinct_texts"], "max_copies_of_a_text": facts["max_copies_of_a_text"],
        "wall_seconds": child.wall_s, "peak_rss_mib": child.peak_rss_mib, "embed_seconds": s["seconds"],
        "rows_per_s": s["rows_per_s"], "tokens_per_s": s["tokens_per_s"], "tokens": s["tokens"],
        "padding": 1 - s["tokens"] / s["padded_tokens"], "truncated": s["truncated"], "threads": s["threads"],
        "variant": s["variant"], "seconds_per_1k_rows": 1000 * s["seconds"] / size,
        "wall_seconds_per_1k_rows": 1000 * child.wall_s / size, "command": " ".join(map(str, cmd)),
    }


def targets(sizes: list[dict]) -> list[dict]:
    out = []
    per_row = [s["seconds_per_1k_rows"] for s in sizes]
    if len(per_row) > 1:
        spread = max(per_row) / min(per_row)
        out.append({"what": "time linear in rows: largest / smallest seconds per row (embedding span)",
                    "measured": round(spread, 3), "pass": spread <= 1 + LINEAR_TOLERANCE})
    by_rows = {s["rows"]: s for s in sizes}
    if 100_000 in by_rows and 1_000_000 in by_rows:
        growth = by_rows[1_000_000]["peak_rss_mib"] / by_rows[100_000]["peak_rss_mib"] - 1
        out.append({"what": "peak RSS 1M rows within 10% of 100k rows", "measured": f"{growth:+.1%}",
                    "pass": abs(growth) <= RSS_TOLERANCE})
    elif len(sizes) > 1:
        growth = sizes[-1]["peak_rss_mib"] / sizes[-2]["peak_rss_mib"] - 1
        out.append({"what": f"peak RSS {sizes[-1]['rows']} rows within 10% of {sizes[-2]['rows']} rows",
                    "measured": f"{growth:+.1%}", "pass": abs(growth) <= RSS_TOLERANCE})
    return out


def markdown(doc: dict) -> str:
    rows = [[s["rows"], s["embed_seconds"], s["wall_seconds"], s["rows_per_s"], s["tokens_per_s"],
             s["seconds_per_1k_rows"], s["peak_rss_mib"], f"{s['padding']:.1%}", s.get("reused_from", "this run")]
            for s in doc["sizes"]]
    where = "CUDA" if doc.get("device") == "cuda" else "CPU"
    text = (f"# Scaling: lusifer-embed, {doc['variant']} on {where} ({doc['threads'] or 'default'} threads)\n\n"
            f"Model: {doc['model']}. Corpora: the development suite's {doc['sizes'][0]['distinct_texts']} distinct "
            "texts repeated and reshuffled to each size.\n\n")
    text += md_table(["rows", "embed s", "process s", "rows/s", "tokens/s", "s per 1k rows", "peak RSS MiB",
                      "padding", "measured"], rows)
    text += "\n## Targets\n\n" + md_table(["target", "measured", "pass"],
                                          [[t["what"], t["measured"], "yes" if t["pass"] else "NO"]
                                           for t in doc["targets"]])
    return text


def run(args) -> dict:
    sizes = parse_sizes(args.sizes)
    if args.threads is None and args.device == "cpu":
        args.threads = 2
    args.model = str(require_export(args.model, args.variant, "--model export folder"))
    args.suite = str(require_dir(args.suite, "--suite (development suite folder)", "suite.json"))
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    results = []
    for size in sizes:
        results.append(run_size(args, size, work))
        r = results[-1]
        logger.info("%d rows: %.1f s, %.1f rows/s, peak RSS %.0f MiB", size, r["embed_seconds"], r["rows_per_s"],
                    r["peak_rss_mib"])
    doc = {"benchmark": "scaling", "machine": machine, "model": args.model, "variant": args.variant,
           "device": args.device, "threads": args.threads, "seed": args.seed, "sizes": results,
           "targets": targets(results)}
    json_path, md_path = write_results(args.out_dir, args.name, doc, markdown(doc))
    logger.info("wrote %s and %s", json_path, md_path)
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export folder")
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--suite", required=True, help="development suite folder (corpora are built from it)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated row counts")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="lusifer-embed --device (cuda: the export's fp16 graph on ONNX Runtime CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="lusifer-embed --threads [default: 2 on CPU, lusifer-embed's own default on CUDA]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR / "scaling"))
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default="scaling", help="results file stem")
    parser.add_argument("--keep-outputs", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="reuse sizes an earlier (interrupted) run finished with the same settings")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        doc = run(args)
    except BenchmarkError as exc:
        fail(exc)
    print(markdown(doc))


if __name__ == "__main__":
    main()
