"""Time an export and report file sizes and parity figures as JSON.

Usage::

    python -m lusifer.export.benchmark MODEL_DIR OUT_DIR [--dtype fp32|fp16] [--quantize int8 [--int8-only]]
        [--int8-min-cosine X] [--no-fp16-fusions] [--json FILE]

``OUT_DIR`` is replaced if it holds a previous export. The report lists wall-clock seconds of the whole
``export_model`` call, bytes of every file, and each variant's min cosine / max abs diff vs PyTorch fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

from lusifer.export.api import export_model
from lusifer.onnx_interface import DEFAULT_FP16_FUSIONS, FP16_FUSIONS


def run(
    model_dir: str, out_dir: str, dtype: str = "fp32", quantize: str | None = None, int8_min_cosine: float = 0.98,
    fp16_fusions: str = DEFAULT_FP16_FUSIONS, int8_only: bool = False,
) -> dict:
    """Export ``model_dir`` into ``out_dir`` and return timing, sizes and parity figures."""
    started = time.perf_counter()
    manifest = export_model(
        model_dir, out_dir, dtype=dtype, quantize=quantize, overwrite=True, int8_min_cosine=int8_min_cosine,
        fp16_fusions=fp16_fusions, int8_only=int8_only,
    )
    seconds = time.perf_counter() - started
    folder = Path(out_dir)
    return {
        "model_dir": str(model_dir),
        "dtype": dtype,
        "quantize": quantize,
        "int8_only": int8_only,
        "fp16_fusions": fp16_fusions,
        "export_seconds": round(seconds, 2),
        "int8_kept_fp32": len(manifest.source.get("int8_quantization", {}).get("kept_fp32", [])),
        "machine": f"{platform.machine()}, {_cpu_count()} CPUs",
        "file_bytes": {p.name: p.stat().st_size for p in sorted(folder.iterdir())},
        "variants": {
            name: {
                "min_cosine": info.parity["min_cosine"],
                "max_abs_diff": info.parity["max_abs_diff"],
                "per_language_min_cosine": {k: v["min_cosine"] for k, v in info.parity["per_language"].items()},
                "causal_control_min_cosine": info.parity["causal_control_min_cosine"],
                "bidirectional_verified": info.parity["bidirectional_verified"],
                "validation_seconds": info.parity["seconds"],
            }
            for name, info in manifest.variants.items()
        },
    }


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--quantize", choices=["int8"], default=None)
    parser.add_argument("--int8-min-cosine", type=float, default=0.98)
    parser.add_argument("--int8-only", action="store_true", help="keep only the INT8 graph (lusifer-export --int8-only)")
    parser.add_argument("--fp16-fusions", choices=FP16_FUSIONS, default=DEFAULT_FP16_FUSIONS,
                        help="fp16 graph fusions (lusifer-export --fp16-fusions)")
    parser.add_argument("--no-fp16-fusions", action="store_true", help="same as --fp16-fusions none")
    parser.add_argument("--json", dest="json_file", default=None, help="Also write the report to this file.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run(args.model_dir, args.out_dir, args.dtype, args.quantize, args.int8_min_cosine,
                 "none" if args.no_fp16_fusions else args.fp16_fusions, args.int8_only)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_file:
        Path(args.json_file).write_text(text + "\n", "utf-8")


if __name__ == "__main__":
    main()
