"""GPU suite: ONNX Runtime CUDA fp16 vs PyTorch bf16 eager on one corpus, with FLOPs and the fraction of peak.

``python -m benchmarks.gpu_suite --shape small --tokenizer BASE/encoder-me5-small --corpus CORPUS.parquet``
``python -m benchmarks.gpu_suite --shape paper --decoder-layers 8 --tokenizer BASE/encoder-me5-small --corpus ...``

Model: ``--model-dir`` (a saved LusiferModel, e.g. the merged lusifer-small from
``benchmarks.prepare_small``) or a random-weight model of ``--shape`` built into the work folder
(:mod:`benchmarks.models`; ``--decoder-layers`` cuts the decoder when the full export does not fit a lease:
the results say how many layers were measured). Export: ``--export-dir`` or an fp16 export made with
``python -m lusifer.export.benchmark MODEL OUT --dtype fp16`` into the work folder. Both are reused when
present, so ``--prepare-only`` can run in an earlier command of a lease.

Rows (each a fresh child process, same corpus, same token ids):

1. ``lusifer-embed``: the real command line, parquet -> .npy, ``--device cuda --variant fp16`` (IO binding,
   token-budget batches, tokenisation and writing overlapped);
2. ``ort-model-only``: the same fp16 graph and session through the runtime's ``GraphRunner`` over the same
   batches, pre-tokenised and pre-padded (model only);
3. ``pytorch-sorted``: ``LusiferModel`` in bf16, eager, SDPA attention, over the same batches (model only);
4. ``pytorch-unsorted``: the same over fixed batches of ``--naive-batch`` rows in corpus order, padded to a
   multiple of 8 (the original LUSIFER encode's batching; model only).

Model-only rows run ``--warmup`` batches first; ``lusifer-embed`` is timed by its own summary (pipeline
span, model loading excluded). FLOPs (:mod:`benchmarks.flops`) are counted per text at its length
(*useful*) and on the padded batch shapes (*executed*); the fraction of peak is useful TFLOP/s over the
best trial of a bf16 8192^3 matrix product measured by this run (``workers peak``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

from benchmarks.batches import fixed_plan, read_texts, tokenize_corpus, window_plan
from benchmarks.common import (
    DEFAULT_WORK_DIR,
    ORT_POOL_EMBED_ENTRY,
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
    require_file,
    require_model,
    run_child,
    setup_logging,
    worker_cmd,
    write_results,
)
from benchmarks.corpus import corpus_facts, ensure_corpus
from benchmarks.flops import executed_flops, parameter_count, shape_from_model_dir, useful_flops
from benchmarks.models import SHAPES, model_info
from lusifer.onnx_interface import DEFAULT_FP16_FUSIONS, FP16_FUSIONS

logger = logging.getLogger(__name__)

DEFAULT_ROWS = ("lusifer-embed", "ort-model-only", "pytorch-sorted", "pytorch-unsorted")
# ort-baseline: with --baseline-export, added to the rows it is given to. The lusifer-embed-* rows are the CLI
# with one setting changed (for the end-to-end gap): one ORT intra-op thread (--threads 1), the tokenizer pool
# capped from outside (RAYON_NUM_THREADS=4, as the runtime's in-code CUDA default should do by itself), or two
# batches in flight (--inflight 2: the next batch is launched while the GPU computes the previous one).
EMBED_VARIANTS = {"lusifer-embed-ort1": (["--threads", "1"], {}),
                  "lusifer-embed-rayon4": ([], {"RAYON_NUM_THREADS": "4"}),
                  "lusifer-embed-inflight2": (["--inflight", "2"], {}),
                  "lusifer-embed-ort-pool": ([], {})}
# rows run with ONNX Runtime's own intra-op pool on CUDA (one spinning thread per core; the runtime's CUDA
# sessions had it until 2026-12-03 and now have one thread): lusifer-embed and model-only, for the A/B
ORT_POOL_ROWS = ("lusifer-embed-ort-pool", "ort-model-only-pool")
# ort-attention*: with --attention-export (an export made with --fp16-fusions all), model-only on that graph with
# cuDNN attention switched on (ONNX Runtime 1.31's own choice on Hopper) and off (the runtime's CUDA default since
# 2026-12-03: the memory-efficient kernel instead; now the sdpa_kernel provider option of
# lusifer.runtime.session.cuda_provider_options, which a set ORT_ENABLE_CUDNN_FLASH_ATTENTION overrides).
ATTENTION_ROWS = {"ort-attention": {"ORT_ENABLE_CUDNN_FLASH_ATTENTION": "1"},
                  "ort-attention-no-cudnn": {"ORT_ENABLE_CUDNN_FLASH_ATTENTION": "0"}}
ROWS = (*DEFAULT_ROWS, "ort-baseline", "ort-model-only-pool", *ATTENTION_ROWS, *EMBED_VARIANTS)
TARGETS = {"small_ort_vs_pytorch": 1.5, "paper_ort_vs_pytorch": 1.0, "paper_fraction_of_peak": 0.60,
           "embed_vs_model_only": 0.90}


def prepare(args, work: Path) -> tuple[Path, Path, dict]:
    """The model and fp16 export folders (built when missing) and the export report, if one was made."""
    if args.model_dir:
        model = require_model(args.model_dir, "--model-dir")
    else:
        full = SHAPES[args.shape]["decoder"]["layers"]
        layers = args.decoder_layers or full
        if not 1 <= layers <= full:
            raise BenchmarkError(f"--decoder-layers {args.decoder_layers}: the {args.shape} shape has 1 to {full}")
        if args.shape != "tiny" and not args.tokenizer:
            raise BenchmarkError(f"--shape {args.shape} with random weights needs --tokenizer: a folder with the real "
                                 "XLM-R tokenizer, e.g. BASE/encoder-me5-small from lusifer-train prepare-base")
        model = work / f"model-{args.shape}-dec{layers}"
        if not (model / "lusifer_config.json").is_file():
            cmd = worker_cmd("build-random", "--shape", args.shape, "--out", model, "--device", args.build_device)
            if args.tokenizer:
                cmd += ["--tokenizer", str(require_dir(args.tokenizer, "--tokenizer folder", "tokenizer.json"))]
            if args.decoder_layers:
                cmd += ["--decoder-layers", str(args.decoder_layers)]
            run_child(cmd, f"build random {args.shape} model")
    report = {}
    if args.export_dir:
        export = require_export(args.export_dir, "fp16", "--export-dir")
    else:
        suffix = "" if args.fp16_fusions == DEFAULT_FP16_FUSIONS else f"-{args.fp16_fusions}"
        export = work / f"export-{model.name}-fp16{suffix}"
        report_file = work / f"export-{model.name}-fp16{suffix}.json"
        if not (export / "manifest.json").is_file():
            run_child([sys.executable, "-m", "lusifer.export.benchmark", model, export, "--dtype", "fp16",
                       "--fp16-fusions", args.fp16_fusions, "--json", report_file], "export fp16")
        if report_file.is_file():
            report = json.loads(report_file.read_text("utf-8"))
    return model, export, report


def run_row(name: str, args, model: Path, export: Path, corpus: Path, work: Path, flop_check: bool) -> dict:
    graph = {"ort-baseline": args.baseline_export, **dict.fromkeys(ATTENTION_ROWS, args.attention_export)}.get(name, export)
    plan_opts = ["--export", graph, "--corpus", corpus, "--device", args.device, "--warmup", args.warmup,
                 "--window-rows", args.window_rows, "--token-budget", args.token_budget,
                 "--max-batch-rows", args.max_batch_rows]
    if name == "lusifer-embed" or name in EMBED_VARIANTS:
        extra_args, extra_env = EMBED_VARIANTS.get(name, ([], {}))
        out = work / "lusifer-embed.npy"
        remove_output(out)
        cmd = embed_cmd(corpus, "--out", out, "--model", export, "--device", args.device, "--variant",
                        "fp16", "--kind", "document", "--no-progress", "--chunk-rows", args.window_rows,
                        "--token-budget", args.token_budget, "--max-batch-rows", args.max_batch_rows, *extra_args)
        if name in ORT_POOL_ROWS:
            cmd[2] = ORT_POOL_EMBED_ENTRY
        child = run_child(cmd, name, env=extra_env or None)
        s = embed_summary(out)
        remove_output(out)
        r = {"rows": s["rows_this_run"], "seconds": s["seconds"], "tokens": s["tokens"],
             "padded_tokens": s["padded_tokens"], "provider": s["provider"], "variant": s["variant"],
             "warmup_seconds": s.get("warmup_seconds"), "timing": s.get("timing")}
    elif name in ("ort-model-only", "ort-model-only-pool", "ort-baseline", *ATTENTION_ROWS):
        pool = ["--ort-pool"] if name in ORT_POOL_ROWS else []
        child = run_child(worker_cmd("ort-batches", "--variant", "fp16", "--plan", "window", *pool, *plan_opts),
                          name, env=ATTENTION_ROWS.get(name) or None)
        r = child.result
    else:
        plan = ["--plan", "window"] if name == "pytorch-sorted" else ["--plan", "fixed", "--batch-rows",
                                                                        args.naive_batch]
        cmd = worker_cmd("torch-batches", "--model", model, "--dtype", "bf16", *plan, *plan_opts)
        if flop_check:
            cmd.append("--flop-check")
        child = run_child(cmd, name)
        r = child.result
    return {**r, "wall_seconds": child.wall_s, "peak_rss_mib": child.peak_rss_mib}


def figures(r: dict, flops_useful: float, flops_executed: float, peak_tflops: float) -> dict:
    s = r["seconds"]
    useful = flops_useful / s / 1e12
    return {**r, "rows_per_s": r["rows"] / s, "tokens_per_s": r["tokens"] / s,
            "padding": 1 - r["tokens"] / r["padded_tokens"], "useful_tflops": useful,
            "executed_tflops": flops_executed / s / 1e12, "fraction_of_peak": useful / peak_tflops}


def targets(shape: str, rows: dict) -> list[dict]:
    out = []
    ort, torch_sorted, embed = rows.get("ort-model-only"), rows.get("pytorch-sorted"), rows.get("lusifer-embed")
    if ort and torch_sorted:
        x = ort["tokens_per_s"] / torch_sorted["tokens_per_s"]
        need = TARGETS["paper_ort_vs_pytorch"] if shape == "paper" else TARGETS["small_ort_vs_pytorch"]
        out.append({"what": f"ORT fp16 (model only) >= {need}x PyTorch bf16 eager (sorted, same batches)",
                    "measured": round(x, 2), "pass": x >= need})
    if ort and shape == "paper":
        f = ort["fraction_of_peak"]
        out.append({"what": f"ORT fp16 (model only) >= {TARGETS['paper_fraction_of_peak']:.0%} of measured bf16 peak "
                            "(useful FLOPs)", "measured": f"{f:.1%}", "pass": f >= TARGETS["paper_fraction_of_peak"]})
    if ort and embed:
        x = embed["tokens_per_s"] / ort["tokens_per_s"]
        out.append({"what": f"lusifer-embed end to end >= {TARGETS['embed_vs_model_only']:.0%} of model-only tokens/s",
                    "measured": f"{x:.1%}", "pass": x >= TARGETS["embed_vs_model_only"]})
    return out


def end_to_end_rounds(rounds: dict) -> str:
    """Per round, each lusifer-embed row against the model-only row of the same session settings in that round."""
    lines = []
    for name, runs in rounds.items():
        if not name.startswith("lusifer-embed"):
            continue
        paired = "ort-model-only-pool" if name in ORT_POOL_ROWS else "ort-model-only"
        for i, r in enumerate(runs):
            model = rounds.get(paired, [])
            if i >= len(model):
                continue
            t = r.get("timing") or {}
            lines.append([name, i + 1, r["tokens_per_s"], model[i]["tokens_per_s"],
                          f"{r['tokens_per_s'] / model[i]['tokens_per_s']:.1%}", t.get("infer_s"), model[i]["seconds"],
                          t.get("wait_tokens_s")])
    if not lines:
        return ""
    return ("\n### End to end per round (each against the model-only row with the same session settings, same round)\n\n"
            + md_table(["row", "round", "tokens/s", "model-only tokens/s", "end to end", "model calls s",
                        "model-only s", "waiting for tokens s"], lines) + "\n")


def markdown(doc: dict) -> str:
    m = doc["model"]
    layers = m["info"].get("decoder_layers")
    full = m["info"].get("decoder_layers_full")
    cut = f" ({layers} of {full} decoder layers)" if layers and full and layers != full else ""
    p = doc["peak"]
    text = (f"# GPU suite: {doc['shape']} shape{cut}, {m['info'].get('weights', '')}\n\n"
            f"Model {m['dir']} ({m['matrix_parameters'] / 1e6:,.1f}M matrix parameters); export {m['export']}. "
            f"Corpus: {doc['corpus']['path']} ({doc['corpus']['rows']} rows, {doc['corpus']['tokens']:,} tokens). "
            f"Device: {doc['device']}. Measured peak: {p['device_name']} {p['dtype']} {p['size']}^3 matmul, best "
            f"{p['best_tflops']:.4g} TFLOP/s (median {p['median_tflops']:.4g}). Median of {doc['repeats']} round(s)."
            "\n\n")
    text += md_table(["row", "tokens/s", "rows/s", "padding", "useful TFLOP/s", "% of peak", "executed TFLOP/s",
                      "seconds", "batches"],
                     [[n, r["tokens_per_s"], r["rows_per_s"], f"{r['padding']:.1%}", r["useful_tflops"],
                       f"{r['fraction_of_peak']:.1%}", r["executed_tflops"], r["seconds"], r.get("batches")]
                      for n, r in doc["rows"].items()])
    text += "\n" + "\n".join(f"- {n}: {d}" for n, d in doc["row_descriptions"].items() if n in doc["rows"]) + "\n"
    embed = doc["rows"].get("lusifer-embed")
    if embed and embed.get("timing"):
        t = embed["timing"]
        text += (f"\nlusifer-embed span {embed['seconds']:.3g} s (after loading and a {embed['warmup_seconds']:.3g} s "
                 f"warm-up batch): model {t['infer_s']:.3g} s, waiting for tokens {t['wait_tokens_s']:.3g} s, "
                 f"handing to the writer {t.get('handoff_s', 0):.3g} s, first batch done at {t['first_batch_s']:.3g} s, "
                 f"last commit {t['tail_s']:.3g} s.\n")
    text += end_to_end_rounds(doc.get("rounds") or {})
    check = doc.get("flop_check")
    if check:
        text += (f"\nFLOP counter check on one batch {check['batch']}: torch FlopCounterMode "
                 f"{check['torch_flop_counter']:.4g}, benchmarks.flops {check['analytic']:.4g} "
                 f"(linear layers only {check['analytic_linear_only']:.4g}).\n")
    for label, prof in (doc.get("kernel_profile") or {}).items():
        total = prof["kernel_seconds"] or 1.0
        text += (f"\n## CUDA kernel time by category: {label} ({prof['batches_profiled']} batches, "
                 f"{prof['tokens_profiled']:,} tokens, {prof['kernel_launches']:,} kernel launches, kernels "
                 f"{prof['kernel_seconds']:.3g} s of {prof['wall_seconds_profiled']:.3g} s wall)\n\n")
        if not prof["kernel_launches"]:
            text += "No CUDA kernels were recorded (the profiler saw no CUPTI activity).\n"
            continue
        text += md_table(["category", "seconds", "share"],
                         [[c, v, f"{v / total:.1%}"] for c, v in prof["by_category"].items()])
        text += "\n\nTop kernels:\n\n" + md_table(
            ["kernel", "category", "launches", "seconds", "share"],
            [[k["name"][:90], k["category"], k["launches"], k["seconds"], f"{k['seconds'] / total:.1%}"]
             for k in prof["top_kernels"][:15]]) + "\n"
    text += "\n## Targets\n\n" + md_table(["target", "measured", "pass"],
                                          [[t["what"], t["measured"], "yes" if t["pass"] else "NO"]
                                           for t in doc["targets"]])
    return text


def run(args) -> dict:
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ROWS))
    if unknown or not names:
        raise BenchmarkError(f"--only {args.only!r}: unknown row(s) {unknown}; expected some of {', '.join(ROWS)}")
    if "ort-baseline" in names and not args.baseline_export:
        raise BenchmarkError("the ort-baseline row needs --baseline-export (a second fp16 export of the model)")
    if args.baseline_export and "ort-baseline" not in names:
        names.append("ort-baseline")
    if any(n in ATTENTION_ROWS for n in names) and not args.attention_export:
        raise BenchmarkError("the ort-attention rows need --attention-export (an export with --fp16-fusions all)")
    if args.attention_export:
        names += [n for n in ATTENTION_ROWS if n not in names]
        args.attention_export = require_export(args.attention_export, "fp16", "--attention-export")
    if args.profile and not args.device.startswith("cuda"):
        raise BenchmarkError(f"--profile records CUDA kernels; --device is {args.device!r}")
    if args.baseline_export:
        args.baseline_export = require_export(args.baseline_export, "fp16", "--baseline-export")
    if args.decoder_layers is not None and args.model_dir:
        raise BenchmarkError("--decoder-layers applies to random models; --model-dir is used as it is")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.corpus:
        corpus = require_file(args.corpus, "--corpus")
    elif args.suite:
        corpus = work / f"corpus-{args.rows}.parquet"
        ensure_corpus(require_dir(args.suite, "--suite", "suite.json"), corpus, args.rows)
    else:
        raise BenchmarkError("give --corpus (a parquet file from benchmarks.corpus) or --suite to build one")
    machine = machine_info()
    model, export, export_report = prepare(args, work)
    if args.prepare_only:
        logger.info("prepared model %s and export %s", model, export)
        return {}
    try:
        shape = shape_from_model_dir(model)
    except ValueError as exc:
        raise BenchmarkError(str(exc)) from exc
    tokens = tokenize_corpus(export, read_texts(corpus))
    lengths = tokens.lengths
    plans = {"window": window_plan(lengths, args.window_rows, args.token_budget, args.max_batch_rows),
             "fixed": fixed_plan(len(lengths), args.naive_batch)}
    flops_useful = useful_flops(shape, lengths)
    flops_exec = {k: executed_flops(shape, p.shapes(lengths)) for k, p in plans.items()}
    peak = run_child(worker_cmd("peak", "--device", args.device, "--dtype", args.peak_dtype, "--size",
                                args.peak_size), "peak matmul").result
    rounds: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(args.repeats):
        for name in names:
            logger.info("round %d/%d: %s", i + 1, args.repeats, name)
            r = run_row(name, args, model, export, corpus, work, flop_check=(i == 0 and name == "pytorch-sorted"))
            plan = "fixed" if name == "pytorch-unsorted" else "window"
            rounds[name].append(figures(r, flops_useful, flops_exec[plan], peak["best_tflops"]))
            logger.info("%s: %.0f tokens/s, %.1f%% of peak", name, rounds[name][-1]["tokens_per_s"],
                        100 * rounds[name][-1]["fraction_of_peak"])
    profile = None
    if args.profile:
        profile = {}
        for label, folder in (("export", export), ("baseline", args.baseline_export)):
            if folder:
                profile[label] = run_child(worker_cmd("ort-profile", "--variant", "fp16", "--plan", "window",
                                                      "--export", folder, "--corpus", corpus, "--device", args.device,
                                                      "--window-rows", args.window_rows, "--token-budget",
                                                      args.token_budget, "--max-batch-rows", args.max_batch_rows),
                                           f"kernel profile ({label})").result
    rows = {n: {k: (statistics.median(r[k] for r in v) if isinstance(v[0][k], (int, float)) and
                    not isinstance(v[0][k], bool) else v[0][k]) for k in v[0]} for n, v in rounds.items()}
    expected_tokens = int(lengths.sum())
    mismatched = {n: r["tokens"] for n, r in rows.items() if r["tokens"] != expected_tokens}
    if mismatched:
        raise BenchmarkError(f"rows saw different token counts than the corpus ({expected_tokens}): {mismatched}")
    flop_check = rounds.get("pytorch-sorted", [{}])[0].get("flop_check")
    doc = {
        "benchmark": "gpu_suite", "machine": machine, "shape": args.shape, "device": args.device,
        "model": {"dir": str(model), "export": str(export), "info": model_info(model), "flop_shape": shape.to_dict(),
                  "matrix_parameters": parameter_count(shape), "export_report": export_report},
        "corpus": {"path": str(corpus), "rows": len(lengths), "tokens": expected_tokens,
                   "facts": corpus_facts(corpus)},
        "plans": {k: {"name": p.name, "batches": len(p.batches), "padded_tokens": p.padded_tokens(lengths)}
                  for k, p in plans.items()},
        "flops": {"useful": flops_useful, "executed": flops_exec}, "peak": peak, "repeats": args.repeats,
        "rows": rows, "rounds": rounds, "flop_check": flop_check, "targets": targets(args.shape, rows),
        "row_descriptions": {
            "lusifer-embed": f"lusifer-embed CLI, ORT fp16 on {args.device} (IO binding on CUDA), parquet to .npy "
                             "(end to end)",
            "ort-model-only": "same fp16 graph and session (GraphRunner), same batches, pre-tokenised",
            "pytorch-sorted": "LusiferModel bf16 eager, SDPA, same length-sorted batches, pre-tokenised",
            "pytorch-unsorted": f"LusiferModel bf16 eager, SDPA, fixed batches of {args.naive_batch} in corpus order",
            "ort-baseline": f"as ort-model-only, with the fp16 graph of {args.baseline_export}",
            "ort-attention": f"as ort-model-only, with the fp16 graph of {args.attention_export} and "
                             "ORT_ENABLE_CUDNN_FLASH_ATTENTION=1 (cuDNN attention)",
            "ort-attention-no-cudnn": "as ort-attention, with ORT_ENABLE_CUDNN_FLASH_ATTENTION=0",
            "lusifer-embed-ort1": "as lusifer-embed, with --threads 1 (one ONNX Runtime intra-op thread)",
            "lusifer-embed-rayon4": "as lusifer-embed, with RAYON_NUM_THREADS=4 set from outside",
            "lusifer-embed-inflight2": "as lusifer-embed, with --inflight 2 (two batches in flight)",
            "lusifer-embed-ort-pool": "as lusifer-embed, with ONNX Runtime's own intra-op pool on CUDA (one spinning "
                                      "thread per core; the runtime's setting before 2026-12-03)",
            "ort-model-only-pool": "as ort-model-only, with ONNX Runtime's own intra-op pool on CUDA",
        },
        "kernel_profile": profile,
    }
    json_path, md_path = write_results(args.out_dir, args.name or f"gpu_{args.shape}", doc, markdown(doc))
    logger.info("wrote %s and %s", json_path, md_path)
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=tuple(SHAPES), required=True,
                        help="model shape (random weights), or the shape --model-dir has (names the targets)")
    parser.add_argument("--decoder-layers", type=int, default=None, help="cut the random model's decoder")
    parser.add_argument("--model-dir", help="a saved LusiferModel folder instead of a random model")
    parser.add_argument("--export-dir", help="an fp16 export of the model (default: exported into the work folder)")
    parser.add_argument("--tokenizer", help="folder with the real encoder tokenizer (random small/paper shapes)")
    parser.add_argument("--corpus", help="parquet corpus (benchmarks.corpus)")
    parser.add_argument("--suite", help="development suite folder, to build the corpus when --corpus is not given")
    parser.add_argument("--rows", type=int, default=50_000, help="corpus rows when built from --suite")
    parser.add_argument("--device", default="cuda", help="cuda (the real run) or cpu (a dry run of the script)")
    parser.add_argument("--build-device", default="cpu",
                        help="where random weights are initialised (cuda is faster; only cpu was tried)")
    parser.add_argument("--only", default=",".join(DEFAULT_ROWS), help=f"comma-separated rows ({', '.join(ROWS)})")
    parser.add_argument("--naive-batch", type=int, default=32, help="rows per batch of pytorch-unsorted")
    parser.add_argument("--window-rows", type=int, default=None, help="rows per sorting window [runtime default]")
    parser.add_argument("--token-budget", type=int, default=None, help="padded tokens per batch [runtime default]")
    parser.add_argument("--max-batch-rows", type=int, default=None, help="rows per batch [runtime default]")
    parser.add_argument("--warmup", type=int, default=8, help="batches run before timing the model-only rows")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all rows, in turn (median reported)")
    parser.add_argument("--peak-size", type=int, default=8192)
    parser.add_argument("--peak-dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--baseline-export", help="a second fp16 export of the same model, measured as the "
                        "ort-baseline row (e.g. one made with lusifer-export --fp16-fusions none)")
    parser.add_argument("--attention-export", help="an fp16 export with --fp16-fusions all, measured as the "
                        "ort-attention rows (ONNX Runtime's choice of attention kernel, and without cuDNN)")
    parser.add_argument("--profile", action="store_true",
                        help="also record CUDA kernel time by category (torch.profiler) for the export(s)")
    parser.add_argument("--fp16-fusions", choices=FP16_FUSIONS, default=DEFAULT_FP16_FUSIONS,
                        help="fusion level of the fp16 export made when --export-dir is not given (lusifer-export "
                             "--fp16-fusions; 'all' runs with ONNX Runtime's attention kernel, cuDNN attention off)")
    parser.add_argument("--prepare-only", action="store_true", help="build the model and export, then stop")
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR / "gpu_suite"))
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default=None, help="results file stem [gpu_<shape>]")
    args = parser.parse_args(argv)
    setup_logging()
    from lusifer.runtime.embedder import DEFAULT_MAX_BATCH_ROWS, DEFAULT_TOKEN_BUDGET, DEFAULT_WINDOW_ROWS

    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    args.window_rows = args.window_rows or DEFAULT_WINDOW_ROWS[kind]
    args.token_budget = args.token_budget or DEFAULT_TOKEN_BUDGET[kind]
    args.max_batch_rows = args.max_batch_rows or DEFAULT_MAX_BATCH_ROWS[kind]
    try:
        doc = run(args)
    except BenchmarkError as exc:
        fail(exc)
    if doc:
        print(markdown(doc))


if __name__ == "__main__":
    main()
