"""CPU suite: four ways to embed the same corpus, side by side, plus the INT8 quality drift.

``python -m benchmarks.cpu_suite --model MERGED --fp32 EXPORT --int8 EXPORT_INT8 --int8-dynamic EXPORT_DYN --suite DATA/eval``

Rows (each a fresh child process, same corpus, same threads, run one after the other; ``--repeats R`` runs R
rounds in turn and reports the median):

1. ``pytorch-naive``: PyTorch eager fp32 as the original LUSIFER ``encode`` (batches of 32 in corpus order,
   texts tokenised one by one, padded to a multiple of 8);
2. ``pytorch-sorted``: PyTorch eager fp32 through ``LusiferModel.encode`` (length-sorted batches of 32);
3. ``ort-fp32`` and 4. ``ort-int8``: ``lusifer-embed`` (ONNX Runtime, length-sorted token-budget batches,
   tokenisation and writing overlapped) with ``--variant fp32`` / ``int8`` (``--int8``: the block INT8 graph,
   ``lusifer-export --quantize int8``, batched);
5. ``ort-int8-dynamic``: ``lusifer-embed --variant int8`` on ``--int8-dynamic`` (``--int8-scheme dynamic``: one
   row per forward pass);
6. ``ov-fp32`` and 7. ``ov-int8``: a peer row, the same ONNX graphs (of ``--fp32`` / ``--int8``) run by OpenVINO
   on CPU with the same threads, tokenisation and batches (``pip install openvino``; benchmark-only), fp32
   precision forced (OpenVINO would pick bf16 on CPUs with AVX-512 BF16 or AMX).

Reported per row: rows/s and tokens/s over the embedding span (model loading excluded; tokenisation
included), padding fraction, the child's peak RSS, process wall time, and the cosine of its vectors to
``pytorch-naive``'s (or the first row's) and to ``ort-fp32``'s. The CPU's instruction sets are in the machine
facts: the INT8 to fp32 ratio depends on them (VNNI, AMX). The quality drift runs ``lusifer-eval`` on the development suite with the fp32 graph of
``--fp32`` and the int8 graph of ``--int8`` and reports each language's score difference (x100 points).
The corpus is ``--corpus`` or one built from ``--suite`` (``--rows``, see :mod:`benchmarks.corpus`). A full
run takes hours on 2 cores: each finished row is recorded in the work folder and ``--resume`` continues an
interrupted run (rows measured earlier with the same settings are reused and marked as such).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import statistics
from pathlib import Path

import numpy as np

from lusifer.vectors import row_cosines

from benchmarks.common import (
    DEFAULT_WORK_DIR,
    RESULTS_DIR,
    BenchmarkError,
    embed_cmd,
    embed_summary,
    eval_cmd,
    fail,
    machine_info,
    md_table,
    remove_output,
    require_dir,
    require_export,
    require_file,
    require_model,
    run_child,
    setup_logging,
    worker_cmd,
    write_results,
)
from benchmarks.corpus import corpus_facts, ensure_corpus

logger = logging.getLogger(__name__)

ROWS = ("pytorch-naive", "pytorch-sorted", "ort-fp32", "ort-int8", "ort-int8-dynamic", "ov-fp32", "ov-int8")
# issue 24: the default CPU variant >= 2x fp32 (moonshot 3x), every row's cosine to fp32 >= 0.98, <= 1 point drop
TARGETS = {"int8_vs_ort_fp32": 2.0, "int8_vs_ort_fp32_moonshot": 3.0, "int8_vs_pytorch_naive": 4.0,
           "min_row_cosine_to_fp32": 0.98, "max_average_drop_points": 1.0}


def run_row_resumable(name: str, round_index: int, args, corpus: Path, work: Path) -> dict:
    """:func:`run_row`, recorded in the work folder; ``--resume`` reuses a record made with the same settings."""
    record = work / f"row-{name}-round{round_index}.json"
    stat = corpus.stat()
    settings = {"model": args.model, "fp32": args.fp32, "int8": args.int8, "int8_dynamic": args.int8_dynamic,
                "threads": args.threads,
                "batch_size": args.batch_size, "corpus": [str(corpus), stat.st_size, stat.st_mtime_ns]}
    if args.resume and record.is_file() and (work / f"{name}.npy").is_file():
        done = json.loads(record.read_text("utf-8"))
        if done.get("settings") == settings:
            logger.info("reusing %s round %d measured %s (--resume)", name, round_index + 1, done["measured_at"])
            return {**done["result"], "reused_from": done["measured_at"]}
    result = run_row(name, args, corpus, work)
    record.write_text(json.dumps({"settings": settings, "measured_at": _dt.datetime.now(_dt.timezone.utc)
                                  .isoformat(timespec="seconds"), "result": result}, indent=2) + "\n", "utf-8")
    return result


def run_row(name: str, args, corpus: Path, work: Path) -> dict:
    """One measured child run of row ``name``; returns its figures."""
    out = work / f"{name}.npy"
    remove_output(out)
    if name.startswith("pytorch"):
        mode = name.split("-")[1]
        child = run_child(worker_cmd("torch-cpu", "--model", args.model, "--corpus", corpus, "--mode", mode,
                                     "--batch-size", args.batch_size, "--threads", args.threads, "--out", out), name)
        r = child.result
        figures = {k: r[k] for k in ("rows", "seconds", "tokens", "padded_tokens", "threads", "load_seconds")}
        figures["how"] = f"PyTorch fp32 eager, batch {args.batch_size}, " + (
            "corpus order, per-text tokenisation, pad to multiple of 8 (original LUSIFER encode)" if mode == "naive"
            else "LusiferModel.encode (length-sorted)")
    elif name.startswith("ov-"):
        variant = name.split("-")[1]
        export = args.fp32 if variant == "fp32" else args.int8
        child = run_child(worker_cmd("openvino-cpu", "--export", export, "--variant", variant, "--corpus", corpus,
                                     "--threads", args.threads, "--precision", "f32", "--out", out), name)
        r = child.result
        figures = {k: r[k] for k in ("rows", "seconds", "tokens", "padded_tokens", "threads", "load_seconds")}
        figures["how"] = (f"OpenVINO {r['openvino'].split('-')[0]} CPU, the {variant} ONNX graph, precision "
                          f"{r['inference_precision']}, the runtime's tokenisation and token-budget batches")
    else:
        variant = name.split("-")[1]
        export = {"fp32": args.fp32, "int8": args.int8}[variant] if name != "ort-int8-dynamic" else args.int8_dynamic
        child = run_child(embed_cmd(corpus, "--out", out, "--model", export, "--variant", variant, "--device", "cpu",
                                    "--threads", args.threads, "--kind", "document", "--no-progress"), name)
        s = embed_summary(out)
        quantization = json.loads((Path(export) / "manifest.json").read_text("utf-8"))["variants"][variant].get(
            "quantization")
        figures = {"rows": s["rows_this_run"], "seconds": s["seconds"], "tokens": s["tokens"],
                   "padded_tokens": s["padded_tokens"], "threads": s["threads"], "truncated": s["truncated"],
                   "how": f"lusifer-embed --variant {variant}{f' ({quantization})' if quantization else ''} "
                          f"(token budget {s['token_budget']}, window {s['chunk_rows']} rows)",
                   "provider": s["provider"], "quantization": quantization}
    figures.update(wall_seconds=child.wall_s, peak_rss_mib=child.peak_rss_mib,
                   rows_per_s=figures["rows"] / figures["seconds"], tokens_per_s=figures["tokens"] / figures["seconds"],
                   padding=1 - figures["tokens"] / figures["padded_tokens"])
    return figures


def agreement(work: Path, names: list[str], reference: str) -> dict:
    """Row-wise cosine of each row's vectors to the reference row's."""
    ref = np.load(work / f"{reference}.npy")
    out = {}
    for name in names:
        cos = row_cosines(np.load(work / f"{name}.npy", mmap_mode="r"), ref)
        out[name] = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    return out


def same_model(fp32: str, int8: str) -> dict:
    """The source model of both exports; refuses exports of different models (the drift would mean nothing)."""
    sources = {}
    for name, folder in (("fp32", fp32), ("int8", int8)):
        source = json.loads((Path(folder) / "manifest.json").read_text("utf-8")).get("source", {})
        sources[name] = {"model_dir": source.get("model_dir"), "config_sha256": source.get("lusifer_config_sha256")}
    if sources["fp32"]["config_sha256"] != sources["int8"]["config_sha256"]:
        raise BenchmarkError(f"--fp32 and --int8 were exported from different models: {sources}")
    return sources


def quality_drift(args, work: Path) -> dict:
    """lusifer-eval with the fp32 and the int8 graph; per-language and average differences (int8 - fp32)."""
    sources = same_model(args.fp32, args.int8)
    runs = {}
    for variant, export in (("fp32", args.fp32), ("int8", args.int8)):
        out = work / f"eval-{variant}.json"
        cmd = eval_cmd("run", export, "--suite", args.suite, "--out", out, "--variant", variant,
                       "--resume" if args.resume else "--overwrite", "--name", f"ORT {variant}", "--device", "cpu")
        if args.eval_limit:
            cmd += ["--limit", str(args.eval_limit)]
        child = run_child(cmd, f"lusifer-eval {variant}")
        runs[variant] = json.loads(out.read_text("utf-8"))["runs"][0]
        runs[variant]["_wall_s"] = child.wall_s
    fp32, int8 = runs["fp32"], runs["int8"]
    languages, deltas = {}, []
    for lang, scores in fp32["languages"].items():
        for metric, value in scores.items():
            other = int8["languages"].get(lang, {}).get(metric)
            if other is None or metric == "bitext_accuracy":
                continue
            languages.setdefault(lang, {})[metric] = {"fp32": value, "int8": other, "delta": other - value}
            deltas.append(other - value)
    averages = {k: {"fp32": v, "int8": int8["averages"][k], "delta": int8["averages"][k] - v}
                for k, v in fp32["averages"].items() if v is not None}
    return {"limit": args.eval_limit, "sources": sources, "languages": languages, "averages": averages,
            "mean_delta_over_languages": statistics.fmean(deltas) if deltas else None,
            "eval_wall_seconds": {k: r["_wall_s"] for k, r in runs.items()},
            "metrics": "bitext F1 and STS Spearman, x100; delta = int8 - fp32"}


def summarize(rounds: list[dict]) -> dict:
    """Median of every numeric figure over the rounds (plus each round's rows/s)."""
    first = rounds[0]
    out = {k: (statistics.median(r[k] for r in rounds) if isinstance(v, (int, float)) else v)
           for k, v in first.items()}
    out["rows_per_s_each_round"] = [r["rows_per_s"] for r in rounds]
    out["reused_rounds"] = sum("reused_from" in r for r in rounds)
    return out


def markdown(doc: dict) -> str:
    rows = doc["rows"]
    models = ", ".join(f"{k}: {v}" for k, v in doc["model"].items())
    lines = [f"# CPU suite\n\nModels: {models}.\n",
             f"Corpus: {doc['corpus']['path']} ({doc['corpus']['facts'].get('rows')} rows, "
             f"{doc['corpus']['facts'].get('distinct_texts', '?')} distinct texts, "
             f"{len(doc['corpus']['facts'].get('languages', {})) or '?'} languages); {doc['threads']} threads; "
             f"median of {doc['repeats']} round(s).\n"]
    to_fp32 = doc.get("agreement_to_fp32") or {}
    both = doc["agreement_reference"] != "ort-fp32"  # a second cosine column only when it says something new
    table = [[n, r["rows_per_s"], r["tokens_per_s"], f"{r['padding']:.1%}", r["peak_rss_mib"], r["wall_seconds"],
              f"{doc['agreement'][n]['min_cosine']:.6f}",
              *([f"{to_fp32[n]['min_cosine']:.6f}" if n in to_fp32 else "-"] if both else []),
              r["how"] + (f" ({r['reused_rounds']} round(s) from an earlier run, --resume)" if r["reused_rounds"] else "")]
             for n, r in rows.items()]
    lines.append(md_table(["row", "rows/s", "tokens/s", "padding", "peak RSS MiB", "process s",
                           f"min cos vs {doc['agreement_reference']}", *(["min cos vs ort-fp32"] if both else []),
                           "how"], table))
    lines.append("\n## Targets\n")
    lines.append(md_table(["target", "measured", "pass"],
                          [[t["what"], t["measured"], "yes" if t["pass"] else "NO"] for t in doc["targets"]]))
    q = doc.get("quality")
    if q:
        lines.append(f"\n## INT8 quality drift (dev suite{', first ' + str(q['limit']) + ' rows' if q['limit'] else ''}"
                     f"; {q['metrics']})\n")
        qrows = [[lang, m, v["fp32"], v["int8"], v["delta"]] for lang, ms in q["languages"].items()
                 for m, v in ms.items()]
        qrows += [["average", k, v["fp32"], v["int8"], v["delta"]] for k, v in q["averages"].items()]
        lines.append(md_table(["language", "metric", "fp32", "int8", "delta"], qrows))
    return "\n".join(lines)


def targets(rows: dict, quality: dict | None, to_fp32: dict | None = None) -> list[dict]:
    out = []
    if "ort-int8" in rows and "ort-fp32" in rows:
        x = rows["ort-int8"]["rows_per_s"] / rows["ort-fp32"]["rows_per_s"]
        out.append({"what": f"ORT int8 >= {TARGETS['int8_vs_ort_fp32']}x ORT fp32 (rows/s)", "measured": round(x, 2),
                    "pass": x >= TARGETS["int8_vs_ort_fp32"]})
        out.append({"what": f"moonshot: ORT int8 >= {TARGETS['int8_vs_ort_fp32_moonshot']}x ORT fp32 (rows/s)",
                    "measured": round(x, 2), "pass": x >= TARGETS["int8_vs_ort_fp32_moonshot"]})
    if to_fp32 and "ort-int8" in to_fp32:
        c = to_fp32["ort-int8"]["min_cosine"]
        out.append({"what": f"every ORT int8 row's cosine to ORT fp32 >= {TARGETS['min_row_cosine_to_fp32']}",
                    "measured": round(c, 4), "pass": c >= TARGETS["min_row_cosine_to_fp32"]})
    if "ort-int8" in rows and "pytorch-naive" in rows:
        x = rows["ort-int8"]["rows_per_s"] / rows["pytorch-naive"]["rows_per_s"]
        out.append({"what": f"ORT int8 >= {TARGETS['int8_vs_pytorch_naive']}x PyTorch naive (rows/s)",
                    "measured": round(x, 2), "pass": x >= TARGETS["int8_vs_pytorch_naive"]})
    if quality and quality["mean_delta_over_languages"] is not None:
        d = quality["mean_delta_over_languages"]
        out.append({"what": f"int8 - fp32 score, mean over languages and metrics, >= -{TARGETS['max_average_drop_points']}"
                            " point (drop <= 1)", "measured": round(d, 2),
                    "pass": -d <= TARGETS["max_average_drop_points"]})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="merged LusiferModel folder (PyTorch rows)")
    parser.add_argument("--fp32", help="export folder with the fp32 graph")
    parser.add_argument("--int8", help="export folder with the int8 graph (lusifer-export --quantize int8)")
    parser.add_argument("--int8-dynamic", help="export folder with the dynamic int8 graph (--int8-scheme dynamic)")
    parser.add_argument("--suite", help="development suite folder: builds the corpus and measures the drift")
    parser.add_argument("--corpus", help="parquet corpus (default: built from --suite with --rows)")
    parser.add_argument("--rows", type=int, default=20_000, help="corpus rows when built from --suite")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows to run ({', '.join(ROWS)})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="PyTorch rows' batch size")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all rows, in turn (median reported)")
    parser.add_argument("--skip-quality", action="store_true", help="do not run the int8 drift on the suite")
    parser.add_argument("--eval-limit", type=int, default=None, help="first N rows of each suite task (quick runs)")
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR / "cpu_suite"))
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default="cpu_suite", help="results file stem")
    parser.add_argument("--keep-vectors", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="reuse rows (and lusifer-eval runs) an interrupted run finished with the same settings")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        doc = run(args)
    except BenchmarkError as exc:
        fail(exc)
    print(markdown(doc))


def run(args) -> dict:
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ROWS))
    if unknown or not names:
        raise BenchmarkError(f"--only {args.only!r}: unknown row(s) {unknown}; expected some of {', '.join(ROWS)}")
    if any(n.startswith("pytorch") for n in names):
        args.model = str(require_model(args.model, "--model (merged PyTorch model folder)"))
    if "ort-fp32" in names or not args.skip_quality:
        args.fp32 = str(require_export(args.fp32, "fp32", "--fp32 export folder"))
    if {"ort-int8", "ov-int8"} & set(names) or not args.skip_quality:
        args.int8 = str(require_export(args.int8, "int8", "--int8 export folder"))
    if "ort-int8-dynamic" in names:
        args.int8_dynamic = str(require_export(args.int8_dynamic, "int8", "--int8-dynamic export folder"))
    if "ov-fp32" in names:
        args.fp32 = str(require_export(args.fp32, "fp32", "--fp32 export folder"))
    if any(n.startswith("ov-") for n in names):
        try:
            import openvino  # noqa: F401
        except ImportError as exc:
            raise BenchmarkError(f"rows {', '.join(n for n in names if n.startswith('ov-'))} need OpenVINO: "
                                 "pip install openvino (a benchmark-only dependency)") from exc
    if not args.skip_quality or not args.corpus:
        args.suite = str(require_dir(args.suite, "--suite (development suite folder)", "suite.json"))
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    if args.corpus:
        corpus = require_file(args.corpus, "--corpus")
    else:
        corpus = work / f"corpus-{args.rows}.parquet"
        ensure_corpus(args.suite, corpus, args.rows)
    rounds: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names:
            logger.info("round %d/%d: %s", r + 1, args.repeats, name)
            rounds[name].append(run_row_resumable(name, r, args, corpus, work))
            logger.info("%s: %.1f rows/s, peak RSS %.0f MiB", name, rounds[name][-1]["rows_per_s"],
                        rounds[name][-1]["peak_rss_mib"])
    rows = {n: summarize(v) for n, v in rounds.items()}
    reference = "pytorch-naive" if "pytorch-naive" in names else names[0]
    agree = agreement(work, names, reference)
    to_fp32 = agreement(work, names, "ort-fp32") if "ort-fp32" in names else {}
    if not args.keep_vectors:
        for name in names:
            remove_output(work / f"{name}.npy")
            for record in work.glob(f"row-{name}-round*.json"):  # their vectors are gone: never reuse them
                record.unlink()
    quality = None if args.skip_quality else quality_drift(args, work)
    doc = {"benchmark": "cpu_suite", "machine": machine, "model": {"pytorch": args.model, "fp32": args.fp32,
                                                                    "int8": args.int8,
                                                                    "int8_dynamic": args.int8_dynamic},
           "corpus": {"path": str(corpus), "facts": corpus_facts(corpus)}, "threads": args.threads,
           "repeats": args.repeats, "rows": rows, "rounds": rounds, "agreement_reference": reference,
           "agreement": agree, "agreement_to_fp32": to_fp32, "quality": quality,
           "targets": targets(rows, quality, to_fp32)}
    doc["model"] = {k: v for k, v in doc["model"].items() if v}
    json_path, md_path = write_results(args.out_dir, args.name, doc, markdown(doc))
    logger.info("wrote %s and %s", json_path, md_path)
    return doc


if __name__ == "__main__":
    main()
