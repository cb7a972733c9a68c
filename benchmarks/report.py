"""Tables of the committed benchmark results, so that the docs and the README cannot drift from them.

Reads every ``benchmarks/results/**/*.json`` written by the benchmark scripts and writes

- ``docs/benchmarks.md``: one section per results file (rows, targets, machine, command), grouped by machine
  kind (``cpu``, ``h100``, ``h200``, ...), newest first;
- the README's performance table, between :data:`README_START` and :data:`README_END`: a handful of headline
  figures, each taken from the newest results file that measured it, with a link to that file.

Usage (from the repository root)::

    python -m benchmarks.report            # rewrite docs/benchmarks.md and the README table
    python -m benchmarks.report --check    # exit 1 if either is out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from benchmarks.common import REPO_ROOT, RESULTS_DIR, md_table

README_START = "<!-- performance-table:start (written by `python -m benchmarks.report` from benchmarks/results; do not edit) -->"
README_END = "<!-- performance-table:end -->"
DOCS_FILE = REPO_ROOT / "docs" / "benchmarks.md"
README_FILE = REPO_ROOT / "README.md"


class ReportError(Exception):
    """A results file cannot be read or rendered, a headline figure has no results file, or a marker is missing."""


# ---- results files -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    """One results file: its JSON data and where it lies."""

    path: Path
    data: dict

    @property
    def benchmark(self) -> str:
        return self.data["benchmark"]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def started(self) -> str:
        return self.data["machine"].get("started", "")

    @property
    def kind(self) -> str:
        """``cpu`` without a GPU, else the GPU's model in lower case (``h100``, ``h200``, ...)."""
        gpus = self.data["machine"].get("gpus") or []
        if not gpus:
            return "cpu"
        model = gpus[0].split(",")[0].replace("NVIDIA", "").split()
        return model[0].lower() if model else "gpu"

    def link(self, base: Path) -> str:
        """The Markdown file beside the JSON (the JSON when there is none), relative to ``base``."""
        target = self.path.with_suffix(".md")
        target = target if target.is_file() else self.path
        return _relative(target, base)

    @property
    def rows(self) -> dict:
        return self.data.get("rows") or {}


def _relative(target: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(target.resolve(), base.resolve())).as_posix()


def load_results(results_dir: Path) -> list[Result]:
    """Every results JSON under ``results_dir`` (files without a ``benchmark`` key are not results)."""
    if not results_dir.is_dir():
        raise ReportError(f"results folder {str(results_dir)!r} does not exist")
    results = []
    for path in sorted(results_dir.rglob("*.json")):
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ReportError(f"cannot read results file {str(path)!r}: {exc}") from exc
        if isinstance(data, dict) and "benchmark" in data:
            if not isinstance(data.get("machine"), dict):
                raise ReportError(f"results file {str(path)!r} has no machine facts")
            results.append(Result(path, data))
    return results


def latest(results: Sequence[Result], benchmark: str, what: str, *, gpu: bool | None = None,
           has_rows: Sequence[str] = (), where: Callable[[Result], bool] | None = None) -> Result:
    """The newest result of ``benchmark`` (on a GPU machine or not) with the rows named; else :class:`ReportError`."""
    found = [r for r in results if r.benchmark == benchmark
             and (gpu is None or (r.kind != "cpu") == gpu)
             and all(row in r.rows for row in has_rows)
             and (where is None or where(r))]
    if not found:
        raise ReportError(f"no results file for {what!r}: wanted a {benchmark} run"
                          + (f" with rows {', '.join(has_rows)}" if has_rows else "")
                          + (" on a GPU machine" if gpu else " on a CPU machine" if gpu is False else "")
                          + " under benchmarks/results")
    return max(found, key=lambda r: (r.started, r.name))


def _idle_at_start(r: Result) -> bool:
    """Whether the 1-minute load average at the start was at most the CPUs the run could use."""
    machine = r.data.get("machine", {})
    load = machine.get("load_average_at_start") or [0.0]
    return load[0] <= (machine.get("usable_cpus") or 1)


# ---- number formatting -------------------------------------------------------------------------------------
def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def _rate(x: float) -> str:
    """Rows or tokens per second: 3 significant figures below 100, whole numbers above."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _signed(x: float) -> str:
    return f"{x:+.2f}"


# ---- README headline table ---------------------------------------------------------------------------------
def _where(r: Result) -> str:
    if r.kind == "cpu":
        return f"CPU, {r.data['machine'].get('usable_cpus', '?')} cores"
    return f"GPU, {r.kind.upper()}"


def _quality_by_metric(quality: dict) -> dict[str, list[float]]:
    deltas: dict[str, list[float]] = {}
    for metrics in quality.get("languages", {}).values():
        for metric, values in metrics.items():
            deltas.setdefault(metric, []).append(values["delta"])
    return deltas


def headline_rows(results: Sequence[Result]) -> list[tuple[Result, str, str]]:
    """(results file, what was measured, figure) for each line of the README's performance table."""
    out = []

    r = latest(results, "cpu_suite", "INT8 vs fp32 on CPU", gpu=False, has_rows=("ort-fp32", "ort-int8"))
    fp32, int8 = r.rows["ort-fp32"], r.rows["ort-int8"]
    out.append((r, f"lusifer-small, `lusifer-embed` INT8 vs fp32, {_n(int8['rows'])} rows",
                f"{_rate(int8['rows_per_s'])} vs {_rate(fp32['rows_per_s'])} rows/s "
                f"(**{int8['rows_per_s'] / fp32['rows_per_s']:.2f}x**); peak RSS {_n(int8['peak_rss_mib'])} vs "
                f"{_n(fp32['peak_rss_mib'])} MiB"))

    r = latest(results, "cpu_suite", "ORT vs PyTorch on CPU", gpu=False, has_rows=("pytorch-naive", "ort-fp32"))
    naive, ort = r.rows["pytorch-naive"], r.rows["ort-fp32"]
    out.append((r, f"lusifer-small, `lusifer-embed` fp32 vs the original PyTorch fp32 `encode`, "
                   f"{_n(ort['rows'])} rows",
                f"{_rate(ort['rows_per_s'])} vs {_rate(naive['rows_per_s'])} rows/s "
                f"(**{ort['rows_per_s'] / naive['rows_per_s']:.2f}x**)"))

    r = latest(results, "int8_tail", "INT8 vectors vs fp32", gpu=False)
    overall = r.data["analysis"]["overall"]
    out.append((r, f"lusifer-small, INT8 vector vs fp32 vector of the same text, {_n(overall['rows'])} rows",
                f"cosine min {overall['min']:.4f}, p1 {overall['p1']:.4f}, mean {overall['mean']:.4f}"))

    r = latest(results, "cpu_suite", "INT8 dev-suite drift", gpu=False, where=lambda r: bool(r.data.get("quality")))
    deltas = _quality_by_metric(r.data["quality"])
    label = {"bitext_f1": "bitext F1", "sts_spearman": "STS"}
    out.append((r, f"lusifer-small, dev-suite score INT8 minus fp32 (first {r.data['quality'].get('limit')} "
                   f"rows of each task)",
                ", ".join(f"{label.get(m, m)} {_signed(statistics.fmean(d))} points" for m, d in sorted(deltas.items()))))

    # single-text latency is a headline only from a run on an otherwise idle machine
    r = latest(results, "edge", "edge figures", gpu=False,
               where=lambda r: "int8" in r.data.get("variants", {}) and _idle_at_start(r))
    v = r.data["variants"]["int8"]
    lat = v["latency"]
    threads = sorted(lat, key=int)
    out.append((r, f"lusifer-small INT8 (edge): folder size, cold start, one {r.data['text_tokens']}-token query "
                   f"p50 on {' / '.join(threads)} thread(s)",
                f"{v['size']['total_mb']:.1f} MB, {v['cold_start']['threads_2_verify_on']['median_s']:.2f} s, "
                + " / ".join(f"{lat[t]['p50_ms']:.0f}" for t in threads) + " ms"))

    r = latest(results, "cuda_parity", "fp16 on CUDA vs PyTorch fp32", gpu=True)
    worst = min(e["min_cosine"] for e in r.data["exports"].values())
    out.append((r, f"lusifer-small fp16 graphs on CUDA vs PyTorch fp32, {_n(r.data['texts'])} texts in "
                   f"{r.data['languages']} languages",
                f"min cosine {worst:.6f} (floor {r.data['floor']})"))

    small = lambda r: r.data.get("shape") == "small"  # noqa: E731
    r = latest(results, "gpu_suite", "ORT vs PyTorch on GPU", gpu=True, has_rows=("ort-model-only", "pytorch-sorted"),
               where=small)
    ort, torch_ = r.rows["ort-model-only"], r.rows["pytorch-sorted"]
    out.append((r, f"lusifer-small, ORT fp16 vs PyTorch bf16 eager on the same batches, {_n(ort['rows'])} rows",
                f"{_n(ort['tokens_per_s'])} vs {_n(torch_['tokens_per_s'])} tokens/s "
                f"(**{ort['tokens_per_s'] / torch_['tokens_per_s']:.2f}x**)"))

    r = latest(results, "gpu_suite", "lusifer-embed end to end on GPU", gpu=True,
               has_rows=("lusifer-embed", "ort-model-only"), where=small)
    e2e, only = r.rows["lusifer-embed"], r.rows["ort-model-only"]
    out.append((r, f"lusifer-small, `lusifer-embed` end to end (parquet to .npy) vs the model alone, "
                   f"{_n(e2e['rows'])} rows",
                f"{_n(e2e['tokens_per_s'])} vs {_n(only['tokens_per_s'])} tokens/s "
                f"(**{_pct(e2e['tokens_per_s'] / only['tokens_per_s'])}**)"))

    r = latest(results, "scaling", "scaling on GPU", gpu=True)
    sizes = r.data["sizes"]
    out.append((r, "lusifer-small, `lusifer-embed` on " + " / ".join(f"{s['rows']:,}" for s in sizes) + " rows",
                " / ".join(f"{s['embed_seconds']:.3g}" for s in sizes) + " s; peak RSS "
                + " / ".join(_n(s["peak_rss_mib"]) for s in sizes) + " MiB"))

    r = latest(results, "gpu_suite", "paper shape on GPU", gpu=True, has_rows=("ort-model-only", "pytorch-sorted"),
               where=lambda r: r.data.get("shape") == "paper")
    ort, torch_ = r.rows["ort-model-only"], r.rows["pytorch-sorted"]
    info = r.data["model"]["info"]
    out.append((r, f"paper shape (XLM-R-large + {info['decoder_layers']} of Mistral-7B's "
                   f"{info['decoder_layers_full']} layers, random weights), ORT fp16, {_n(ort['rows'])} rows",
                f"{_n(ort['tokens_per_s'])} tokens/s, **{_pct(ort['fraction_of_peak'])} of the measured bf16 peak**; "
                f"{ort['tokens_per_s'] / torch_['tokens_per_s']:.2f}x PyTorch bf16 eager"))

    r = latest(results, "reference_7b", "released LUSIFER shape on GPU", gpu=True,
               has_rows=("lusifer-embed", "pytorch-reference-way"))
    e, ref = r.rows["lusifer-embed"], r.rows["pytorch-reference-way"]
    layers = r.data["flop_shape"]["dec_layers"]
    out.append((r, f"released LUSIFER (imported checkpoint layout, random weights, {layers} of Mistral-7B's 32 layers), "
                   f"`lusifer-embed` fp16 vs the reference's way of encoding (PyTorch bf16, batches of 256 in corpus "
                   f"order), {_n(e['rows'])} rows",
                f"{_n(e['tokens_per_s'])} vs {_n(ref['tokens_per_s'])} tokens/s "
                f"(**{e['tokens_per_s'] / ref['tokens_per_s']:.2f}x**), {_pct(e['peak_share'])} of the measured bf16 peak"))
    return out


def readme_table(results: Sequence[Result], base: Path) -> str:
    rows = [(_where(r), what, figure, f"[{r.name}]({r.link(base)})") for r, what, figure in headline_rows(results)]
    return md_table(["where", "what", "measured", "results file"], rows)


# ---- docs/benchmarks.md ------------------------------------------------------------------------------------
def _targets(r: Result) -> str:
    targets = r.data.get("targets") or []
    if not targets:
        return ""
    rows = [(t["what"], t["measured"], "met" if t["pass"] else "**not met**") for t in targets]
    return "Targets:\n\n" + md_table(["target", "measured", ""], rows)


def _cpu_suite(r: Result) -> str:
    ref = r.data.get("agreement_reference")
    agreement = r.data.get("agreement") or {}
    rows = [(name, row.get("how", ""), _n(row["rows"]), _rate(row["rows_per_s"]), _rate(row["tokens_per_s"]),
             _pct(row["padding"]), _n(row["peak_rss_mib"]),
             f"{agreement[name]['min_cosine']:.4f}" if name in agreement else "-")
            for name, row in r.rows.items()]
    text = md_table(["row", "how", "rows", "rows/s", "tokens/s", "padding", "peak RSS MiB",
                     f"min cosine to {ref}"], rows)
    quality = r.data.get("quality")
    if quality:
        deltas = _quality_by_metric(quality)
        text += (f"\nDev-suite score, INT8 minus fp32 (first {quality.get('limit')} rows of each task), mean over "
                 "languages: " + ", ".join(f"{m} {_signed(statistics.fmean(d))} points ({len(d)} languages)"
                                           for m, d in sorted(deltas.items())) + ".\n")
    return text


def _graph_ab(r: Result) -> str:
    d = r.data
    rows = [(name, _rate(g["rows_per_s"]), f"{g['speed_vs_first']:.2f}x", _n(g["tokens"]),
             f"{g['min_cosine_to_first']:.4f}", f"{g['bytes'] / 1e6:.1f}") for name, g in d["graphs"].items()]
    text = (f"{d['corpus_rows']} rows, {d['threads']} threads, best of {d['rounds']} alternating rounds on the same "
            "batches.\n\n")
    if d.get("note"):
        text += d["note"] + "\n\n"
    return text + md_table(["graph", "rows/s", f"vs {d['first']}", "tokens", f"min cosine to {d['first']}",
                            "graph MB"], rows)


def _gpu_suite(r: Result) -> str:
    descriptions = r.data.get("row_descriptions") or {}
    rows = [(name, descriptions.get(name, ""), _n(row["tokens_per_s"]), _n(row["rows_per_s"]),
             _pct(row["fraction_of_peak"]) if row.get("fraction_of_peak") is not None else "-",
             _pct(row["padding"]), _n(row["peak_rss_mib"]))
            for name, row in r.rows.items()]
    peak = r.data.get("peak") or {}
    model = r.data.get("model") or {}
    info = model.get("info") or {}
    layers = f", {info['decoder_layers']} of {info['decoder_layers_full']} decoder layers" \
        if "decoder_layers" in info else ""
    head = (f"Shape `{r.data.get('shape')}`{layers}, {_n(model.get('matrix_parameters', 0))} matrix parameters; "
            f"{r.data.get('repeats', 1)} round(s), median; bf16 peak (8192^3 matmul, median) "
            f"{peak.get('median_tflops', 0):.0f} TFLOP/s.\n\n")
    return head + md_table(["row", "what", "tokens/s", "rows/s", "of bf16 peak", "padding", "peak RSS MiB"], rows)


def _edge(r: Result) -> str:
    rows = []
    for name, v in r.data["variants"].items():
        cold = v["cold_start"]
        lat = v["latency"]
        rows.append((name, f"{v['size']['total_mb']:.1f}", f"{cold['threads_2_verify_on']['median_s']:.2f}",
                     f"{cold['threads_2_verify_off']['median_s']:.2f}",
                     " / ".join(f"{lat[t]['p50_ms']:.0f}" for t in sorted(lat, key=int)),
                     " / ".join(f"{lat[t]['p99_ms']:.0f}" for t in sorted(lat, key=int)),
                     _n(max(lat[t]["peak_rss_mib"] for t in lat))))
    threads = " / ".join(str(t) for t in r.data.get("threads", []))
    text = (f"One {r.data['text_tokens']}-token text; latencies on {threads} threads.\n\n"
            + (f"{r.data['note']}\n\n" if r.data.get("note") else "")
            + md_table(["variant", "folder MB", "cold start s", "cold start s, no checksums", "p50 ms",
                        "p99 ms", "peak RSS MiB"], rows))
    ab = r.data.get("session_ab")
    if ab:
        base = ab["settings"]["runtime"]["p50_ms"]
        text += (f"\nSession settings over the runtime's ({ab['variant']}, {ab['threads']} threads, one process, "
                 f"{ab['rounds']} interleaved rounds):\n\n"
                 + md_table(["setting", "p50 ms", "p90 ms", "p50 vs runtime"],
                            [(name, f"{v['p50_ms']:.1f}", f"{v['p90_ms']:.1f}", f"{base / v['p50_ms']:.2f}x")
                             for name, v in ab["settings"].items()]))
    return text


def _scaling(r: Result) -> str:
    rows = [(_n(s["rows"]), f"{s['embed_seconds']:.3g}", f"{s['seconds_per_1k_rows']:.3g}", _n(s["tokens_per_s"]),
             _n(s["peak_rss_mib"]), _pct(s["padding"])) for s in r.data["sizes"]]
    return (f"Variant `{r.data.get('variant')}` on `{r.data.get('device', 'cpu')}`; model `{r.data.get('model')}`.\n\n"
            + md_table(["rows", "embed s", "s per 1k rows", "tokens/s", "peak RSS MiB", "padding"], rows))


def _reference_7b(r: Result) -> str:
    rows = [(name, row.get("plan", ""), _n(row["tokens_per_s"]), _n(row["rows_per_s"]), _pct(row["peak_share"]),
             _pct(row["padding"]), f"{row['peak_gpu_mem_gib']:.1f}")
            for name, row in r.rows.items()]
    peak = r.data.get("peak") or {}
    head = (f"The released LUSIFER's layout (random weights) imported with `lusifer-train import-reference`, "
            f"{r.data['flop_shape']['dec_layers']} of 32 decoder layers; {_n(r.data.get('corpus_rows', 0))} rows; "
            f"bf16 peak (8192^3 matmul, best) {peak.get('best_tflops', 0):.0f} TFLOP/s.\n\n")
    return head + md_table(["row", "how", "tokens/s", "rows/s", "of bf16 peak", "padding", "peak GPU GiB"], rows)


def _cuda_parity(r: Result) -> str:
    rows = [(Path(path).name, e.get("fusions", "-"), e["provider"], f"{e['min_cosine']:.6f}",
             f"{e['mean_cosine']:.6f}") for path, e in r.data["exports"].items()]
    return (f"{_n(r.data['texts'])} texts in {r.data['languages']} languages vs PyTorch fp32; floor "
            f"{r.data['floor']}.\n\n" + md_table(["export", "fp16 fusions", "provider", "min cosine", "mean cosine"],
                                                 rows))


def _int8_tail(r: Result) -> str:
    a = r.data["analysis"]
    rows = [("all", _n(a["overall"]["rows"]), f"{a['overall']['min']:.4f}", f"{a['overall']['p1']:.4f}",
             f"{a['overall']['mean']:.4f}", a["overall"]["below_0.98"])]
    rows += [(lang, _n(s["rows"]), f"{s['min']:.4f}", f"{s['p1']:.4f}", f"{s['mean']:.4f}", s["below_0.98"])
             for lang, s in sorted(a.get("by_language", {}).items())]
    return ("Row-wise cosine of the candidate's vectors to the reference's (INT8 to fp32), by language.\n\n"
            + md_table(["language", "rows", "min", "p1", "mean", "rows < 0.98"], rows))


def _compact_bitext(r: Result) -> str:
    average, sizes = r.data["average_f1"], r.data["bytes_per_vector"]
    base = average["float32"]
    rows = [(name, sizes[name.split(" ")[0]], f"{f1:.2f}", _signed(f1 - base)) for name, f1 in average.items()]
    return (f"MTEB bitext-mining F1 x100 over {len(r.data['tasks'])} bitext tasks of the development suite (first "
            f"{r.data['rows_per_task']} rows of each, {_n(r.data['texts'])} distinct texts embedded once as float32); "
            f"int8/uint8 calibrated on the first {r.data['chunk_rows']} rows of the shuffled corpus; binary scored by "
            "Hamming distance.\n\n"
            + md_table(["dtype (scoring)", "bytes / vector", "avg F1", "vs float32"], rows))


def _unique_ids_memory(r: Result) -> str:
    rows = [(kind, _n(v["rows"]), f"{v['peak_rss_growth_mib']:.1f}", f"{v['bytes_per_row']:.0f}")
            for kind, v in r.data["results"].items()]
    return ("Peak RSS growth of the `--unique-ids` check (a fresh process per id kind).\n\n"
            + md_table(["ids", "rows", "peak RSS growth MiB", "bytes / row"], rows))


RENDERERS: dict[str, Callable[[Result], str]] = {
    "cpu_suite": _cpu_suite,
    "graph_ab": _graph_ab,
    "gpu_suite": _gpu_suite,
    "edge": _edge,
    "scaling": _scaling,
    "cuda_parity": _cuda_parity,
    "reference_7b": _reference_7b,
    "int8_tail": _int8_tail,
    "compact_bitext": _compact_bitext,
    "unique_ids_memory": _unique_ids_memory,
}
TITLES = {
    "cpu_suite": "PyTorch vs `lusifer-embed` fp32 / INT8 on CPU (`benchmarks.cpu_suite`)",
    "graph_ab": "Graph variants on the same batches (`benchmarks.graph_ab`)",
    "gpu_suite": "GPU rows (`benchmarks.gpu_suite`)",
    "edge": "Size, cold start and single-text latency (`benchmarks.edge`)",
    "scaling": "`lusifer-embed` at growing corpus sizes (`benchmarks.scaling`)",
    "cuda_parity": "fp16 graphs on CUDA vs PyTorch fp32 (`benchmarks.cuda_parity`)",
    "reference_7b": "The released LUSIFER's shape: `lusifer-embed` vs the reference's encoding (`benchmarks.reference_7b`)",
    "int8_tail": "Where INT8 vectors differ from fp32 (`benchmarks.int8_tail`)",
    "compact_bitext": "Retrieval quality of the compact output dtypes (`benchmarks.compact_bitext`)",
    "unique_ids_memory": "Memory of the `--unique-ids` check (`benchmarks.unique_ids_memory`)",
}

_OLD_CUDA_BATCHES = ("CUDA batches of 16,384 padded tokens / 512 rows, the runtime's defaults before "
                     "`gpu_small_200k_e2e_budget65536` (now 65,536 / 2,048).")
# What a reader must know about a results file that its JSON does not say (keyed by path under results/).
NOTES = {
    "cpu/cpu_small_2k": "Its `ort-int8` row ran INT8 in batches, as the runtime did before INT8 variants ran one "
                        "row per forward pass; the current INT8 figures are in `cpu_small_20k_ort_rowwise`.",
    "cpu/scaling_tiny": "A tiny random model (`python -m lusifer.tiny`): the figures show how time and memory "
                        "grow with the corpus, not real-model speed.",
    "h100/gpu_small": "Runtime of 2026-12-02: CUDA batches of 16,384 padded tokens / 512 rows, unfused fp16 graph, "
                      "tokenizer pool not capped; the end-to-end share is superseded by the H200 runs.",
    "h100/gpu_paper": "Runtime of 2026-12-02: unfused fp16 graph, CUDA batches of 16,384 padded tokens / 512 rows.",
    **{key: _OLD_CUDA_BATCHES for key in ("h200/gpu_small_scaling", "h200/gpu_small_200k_e2e_threads",
                                          "h200/gpu_small_200k_e2e_attention", "h200/gpu_paper")},
}


def _note(r: Result) -> str:
    for key, note in NOTES.items():
        if r.path.with_suffix("").as_posix().endswith("/" + key):
            return f"Note: {note}\n\n"
    return ""


def _section(r: Result, base: Path) -> str:
    render = RENDERERS.get(r.benchmark)
    if render is None:
        raise ReportError(f"results file {str(r.path)!r}: no table for benchmark {r.benchmark!r} in "
                          f"benchmarks/report.py (known: {', '.join(sorted(RENDERERS))})")
    m = r.data["machine"]
    machine = f"{m.get('cpu')}, {m.get('usable_cpus')} CPUs" + (f"; {m['gpus'][0].split(',')[0]}" if m.get("gpus") else "")
    versions = m.get("versions") or {}
    ort = versions.get("onnxruntime-gpu") or versions.get("onnxruntime")
    commit = (m.get("git") or {}).get("commit")
    commit = f"commit `{commit[:10]}`" if commit else "commit not recorded (no git on the machine)"
    try:
        body = render(r)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"results file {str(r.path)!r} lacks a field its {r.benchmark} table needs: {exc!r}") from exc
    return (f"### [{r.name}]({r.link(base)})\n\n"
            f"{TITLES[r.benchmark]}. Started {r.started[:16].replace('T', ' ')} UTC on {machine}; "
            f"onnxruntime {ort}, {commit}.\n"
            f"Command: `{m.get('command')}`\n\n{_note(r)}{body}\n{_targets(r)}")


def markdown_only_results(results_dir: Path) -> list[Path]:
    """Results written as Markdown alone (e.g. by ``int8_batching_ab.sh``): ``.md`` files with no ``.json`` beside."""
    return sorted(md for md in results_dir.rglob("*.md") if not md.with_suffix(".json").is_file())


def docs_page(results: Sequence[Result], docs_file: Path, readme_table_text: str, results_dir: Path,
              markdown_only: Sequence[Path] = ()) -> str:
    base = docs_file.parent
    kinds = sorted({r.kind for r in results}, key=lambda k: (k != "cpu", k))
    parts = [
        "# Benchmark results\n",
        "<!-- written by `python -m benchmarks.report` from benchmarks/results/**/*.json; do not edit by hand -->\n",
        "Every figure here is read from a results file in `benchmarks/results/` (one section per file, newest "
        "first, grouped by machine kind). How the scripts measure and how to run them: "
        f"[benchmarks/README.md]({_relative(REPO_ROOT / 'benchmarks' / 'README.md', base)}); the GPU runs: "
        "[gpu-runs.md](gpu-runs.md). After adding or replacing a results file, run "
        "`python -m benchmarks.report` (the test suite fails while this page or the README table is stale).\n",
        "## Headline figures (the README's table)\n",
        readme_table_text,
    ]
    for kind in kinds:
        parts.append(f"## {kind.upper() if kind != 'cpu' else 'CPU'}\n")
        for r in sorted((r for r in results if r.kind == kind), key=lambda r: (r.started, r.name), reverse=True):
            parts.append(_section(r, base))
    if markdown_only:
        parts.append("## Results without a JSON file\n")
        parts.append("Written by shell scripts as Markdown only (not tabulated here):\n\n"
                     + "".join(f"- [{_relative(md, results_dir)}]({_relative(md, base)})\n" for md in markdown_only))
    return "\n".join(p.rstrip() + "\n" for p in parts)


# ---- writing and checking ----------------------------------------------------------------------------------
def replace_between_markers(text: str, block: str, what: str) -> str:
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < 0 or end < start:
        raise ReportError(f"{what} lacks the performance-table markers {README_START!r} ... {README_END!r}")
    return text[:start + len(README_START)] + "\n" + block + text[end:]


def build(results_dir: Path, readme: Path, docs_file: Path) -> dict[Path, str]:
    """The new contents of ``readme`` and ``docs_file``."""
    results = load_results(results_dir)
    if not results:
        raise ReportError(f"no results files under {str(results_dir)!r}")
    if not readme.is_file():
        raise ReportError(f"README {str(readme)!r} does not exist")
    new_readme = replace_between_markers(readme.read_text("utf-8"), readme_table(results, readme.parent),
                                         str(readme))
    page = docs_page(results, docs_file, readme_table(results, docs_file.parent), results_dir,
                     markdown_only_results(results_dir))
    return {readme: new_readme, docs_file: page}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="results folder (default: %(default)s)")
    parser.add_argument("--readme", type=Path, default=README_FILE, help="README with the markers")
    parser.add_argument("--docs", type=Path, default=DOCS_FILE, help="generated page (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        files = build(args.results, args.readme, args.docs)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stale = [path for path, text in files.items() if not path.is_file() or path.read_text("utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path} is out of date with benchmarks/results: run `python -m benchmarks.report`",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path], "utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
