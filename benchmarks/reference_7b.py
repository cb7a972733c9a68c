"""The released LUSIFER's shape on one GPU: lusifer-embed (ORT CUDA fp16) vs the reference's way of encoding
(PyTorch bf16, fixed batches of 256 in corpus order padded to a multiple of 8) vs PyTorch bf16 length-sorted.

Steps (each one process; ``benchmarks/gpu/reference_7b.sh`` runs them in order on the GPU machine):

``python -m benchmarks.reference_7b torch --model M --corpus C --out-dir R``
    PyTorch rows on an imported model folder (``lusifer-train import-reference``): the reference's batches and
    the runtime's length-sorted token-budget batches, bf16, SDPA; tokens/s, useful TFLOP/s, fraction of the
    bf16 peak measured in the same process (8192^3 matmul), peak GPU memory (torch allocator); the first
    ``--keep`` vectors of the reference's way are kept to check lusifer-embed's.
``python -m benchmarks.reference_7b embed --export E --model M --corpus C --out-dir R``
    ``lusifer-embed`` on CUDA (its own summary: embedding span, model loading excluded), peak GPU memory sampled
    with nvidia-smi (the ONNX Runtime arena is not visible to torch), cosine of its vectors to PyTorch's.
``python -m benchmarks.reference_7b report --out-dir R [--name reference_7b]``
    ``R/<name>.json`` and ``R/<name>.md`` with the targets: ORT >= 1.5x the reference's way, >= 60% of peak.

FLOPs (:mod:`benchmarks.flops`) count each text at its own length (useful), so padding is a cost, not work.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info

REFERENCE_BATCH = 256
REFERENCE_PAD_MULTIPLE = 8
TARGET_SPEEDUP = 1.5
TARGET_PEAK_SHARE = 0.60


def _texts(corpus: str, rows: int | None) -> list[str]:
    import pyarrow.parquet as pq

    texts = pq.read_table(corpus, columns=["text"]).column("text").to_pylist()
    return texts[:rows] if rows else texts


def _peak_tflops(torch, device: str, size: int = 8192, iterations: int = 20, trials: int = 5) -> dict:
    if device == "cpu":  # dry runs of the script only
        size, iterations, trials = 1024, 2, 2
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    c = torch.empty_like(a)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(5):
        torch.mm(a, b, out=c)
    sync()
    out = []
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(iterations):
            torch.mm(a, b, out=c)
        sync()
        out.append(2.0 * size**3 * iterations / (time.perf_counter() - started) / 1e12)
    del a, b, c
    name = "cpu"
    if device == "cuda":
        torch.cuda.empty_cache()
        name = torch.cuda.get_device_name()
    return {"device_name": name, "dtype": "bf16", "size": size, "trials_tflops": out,
            "best_tflops": max(out), "median_tflops": float(np.median(out))}


def _pad(rows: list[list[int]], pad_id: int, multiple: int):
    longest = max(len(r) for r in rows)
    longest = -(-longest // multiple) * multiple
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def torch_rows(args) -> dict:
    """The two PyTorch rows on the same token ids (the reference's tokenisation: the model's own tokenizer)."""
    import torch

    from benchmarks.flops import executed_flops, shape_from_model_dir, useful_flops
    from lusifer.modeling import LusiferModel
    from lusifer.runtime.batching import plan_batches
    from lusifer.runtime.embedder import DEFAULT_MAX_BATCH_ROWS, DEFAULT_TOKEN_BUDGET, DEFAULT_WINDOW_ROWS

    dev = args.device
    cuda = dev == "cuda"
    peak = _peak_tflops(torch, dev)
    started = time.perf_counter()
    model = LusiferModel.from_pretrained(args.model, device=dev, dtype=torch.bfloat16)
    load_s = time.perf_counter() - started
    weights_gib = torch.cuda.memory_allocated() / 2**30 if cuda else None
    texts = _texts(args.corpus, args.rows)
    formatted = model.format(texts, kind=args.kind)
    enc = model.tokenizer(formatted, truncation=True, max_length=model.config.max_length,
                          add_special_tokens=model.config.add_special_tokens)
    ids = [list(x) for x in enc["input_ids"]]
    lengths = np.array([len(x) for x in ids])
    pad = int(model.tokenizer.pad_token_id)
    shape = shape_from_model_dir(args.model)
    useful = useful_flops(shape, lengths)

    reference_batches = [np.arange(s, min(s + REFERENCE_BATCH, len(ids))) for s in range(0, len(ids), REFERENCE_BATCH)]
    sorted_batches = []
    window = DEFAULT_WINDOW_ROWS["cuda"]
    for s in range(0, len(ids), window):
        sorted_batches += [p + s for p in plan_batches(lengths[s : s + window], DEFAULT_TOKEN_BUDGET["cuda"],
                                                       DEFAULT_MAX_BATCH_ROWS["cuda"])]
    plans = {
        "pytorch-reference-way": (reference_batches, REFERENCE_PAD_MULTIPLE,
                                  f"fixed batches of {REFERENCE_BATCH} in corpus order, padded to a multiple of "
                                  f"{REFERENCE_PAD_MULTIPLE} (the reference's encode)"),
        "pytorch-sorted": (sorted_batches, 1, "the runtime's length-sorted token-budget batches "
                           f"({DEFAULT_TOKEN_BUDGET['cuda']} tokens, {DEFAULT_MAX_BATCH_ROWS['cuda']} rows, "
                           f"windows of {window})"),
    }
    rows = {}
    kept = None
    for name, (batches, multiple, plan) in plans.items():
        padded = [_pad([ids[i] for i in b], pad, multiple) for b in batches]
        out = np.zeros((len(ids), model.config.embedding_dim), dtype=np.float32)
        with torch.inference_mode():
            for b_ids, b_mask in padded[: args.warmup]:  # warm-up: the first batches, untimed
                model(torch.from_numpy(b_ids).to(dev), torch.from_numpy(b_mask).to(dev))
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for b, (b_ids, b_mask) in zip(batches, padded):
                emb = model(torch.from_numpy(b_ids).to(dev, non_blocking=True),
                            torch.from_numpy(b_mask).to(dev, non_blocking=True))
                out[b] = emb.float().cpu().numpy()
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        executed = executed_flops(shape, [(x.shape[0], x.shape[1]) for x, _ in padded])
        padded_tokens = int(sum(x.size for x, _ in padded))
        rows[name] = {
            "plan": plan, "batches": len(batches), "rows": len(ids), "tokens": int(lengths.sum()),
            "padded_tokens": padded_tokens, "padding": 1 - lengths.sum() / padded_tokens, "seconds": seconds,
            "tokens_per_s": lengths.sum() / seconds, "rows_per_s": len(ids) / seconds,
            "useful_tflops": useful / seconds / 1e12, "executed_tflops": executed / seconds / 1e12,
            "peak_share": useful / seconds / 1e12 / peak["best_tflops"],
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
            "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else float("nan"),
        }
        print(json.dumps({name: rows[name]}), flush=True)
        if name == "pytorch-reference-way":
            kept = out[: args.keep]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "torch_vectors.npy", kept)
    doc = {"peak": peak, "model_load_seconds": load_s, "weights_gib": weights_gib, "rows": rows,
           "flop_shape": shape.to_dict(), "useful_flops": useful, "corpus_rows": len(ids),
           "max_length": model.config.max_length, "truncated_rows": int((lengths >= model.config.max_length).sum())}
    (out_dir / "torch_rows.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    return doc


class _GpuMemory:
    """Samples nvidia-smi's used memory of GPU 0 every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.2, enabled: bool = True):
        self.interval = interval
        self.enabled = enabled
        self.peak_mib = 0
        self.baseline_mib = self._read() if enabled else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _read() -> int:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, check=True).stdout
        return int(out.strip().splitlines()[0])

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._read())
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.enabled:
            self._thread.join()


def embed_row(args) -> dict:
    """``lusifer-embed`` on CUDA over the corpus, as a user runs it."""
    from benchmarks.common import embed_cmd, embed_summary
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    npy = Path(args.work_dir) / "lusifer-embed.npy"
    for stale in (npy, Path(f"{npy}.json")):
        stale.unlink(missing_ok=True)
    cuda = args.device == "cuda"
    cmd = embed_cmd(args.corpus, "--out", npy, "--model", args.export, "--device", args.device, "--variant",
                    "fp16" if cuda else "fp32", "--kind", args.kind, "--no-progress")
    started = time.perf_counter()
    with _GpuMemory(enabled=cuda) as mem:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    (out_dir / "lusifer_embed.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
    if proc.returncode != 0:
        raise SystemExit(f"lusifer-embed failed ({proc.returncode}): {proc.stderr[-3000:]}")
    s = embed_summary(npy)
    vectors = np.load(npy, mmap_mode="r")
    torch_doc = json.loads((out_dir / "torch_rows.json").read_text())
    peak = torch_doc["peak"]["best_tflops"]
    # the same token ids as the PyTorch rows (same format, same tokenizer.json): the same useful FLOPs
    torch_tokens = torch_doc["rows"]["pytorch-reference-way"]["tokens"]
    if int(s["tokens"]) != int(torch_tokens) or int(s["rows_this_run"]) != int(torch_doc["corpus_rows"]):
        raise SystemExit(f"lusifer-embed read {s['rows_this_run']} rows / {s['tokens']} tokens, the PyTorch rows "
                         f"{torch_doc['corpus_rows']} / {torch_tokens}: not the same token ids")
    useful = torch_doc["useful_flops"]
    row = {"plan": "lusifer-embed CLI: length-sorted token-budget batches, IO binding, tokenisation and writing "
                   "overlapped", "rows": s["rows_this_run"], "tokens": s["tokens"], "padded_tokens": s["padded_tokens"],
           "padding": 1 - s["tokens"] / max(s["padded_tokens"], 1), "seconds": s["seconds"],
           "tokens_per_s": s["tokens"] / s["seconds"], "rows_per_s": s["rows_this_run"] / s["seconds"],
           "useful_tflops": useful / s["seconds"] / 1e12, "peak_share": useful / s["seconds"] / 1e12 / peak,
           "peak_gpu_mem_gib": (mem.peak_mib - mem.baseline_mib) / 1024 if cuda else float("nan"),
           "wall_seconds": wall,
           "provider": s.get("provider"), "variant": s.get("variant"), "timing": s.get("timing")}
    kept = np.load(out_dir / "torch_vectors.npy")
    a = np.asarray(vectors[: len(kept)], dtype=np.float64)
    b = kept.astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    row["cosine_to_pytorch_bf16"] = {"rows": len(kept), "min": float(cos.min()), "mean": float(cos.mean())}
    (out_dir / "embed_row.json").write_text(json.dumps(row, indent=2, default=float) + "\n")
    print(json.dumps(row, default=float), flush=True)
    npy.unlink(missing_ok=True)
    return row


def report(args) -> dict:
    out_dir = Path(args.out_dir)
    t = json.loads((out_dir / "torch_rows.json").read_text())
    rows = dict(t["rows"])
    embed_file = out_dir / "embed_row.json"
    if embed_file.is_file():
        rows = {"lusifer-embed": json.loads(embed_file.read_text()), **rows}
    extra = {}
    for name in ("export.json", "import.json", "checkpoint.json", "export_timing.json"):
        if (out_dir / name).is_file():
            extra[name.removesuffix(".json")] = json.loads((out_dir / name).read_text())
    ref = rows["pytorch-reference-way"]["tokens_per_s"]
    targets = []
    if "lusifer-embed" in rows:
        e = rows["lusifer-embed"]
        targets = [
            {"what": f"lusifer-embed >= {TARGET_SPEEDUP}x the reference's way (tokens/s)",
             "measured": round(e["tokens_per_s"] / ref, 2), "pass": e["tokens_per_s"] / ref >= TARGET_SPEEDUP},
            {"what": f"lusifer-embed >= {TARGET_PEAK_SHARE:.0%} of the measured bf16 peak (useful FLOPs)",
             "measured": f"{e['peak_share']:.1%}", "pass": e["peak_share"] >= TARGET_PEAK_SHARE},
        ]
    doc = {"benchmark": "reference_7b", "machine": machine_info(), "peak": t["peak"], "rows": rows, "targets": targets, "flop_shape": t["flop_shape"],
           "corpus_rows": t["corpus_rows"], "truncated_rows": t["truncated_rows"], **extra}
    name = args.name
    (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    lines = [f"# The released LUSIFER's shape (random weights) on {t['peak']['device_name']}", "",
             f"Measured bf16 peak (8192^3 matmul): best {t['peak']['best_tflops']:.1f} TFLOP/s. Corpus: "
             f"{t['corpus_rows']} rows ({t['truncated_rows']} cut at 512 tokens).", "",
             "| row | tokens/s | rows/s | padding | useful TFLOP/s | % of peak | peak GPU memory (GiB) | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in rows.items():
        lines.append(f"| {n} | {r['tokens_per_s']:,.0f} | {r['rows_per_s']:,.1f} | {r['padding']:.1%} | "
                     f"{r['useful_tflops']:.1f} | {r['peak_share']:.1%} | {r['peak_gpu_mem_gib']:.1f} | "
                     f"{r['seconds']:.2f} |")
    lines += [""] + [f"- {n}: {r['plan']}" for n, r in rows.items()]
    lines += ["- peak GPU memory: torch's allocator peak for the PyTorch rows (weights included); nvidia-smi's "
              "used memory above the idle baseline for lusifer-embed (its ONNX Runtime arena included)."]
    if "lusifer-embed" in rows and "cosine_to_pytorch_bf16" in rows["lusifer-embed"]:
        c = rows["lusifer-embed"]["cosine_to_pytorch_bf16"]
        lines.append(f"- lusifer-embed vs PyTorch bf16 (reference's way) on the first {c['rows']} rows: min cosine "
                     f"{c['min']:.5f}, mean {c['mean']:.5f}.")
    if targets:
        lines += ["", "| target | measured | pass |", "|---|---|---|"]
        lines += [f"| {x['target']} | {x['measured']:.3g} | {'yes' if x['pass'] else 'no'} |" for x in targets]
    for key, value in extra.items():
        lines += ["", f"## {key}", "", "```json", json.dumps(value, indent=2, default=float)[:4000], "```"]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("torch")
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--kind", default="document", choices=("query", "document"))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--keep", type=int, default=512, help="vectors kept to check lusifer-embed's")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a dry run of the script")
    p.add_argument("--out-dir", required=True)
    p = sub.add_parser("embed")
    p.add_argument("--export", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--kind", default="document", choices=("query", "document"))
    p.add_argument("--work-dir", default="/tmp")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a dry run (fp32 graph)")
    p.add_argument("--out-dir", required=True)
    p = sub.add_parser("report")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--name", default="reference_7b")
    args = parser.parse_args(argv)
    {"torch": torch_rows, "embed": embed_row, "report": report}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
