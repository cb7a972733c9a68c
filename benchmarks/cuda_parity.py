"""Parity of an fp16 export on CUDA against its PyTorch fp32 model, per language, on corpus texts.

``python -m benchmarks.cuda_parity --model-dir MERGED --export-dir EXPORT [--export-dir OTHER ...]
--corpus C.parquet [--rows-per-language 100] [--device cuda] [--out-dir DIR] [--name cuda_parity]``

The export's own validation runs ONNX Runtime on CPU; the fused kernels of the fp16 graph (``MultiHeadAttention``,
``RotaryEmbedding``, the skip norms) have separate CUDA implementations, so this runs each export through the
runtime on ``--device`` and compares its vectors with PyTorch fp32 (on the same device) on real text of every
corpus language. Writes ``<name>.json`` and ``<name>.md``; exits non-zero when any export's min cosine is below
the fp16 floor.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from lusifer.vectors import row_cosines

from benchmarks.common import (
    RESULTS_DIR,
    BenchmarkError,
    command_line,
    fail,
    machine_info,
    md_table,
    require_export,
    require_file,
    require_model,
    setup_logging,
    write_results,
)

logger = logging.getLogger(__name__)


def corpus_sample(path: Path, per_language: int) -> tuple[list[str], list[str]]:
    """The first ``per_language`` distinct texts of every language of a benchmarks.corpus parquet file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["text", "lang"])
    texts, langs, seen, counts = [], [], set(), {}
    for text, lang in zip(table.column("text").to_pylist(), table.column("lang").to_pylist()):
        if text in seen or counts.get(lang, 0) >= per_language:
            continue
        seen.add(text)
        counts[lang] = counts.get(lang, 0) + 1
        texts.append(text)
        langs.append(lang)
    return texts, langs


def run(args) -> dict:
    import torch

    from lusifer.modeling import LusiferModel
    from lusifer.onnx_interface import MIN_COSINE
    from lusifer.runtime import Embedder

    model_dir = require_model(args.model_dir, "--model-dir")
    exports = [require_export(e, "fp16", "--export-dir") for e in args.export_dir]
    texts, langs = corpus_sample(require_file(args.corpus, "--corpus"), args.rows_per_language)
    model = LusiferModel.from_pretrained(model_dir, device=args.device, dtype=torch.float32)
    with torch.inference_mode():
        want = model.encode(texts, kind="document", normalize=False, batch_size=args.batch_size)
    del model
    results = {}
    for export in exports:
        embedder = Embedder(export, device=args.device, variant="fp16")
        got = embedder.embed(texts, kind="document", normalize=False)
        cos = row_cosines(got, want)
        per_lang = {}
        for lang in sorted(set(langs)):
            idx = [i for i, x in enumerate(langs) if x == lang]
            per_lang[lang] = {"texts": len(idx), "min_cosine": float(cos[idx].min()), "mean_cosine": float(cos[idx].mean())}
        results[str(export)] = {
            "provider": embedder.provider, "fusions": embedder.manifest.source.get("fp16_fusions"),
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(np.abs(got - want).max()), "per_language": per_lang,
        }
        logger.info("%s on %s: min cosine %.6f", export, embedder.provider, cos.min())
    floor = MIN_COSINE["fp16"]
    return {"benchmark": "cuda_parity", "machine": machine_info(), "command": command_line(),
            "model_dir": str(model_dir), "device": args.device, "texts": len(texts), "languages": len(set(langs)),
            "floor": floor, "exports": results, "pass": all(r["min_cosine"] >= floor for r in results.values())}


def markdown(doc: dict) -> str:
    text = (f"# fp16 export on {doc['device']} vs PyTorch fp32 ({doc['model_dir']})\n\n"
            f"{doc['texts']} corpus texts in {doc['languages']} languages (kind document); floor {doc['floor']}.\n\n")
    rows = []
    for name, r in doc["exports"].items():
        worst = min(r["per_language"].items(), key=lambda kv: kv[1]["min_cosine"])
        rows.append([name, r["provider"], r["fusions"], f"{r['min_cosine']:.6f}", f"{r['mean_cosine']:.6f}",
                     r["max_abs_diff"], f"{worst[0]} ({worst[1]['min_cosine']:.6f})"])
    text += md_table(["export", "provider", "fused", "min cosine", "mean cosine", "max abs diff", "worst language"], rows)
    return text + f"\n\nAll at or above the floor: {'yes' if doc['pass'] else 'NO'}.\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="the PyTorch model folder the exports were made from")
    parser.add_argument("--export-dir", action="append", required=True, help="an fp16 export (repeatable)")
    parser.add_argument("--corpus", required=True, help="parquet corpus with text and lang columns (benchmarks.corpus)")
    parser.add_argument("--rows-per-language", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default="cuda_parity")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        doc = run(args)
    except BenchmarkError as exc:
        fail(exc)
    write_results(args.out_dir, args.name, doc, markdown(doc))
    print(markdown(doc))
    if not doc["pass"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
