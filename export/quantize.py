"""The INT8 variant for CPU: SmoothQuant, dynamic INT8 MatMuls, an int8 token table, and the few most
sensitive MatMuls kept in fp32, chosen by measurement.

Steps (graph rewrites in :mod:`lusifer.export.int8_graph`; calibration texts: the multilingual sample
sentences shipped with lusifer, disjoint from the validation texts, see
:func:`lusifer.export.validate.calibration_batches`):

1. One probe run of the fp32 graph on the calibration texts records every MatMul input's per-channel range
   and a few sampled tokens.
2. SmoothQuant (``smooth_alpha``) moves activation outliers into the weights, exactly in float. Dynamic
   quantisation scales activations per tensor and per run, so one outlier channel otherwise leaves every
   other channel a few levels.
3. Every MatMul with a constant weight can become dynamic INT8 (uint8 activations per tensor at run time,
   per-column weights, ``uint8`` by default), and the token table int8 with per-row scales.
4. Sensitivity: one ONNX Runtime session runs a graph where each unit can be switched between INT8 and fp32
   (:func:`lusifer.export.int8_graph.switchable`). Chunks of ~sqrt(n) consecutive units are scored by the
   mean cosine loss to fp32 on a few calibration batches when only that chunk is INT8; a chunk's score is
   shared among its units by their estimated output error energy (:func:`lusifer.export.int8_graph.
   local_errors`). Depth matters (an early error travels through every later layer), which the chunk runs
   measure and a local estimate alone would miss.
5. Units are kept in fp32 from the most sensitive down, in the steps of :func:`keep_steps`, until the
   calibration texts' min cosine reaches the floor; that graph is written and validated on the validation
   texts. If it misses the floor the next step is tried (at most :data:`MAX_ATTEMPTS` graphs).

Measured on lusifer-small (mE5-small + SmolLM2-135M; 284 MatMuls and the 250k x 384 token table), min cosine
to PyTorch fp32 on the validation texts with every MatMul INT8: plain dynamic INT8 with 7-bit int8 weights
(the previous exporter) 0.865; uint8 weights 0.889; + SmoothQuant (alpha 0.6) 0.978; + int8 token table
0.974. Weights alone (fp32 activations) give 0.982 with 7-bit and 0.995 with 8-bit weights, hence ``uint8``
by default. What is left is the encoder's FFN output projections (their input is the GELU output), the
first layer's most: the sensitivity ranking puts them first.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lusifer.export.errors import ExportError, ExportParityError
from lusifer.export.int8_graph import (
    SWITCH_INPUT,
    WEIGHT_TYPES,
    Unit,
    activation_stats,
    find_units,
    gemm_to_matmul,
    local_errors,
    name_nodes,
    quantize_units,
    remove_unused_initializers,
    smooth,
    split_outliers,
    switchable,
)
from lusifer.export.cpu_optimize import OPTIMIZATION_LEVEL
from lusifer.export.onnx_export import save_model

from lusifer.extras import require
from lusifer.onnx_interface import INPUT_NAMES
from lusifer.vectors import row_cosines

logger = logging.getLogger(__name__)

DEFAULT_SMOOTH_ALPHA = 0.6
DEFAULT_WEIGHT_TYPE = "uint8"
DEFAULT_OUTLIER_SHARE = 1 / 64
MAX_ATTEMPTS = 3
# calibration batches used for the chunk sensitivity runs (the ladder uses all of them)
SENSITIVITY_BATCHES = 4
METHOD = "SmoothQuant + dynamic INT8 MatMuls (DynamicQuantizeLinear + MatMulInteger), sensitivity-ranked fp32 units"


@dataclass
class Int8Options:
    """How the INT8 graph is made.

    Attributes:
        smooth_alpha: SmoothQuant migration strength in [0, 1]; 0 turns smoothing off.
        embeddings: Also store the token table (``Gather`` on ``input_ids``) as int8.
        weight_type: ``"uint8"`` (8-bit asymmetric per column) or ``"int8"`` (7-bit symmetric per column;
            faster u8 x s8 kernels on x86, less precise).
        outlier_share: Fraction of each MatMul input's channels (the largest on the calibration texts) kept
            out of the INT8 product in a small fp32 product, in [0, 0.5]; 0 turns this off.
    """

    smooth_alpha: float = DEFAULT_SMOOTH_ALPHA
    embeddings: bool = True
    weight_type: str = DEFAULT_WEIGHT_TYPE
    outlier_share: float = DEFAULT_OUTLIER_SHARE

    def check(self) -> None:
        """Raise ``ValueError`` naming a bad value."""
        alpha = self.smooth_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"int8 smooth_alpha={alpha!r} must be a number in [0, 1]")
        if not isinstance(self.embeddings, bool):
            raise ValueError(f"int8 embeddings={self.embeddings!r} must be True or False")
        share = self.outlier_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 0.5:
            raise ValueError(f"int8 outlier_share={share!r} must be a number in [0, 0.5]")
        if self.weight_type not in WEIGHT_TYPES:
            raise ValueError(f"int8 weight_type={self.weight_type!r}; expected one of {', '.join(WEIGHT_TYPES)}")


@dataclass
class Int8Plan:
    """The smoothed float graph, its units, and what was measured about them."""

    smoothed: Path
    units: list[Unit]
    options: Int8Options
    smoothing: dict
    local: np.ndarray
    outlier_channels: int = 0
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    all_int8_calibration: dict = field(default_factory=dict)

    def ranked(self) -> list[int]:
        """Unit indices, most sensitive first (ties in graph order)."""
        return sorted(range(len(self.units)), key=lambda i: (-float(self.scores[i]), i))


def keep_steps(n: int) -> list[int]:
    """How many of the most sensitive units to keep in fp32, in the order tried: 0, 1, 2, 3, 4, 6, 8, 12, ..."""
    steps, k = [0, 1, 2, 3], 4
    while k < n:
        steps += [k, k * 3 // 2]
        k *= 2
    return sorted({s for s in steps if s < n})


def _load(path: Path):
    return require("onnx", "export").load(str(path), load_external_data=True)


def prepare_int8(src: Path, work: Path, calibration: list, options: Int8Options) -> Int8Plan:
    """Smooth the fp32 graph at ``src`` into ``work``, list its units and estimate their local errors."""
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    model = _load(src)
    name_nodes(model)
    gemm_to_matmul(model)
    units = find_units(model, options.embeddings)
    if not any(u.kind == "matmul" for u in units):
        raise ExportError("the graph has no MatMul with a constant weight: nothing to quantise to INT8")
    float_path = work / "float.onnx"
    float_files = save_model(model, float_path)
    if len(float_files) > 1:  # saving with external data moved the tensors out of the in-memory model
        require("onnx", "export").external_data_helper.load_external_data_for_model(model, str(work))
    nodes = {n.name: n for n in model.graph.node}
    sources = {u.name: nodes[u.name].input[0] for u in units if u.kind == "matmul"}
    stats = activation_stats(float_path, sorted(set(sources.values())), calibration)
    smoothing, scales = {"inputs": 0, "folded": 0, "mul_nodes": 0}, {}
    if options.smooth_alpha > 0:
        smoothing, scales = smooth(model, units, {k: v.absmax for k, v in stats.items()}, float(options.smooth_alpha))
    nodes = {n.name: n for n in model.graph.node}
    absmax = {}
    for name, source in sources.items():
        absmax[nodes[name].input[0]] = stats[source].absmax / scales.get(source, 1.0)
    outliers = split_outliers(model, units, absmax, float(options.outlier_share))
    local = local_errors(model, units, stats, sources, scales, outliers, options.weight_type)
    smoothed = work / "smoothed.onnx"
    save_model(model, smoothed)
    for path in float_files:
        path.unlink()
    logger.info(
        "INT8 plan: %d MatMuls and %d token table(s); SmoothQuant alpha %g on %d inputs (%d folded into norms); "
        "%.1f s", sum(u.kind == "matmul" for u in units), sum(u.kind == "embedding" for u in units),
        options.smooth_alpha, smoothing["inputs"], smoothing["folded"], time.perf_counter() - started,
    )
    return Int8Plan(smoothed=smoothed, units=units, options=options, smoothing=smoothing, local=local,
                    outlier_channels=int(sum(len(v) for v in outliers.values())))


class Switchboard:
    """One ONNX Runtime session over the switchable graph and the calibration batches."""

    def __init__(self, plan: Int8Plan, work: Path, calibration: list):
        ort = require("onnxruntime", "export")
        model = _load(plan.smoothed)
        switchable(model, plan.units, plan.options.weight_type)
        path = work / "switchable.onnx"
        save_model(model, path)
        del model
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.calibration = calibration
        self.n = len(plan.units)
        self.runs = 0
        self.reference = self.embed(np.zeros(self.n, dtype=bool))

    def embed(self, enabled: np.ndarray) -> np.ndarray:
        """Embeddings of the calibration texts with the units where ``enabled`` is True in INT8."""
        out = []
        for ids, mask in self.calibration:
            feed = {INPUT_NAMES[0]: ids, INPUT_NAMES[1]: mask, SWITCH_INPUT: enabled}
            out.append(self.session.run(None, feed)[0])
        self.runs += 1
        return np.concatenate(out)

    def cosines(self, enabled: np.ndarray) -> np.ndarray:
        return row_cosines(self.embed(enabled), self.reference)

    def only(self, indices) -> np.ndarray:
        enabled = np.zeros(self.n, dtype=bool)
        enabled[list(indices)] = True
        return enabled

    def all_but(self, indices) -> np.ndarray:
        enabled = np.ones(self.n, dtype=bool)
        enabled[list(indices)] = False
        return enabled


def score_units(board: Switchboard, local: np.ndarray, batches: list) -> np.ndarray:
    """Sensitivity of each unit (see the module docstring, step 4).

    Args:
        board: The switchable session.
        local: Each unit's estimated relative output error (its share inside a chunk is ``local ** 2``).
        batches: The calibration batches to score on.
    """
    n = board.n
    size = max(1, math.ceil(math.sqrt(n)))
    saved = board.calibration, board.reference
    board.calibration = batches
    board.reference = board.embed(board.only([]))
    try:
        scores = np.zeros(n)
        for start in range(0, n, size):
            chunk = list(range(start, min(start + size, n)))
            loss = max(float(np.mean(1 - board.cosines(board.only(chunk)))), 0.0)
            energy = np.square(local[chunk])
            share = energy / energy.sum() if energy.sum() > 0 else np.full(len(chunk), 1 / len(chunk))
            scores[chunk] = loss * share
    finally:
        board.calibration, board.reference = saved
    return scores


def build_int8(plan: Int8Plan, keep: list[int], dst: Path) -> list[Path]:
    """Write the INT8 graph with the units at indices ``keep`` left in fp32; returns the files written."""
    model = _load(plan.smoothed)
    kept = set(keep)
    quantize_units(model, [u for i, u in enumerate(plan.units) if i not in kept], plan.options.weight_type)
    remove_unused_initializers(model)
    return save_model(model, dst)


def export_int8(
    fp32_path: Path, int8_path: Path, work: Path, calibration, reference, floor: float, dim: int,
    options: Int8Options | None = None,
):
    """Make the INT8 graph that meets ``floor`` with the fewest fp32 units; raise the last failure.

    Args:
        fp32_path: The validated fp32 graph.
        int8_path: The INT8 graph to write.
        work: Scratch folder (removed by the caller).
        calibration: ``(input_ids, attention_mask)`` batches (disjoint from the validation texts).
        reference: PyTorch embeddings of the validation batches (:class:`lusifer.export.validate.Reference`).
        floor: The lowest acceptable cosine to PyTorch fp32 on the validation texts.
        dim: The embedding size (interface check).
        options: :class:`Int8Options` (default: the defaults).

    Returns:
        ``(files, quantisation summary with every attempt, parity figures)``.
    """
    from lusifer.export.cpu_optimize import optimize_for_cpu
    from lusifer.export.onnx_export import check_interface
    from lusifer.export.validate import validate_graph

    options = options or Int8Options()
    options.check()
    started = time.perf_counter()
    plan = prepare_int8(fp32_path, work, calibration, options)
    board = Switchboard(plan, work, calibration)
    everything = board.cosines(board.all_but([]))
    plan.all_int8_calibration = {"min_cosine": float(everything.min()), "mean_cosine": float(everything.mean())}
    logger.info("INT8 everywhere: calibration min cosine %.5f (floor %g)", everything.min(), floor)
    ranked = list(range(len(plan.units)))
    attempts: list[dict] = []
    failure: ExportParityError | None = None
    gate = floor  # raised by the calibration-vs-validation gap of a failed graph
    for keep in keep_steps(len(plan.units)):
        if keep and not plan.scores.size:
            plan.scores = score_units(board, plan.local, calibration[:SENSITIVITY_BATCHES])
            ranked = plan.ranked()
            logger.info(
                "INT8 sensitivity (mean cosine loss on calibration texts), top: %s",
                ", ".join(f"{plan.units[i].name} {plan.scores[i]:.2g}" for i in ranked[:5]),
            )
        cosines = everything if keep == 0 else board.cosines(board.all_but(ranked[:keep]))
        attempt = {"kept_fp32": keep, "calibration_min_cosine": float(cosines.min())}
        attempts.append(attempt)
        if cosines.min() < gate:
            continue
        files = build_int8(plan, ranked[:keep], int8_path)
        check_interface(int8_path, dim)
        files = optimize_for_cpu(int8_path)  # the file validated below is the file shipped
        try:
            parity = validate_graph("int8", int8_path, reference, floor)
        except ExportParityError as exc:
            failure = exc
            attempt["min_cosine"] = exc.min_cosine
            gate = max(gate, floor + attempt["calibration_min_cosine"] - exc.min_cosine)
            logger.warning(
                "INT8 graph with %d of %d units in fp32: min cosine %.5f on the validation texts is below the "
                "floor %g (calibration texts: %.5f)", keep, len(plan.units), exc.min_cosine, floor,
                attempt["calibration_min_cosine"],
            )
            if sum("min_cosine" in a for a in attempts) >= MAX_ATTEMPTS:
                break
            continue
        attempt["min_cosine"] = parity["min_cosine"]
        summary = _summary(plan, ranked[:keep], attempts, board.runs, files, time.perf_counter() - started)
        logger.info(
            "INT8 graph: %d of %d units quantised, %d kept fp32 (%s), %.1f MB, in %.1f s (%d calibration runs)",
            summary["quantized"], len(plan.units), keep, ", ".join(summary["kept_fp32"][:6]) or "none",
            summary["bytes"] / 1e6, summary["seconds"], board.runs,
        )
        return files, summary, parity
    if failure is not None:
        raise failure
    raise ExportError(
        f"no INT8 graph with fewer than all {len(plan.units)} units in fp32 reaches min cosine {floor:g} on the "
        f"calibration texts (best {max(a['calibration_min_cosine'] for a in attempts):.5f}); lower "
        "int8_min_cosine or export without --quantize"
    )


def _summary(plan: Int8Plan, keep: list[int], attempts, runs: int, files: list[Path], seconds: float) -> dict:
    kept = [plan.units[i].name for i in keep]
    top = plan.ranked()[:10] if plan.scores.any() else []
    return {
        "method": METHOD,
        "weight_type": plan.options.weight_type,
        "per_channel": True,
        "activations": "uint8, per tensor, dynamic (per run)",
        "smooth_alpha": plan.options.smooth_alpha,
        "smoothed_inputs": plan.smoothing["inputs"],
        "smoothing_folded": plan.smoothing["folded"],
        "outlier_share": plan.options.outlier_share,
        "outlier_channels_fp32": plan.outlier_channels,
        "int8_token_tables": [u.name for i, u in enumerate(plan.units) if u.kind == "embedding" and i not in keep],
        "units": len(plan.units),
        "matmuls": sum(u.kind == "matmul" for u in plan.units),
        "quantized": len(plan.units) - len(kept),
        "kept_fp32": kept,
        "kept_fp32_params": int(sum(plan.units[i].params for i in keep)),
        "graph_optimization": f"{OPTIMIZATION_LEVEL} (CPU provider, offline)",
        "sensitivity_top": [{"unit": plan.units[i].name, "score": float(plan.scores[i])} for i in top],
        "all_int8_calibration": plan.all_int8_calibration,
        "attempts": attempts,
        "calibration_runs": runs,
        "bytes": int(sum(p.stat().st_size for p in files)),
        "seconds": round(seconds, 1),
    }
