"""Dynamic INT8 quantisation of the fp32 graph for CPU (``onnxruntime.quantization.quantize_dynamic``).

MatMul and Gemm weights become int8, per output channel (LLM weight matrices have channels of very
different ranges), with ``reduce_range`` (7-bit weights): on CPUs without AVX-512 VNNI the u8 x s8 kernels
saturate their 16-bit intermediate sums with full-range per-channel weights (measured on mE5-small +
SmolLM2-135M weights on such a CPU: min cosine -0.10 without ``reduce_range``, 0.83 with it).
Activations are quantised per tensor at run time (dynamic). The graph is first pre-processed with
``quant_pre_process`` (ONNX Runtime's basic graph optimisations, which fuse nothing in attention, and
symbolic shape inference), as ONNX Runtime recommends.

Outlier-aware exclusion: per-tensor activation quantisation breaks down on inputs with outlier features
(the LLM.int8() observation: FFN down projections of LLMs and the second FFN linear of encoders see a few
channels hundreds of times larger than the rest). The exporter runs the fp32 graph on calibration batches
(the multilingual sample sentences shipped with lusifer, disjoint from the validation texts) and measures
each quantisable MatMul's input peak-to-RMS ratio. MatMuls above a limit stay fp32. The export tries the
limits in :data:`OUTLIER_RATIOS` in turn (fewest fp32 MatMuls first) and keeps the first graph that meets
the INT8 cosine floor. Measured on the trained lusifer-small (mE5-small + SmolLM2-135M; 284 MatMuls),
min / mean cosine to PyTorch fp32 on the validation texts: all quantised 0.858 / 0.942; limit 32 (23 kept
fp32) 0.952 / 0.982; limit 16 (148 kept) 0.988 / 0.994; limit 10 (246 kept) 0.997 / 0.998.
Token-embedding tables (Gather) stay fp32: they cost size, not compute.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from lusifer.export.errors import ExportError, ExportParityError
from lusifer.export.onnx_export import (
    external_data_threshold,
    initializer_bytes,
    resave,
)

from lusifer.extras import require

logger = logging.getLogger(__name__)

OP_TYPES = ("MatMul", "Gemm")
PER_CHANNEL = True
REDUCE_RANGE = True
# peak-to-RMS limits of a MatMul input above which the MatMul stays fp32, tried in this order (the median
# ratio on real models is ~17)
OUTLIER_RATIOS = (32.0, 16.0, 8.0)


class _QuietRootInfo(logging.Filter):
    """ONNX Runtime's quantiser logs one INFO line per tensor on the root logger; keep warnings only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.WARNING


def _quantizable_matmuls(model) -> list:
    """MatMul/Gemm nodes with a constant weight (the ones ``quantize_dynamic`` quantises)."""
    constants = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in OP_TYPES and len(n.input) > 1 and n.input[1] in constants]


def activation_outlier_ratios(graph_path: Path, calibration: list) -> dict[str, float]:
    """Peak-to-RMS ratio of the input of every quantisable MatMul/Gemm, over the calibration batches.

    Args:
        graph_path: An fp32 graph.
        calibration: ``(input_ids, attention_mask)`` int64 arrays, a few small batches.

    Returns:
        Node name -> max |x| / rms(x) of its input activations.
    """
    import numpy as np

    onnx = require("onnx", "export")
    ort = require("onnxruntime", "export")
    model = onnx.load(str(graph_path), load_external_data=False)
    nodes = _quantizable_matmuls(model)
    inputs = sorted({n.input[0] for n in nodes})
    existing = {o.name for o in model.graph.output}
    for name in inputs:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    # saved beside the graph so that its external-data paths still resolve
    probe = graph_path.with_name(".calibration-" + graph_path.name)
    onnx.save_model(model, str(probe))
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(probe), sess_options=options, providers=["CPUExecutionProvider"])
        peak = dict.fromkeys(inputs, 0.0)
        squares = dict.fromkeys(inputs, 0.0)
        count = dict.fromkeys(inputs, 0)
        for ids, mask in calibration:
            values = session.run(inputs, {"input_ids": ids, "attention_mask": mask})
            for name, x in zip(inputs, values):
                x = np.asarray(x, dtype=np.float64)
                peak[name] = max(peak[name], float(np.abs(x).max()))
                squares[name] += float(np.square(x).sum())
                count[name] += x.size
        del session
    finally:
        probe.unlink(missing_ok=True)
    ratios = {}
    for node in nodes:
        rms = (squares[node.input[0]] / max(count[node.input[0]], 1)) ** 0.5
        ratios[node.name] = peak[node.input[0]] / rms if rms > 0 else 0.0
    return ratios


@dataclass
class Int8Plan:
    """A pre-processed fp32 graph and the outlier ratios of its quantisable MatMuls."""

    preprocessed: Path
    ratios: dict[str, float]
    gemms: set[str]
    large: bool

    def kept_fp32(self, outlier_ratio: float) -> list[str]:
        """The MatMuls whose input peak-to-RMS ratio exceeds ``outlier_ratio``."""
        return sorted(name for name, ratio in self.ratios.items() if ratio > outlier_ratio)


def plan_int8(src: Path, work_dir: Path, calibration: list, threshold: int | None = None) -> Int8Plan:
    """Pre-process the fp32 graph at ``src`` (in ``work_dir``) and measure its MatMul input outliers.

    Args:
        src: The fp32 graph.
        work_dir: Scratch folder (removed by the caller).
        calibration: ``(input_ids, attention_mask)`` batches for the outlier measurement.
        threshold: External-data threshold in bytes (default :func:`external_data_threshold`).
    """
    onnx = require("onnx", "export")
    quantization = require("onnxruntime.quantization", "export", purpose="quantise the graph to INT8")
    threshold = external_data_threshold() if threshold is None else threshold
    started = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    large = initializer_bytes(onnx.load(str(src), load_external_data=False)) > threshold
    pre = work_dir / "preprocessed.onnx"
    quiet = _QuietRootInfo()
    logging.getLogger().addFilter(quiet)
    try:
        quantization.quant_pre_process(
            str(src), str(pre), save_as_external_data=large, all_tensors_to_one_file=True,
            external_data_location=pre.name + ".data" if large else None,
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    ratios = activation_outlier_ratios(pre, calibration)
    gemms = {n.name for n in _quantizable_matmuls(onnx.load(str(pre), load_external_data=False)) if n.op_type == "Gemm"}
    logger.info(
        "INT8 plan: %d quantisable MatMul/Gemm, input peak/RMS median %.1f, max %.1f (%.1f s)",
        len(ratios), _median(list(ratios.values())), max(ratios.values(), default=0.0),
        time.perf_counter() - started,
    )
    return Int8Plan(preprocessed=pre, ratios=ratios, gemms=gemms, large=large)


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else 0.0


def quantize_int8(plan: Int8Plan, dst: Path, outlier_ratio: float, threshold: int | None = None) -> tuple[list[Path], dict]:
    """Quantise the planned graph into an INT8 graph at ``dst``, keeping outlier MatMuls in fp32.

    Args:
        plan: From :func:`plan_int8`.
        dst: The INT8 graph to write.
        outlier_ratio: MatMuls whose input peak-to-RMS ratio exceeds this stay fp32.
        threshold: External-data threshold in bytes (default :func:`external_data_threshold`).

    Returns:
        The files written (graph first, then external data if any), and a summary of what was quantised.
    """
    quantization = require("onnxruntime.quantization", "export", purpose="quantise the graph to INT8")
    threshold = external_data_threshold() if threshold is None else threshold
    started = time.perf_counter()
    excluded = plan.kept_fp32(outlier_ratio)
    # quantize_dynamic first rewrites each Gemm as MatMul "<name>_MatMul" (+ Add), then applies the
    # exclusion list to the rewritten names
    exclude_names = excluded + [f"{name}_MatMul" for name in excluded if name in plan.gemms]
    raw = plan.preprocessed.with_name("quantized.onnx")
    quiet = _QuietRootInfo()
    logging.getLogger().addFilter(quiet)
    try:
        quantization.quantize_dynamic(
            str(plan.preprocessed),
            str(raw),
            op_types_to_quantize=list(OP_TYPES),
            per_channel=PER_CHANNEL,
            reduce_range=REDUCE_RANGE,
            weight_type=quantization.QuantType.QInt8,
            nodes_to_exclude=exclude_names,
            use_external_data_format=plan.large,
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    files = resave(raw, dst, threshold)
    summary = {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "int8",
        "per_channel": PER_CHANNEL,
        "reduce_range": REDUCE_RANGE,
        "op_types": list(OP_TYPES),
        "outlier_ratio": outlier_ratio,
        "matmuls": len(plan.ratios),
        "quantized": len(plan.ratios) - len(excluded),
        "kept_fp32": excluded,
    }
    logger.info(
        "quantised %d of %d MatMul/Gemm weights to INT8 (per-channel, reduce_range) in %.1f s; kept %d with "
        "activation outliers (peak/RMS > %g) in fp32",
        summary["quantized"], len(plan.ratios), time.perf_counter() - started, len(excluded), outlier_ratio,
    )
    return files, summary


def export_int8(fp32_path: Path, int8_path: Path, work: Path, calibration, reference, floor: float, dim: int):
    """Quantise with the outlier limits in turn until the INT8 graph meets ``floor``; raise the last failure.

    Args:
        fp32_path: The validated fp32 graph.
        int8_path: The INT8 graph to write.
        work: Scratch folder (removed by the caller).
        calibration: ``(input_ids, attention_mask)`` batches for the outlier measurement.
        reference: PyTorch embeddings of the validation batches (:class:`lusifer.export.validate.Reference`).
        floor: The lowest acceptable cosine to PyTorch fp32.
        dim: The embedding size (interface check).

    Returns:
        ``(files, quantisation summary with every attempt, parity figures)``.
    """
    from lusifer.export.onnx_export import check_interface
    from lusifer.export.validate import validate_graph

    plan = plan_int8(fp32_path, work, calibration)
    attempts: list[dict] = []
    failure: ExportParityError | None = None
    for limit in OUTLIER_RATIOS:
        if len(plan.kept_fp32(limit)) == len(plan.ratios) or (
            attempts and len(plan.kept_fp32(limit)) == attempts[-1]["kept_fp32"]
        ):
            continue  # nothing left to quantise, or the same graph as the last attempt
        files, summary = quantize_int8(plan, int8_path, limit)
        check_interface(int8_path, dim)
        try:
            parity = validate_graph("int8", int8_path, reference, floor)
        except ExportParityError as exc:
            failure = exc
            attempts.append({"outlier_ratio": limit, "kept_fp32": len(summary["kept_fp32"]), "min_cosine": exc.min_cosine})
            logger.warning(
                "INT8 attempt with %d of %d MatMuls quantised (peak/RMS limit %g): min cosine %.5f is below the "
                "floor %g", summary["quantized"], summary["matmuls"], limit, exc.min_cosine, floor,
            )
            continue
        attempts.append({"outlier_ratio": limit, "kept_fp32": len(summary["kept_fp32"]), "min_cosine": parity["min_cosine"]})
        summary["attempts"] = attempts
        return files, summary, parity
    if failure is None:
        raise ExportError("INT8 quantisation would keep every MatMul in fp32 for this model; export without --quantize")
    raise failure
