"""Edge: export size on disk, cold start and single-text latency on CPU, for the fp32 and int8 graphs.

``python -m benchmarks.edge --fp32 EXPORT --int8 EXPORT_INT8 --suite DATA/eval``

- Size: bytes of each variant's files (graph + external data, from the manifest) plus ``tokenizer.json`` and
  ``manifest.json`` (what a device needs to ship), in MB (10^6 bytes) and MiB.
- Cold start: a fresh Python process per measurement, from just before it is spawned to the moment it prints
  the first vector: ``from lusifer.runtime import Embedder; Embedder(EXPORT, device="cpu", variant=V,
  threads=T).embed([text])`` (imports, sha256 verification of the files unless ``--no-verify``, session
  creation, tokenisation, one forward pass). ``--cold-repeats`` processes each; the first may read the files
  from disk, later ones from the page cache: both the first and the median are reported.
- Latency: one process per (variant, threads) calls ``Embedder.embed([text], kind="query")`` ``--iterations``
  times after ``--warmup`` calls; p50 / p90 / p99 in ms. The text is the first development-suite text whose
  query prompt tokenises to exactly ``--tokens`` tokens (or ``--text``).

- Session A/B (``--session-ab``): single-text latency of the int8 variant (else fp32) on the most threads
  under ONNX Runtime session settings laid over the runtime's own (:data:`SESSION_AB`), all in one process and
  interleaved round by round (``latency-ab`` worker), so load from other processes falls on every setting alike.

Targets (int8): size <= 250 MB, cold start <= 3 s (median, 2 threads, verification on), p50 <= 50 ms on 2 threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (
    REPO_ROOT,
    RESULTS_DIR,
    BenchmarkError,
    child_env,
    fail,
    machine_info,
    md_table,
    require_dir,
    require_export,
    run_child,
    setup_logging,
    worker_cmd,
    write_results,
)

logger = logging.getLogger(__name__)

TARGETS = {"int8_size_mb": 250, "cold_start_s": 3.0, "p50_ms_2_threads": 50.0}
# --session-ab: name -> settings laid over lusifer.runtime.session.session_options (opt= the graph optimisation
# level; other keys are ONNX Runtime session config entries). "runtime" is the product as it is.
SESSION_AB = {
    "runtime": "",
    "spinning": "session.intra_op.allow_spinning=1",
    "denormal-as-zero": "session.set_denormal_as_zero=1",
    "dynamic-block-base-4": "session.dynamic_block_base=4",
    "opt-extended": "opt=extended",
    "opt-basic": "opt=basic",
}
COLD_START = (
    "import sys\n"
    "from lusifer.runtime import Embedder\n"
    "e = Embedder(sys.argv[1], device='cpu', variant=sys.argv[2], threads=int(sys.argv[3]), verify=sys.argv[4] == '1')\n"
    "v = e.embed([sys.argv[5]], kind='query')\n"
    "print('FIRST_VECTOR', v.shape[1], flush=True)\n"
)


def export_size(folder: Path, variant: str) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
    files = sorted(manifest["variants"][variant]["files"]) + [manifest.get("tokenizer_file", "tokenizer.json"),
                                                              "manifest.json"]
    sizes = {f: (folder / f).stat().st_size for f in files}
    total = sum(sizes.values())
    graph = sum(v for f, v in sizes.items() if f not in ("tokenizer.json", "manifest.json"))
    return {"files": sizes, "total_bytes": total, "total_mb": total / 1e6, "total_mib": total / 2**20,
            "graph_mb": graph / 1e6}


def pick_text(export: Path, suite: str | None, text: str | None, tokens: int) -> tuple[str, int]:
    """The given text, or the first suite text whose query prompt has exactly ``tokens`` tokens (else closest)."""
    from benchmarks.batches import tokenize_corpus

    if text is not None:
        return text, int(tokenize_corpus(export, [text], kind="query").lengths[0])
    if suite is None:
        raise BenchmarkError("give --suite (to pick a text of --tokens tokens) or --text")
    from benchmarks.corpus import text_pool

    pool = [t for t, _, _ in text_pool(suite)[0]]
    lengths = tokenize_corpus(export, pool, kind="query").lengths
    best = min(range(len(pool)), key=lambda i: (abs(int(lengths[i]) - tokens), i))
    return pool[best], int(lengths[best])


def cold_start(export: Path, variant: str, threads: int, verify: bool, text: str) -> float:
    """Seconds from spawning a fresh interpreter to its first vector."""
    cmd = [sys.executable, "-c", COLD_START, str(export), variant, str(threads), "1" if verify else "0", text]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(), cwd=REPO_ROOT)
    for line in proc.stdout:
        if line.startswith(b"FIRST_VECTOR"):
            seconds = time.perf_counter() - started
            break
    else:
        proc.wait()
        raise BenchmarkError(f"cold-start child failed (exit {proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    proc.communicate()
    return seconds


def run(args) -> dict:
    exports = {}
    if args.fp32:
        exports["fp32"] = require_export(args.fp32, "fp32", "--fp32 export folder")
    if args.int8:
        exports["int8"] = require_export(args.int8, "int8", "--int8 export folder")
    if not exports:
        raise BenchmarkError("give --fp32 and/or --int8 export folders")
    if args.suite:
        args.suite = str(require_dir(args.suite, "--suite (development suite folder)", "suite.json"))
    try:
        threads = sorted({int(t) for t in args.threads.split(",") if t.strip()})
    except ValueError as exc:
        raise BenchmarkError(f"--threads {args.threads!r}: expected comma-separated counts like 1,2") from exc
    if not threads or min(threads) < 1:
        raise BenchmarkError(f"--threads {args.threads!r}: expected positive counts")
    machine = machine_info()
    text, n_tokens = pick_text(next(iter(exports.values())), args.suite, args.text, args.tokens)
    logger.info("text of %d tokens: %r", n_tokens, text)
    variants = {}
    for variant, folder in exports.items():
        entry = {"export": str(folder), "size": export_size(folder, variant), "cold_start": {}, "latency": {}}
        for verify in (True, False):
            key = f"threads_{max(threads)}_verify_{'on' if verify else 'off'}"
            runs = [cold_start(folder, variant, max(threads), verify, text) for _ in range(args.cold_repeats)]
            entry["cold_start"][key] = {"first_s": runs[0], "median_s": statistics.median(runs), "min_s": min(runs),
                                        "runs_s": runs}
            logger.info("%s cold start (%s): median %.2f s", variant, key, statistics.median(runs))
        for t in threads:
            child = run_child(worker_cmd("latency", "--export", folder, "--variant", variant, "--threads", t,
                                         "--text", text, "--iterations", args.iterations, "--warmup", args.warmup),
                              f"latency {variant} {t} thread(s)")
            entry["latency"][str(t)] = {**child.result, "peak_rss_mib": child.peak_rss_mib}
            logger.info("%s %d thread(s): p50 %.2f ms, p99 %.2f ms", variant, t, child.result["p50_ms"],
                        child.result["p99_ms"])
        variants[variant] = entry
    doc = {"benchmark": "edge", "machine": machine, "text": text, "text_tokens": n_tokens, "threads": threads,
           "cold_repeats": args.cold_repeats, "variants": variants, "targets": targets(variants, threads),
           "note": args.note}
    if args.session_ab:
        variant = "int8" if "int8" in exports else "fp32"
        settings = [f"{name}:{spec}" if spec else name for name, spec in SESSION_AB.items()]
        child = run_child(worker_cmd("latency-ab", "--export", exports[variant], "--variant", variant,
                                     "--threads", max(threads), "--text", text, "--iterations", args.iterations,
                                     "--warmup", args.warmup, "--rounds", args.ab_rounds,
                                     *[a for s in settings for a in ("--setting", s)]),
                          f"session A/B {variant} {max(threads)} thread(s)")
        doc["session_ab"] = child.result
        for name, r in child.result["settings"].items():
            logger.info("session A/B %s: p50 %.2f ms, p90 %.2f ms", name, r["p50_ms"], r["p90_ms"])
    json_path, md_path = write_results(args.out_dir, args.name, doc, markdown(doc))
    logger.info("wrote %s and %s", json_path, md_path)
    return doc


def targets(variants: dict, threads: list[int]) -> list[dict]:
    v = variants.get("int8")
    if v is None:
        return []
    out = [{"what": f"int8 export <= {TARGETS['int8_size_mb']} MB", "measured": round(v["size"]["total_mb"], 1),
            "pass": v["size"]["total_mb"] <= TARGETS["int8_size_mb"]}]
    key = f"threads_{max(threads)}_verify_on"
    cold = v["cold_start"][key]["median_s"]
    out.append({"what": f"int8 cold start <= {TARGETS['cold_start_s']} s ({key})", "measured": round(cold, 2),
                "pass": cold <= TARGETS["cold_start_s"]})
    if "2" in v["latency"]:
        p50 = v["latency"]["2"]["p50_ms"]
        out.append({"what": f"int8 p50 <= {TARGETS['p50_ms_2_threads']} ms on 2 threads", "measured": round(p50, 2),
                    "pass": p50 <= TARGETS["p50_ms_2_threads"]})
    return out


def markdown(doc: dict) -> str:
    text = (f"# Edge: single texts on CPU\n\nText ({doc['text_tokens']} tokens with the query prompt): "
            f"{doc['text']!r}\n\n" + (f"{doc['note']}\n\n" if doc.get("note") else "") + "## Size on disk\n\n")
    text += md_table(["variant", "total MB", "total MiB", "graph MB", "export"],
                     [[k, v["size"]["total_mb"], v["size"]["total_mib"], v["size"]["graph_mb"], v["export"]]
                      for k, v in doc["variants"].items()])
    text += f"\n## Cold start (process start to first vector, {doc['cold_repeats']} processes each)\n\n"
    text += md_table(["variant", "setting", "first s", "median s", "min s"],
                     [[k, s, c["first_s"], c["median_s"], c["min_s"]] for k, v in doc["variants"].items()
                      for s, c in v["cold_start"].items()])
    text += "\n## Latency of one text (Embedder.embed)\n\n"
    text += md_table(["variant", "threads", "p50 ms", "p90 ms", "p99 ms", "mean ms", "peak RSS MiB"],
                     [[k, t, r["p50_ms"], r["p90_ms"], r["p99_ms"], r["mean_ms"], r["peak_rss_mib"]]
                      for k, v in doc["variants"].items() for t, r in v["latency"].items()])
    text += "\n## Targets\n\n" + md_table(["target", "measured", "pass"],
                                          [[t["what"], t["measured"], "yes" if t["pass"] else "NO"]
                                           for t in doc["targets"]])
    ab = doc.get("session_ab")
    if ab:
        base = ab["settings"].get("runtime", {}).get("p50_ms")
        text += (f"\n## Session settings A/B ({ab['variant']}, {ab['threads']} threads, one process, {ab['rounds']} "
                 "interleaved rounds)\n\n")
        text += md_table(["setting", "over the runtime's options", "p50 ms", "p90 ms", "p99 ms", "mean ms",
                          "p50 vs runtime", "CPU ms per call (p50, all threads)"],
                         [[name, ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "-", r["p50_ms"],
                           r["p90_ms"], r["p99_ms"], r["mean_ms"], f"{base / r['p50_ms']:.3f}x" if base else "-",
                           r.get("cpu_p50_ms")]
                          for name, r in ab["settings"].items()])
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", help="export folder with the fp32 graph")
    parser.add_argument("--int8", help="export folder with the int8 graph")
    parser.add_argument("--suite", help="development suite folder (to pick the text)")
    parser.add_argument("--text", help="the text to embed (instead of picking one from --suite)")
    parser.add_argument("--tokens", type=int, default=32, help="token count of the picked text (query prompt)")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts for latency")
    parser.add_argument("--cold-repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--session-ab", action="store_true",
                        help="also A/B ONNX Runtime session settings (SESSION_AB) on the single text")
    parser.add_argument("--ab-rounds", type=int, default=10, help="interleaved rounds of the session A/B")
    parser.add_argument("--note", default="", help="a sentence for the results file (how it was run)")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default="edge", help="results file stem")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        doc = run(args)
    except BenchmarkError as exc:
        fail(exc)
    print(markdown(doc))


if __name__ == "__main__":
    main()
