"""Dynamic INT8 quantisation of the fp32 graph for CPU (``onnxruntime.quantization.quantize_dynamic``).

MatMul and Gemm weights become int8, per output channel (LLM weight matrices have channels of very
different ranges), with ``reduce_range`` (7-bit weights): on CPUs without AVX-512 VNNI the u8 x s8 kernels
can saturate their 16-bit intermediate sums with full-range weights; 7-bit weights avoid that on every CPU
the export may be run on. Activations are quantised per batch at run time (dynamic), so no calibration
data is needed. The graph is first pre-processed with ``quant_pre_process`` (ONNX Runtime's basic graph
optimisations, which fuse nothing in attention, and symbolic shape inference), as ONNX Runtime recommends.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lusifer.extras import require
from lusifer.export.onnx_export import external_data_threshold, initializer_bytes, resave

logger = logging.getLogger(__name__)

OP_TYPES = ("MatMul", "Gemm")
PER_CHANNEL = True
REDUCE_RANGE = True


class _QuietRootInfo(logging.Filter):
    """ONNX Runtime's quantiser logs one INFO line per tensor on the root logger; keep warnings only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.WARNING


def quantize_int8(src: Path, dst: Path, work_dir: Path, threshold: int | None = None) -> list[Path]:
    """Quantise the fp32 graph at ``src`` into an INT8 graph at ``dst``.

    Args:
        src: The fp32 graph.
        dst: The INT8 graph to write.
        work_dir: Scratch folder (removed by the caller).
        threshold: External-data threshold in bytes (default :func:`external_data_threshold`).

    Returns:
        The files written (graph first, then external data if any).
    """
    onnx = require("onnx", "export")
    quantization = require("onnxruntime.quantization", "export", purpose="quantise the graph to INT8")
    threshold = external_data_threshold() if threshold is None else threshold
    started = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    large = initializer_bytes(onnx.load(str(src), load_external_data=False)) > threshold
    pre = work_dir / "preprocessed.onnx"
    raw = work_dir / "quantized.onnx"
    quiet = _QuietRootInfo()
    logging.getLogger().addFilter(quiet)
    try:
        quantization.quant_pre_process(
            str(src), str(pre), save_as_external_data=large, all_tensors_to_one_file=True,
            external_data_location=pre.name + ".data" if large else None,
        )
        quantization.quantize_dynamic(
            str(pre),
            str(raw),
            op_types_to_quantize=list(OP_TYPES),
            per_channel=PER_CHANNEL,
            reduce_range=REDUCE_RANGE,
            weight_type=quantization.QuantType.QInt8,
            use_external_data_format=large,
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    files = resave(raw, dst, threshold)
    logger.info(
        "quantised MatMul/Gemm weights to INT8 (per-channel, reduce_range) in %.1f s", time.perf_counter() - started
    )
    return files
