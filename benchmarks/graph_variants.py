"""Make the graph variants that ``benchmarks.graph_ab`` compares (benchmark inputs, never shipped).

``python -m benchmarks.graph_variants fused SRC_GRAPH OUT_GRAPH`` — the fp32 graph with the
``onnxruntime.transformers`` norm, bias-GELU, rotary and attention fusions (the fp16 export's ``all`` level,
:mod:`lusifer.export.fusion`, :mod:`lusifer.export.rotary_fusion`, :mod:`lusifer.export.attention_fusion`).

``python -m benchmarks.graph_variants block SRC_GRAPH OUT_GRAPH --block-size N`` — the block INT8 graph
(:func:`lusifer.export.int8_block.quantize_block`) with another block size, optimised offline like an export's.

``python -m benchmarks.graph_variants learnable MODEL_DIR OUT_DIR --keep N`` — a copy of a saved LusiferModel
with only the first N of its connector's learnable tokens (a speed projection for a model trained with fewer:
its vectors are not those of a trained model). Export it with ``lusifer-export OUT_DIR --out ... --quantize int8``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from benchmarks.common import BenchmarkError, fail, setup_logging

logger = logging.getLogger(__name__)
LEARNABLE = "connector.learnable_tokens"


def fused(src: Path, dst: Path) -> dict:
    import onnx

    from lusifer.export.attention_fusion import fuse_attention
    from lusifer.export.fusion import fuse_norms
    from lusifer.export.onnx_export import save_model
    from lusifer.export.onnx_graph import load_small_external_tensors
    from lusifer.export.rotary_fusion import fuse_rotary

    model = onnx.load(str(src), load_external_data=False)
    load_small_external_tensors(model, src.parent)
    counts = fuse_norms(model)
    counts.update(fuse_rotary(model, 8192))
    counts.update(fuse_attention(model))
    onnx.external_data_helper.load_external_data_for_model(model, str(src.parent))
    save_model(model, dst)
    return counts


def block(src: Path, dst: Path, block_size: int) -> dict:
    import onnx

    from lusifer.export.cpu_optimize import optimize_for_cpu
    from lusifer.export.int8_block import quantize_block
    from lusifer.export.onnx_export import save_model

    result = quantize_block(onnx.load(str(src)), block_size=block_size)
    save_model(result.pop("model"), dst)
    optimize_for_cpu(dst)
    return result


def learnable(model_dir: Path, out: Path, keep: int) -> dict:
    from safetensors.numpy import load_file, save_file

    from lusifer.modeling import CONFIG_NAME

    if not (model_dir / CONFIG_NAME).is_file():
        raise BenchmarkError(f"{model_dir} holds no {CONFIG_NAME}: not a saved LusiferModel folder")
    config = json.loads((model_dir / CONFIG_NAME).read_text("utf-8"))
    have = int(config["num_learnable_tokens"])
    if not 1 <= keep <= have:
        raise BenchmarkError(f"--keep {keep}: expected 1 to the model's {have} learnable tokens")
    if out.exists():
        raise BenchmarkError(f"{out} exists; remove it first")
    top = str(model_dir)
    shutil.copytree(model_dir, out, ignore=lambda folder, names: [  # the top folder's own weights and config
        n for n in names if folder == top and (n.endswith(".safetensors") or n == CONFIG_NAME)])
    for weights in model_dir.glob("*.safetensors"):
        tensors = load_file(str(weights))
        if LEARNABLE in tensors:
            tensors[LEARNABLE] = tensors[LEARNABLE][:keep].copy()
        save_file(tensors, str(out / weights.name))
    config["num_learnable_tokens"] = keep
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    return {"learnable_tokens": keep, "of": have}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("fused", "block", "learnable"))
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--keep", type=int, default=1)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if not args.src.exists():
            raise BenchmarkError(f"{args.src} does not exist")
        if args.what == "fused":
            result = fused(args.src, args.dst)
        elif args.what == "block":
            result = block(args.src, args.dst, args.block_size)
        else:
            result = learnable(args.src, args.dst, args.keep)
    except BenchmarkError as exc:
        fail(exc)
    print(json.dumps({k: v for k, v in result.items() if k != "model"}))


if __name__ == "__main__":
    main()
