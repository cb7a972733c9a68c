"""Child processes of the benchmark scripts: one measured row each, result as a last ``RESULT {json}`` line.

``python -m benchmarks.workers COMMAND ...`` (run by the scripts, not by hand):

- ``torch-cpu``: PyTorch fp32 on CPU over a corpus, ``--mode naive`` as the original LUSIFER ``encode``
  (batches of 32 in corpus order, each text tokenised on its own, padded to a multiple of 8) or
  ``--mode sorted`` (:meth:`lusifer.modeling.LusiferModel.encode`: length-sorted batches);
- ``torch-batches``: PyTorch (bf16 by default) over pre-tokenised batches of a plan (model only);
- ``ort-batches``: the ONNX Runtime graph of an export over pre-tokenised batches, through the runtime's
  :class:`~lusifer.runtime.session.GraphRunner` (IO binding on CUDA; model only);
- ``ort-profile``: CUDA kernel time of the ORT graph by kernel category (torch.profiler; CUDA only);
- ``openvino-cpu``: the same ONNX graph of an export run by OpenVINO on CPU over a corpus (the runtime's
  tokenisation and token-budget batches, tokenisation inside the span as for ``lusifer-embed``): a peer row;
- ``latency``: single-text latency of :meth:`lusifer.runtime.Embedder.embed`;
- ``latency-ab``: the same for several ONNX Runtime session settings in one process, interleaved;
- ``peak``: a square matrix product's throughput (the measured peak for the fraction-of-peak figures);
- ``build-random``: a random-weight model of a shape (:mod:`benchmarks.models`).

Timed spans exclude model loading; tokenisation is inside the span for ``torch-cpu`` (as it is for
``lusifer-embed``) and outside it for the model-only rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from benchmarks.common import RESULT_PREFIX

logger = logging.getLogger(__name__)


def emit(result: dict) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _torch_setup(threads: int | None):
    import torch

    if threads:
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    return torch


# ---- PyTorch on CPU over a corpus ----------------------------------------------------------------------------
def torch_cpu(args) -> dict:
    torch = _torch_setup(args.threads)
    from benchmarks.batches import KIND, ORIGINAL_PAD_MULTIPLE, read_texts
    from lusifer.modeling import LusiferModel

    texts = read_texts(args.corpus)
    t_load = time.perf_counter()
    model = LusiferModel.from_pretrained(args.model, device="cpu", dtype=torch.float32)
    load_s = time.perf_counter() - t_load
    tok, max_len, bs = model.tokenizer, model.config.max_length, args.batch_size
    tokens = padded = 0
    started = time.perf_counter()
    if args.mode == "naive":  # the original LUSIFER encode: no sorting, per-text tokenisation, pad to 8
        out = np.empty((len(texts), model.config.embedding_dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(texts), bs):
                formatted = model.format(texts[s : s + bs], kind=KIND)
                enc = tok.pad([tok(t, truncation=True, max_length=max_len) for t in formatted],
                              pad_to_multiple_of=ORIGINAL_PAD_MULTIPLE, return_tensors="pt")
                emb = model(enc["input_ids"], enc["attention_mask"])
                out[s : s + bs] = torch.nn.functional.normalize(emb.float(), dim=-1).numpy()
                tokens += int(enc["attention_mask"].sum())
                padded += enc["input_ids"].numel()
        seconds = time.perf_counter() - started
    else:  # the project's PyTorch API: LusiferModel.encode sorts by length
        out = model.encode(texts, kind=KIND, batch_size=bs, normalize=True)
        seconds = time.perf_counter() - started
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)  # as encode batches
        for s in range(0, len(order), bs):
            mask = model.tokenize([texts[i] for i in order[s : s + bs]], kind=KIND)["attention_mask"]
            tokens += int(mask.sum())
            padded += mask.numel()
    np.save(args.out, out)
    return {"rows": len(texts), "seconds": seconds, "load_seconds": load_s, "tokens": tokens,
            "padded_tokens": padded, "threads": torch.get_num_threads(), "batch_size": bs, "mode": args.mode}


# ---- model-only rows over a batch plan ------------------------------------------------------------------------
def _plan(args):
    from benchmarks.batches import build_batches, fixed_plan, pad_id, read_texts, tokenize_corpus, window_plan

    tokens = tokenize_corpus(args.export, read_texts(args.corpus))
    lengths = tokens.lengths
    if args.plan == "window":
        plan = window_plan(lengths, args.window_rows, args.token_budget, args.max_batch_rows)
    else:
        plan = fixed_plan(len(lengths), args.batch_rows)
    return tokens, build_batches(tokens, plan, pad_id(args.export)), plan


def _counts(tokens, batches) -> dict:
    return {"rows": len(tokens), "tokens": int(tokens.lengths.sum()), "batches": len(batches),
            "padded_tokens": int(sum(b.input_ids.size for b in batches))}


def torch_batches(args) -> dict:
    torch = _torch_setup(args.threads)
    from benchmarks.flops import executed_flops, shape_from_model_dir
    from lusifer.modeling import LusiferModel

    tokens, batches, plan = _plan(args)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    dev = torch.device(args.device)
    t_load = time.perf_counter()
    model = LusiferModel.from_pretrained(args.model, device=str(dev), dtype=dtype)
    load_s = time.perf_counter() - t_load
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run(batch):
        ids = torch.from_numpy(batch.input_ids).to(dev)
        mask = torch.from_numpy(batch.attention_mask).to(dev)
        return model(ids, mask).float().cpu()  # the copy back waits for the GPU, as the ORT runner's does

    with torch.inference_mode():
        for batch in batches[: args.warmup]:
            run(batch)
        sync()
        started = time.perf_counter()
        for batch in batches:
            run(batch)
        sync()
        seconds = time.perf_counter() - started
    check = None
    if args.flop_check and batches:  # PyTorch's own FLOP count of one batch vs benchmarks.flops
        from torch.utils.flop_counter import FlopCounterMode

        batch = batches[len(batches) // 2]
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            run(batch)
        shape = shape_from_model_dir(args.model)
        dims = [batch.input_ids.shape]
        check = {"batch": list(batch.input_ids.shape), "torch_flop_counter": counter.get_total_flops(),
                 "analytic": executed_flops(shape, dims), "analytic_linear_only": executed_flops(shape, dims, False),
                 "ops": {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}}
    attn = {"encoder": getattr(model.encoder.config, "_attn_implementation", None),
            "decoder": getattr(model.llm.config, "_attn_implementation", None)}
    return {**_counts(tokens, batches), "seconds": seconds, "load_seconds": load_s, "plan": plan.name,
            "dtype": args.dtype, "device": str(dev), "attention": attn, "warmup_batches": args.warmup,
            "flop_check": check, "threads": torch.get_num_threads()}


def ort_batches(args) -> dict:
    from lusifer.runtime import Embedder

    if args.ort_pool:
        from benchmarks.common import use_onnxruntime_thread_pool

        use_onnxruntime_thread_pool()

    tokens, batches, plan = _plan(args)
    t_load = time.perf_counter()
    embedder = Embedder(args.export, device=args.device, variant=args.variant, threads=args.threads)
    load_s = time.perf_counter() - t_load
    runner = embedder.runner
    for batch in batches[: args.warmup]:
        runner(batch.input_ids, batch.attention_mask)
    started = time.perf_counter()
    for batch in batches:
        runner(batch.input_ids, batch.attention_mask)
    seconds = time.perf_counter() - started
    return {**_counts(tokens, batches), "seconds": seconds, "load_seconds": load_s, "plan": plan.name,
            "variant": embedder.variant, "provider": embedder.provider, "device": str(embedder.device),
            "warmup_batches": args.warmup, "threads": embedder.threads}


# ---- OpenVINO over a corpus (a peer row: what a user could pick instead of ONNX Runtime) ---------------------
def openvino_cpu(args) -> dict:
    import openvino as ov
    import pyarrow.parquet as pq

    from lusifer.runtime import Embedder
    from lusifer.vectors import l2_normalize

    texts = pq.read_table(args.corpus, columns=["text"]).column("text").to_pylist()
    t_load = time.perf_counter()
    # the runtime's tokenizer and batch planner (no ONNX Runtime session is used for the timed pass)
    embedder = Embedder(args.export, device="cpu", variant=args.variant, threads=1)
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if args.precision != "default":
        config["INFERENCE_PRECISION_HINT"] = args.precision
    compiled = core.compile_model(core.read_model(str(embedder.export.graph_path)), "CPU", config)
    request = compiled.create_infer_request()
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    load_s = time.perf_counter() - t_load
    started = time.perf_counter()
    tokens = embedder.tokenize(texts, kind="document")
    batches = embedder.make_batches(tokens)
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    for batch in batches:
        result = request.infer({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
        out[batch.positions] = l2_normalize(np.asarray(result[compiled.output(0)], dtype=np.float32))
    seconds = time.perf_counter() - started
    np.save(args.out, out)
    return {**_counts(tokens, batches), "rows": len(texts), "seconds": seconds, "load_seconds": load_s,
            "variant": embedder.variant, "threads": args.threads, "inference_precision": precision,
            "openvino": ov.__version__}


KERNEL_CATEGORIES = (  # (category, lower-case substrings of a CUDA kernel name), first match wins
    ("norm", ("layernorm", "layer_norm", "skiplayernorm", "rmsnorm", "cuapplylayernorm")),
    ("attention (fused)", ("flash", "fmha", "attention")),
    ("softmax", ("softmax",)),
    ("matmul", ("gemm", "cutlass", "xmma", "cublas", "s16816", "h16816", "s1688", "h1688", "matmul", "nvjet")),
    ("cast", ("cast",)),
    ("copy/layout", ("transpose", "copy", "memcpy", "memset", "concat", "slice", "expand", "gather", "tile",
                     "scatter", "pad")),
    ("reduce", ("reduce",)),
    ("elementwise", ("elementwise", "element_wise", "unary", "binary", "gelu", "sigmoid", "where", "fast_divmod",
                     "_add", "_mul", "_div", "_sub", "neg", "erf", "sqrt", "pow")),
)


def kernel_category(name: str) -> str:
    lowered = name.lower()
    return next((cat for cat, keys in KERNEL_CATEGORIES if any(k in lowered for k in keys)), "other")


def ort_profile(args) -> dict:
    """CUDA kernel time of the ORT graph by kernel category, recorded with torch.profiler (CUPTI sees every
    kernel of the process, ONNX Runtime's included) over ``--profile-batches`` batches of the plan."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from lusifer.runtime import Embedder

    if args.device.startswith("cuda"):
        torch.cuda.init()
    tokens, batches, plan = _plan(args)
    embedder = Embedder(args.export, device=args.device, variant=args.variant, threads=args.threads)
    runner = embedder.runner
    for batch in batches[: args.warmup]:
        runner(batch.input_ids, batch.attention_mask)
    step = max(1, len(batches) // args.profile_batches)
    chosen = batches[::step][: args.profile_batches]
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for batch in chosen:
            runner(batch.input_ids, batch.attention_mask)
    wall = time.perf_counter() - started
    kernels: dict[str, list] = {}
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        k = kernels.setdefault(ev.name, [0, 0.0])
        k[0] += 1
        k[1] += ev.time_range.elapsed_us() / 1e6
    total = sum(v[1] for v in kernels.values())
    by_cat: dict[str, float] = {}
    for name, (_, sec) in kernels.items():
        category = kernel_category(name)
        by_cat[category] = by_cat.get(category, 0.0) + sec
    top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[: args.top]
    counts = _counts(tokens, batches)
    return {"batches_profiled": len(chosen), "tokens_profiled": int(sum(int(b.attention_mask.sum()) for b in chosen)),
            "padded_tokens_profiled": int(sum(b.input_ids.size for b in chosen)),
            "wall_seconds_profiled": wall, "kernel_seconds": total, "kernel_launches": sum(v[0] for v in kernels.values()),
            "by_category": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": n[:160], "category": kernel_category(n), "launches": c, "seconds": t}
                            for n, (c, t) in top],
            "corpus": counts, "plan": plan.name, "variant": embedder.variant, "provider": embedder.provider}


# ---- single texts ---------------------------------------------------------------------------------------------
def latency(args) -> dict:
    from lusifer.runtime import Embedder

    embedder = Embedder(args.export, device="cpu", variant=args.variant, threads=args.threads)
    n_tokens = int(embedder.tokenize([args.text], kind=args.kind).lengths[0])
    for _ in range(args.warmup):
        embedder.embed([args.text], kind=args.kind)
    times = np.empty(args.iterations)
    for i in range(args.iterations):
        t0 = time.perf_counter()
        embedder.embed([args.text], kind=args.kind)
        times[i] = time.perf_counter() - t0
    ms = times * 1000
    return {"variant": embedder.variant, "threads": embedder.threads, "tokens": n_tokens, "kind": args.kind,
            "iterations": args.iterations, "warmup": args.warmup,
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "max_ms": float(ms.max())}


def _session_setting(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE``: ``opt`` sets the graph optimisation level (basic, extended, all),
    any other key is an ONNX Runtime session config entry (``session.intra_op.allow_spinning``...)."""
    name, _, entries = spec.partition(":")
    pairs = {}
    for entry in filter(None, entries.split(",")):
        key, sep, value = entry.partition("=")
        if not sep:
            raise SystemExit(f"--setting {spec!r}: {entry!r} is not KEY=VALUE")
        pairs[key.strip()] = value.strip()
    return name, pairs


def _embedder_with(settings: dict[str, str], args):
    """An Embedder whose session options are the product's with ``settings`` applied on top."""
    import onnxruntime as ort

    from lusifer.runtime import Embedder
    from lusifer.runtime import session as session_mod

    product = session_mod.session_options
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}

    def patched(device, threads):
        opts = product(device, threads)
        for key, value in settings.items():
            if key == "opt":
                opts.graph_optimization_level = levels[value]
            else:
                opts.add_session_config_entry(key, value)
        return opts

    session_mod.session_options = patched
    try:
        return Embedder(args.export, device="cpu", variant=args.variant, threads=args.threads, verify=False)
    finally:
        session_mod.session_options = product


def latency_ab(args) -> dict:
    """Single-text latency of several session settings in one process, interleaved: ``--rounds`` rounds, each
    runs every setting (in a rotated order) for ``--iterations / --rounds`` timed calls, so load drift on a
    shared machine falls on all settings alike. ``cpu_p50_ms``: the process's CPU time per call (all threads;
    less sensitive to other processes than wall time, but spinning threads add to it by design)."""
    settings = dict(_session_setting(s) for s in args.setting)
    embedders = {name: _embedder_with(pairs, args) for name, pairs in settings.items()}
    for embedder in embedders.values():
        for _ in range(args.warmup):
            embedder.embed([args.text], kind=args.kind)
    per_round = max(1, args.iterations // args.rounds)
    times: dict[str, list[float]] = {name: [] for name in embedders}
    cpu: dict[str, list[float]] = {name: [] for name in embedders}  # CPU seconds of the process (all threads)
    names = list(embedders)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            embedder = embedders[name]
            for _ in range(per_round):
                t0, c0 = time.perf_counter(), time.process_time()
                embedder.embed([args.text], kind=args.kind)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    out = {}
    for name, values in times.items():
        ms = np.asarray(values) * 1000
        out[name] = {"settings": settings[name], "p50_ms": float(np.percentile(ms, 50)),
                     "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
                     "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "iterations": len(values),
                     "cpu_p50_ms": float(np.percentile(np.asarray(cpu[name]) * 1000, 50))}
    return {"variant": args.variant, "threads": args.threads, "rounds": args.rounds, "warmup": args.warmup,
            "settings": out}


# ---- peak matrix-product throughput -----------------------------------------------------------------------------
def peak(args) -> dict:
    torch = _torch_setup(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    dev = torch.device(args.device)
    n = args.size
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    c = torch.empty(n, n, device=dev, dtype=dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        torch.mm(a, b, out=c)
    sync()
    trials = []
    for _ in range(args.trials):
        started = time.perf_counter()
        for _ in range(args.iterations):
            torch.mm(a, b, out=c)
        sync()
        trials.append(2.0 * n**3 * args.iterations / (time.perf_counter() - started) / 1e12)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"device": str(dev), "device_name": name, "dtype": args.dtype, "size": n, "iterations": args.iterations,
            "trials_tflops": trials, "best_tflops": max(trials), "median_tflops": float(np.median(trials))}


def build_random(args) -> dict:
    from benchmarks.models import build_random_model

    out = build_random_model(args.shape, args.out, args.tokenizer, args.decoder_layers, args.device, args.seed)
    return {"model_dir": str(out)}


def _plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--export", required=True, help="export folder (its tokenizer and manifest make the ids)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--plan", choices=("window", "fixed"), required=True)
    p.add_argument("--window-rows", type=int, default=8192)
    p.add_argument("--token-budget", type=int, default=16384)
    p.add_argument("--max-batch-rows", type=int, default=512)
    p.add_argument("--batch-rows", type=int, default=32)
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=8, help="batches run before the timed pass")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("torch-cpu")
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--mode", choices=("naive", "sorted"), required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help=".npy for the vectors (checked against the other rows)")
    p.set_defaults(func=torch_cpu)
    p = sub.add_parser("torch-batches")
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--flop-check", action="store_true")
    _plan_options(p)
    p.set_defaults(func=torch_batches)
    p = sub.add_parser("ort-batches")
    p.add_argument("--variant", required=True)
    p.add_argument("--ort-pool", action="store_true",
                   help="on CUDA, ONNX Runtime's own intra-op pool (one spinning thread per core) instead of the runtime's one thread")
    _plan_options(p)
    p.set_defaults(func=ort_batches)
    p = sub.add_parser("openvino-cpu")
    p.add_argument("--export", required=True)
    p.add_argument("--variant", default="fp32")
    p.add_argument("--corpus", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("f32", "bf16", "default"), default="f32",
                   help="OpenVINO's inference precision (default: what OpenVINO picks for this CPU)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=openvino_cpu)
    p = sub.add_parser("ort-profile")
    p.add_argument("--variant", required=True)
    p.add_argument("--profile-batches", type=int, default=24, help="batches profiled, spread over the plan")
    p.add_argument("--top", type=int, default=30, help="kernels listed by time")
    _plan_options(p)
    p.set_defaults(func=ort_profile)
    p = sub.add_parser("latency")
    p.add_argument("--export", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--kind", default="query")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.set_defaults(func=latency)
    p = sub.add_parser("latency-ab")
    p.add_argument("--export", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--kind", default="query")
    p.add_argument("--setting", action="append", required=True,
                   help="NAME or NAME:KEY=VALUE,...: opt=basic|extended|all or an ONNX Runtime session config entry")
    p.add_argument("--iterations", type=int, default=200, help="timed calls per setting")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=20)
    p.set_defaults(func=latency_ab)
    p = sub.add_parser("peak")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=peak)
    p = sub.add_parser("build-random")
    p.add_argument("--shape", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--decoder-layers", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=build_random)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    emit(args.func(args))


if __name__ == "__main__":
    main()
