"""ONNX graph rewrites behind the INT8 variant: SmoothQuant scaling, integer MatMuls, int8 token tables.

Pure graph surgery on an in-memory ``ModelProto`` (weights loaded) plus one ONNX Runtime probe for activation
ranges. :mod:`lusifer.export.quantize` decides what to quantise; this module only rewrites.

Quantisable units:

- ``matmul``: a ``MatMul`` whose second input is a 2-D float initializer (every ``nn.Linear``). Quantised as
  ONNX Runtime's dynamic quantisation does it (``DynamicQuantizeLinear`` on the activation, per tensor and
  per run; ``MatMulInteger``; rescale), which ONNX Runtime fuses into ``DynamicQuantizeMatMul`` /
  ``MatMulIntegerToFloat`` at load time. Weights are quantised per output column: ``uint8`` asymmetric
  (full 8 bits; u8 x u8 kernels have no 16-bit saturation on AVX2 CPUs without VNNI) or ``int8`` symmetric
  with 7-bit range (u8 x s8 kernels are faster, but saturate with full-range weights on such CPUs).
- ``embedding``: a ``Gather`` from a 2-D float initializer indexed by the ``input_ids`` graph input (the
  encoder's token table: a third of lusifer-small's weights). Stored int8 with one fp32 scale per row;
  rows are dequantised after the lookup.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lusifer.extras import require
from lusifer.onnx_interface import INPUT_NAMES

logger = logging.getLogger(__name__)

WEIGHT_TYPES = ("uint8", "int8")
INT8_WEIGHT_LEVELS = 63  # 7-bit symmetric int8 weights (u8 x s8 pairs stay below the int16 limit)
SWITCH_INPUT = "int8_units"
# SmoothQuant scales are kept in this range (a dead or exploding channel must not produce inf/0 weights)
SMOOTH_CLIP = (1e-3, 1e3)


@dataclass(frozen=True)
class Unit:
    """One quantisable node.

    Attributes:
        name: The node name.
        kind: ``"matmul"`` or ``"embedding"``.
        weight: The float initializer it reads.
        params: Number of weights.
    """

    name: str
    kind: str
    weight: str
    params: int


def _onnx():
    return require("onnx", "export", purpose="quantise the graph to INT8")


def name_nodes(model) -> None:
    """Give every unnamed node a unique name (units are addressed by node name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _initializers(model) -> dict:
    return {init.name: init for init in model.graph.initializer}


def _use_counts(model) -> dict[str, int]:
    """How many node inputs (in every subgraph too) read each tensor name."""
    counts: dict[str, int] = defaultdict(int)

    def walk(graph):
        for node in graph.node:
            for name in node.input:
                if name:
                    counts[name] += 1
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
        for out in graph.output:
            counts[out.name] += 1

    walk(model.graph)
    return counts


def gemm_to_matmul(model) -> int:
    """Rewrite ``Gemm`` nodes with a constant B (alpha = beta = 1, no transA) as ``MatMul`` (+ ``Add``).

    Returns:
        The number of rewritten nodes.
    """
    onnx = _onnx()
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    inits = _initializers(model)
    nodes = []
    rewritten = 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits
            or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0)
        ):
            nodes.append(node)
            continue
        weight = inits[node.input[1]].name
        if attrs.get("transB", 0):
            array = numpy_helper.to_array(inits[weight]).T.copy()
            weight = f"{weight}_transposed_{node.name}"
            model.graph.initializer.append(numpy_helper.from_array(array, weight))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        remove_unused_initializers(model)
    return rewritten


def find_units(model, embeddings: bool = True) -> list[Unit]:
    """The quantisable units of the graph, in graph order (see the module docstring)."""
    onnx = _onnx()
    inits = _initializers(model)
    inputs = {i.name for i in model.graph.input}
    units = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits:
            init = inits[node.input[1]]
            if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
                units.append(Unit(node.name, "matmul", init.name, int(np.prod(init.dims))))
        elif embeddings and node.op_type == "Gather" and node.input[0] in inits:
            init = inits[node.input[0]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if (
                init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2 and axis == 0
                and node.input[1] == INPUT_NAMES[0] and INPUT_NAMES[0] in inputs
            ):
                units.append(Unit(node.name, "embedding", init.name, int(np.prod(init.dims))))
    return units


@dataclass
class ActivationStats:
    """What the calibration texts show of one MatMul input.

    Attributes:
        absmax: Per-channel max |x| over all batches.
        batches: Per batch: per-channel min, per-channel max, and a few sampled rows (tokens) of x.
    """

    absmax: np.ndarray
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def activation_stats(
    graph_path: Path, tensors: list[str], calibration: list, rows_per_batch: int = 64, seed: int = 0
) -> dict[str, ActivationStats]:
    """Per-channel ranges and sampled rows of each named tensor over the calibration batches.

    Args:
        graph_path: A float graph file (its external data beside it).
        tensors: Intermediate tensor names (last axis = channels).
        calibration: ``(input_ids, attention_mask)`` int64 batches.
        rows_per_batch: Rows (tokens) kept per batch for error estimates.
        seed: Seed of the row sampling.
    """
    onnx = _onnx()
    ort = require("onnxruntime", "export")
    model = onnx.load(str(graph_path), load_external_data=False)
    existing = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    # saved beside the graph so that its external-data paths still resolve
    probe = graph_path.with_name(".probe-" + graph_path.name)
    onnx.save_model(model, str(probe))
    rng = np.random.default_rng(seed)
    stats: dict[str, ActivationStats] = {}
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(probe), sess_options=options, providers=["CPUExecutionProvider"])
        for ids, mask in calibration:
            values = session.run(tensors, {INPUT_NAMES[0]: ids, INPUT_NAMES[1]: mask})
            for name, x in zip(tensors, values):
                x = x.reshape(-1, x.shape[-1])
                rows = x[np.sort(rng.permutation(x.shape[0])[:rows_per_batch])].copy()
                low, high = x.min(axis=0), x.max(axis=0)
                entry = stats.setdefault(name, ActivationStats(np.zeros(x.shape[-1], np.float32), []))
                entry.absmax = np.maximum(entry.absmax, np.maximum(np.abs(low), np.abs(high)))
                entry.batches.append((low, high, rows))
        del session
    finally:
        probe.unlink(missing_ok=True)
    return stats


def smooth(model, units: list[Unit], absmax: dict[str, np.ndarray], alpha: float) -> tuple[dict, dict]:
    """SmoothQuant: move activation outliers of each MatMul input into the weights (exact in float).

    For an input X read by MatMuls with weights W_1..W_k, channel j gets
    ``s_j = max|X_j| ** alpha / max_i max|W_i[j, :]| ** (1 - alpha)``; X is divided by s (folded into the
    producing LayerNormalization / scale ``Mul`` when X feeds only these MatMuls, else by a new ``Mul``)
    and the rows of every W_i are multiplied by s. Per-tensor activation quantisation then sees a flatter X.

    Returns:
        ``({"inputs": smoothed inputs, "folded": folded into the producer, "mul_nodes": new Mul nodes},
        {input name: the per-channel divisor s})``.
    """
    onnx = _onnx()
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    inits = _initializers(model)
    nodes = {n.name: n for n in model.graph.node}
    producers = {out: n for n in model.graph.node for out in n.output}
    uses = _use_counts(model)
    readers: dict[str, list] = defaultdict(list)
    for unit in units:
        if unit.kind == "matmul":
            readers[nodes[unit.name].input[0]].append(nodes[unit.name])
    weights: dict[str, np.ndarray] = {}
    inserted: dict[str, object] = {}
    scales: dict[str, np.ndarray] = {}
    folded = 0
    for x, consumers in readers.items():
        # a weight shared with another node would be scaled for this input only: leave such inputs alone
        if x not in absmax or any(uses.get(n.input[1], 0) != 1 for n in consumers):
            continue
        arrays = [numpy_helper.to_array(inits[n.input[1]]) for n in consumers]
        wmax = np.max([np.abs(w).max(axis=1) for w in arrays], axis=0).astype(np.float64)
        amax = absmax[x].astype(np.float64)
        if amax.shape != wmax.shape:
            raise ValueError(f"activation {x!r} has {amax.shape[0]} channels, its MatMul weights {wmax.shape[0]} rows")
        live = (amax > 0) & (wmax > 0)
        scale = np.ones_like(amax)
        scale[live] = amax[live] ** alpha / wmax[live] ** (1 - alpha)
        scale = np.clip(scale, *SMOOTH_CLIP).astype(np.float32)
        scales[x] = scale
        for node, w in zip(consumers, arrays):
            weights[node.input[1]] = (w * scale[:, None]).astype(np.float32)
        if _fold_into_producer(x, scale, producers.get(x), inits, uses, len(consumers), numpy_helper):
            folded += 1
            continue
        inv = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{x}_smooth_inv")
        model.graph.initializer.append(inv)
        smoothed = f"{x}_smoothed"
        inserted[smoothed] = helper.make_node("Mul", [x, inv.name], [smoothed], name=f"{x}_smooth")
        for node in consumers:
            node.input[0] = smoothed
    for name, array in weights.items():
        inits[name].CopyFrom(numpy_helper.from_array(array, name))
    if inserted:
        _insert_before_first_reader(model, inserted)
    return {"inputs": folded + len(inserted), "folded": folded, "mul_nodes": len(inserted)}, scales


def _fold_into_producer(x, scale, producer, inits, uses, consumers: int, numpy_helper) -> bool:
    """Divide the producer's per-channel scale (and bias) by ``scale`` when X feeds only the MatMuls."""
    if producer is None or uses.get(x, 0) != consumers:
        return False
    channels = scale.shape[0]

    def exclusive_vector(name):
        init = inits.get(name)
        return init is not None and uses.get(name, 0) == 1 and list(init.dims) == [channels]

    if producer.op_type == "LayerNormalization":
        axis = next((a.i for a in producer.attribute if a.name == "axis"), -1)
        params = [p for p in producer.input[1:3] if p]
        if axis != -1 or not params or not all(exclusive_vector(p) for p in params):
            return False
    elif producer.op_type == "Mul":
        params = [p for p in producer.input if p in inits]
        if len(params) != 1 or not exclusive_vector(params[0]):
            return False
    else:
        return False
    for name in params:
        value = numpy_helper.to_array(inits[name]) / scale
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return True


def _insert_before_first_reader(model, new_nodes: dict) -> None:
    """Insert each node of ``{output: node}`` right before the first node that reads ``output``."""
    ordered = []
    placed = set()
    for node in model.graph.node:
        for name in node.input:
            if name in new_nodes and name not in placed:
                ordered.append(new_nodes[name])
                placed.add(name)
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def quantize_weight(w: np.ndarray, weight_type: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column quantisation of a ``(K, N)`` weight: ``(q, scale[N], zero_point[N])``.

    ``uint8``: asymmetric over [min(w, 0), max(w, 0)], 255 steps. ``int8``: symmetric, +-63 (7 bits).
    """
    if weight_type == "uint8":
        low = np.minimum(w.min(axis=0), 0.0).astype(np.float64)
        high = np.maximum(w.max(axis=0), 0.0).astype(np.float64)
        scale = (high - low) / 255.0
        scale[scale == 0] = 1.0
        zero = np.clip(np.round(-low / scale), 0, 255)
        q = np.clip(np.round(w / scale) + zero, 0, 255).astype(np.uint8)
        return q, scale.astype(np.float32), zero.astype(np.uint8)
    if weight_type == "int8":
        scale = np.abs(w).max(axis=0).astype(np.float64) / INT8_WEIGHT_LEVELS
        scale[scale == 0] = 1.0
        q = np.clip(np.round(w / scale), -INT8_WEIGHT_LEVELS, INT8_WEIGHT_LEVELS).astype(np.int8)
        return q, scale.astype(np.float32), np.zeros(w.shape[1], dtype=np.int8)
    raise ValueError(f"weight_type={weight_type!r}; expected one of {', '.join(WEIGHT_TYPES)}")


def quantize_table(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8 of a ``(V, H)`` table: ``(q int8, scale (V, 1) float32)``."""
    scale = np.abs(w).max(axis=1, keepdims=True).astype(np.float64) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def dynamic_quantize(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """``x`` through ONNX ``DynamicQuantizeLinear`` with the tensor range [low, high], dequantised."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / 255.0 or 1.0
    zero = np.clip(np.round(-low / scale), 0, 255)
    return ((np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale).astype(np.float32)


def split_outliers(model, units: list[Unit], absmax: dict[str, np.ndarray], share: float) -> dict[str, np.ndarray]:
    """Take each MatMul input's largest channels out of the quantised product (LLM.int8()-style), exactly.

    For an input T (after smoothing) read by MatMuls W_1..W_k, the ``ceil(share * channels)`` channels with
    the largest calibration max |T| become a small fp32 product ``Gather(T, idx) @ W_i[idx]`` added to
    ``(T * mask) @ W_i'``, where ``mask`` zeroes those channels and ``W_i'`` has their rows zeroed. The unit
    stays the (bigger) second MatMul, so the per-tensor activation range and the per-column weight ranges
    that INT8 sees no longer include the outlier channels. Exact in float.

    Args:
        model: The graph (weights loaded), changed in place.
        units: Its units (the MatMul ones are split).
        absmax: Per-channel max |T| by the units' current input name.
        share: Fraction of channels taken out (0 turns splitting off).

    Returns:
        ``{unit name: the channel indices taken out}``.
    """
    onnx = _onnx()
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    if share <= 0:
        return {}
    inits = _initializers(model)
    nodes = {n.name: n for n in model.graph.node}
    uses = _use_counts(model)
    readers: dict[str, list] = defaultdict(list)
    for unit in units:
        if unit.kind == "matmul":
            readers[nodes[unit.name].input[0]].append(nodes[unit.name])
    before: dict[str, list] = {}
    after: dict[str, list] = {}
    taken: dict[str, np.ndarray] = {}
    for t, consumers in readers.items():
        if t not in absmax or any(uses.get(n.input[1], 0) != 1 for n in consumers):
            continue
        channels = absmax[t].shape[0]
        count = min(math.ceil(share * channels), channels - 1)
        if count < 1:
            continue
        idx = np.sort(np.argsort(-absmax[t], kind="stable")[:count]).astype(np.int64)
        mask = np.ones(channels, np.float32)
        mask[idx] = 0.0
        inliers, outliers = f"{t}_inliers", f"{t}_outliers"
        model.graph.initializer.extend([numpy_helper.from_array(mask, f"{t}_inlier_mask"),
                                        numpy_helper.from_array(idx, f"{t}_outlier_index")])
        first = consumers[0].name
        before[first] = [
            helper.make_node("Mul", [t, f"{t}_inlier_mask"], [inliers], name=f"{t}_inliers"),
            helper.make_node("Gather", [t, f"{t}_outlier_index"], [outliers], name=f"{t}_outliers", axis=-1),
        ]
        for node in consumers:
            w = numpy_helper.to_array(inits[node.input[1]])
            rows = numpy_helper.from_array(np.ascontiguousarray(w[idx]), f"{node.input[1]}_outlier_rows")
            w = w.copy()
            w[idx] = 0.0
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(w, node.input[1]))
            model.graph.initializer.append(rows)
            y = node.output[0]
            node.input[0] = inliers
            node.output[0] = f"{y}_inliers"
            after[node.name] = [
                helper.make_node("MatMul", [outliers, rows.name], [f"{y}_outliers"], name=f"{node.name}_outliers"),
                helper.make_node("Add", [f"{y}_inliers", f"{y}_outliers"], [y], name=f"{node.name}_outliers_add"),
            ]
            taken[node.name] = idx
    ordered = []
    for node in model.graph.node:
        ordered.extend(before.get(node.name, []))
        ordered.append(node)
        ordered.extend(after.get(node.name, []))
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return taken


def local_errors(
    model, units: list[Unit], stats: dict[str, ActivationStats], sources: dict[str, str],
    scales: dict[str, np.ndarray], outliers: dict[str, np.ndarray], weight_type: str,
) -> np.ndarray:
    """Relative output error ``||x W - Q(x) Q(W)|| / ||x W||`` of each unit alone, on the sampled rows.

    Args:
        model: The rewritten float graph (smoothed, outliers split).
        units: Its units.
        stats: Activation statistics taken before the rewrites, by tensor name.
        sources: Unit name -> the tensor its input was before the rewrites (a key of ``stats``).
        scales: Source tensor -> smoothing divisor (absent: 1).
        outliers: Unit name -> channels taken out of its quantised product (absent: none).
        weight_type: As for :func:`quantize_weight`.

    Activations are quantised per batch over the batch's whole range, as ``DynamicQuantizeLinear`` does at
    run time. Token tables: the relative error of the int8 table.
    """
    onnx = _onnx()
    inits = _initializers(model)
    errors = np.zeros(len(units))
    for i, unit in enumerate(units):
        w = onnx.numpy_helper.to_array(inits[unit.weight])
        if unit.kind == "embedding":
            q, row_scale = quantize_table(w)
            errors[i] = np.linalg.norm(q * row_scale - w) / max(np.linalg.norm(w), 1e-30)
            continue
        entry = stats.get(sources.get(unit.name, ""))
        if entry is None:
            continue
        divisor = scales.get(sources[unit.name], np.ones(w.shape[0], np.float32))
        keep = np.ones(w.shape[0], bool)
        keep[outliers.get(unit.name, [])] = False
        q, w_scale, w_zero = quantize_weight(w, weight_type)
        wq = (q.astype(np.float32) - w_zero.astype(np.float32)) * w_scale
        num = den = 0.0
        for low, high, rows in entry.batches:
            x = rows / divisor * keep
            y = x @ w
            low_in, high_in = (low / divisor)[keep].min(), (high / divisor)[keep].max()
            yq = dynamic_quantize(x, low_in, high_in) @ wq
            num += float(np.square(y - yq).sum())
            den += float(np.square(y).sum())
        errors[i] = (num / den) ** 0.5 if den > 0 else 0.0
    return errors


class _Emitter:
    """Builds the integer nodes of units, sharing quantised weights and (optionally) activation quantisers."""

    def __init__(self, model, weight_type: str):
        onnx = _onnx()
        self.helper, self.numpy_helper, self.proto = onnx.helper, onnx.numpy_helper, onnx.TensorProto
        self.inits = _initializers(model)
        self.model = model
        self.weight_type = weight_type
        self.quantized: dict[str, tuple[str, ...]] = {}

    def _weights(self, unit: Unit) -> tuple[str, ...]:
        if unit.weight not in self.quantized:
            w = self.numpy_helper.to_array(self.inits[unit.weight])
            if unit.kind == "matmul":
                arrays = dict(zip(("quantized", "scale", "zero_point"), quantize_weight(w, self.weight_type)))
            else:
                arrays = dict(zip(("int8", "row_scale"), quantize_table(w)))
            names = []
            for suffix, array in arrays.items():
                name = f"{unit.weight}_{suffix}"
                self.model.graph.initializer.append(self.numpy_helper.from_array(array, name))
                names.append(name)
            self.quantized[unit.weight] = tuple(names)
        return self.quantized[unit.weight]

    def activation_quantizer(self, x: str, tag: str = ""):
        """A ``DynamicQuantizeLinear`` node for tensor ``x`` and its three output names."""
        base = f"{x}{tag}"
        outs = [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"]
        return self.helper.make_node("DynamicQuantizeLinear", [x], outs, name=f"{base}_QuantizeLinear"), outs

    def matmul(self, unit: Unit, node, quantized_x: list[str], output: str) -> list:
        """``MatMulInteger`` + rescale (the pattern ``quantize_dynamic`` emits and ONNX Runtime fuses)."""
        wq, ws, wz = self._weights(unit)
        xq, xs, xz = quantized_x
        h = self.helper
        return [
            h.make_node("Mul", [xs, ws], [f"{unit.name}_scales"], name=f"{unit.name}_quant_scales_mul"),
            h.make_node("MatMulInteger", [xq, wq, xz, wz], [f"{unit.name}_int32"], name=f"{unit.name}_quant"),
            h.make_node("Cast", [f"{unit.name}_int32"], [f"{unit.name}_float"], name=f"{unit.name}_cast",
                        to=self.proto.FLOAT),
            h.make_node("Mul", [f"{unit.name}_float", f"{unit.name}_scales"], [output],
                        name=f"{unit.name}_quant_output_scale_mul"),
        ]

    def embedding(self, unit: Unit, node, output: str) -> list:
        """int8 row lookup, cast, times the looked-up row scales."""
        table, scales = self._weights(unit)
        ids = node.input[1]
        h = self.helper
        return [
            h.make_node("Gather", [table, ids], [f"{unit.name}_int8"], name=f"{unit.name}_int8", axis=0),
            h.make_node("Gather", [scales, ids], [f"{unit.name}_scale"], name=f"{unit.name}_row_scale", axis=0),
            h.make_node("Cast", [f"{unit.name}_int8"], [f"{unit.name}_float"], name=f"{unit.name}_cast",
                        to=self.proto.FLOAT),
            h.make_node("Mul", [f"{unit.name}_float", f"{unit.name}_scale"], [output], name=f"{unit.name}_dequant"),
        ]


def quantize_units(model, units: list[Unit], weight_type: str) -> None:
    """Replace ``units`` by their integer form in place (float weights no longer read are dropped).

    MatMuls that read the same input share one ``DynamicQuantizeLinear``.
    """
    emitter = _Emitter(model, weight_type)
    chosen = {u.name: u for u in units}
    quantizers: dict[str, list[str]] = {}
    ordered = []
    for node in model.graph.node:
        unit = chosen.get(node.name)
        if unit is None:
            ordered.append(node)
        elif unit.kind == "embedding":
            ordered.extend(emitter.embedding(unit, node, node.output[0]))
        else:
            x = node.input[0]
            if x not in quantizers:
                quantizer, quantizers[x] = emitter.activation_quantizer(x)
                ordered.append(quantizer)
            ordered.extend(emitter.matmul(unit, node, quantizers[x], node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    remove_unused_initializers(model)


def switchable(model, units: list[Unit], weight_type: str) -> None:
    """Make every unit an ``If`` between its integer and float form, chosen by a bool input (in place).

    The graph gets an input ``int8_units`` (bool, one per unit, in ``units`` order): one session can then
    run any mix of quantised and float units, which is how sensitivities and exclusion sets are measured.
    """
    emitter = _Emitter(model, weight_type)
    helper, numpy_helper, proto = emitter.helper, emitter.numpy_helper, emitter.proto
    index = {u.name: (i, u) for i, u in enumerate(units)}
    ordered = []
    for node in model.graph.node:
        if node.name not in index:
            ordered.append(node)
            continue
        i, unit = index[node.name]
        out = node.output[0]
        if unit.kind == "embedding":
            then_nodes = emitter.embedding(unit, node, f"{out}__int8")
        else:
            quantizer, names = emitter.activation_quantizer(node.input[0], tag=f"__{unit.name}")
            then_nodes = [quantizer, *emitter.matmul(unit, node, names, f"{out}__int8")]
        float_node = helper.make_node(node.op_type, list(node.input), [f"{out}__fp32"], name=f"{node.name}__fp32")
        float_node.attribute.extend(node.attribute)
        position = numpy_helper.from_array(np.array(i, dtype=np.int64), f"{node.name}__switch_index")
        model.graph.initializer.append(position)
        ordered.append(helper.make_node("Gather", [SWITCH_INPUT, position.name], [f"{node.name}__switch"],
                                        name=f"{node.name}__switch", axis=0))
        ordered.append(helper.make_node(
            "If", [f"{node.name}__switch"], [out], name=f"{node.name}__if",
            then_branch=helper.make_graph(then_nodes, f"{node.name}_int8", [],
                                          [helper.make_tensor_value_info(f"{out}__int8", proto.FLOAT, None)]),
            else_branch=helper.make_graph([float_node], f"{node.name}_fp32", [],
                                          [helper.make_tensor_value_info(f"{out}__fp32", proto.FLOAT, None)]),
        ))
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    model.graph.input.append(helper.make_tensor_value_info(SWITCH_INPUT, proto.BOOL, [len(units)]))


def remove_unused_initializers(model) -> int:
    """Drop initializers that no node (in any subgraph) reads; returns how many were dropped."""
    uses = _use_counts(model)
    keep = [init for init in model.graph.initializer if uses.get(init.name, 0)]
    dropped = len(model.graph.initializer) - len(keep)
    if dropped:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return dropped
