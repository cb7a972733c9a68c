"""fp32 -> fp16 conversion of an exported graph, for the CUDA execution provider.

The graph is traced in fp32 and converted with ``onnxruntime.transformers.float16`` (``keep_io_types``: the
int64 inputs stay int64 and the output ``embedding`` stays float32). A ``.half()`` trace is avoided: the
TorchScript exporter then binds LayerNormalization to mixed float/float16 inputs, which ONNX Runtime rejects.

Before conversion the traced ops can be fused into ONNX Runtime kernels (``fuse``, one of
:data:`lusifer.onnx_interface.FP16_FUSIONS`): ``"norm"`` (the default) fuses norms with their residual Adds
and bias+GELU (:mod:`lusifer.export.fusion`); ``"all"`` also fuses rotary embeddings
(:mod:`lusifer.export.rotary_fusion`: cos/sin tables computed in fp32 at export, stored in fp16 like the cos/sin
a fp16 PyTorch model uses) and attention (:mod:`lusifer.export.attention_fusion`). ``"all"`` is not the
default: on an H200 with ONNX Runtime 1.31 the fused attention ran on cuDNN SDPA, which ONNX Runtime prefers on
Hopper, and lusifer-small's graph ran 27% slower than the unfused one over the varying batch shapes of a
corpus, although its kernels took less time; with cuDNN attention off it equals the norm graph
(``benchmarks/results/h200/gpu_small_200k_e2e_attention.md``).
The fused kernels read and write fp16 and accumulate their statistics (norm variance, softmax) in fp32.

What stays in fp32 (the converter inserts the casts):

- The control subgraph: every node that does not depend numerically on ``input_ids`` (attention mask, position
  ids, and the rotary cos/sin computation when rotary is not fused). fp16 cannot even represent positions above
  2048 exactly, and rotary angles ``position * inv_freq`` lose whole radians at long positions in fp16.
- Unfused RMSNorm statistics: the ``Pow(x, 2) -> ReduceMean -> Add(eps) -> Sqrt -> Div/Reciprocal -> Mul(x)``
  chains (a sum of squares of LLM hidden states overflows fp16 at magnitudes above 256).
- The head: mean pooling (a sum over up to ``max_length`` positions) and everything after it (projection).

LayerNormalization stays one fp16 op: ONNX Runtime accumulates its statistics in fp32 on CPU and CUDA.
Heavy work (MatMul, attention, MLPs) runs in fp16.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lusifer.export.attention_fusion import fuse_attention
from lusifer.export.errors import ExportGraphError
from lusifer.export.fusion import fuse_norms
from lusifer.export.rotary_fusion import fuse_rotary
from lusifer.export.onnx_export import save_model
from lusifer.export.onnx_graph import load_small_external_tensors, small_constants

from lusifer.extras import require
from lusifer.onnx_interface import DEFAULT_FP16_FUSIONS, FP16_FUSIONS, INPUT_NAMES

logger = logging.getLogger(__name__)

# nodes whose outputs carry shapes or indices, not values, even when their input is an activation
_SHAPE_OPS = {"Shape", "Size"}
_RMSNORM_CHAIN_OPS = {"ReduceMean", "Add", "Sqrt", "Reciprocal", "Div"}
_POOLING_OPS = {"ReduceSum"}


def _consumers(nodes) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def activation_nodes(graph) -> set[str]:
    """Names of the nodes whose values depend on ``input_ids`` (nodes are in topological order)."""
    ids_name = INPUT_NAMES[0]
    live = {ids_name}
    names: set[str] = set()
    for node in graph.node:
        if node.op_type in _SHAPE_OPS:
            continue
        if any(i in live for i in node.input):
            names.add(node.name)
            live.update(node.output)
    return names


def _is_square(node, constants: dict) -> bool:
    exponent = constants.get(node.input[1]) if len(node.input) > 1 else None
    return exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0


def rmsnorm_nodes(graph, numpy_helper) -> set[str]:
    """Nodes of decomposed RMSNorm statistics: ``Pow(x, 2)`` through the ``Mul`` by the inverse RMS."""
    constants = small_constants(graph, numpy_helper)
    consumers = _consumers(graph.node)
    blocked: set[str] = set()
    for node in graph.node:
        if node.op_type != "Pow" or not _is_square(node, constants):
            continue
        source = node.input[0]
        chain = [node]
        frontier = list(node.output)
        while frontier:
            tensor = frontier.pop()
            for nxt in consumers.get(tensor, []):
                if nxt.op_type in _RMSNORM_CHAIN_OPS and nxt not in chain:
                    chain.append(nxt)
                    frontier.extend(nxt.output)
                elif nxt.op_type == "Mul" and source in nxt.input:
                    chain.append(nxt)
        if any(n.op_type == "Mul" for n in chain) and any(n.op_type == "ReduceMean" for n in chain):
            blocked.update(n.name for n in chain)
    return blocked


def head_nodes(graph, active: set[str]) -> set[str]:
    """The pooling ``ReduceSum`` on the activation path and every node after it."""
    live: set[str] = set()
    names: set[str] = set()
    for node in graph.node:
        starts = node.op_type in _POOLING_OPS and node.name in active
        if starts or any(i in live for i in node.input):
            names.add(node.name)
            live.update(node.output)
    return names


def fp32_node_names(model) -> dict[str, set[str]]:
    """Nodes of an fp32 graph that must stay fp32 after conversion, by reason (see the module docstring)."""
    onnx = require("onnx", "export")
    graph = model.graph
    unnamed = [n for n in graph.node if not n.name]
    for i, node in enumerate(unnamed):
        node.name = f"lusifer_unnamed_{i}"
    active = activation_nodes(graph)
    return {
        "control": {n.name for n in graph.node if n.name not in active},
        "rmsnorm": rmsnorm_nodes(graph, onnx.numpy_helper),
        "head": head_nodes(graph, active),
    }


def remove_fp16_round_trips(model) -> int:
    """Let fp32 values flow directly between fp32 nodes.

    The converter gives every kept-fp32 node an fp16 output (``Cast`` to fp16 after it) and an fp32 input
    (``Cast`` to fp32 before it), so a chain of fp32 nodes still rounds, and may overflow, through fp16 at
    each step (an RMSNorm's ``Pow(x, 2)`` of 700 is 4.9e5: inf in fp16). Every ``Cast(to=float32)`` whose
    input is a ``Cast(to=float16)`` of an fp32 value is bypassed here; unused casts are then removed.

    Returns:
        The number of round trips removed.
    """
    onnx = require("onnx", "export")
    graph = model.graph
    fp32_values = {v.name for v in graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    fp32_values |= {v.name for v in graph.input if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    fp32_values |= {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    producer = {out: node for node in graph.node for out in node.output}

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    replace: dict[str, str] = {}
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        parent = producer.get(node.input[0])
        if parent is not None and cast_to(parent) == onnx.TensorProto.FLOAT16 and parent.input[0] in fp32_values:
            replace[node.output[0]] = parent.input[0]
    if not replace:
        return 0
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    # drop the bypassed casts (and fp16 casts nobody reads any more), keeping graph outputs
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    return len(replace)


def make_node_names_unique(model) -> int:
    """Rename nodes whose name repeats (the fp16 converter can add two casts with one name when an output
    feeds several fp32 consumers); ONNX Runtime >= 1.31 refuses such graphs. Returns how many were renamed."""
    defined: dict[str, tuple] = {}
    duplicates = []
    for node in model.graph.node:  # the same Cast added twice (same input, same output): keep one
        key = (node.op_type, tuple(node.input), tuple(a.SerializeToString() for a in node.attribute))
        if any(out in defined and defined[out] == key for out in node.output):
            duplicates.append(node)
        for out in node.output:
            defined.setdefault(out, key)
    for node in duplicates:
        model.graph.node.remove(node)
    seen: set[str] = set()
    renamed = len(duplicates)
    for node in model.graph.node:
        if node.name and node.name in seen:
            base, i = node.name, 1
            while f"{base}_{i}" in seen:
                i += 1
            node.name = f"{base}_{i}"
            renamed += 1
        seen.add(node.name)
    return renamed


def infer_types(model):
    """Shape/type inference that knows ONNX Runtime's contrib ops (the fused ops); run before the weights load."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(model, auto_merge=True)


def convert_to_fp16(src: Path, dst: Path, threshold: int | None = None, fuse: str = DEFAULT_FP16_FUSIONS,
                    rotary_positions: int | None = None) -> list[Path]:
    """Convert the fp32 graph at ``src`` into an fp16 graph at ``dst`` (int64 inputs, float32 output).

    Args:
        src: The fp32 graph.
        dst: The fp16 graph to write.
        threshold: Initializer bytes above which external data is used.
        fuse: One of :data:`lusifer.onnx_interface.FP16_FUSIONS`: ``"norm"`` fuses normalisations and bias+GELU
            (:func:`lusifer.export.fusion.fuse_norms`) first; ``"all"`` also rotary (below) and attention
            (:func:`lusifer.export.attention_fusion.fuse_attention`); ``"none"`` keeps the traced ops.
        rotary_positions: With ``fuse="all"``, also fuse rotary embeddings
            (:func:`lusifer.export.rotary_fusion.fuse_rotary`) with cos/sin tables of this many positions
            (more than the largest position id the graph can see); ``None`` leaves them as traced.

    Returns:
        The files written (graph first, then external data if any).
    """
    onnx = require("onnx", "export")
    float16 = require("onnxruntime.transformers.float16", "export", purpose="convert the graph to fp16")
    started = time.perf_counter()
    # Shape inference (the converter needs every tensor's type) runs before the weights are loaded, so
    # it also works for graphs over protobuf's 2 GB limit.
    model = onnx.load(str(src), load_external_data=False)
    if fuse not in FP16_FUSIONS:
        raise ValueError(f"fuse={fuse!r} must be one of {', '.join(FP16_FUSIONS)}")
    fused = {}
    if fuse != "none":
        try:
            load_small_external_tensors(model, Path(src).parent)  # what the passes read; large weights stay on disk
            fused = fuse_norms(model)
            if fuse == "all":
                if rotary_positions:
                    fused.update(fuse_rotary(model, rotary_positions))
                fused.update(fuse_attention(model))
            model = infer_types(model)
        except Exception as exc:  # onnxruntime.transformers / shape inference raise many types
            raise ExportGraphError(
                f"the fp16 fusion passes failed on {str(src)!r} ({type(exc).__name__}: {exc}); export with "
                "--fp16-fusions none (fp16_fusions='none') to keep the traced ops"
            ) from exc
    else:
        model = onnx.shape_inference.infer_shapes(model)
    onnx.external_data_helper.load_external_data_for_model(model, str(Path(src).parent))
    keep = fp32_node_names(model)
    blocked = set().union(*keep.values())
    # the converter logs whole node protos at INFO level (e.g. for initializers shared by fp32 and fp16
    # nodes, which it handles with casts); keep the log readable
    converter_logger = logging.getLogger(float16.__name__)
    level = converter_logger.level
    converter_logger.setLevel(logging.WARNING)
    try:
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST),
            node_block_list=sorted(blocked),
            disable_shape_infer=True,
        )
    finally:
        converter_logger.setLevel(level)
    round_trips = remove_fp16_round_trips(converted)
    renamed = make_node_names_unique(converted)
    files = save_model(converted, dst, threshold)
    logger.info(
        "converted to fp16 in %.1f s; kept in fp32: %d mask/position/rotary nodes, %d RMSNorm statistics nodes, "
        "%d pooling/projection nodes (%d fp32 -> fp16 -> fp32 round trips removed, %d repeated node names made unique;"
        " fused: %s)",
        time.perf_counter() - started, len(keep["control"]), len(keep["rmsnorm"]), len(keep["head"]), round_trips, renamed,
        ", ".join(f"{v} {k}" for k, v in fused.items() if v) or "none",
    )
    return files
