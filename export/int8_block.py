"""The block INT8 graph for CPU (``--int8-scheme block``, the default): batch-invariant by construction.

Every MatMul with a constant weight becomes ONNX Runtime's ``MatMulNBits`` (made by ONNX Runtime's own
``MatMulNBitsQuantizer``): 8-bit symmetric weights in blocks of :data:`BLOCK_SIZE` along the input axis, and
``accuracy_level`` 4, with which the CPU kernel quantises the activations to int8 at run time **per row and
block** and multiplies in integers (VNNI / AVX-512 / AVX2 kernels of MLAS). A token's quantisation scale then
depends on that token alone, never on its batch-mates or the padding: the runtime batches this graph like fp32
(the dynamic scheme, :mod:`lusifer.export.quantize`, shares one activation scale per tensor and per pass and
must run one row per pass). The token table (``Gather`` on ``input_ids``) is stored int8 with per-row scales
(:func:`lusifer.export.int8_graph.quantize_units`), which keeps the folder's INT8 graph about a quarter of the
fp32 graph's size.

Measured on lusifer-small (2-core AMD EPYC with AVX-512 VNNI, ONNX Runtime 1.32): 1.49x fp32 rows/s, min cosine
0.996 to fp32 over 2,000 corpus rows, dev-suite drift -0.15 points (``benchmarks/results/cpu/
cpu_small_2k_int8_block.md``); blocks of 64 ran 1.06x blocks of 32 (``graph_ab_small_cpu.md``). 4-bit weights
lose too much (min cosine 0.69 measured on the same model), so only 8 bits are offered.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lusifer.export.cpu_optimize import OPTIMIZATION_LEVEL
from lusifer.export.int8_graph import find_units, gemm_to_matmul, name_nodes, quantize_units, remove_unused_initializers
from lusifer.export.onnx_export import save_model

from lusifer.extras import require

logger = logging.getLogger(__name__)

BITS = 8
BLOCK_SIZE = 64
# MLAS: quantise the activations to int8 per block at run time and multiply in integers
ACCURACY_LEVEL = 4
METHOD = (f"ONNX Runtime MatMulNBits: {BITS}-bit symmetric weights in blocks of {BLOCK_SIZE}, activations int8 per "
          f"row and block at run time (accuracy_level {ACCURACY_LEVEL})")


def quantize_block(model, embeddings: bool = True, block_size: int = BLOCK_SIZE) -> dict:
    """Rewrite ``model`` (weights in memory) into the block INT8 graph; returns the new ModelProto and counts.

    Args:
        model: The fp32 ModelProto with its weights loaded.
        embeddings: Also store the token table int8 with per-row scales.
        block_size: Weights (and, at run time, activations) share one scale per this many input channels.

    Returns:
        ``{"model": ModelProto, "matmuls": n, "matmuls_left_float": n, "token_tables": [names]}``.
    """
    require("onnxruntime", "export", purpose="quantise the graph to INT8")
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    name_nodes(model)
    gemm_to_matmul(model)
    tables = [u for u in find_units(model, embeddings=True) if u.kind == "embedding"] if embeddings else []
    if tables:
        quantize_units(model, tables, "uint8")  # token tables only: int8 rows with per-row scales
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
                                          bits=BITS)
    quantizer = MatMulNBitsQuantizer(model, bits=BITS, block_size=block_size, is_symmetric=True,
                                     accuracy_level=ACCURACY_LEVEL, algo_config=config)
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs every node it skips at INFO
    try:
        quantizer.process()
    finally:
        quiet.setLevel(level)
    out = quantizer.model.model
    remove_unused_initializers(out)
    nbits = sum(n.op_type == "MatMulNBits" for n in out.graph.node)
    if nbits == 0:
        from lusifer.export.errors import ExportError

        raise ExportError("the graph has no MatMul with a constant weight: nothing to quantise to INT8")
    return {"model": out, "matmuls": nbits,
            "matmuls_left_float": sum(n.op_type == "MatMul" for n in out.graph.node),
            "token_tables": [u.name for u in tables]}


def export_int8_block(fp32_path: Path, int8_path: Path, reference, floor: float, dim: int, embeddings: bool = True):
    """Write, optimise offline and validate the block INT8 graph of the fp32 graph at ``fp32_path``.

    Args:
        fp32_path: The validated fp32 graph.
        int8_path: The INT8 graph to write.
        reference: PyTorch embeddings of the validation batches (:class:`lusifer.export.validate.Reference`).
        floor: The lowest acceptable cosine to PyTorch fp32 on the validation texts.
        dim: The embedding size (interface check).
        embeddings: Store the token table int8.

    Returns:
        ``(files, quantisation summary, parity figures)``.

    Raises:
        ExportParityError: the graph misses ``floor`` (no fallback: the caller decides).
    """
    from lusifer.export.cpu_optimize import optimize_for_cpu
    from lusifer.export.onnx_export import check_interface
    from lusifer.export.validate import validate_graph

    onnx = require("onnx", "export")
    started = time.perf_counter()
    model = onnx.load(str(fp32_path), load_external_data=True)
    result = quantize_block(model, embeddings)
    del model
    save_model(result.pop("model"), int8_path)
    check_interface(int8_path, dim)
    files = optimize_for_cpu(int8_path)  # the file validated below is the file shipped
    parity = validate_graph("int8", int8_path, reference, floor)
    summary = {
        "scheme": "block",
        "method": METHOD,
        "bits": BITS,
        "block_size": BLOCK_SIZE,
        "accuracy_level": ACCURACY_LEVEL,
        "activations": "int8, per row and block of the input axis, at run time (batch-invariant)",
        **result,
        "graph_optimization": f"{OPTIMIZATION_LEVEL} (CPU provider, offline)",
        "bytes": int(sum(p.stat().st_size for p in files)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    logger.info("INT8 (block) graph: %d MatMulNBits, %d MatMul left in fp32, %d int8 token table(s), %.1f MB, "
                "min cosine %.5f, in %.1f s", summary["matmuls"], summary["matmuls_left_float"],
                len(summary["token_tables"]), summary["bytes"] / 1e6, parity["min_cosine"], summary["seconds"])
    return files, summary, parity
