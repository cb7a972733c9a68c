"""Normalisation fusions applied to the fp32 graph before it is converted to fp16 (the CUDA graph).

The traced graph spells RMSNorm out as ``Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul -> Mul`` and keeps the
residual ``Add`` before each norm as its own node. Converted to fp16 as they are, the RMSNorm statistics have to
stay fp32 (a sum of squares overflows fp16), so every norm costs a cast up, an fp32 chain and a cast down: memory
traffic that the CUDA provider pays per token and per layer. ``onnxruntime.transformers`` fusions rewrite them as
ONNX Runtime's fused kernels, which read fp16 and accumulate their statistics in fp32 on CUDA and CPU:

- ``SimplifiedLayerNormalization`` (RMSNorm) and ``SkipSimplifiedLayerNormalization`` (residual Add + RMSNorm),
- ``LayerNormalization`` and ``SkipLayerNormalization`` (the encoder's residual Add + LayerNorm),
- ``BiasGelu`` (the encoder's bias Add + exact GELU).

Attention is fused separately (:mod:`lusifer.export.attention_fusion`); ONNX Runtime's rotary, embedding and
attention passes are not used (their patterns assume other exporters, and the encoder's position ids depend on
padding). Residual Adds are same-shaped in every supported architecture, so the skip fusions run without the
shape checks of ONNX Runtime's symbolic shape inference; the export's parity validation against PyTorch checks
the result either way.
"""

from __future__ import annotations

import logging

from lusifer.export.onnx_graph import ensure_contrib_opset

from lusifer.extras import require

logger = logging.getLogger(__name__)

FUSED_OPS = (
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "LayerNormalization",
    "SkipLayerNormalization",
    "BiasGelu",
)


def fuse_norms(model) -> dict[str, int]:
    """Rewrite RMSNorm/LayerNorm (with their residual Adds) and bias+GELU of ``model`` as fused ONNX Runtime ops.

    Works in place on a ModelProto whose large initializers may still be external: the passes read the graph
    structure and small tensors only (the bias of ``BiasGelu``, which must be in memory:
    :func:`lusifer.export.onnx_graph.load_small_external_tensors`).

    Args:
        model: The fp32 ModelProto.

    Returns:
        Count of each fused op type in the graph afterwards.
    """
    require("onnxruntime", "export", purpose="fuse normalisation ops for the fp16 graph")
    from onnxruntime.transformers.fusion_biasgelu import FusionBiasGelu
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.fusion_layernorm import FusionLayerNormalization
    from onnxruntime.transformers.fusion_simplified_layernorm import FusionSimplifiedLayerNormalization
    from onnxruntime.transformers.fusion_skiplayernorm import FusionSkipLayerNormalization
    from onnxruntime.transformers.fusion_utils import FusionUtils
    from onnxruntime.transformers.onnx_model import OnnxModel

    removed = remove_float_to_float_casts(model)
    wrapped = OnnxModel(model)
    # ORT's own fusion passes log at INFO; keep the export log readable
    quiet = [logging.getLogger(f"onnxruntime.transformers.{name}") for name in (
        "fusion_base", "fusion_utils", "onnx_model", "fusion_layernorm", "fusion_simplified_layernorm",
        "fusion_skiplayernorm", "fusion_gelu", "fusion_biasgelu",
    )]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        FusionUtils(wrapped).remove_identity_nodes()
        FusionLayerNormalization(wrapped).apply()
        FusionSimplifiedLayerNormalization(wrapped).apply()
        FusionGelu(wrapped).apply()
        FusionSkipLayerNormalization(wrapped, shape_infer=False).apply()
        FusionSkipLayerNormalization(
            wrapped, "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", shape_infer=False,
        ).apply()
        FusionBiasGelu(wrapped, is_fastgelu=False).apply()
        wrapped.prune_graph()
        wrapped.topological_sort()
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    ensure_contrib_opset(model)
    counts = {op: sum(1 for n in model.graph.node if n.op_type == op) for op in FUSED_OPS}
    logger.info("fused normalisation ops: %s (%d fp32 -> fp32 casts removed first)",
                ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "none", removed)
    return counts


def remove_float_to_float_casts(model) -> int:
    """Bypass ``Cast(to=float32)`` nodes whose input already is float32 (the trace of RMSNorm's ``.to(dtype)``
    in an fp32 model): they sit inside the norm patterns and stop the fusions. Returns how many were removed."""
    onnx = require("onnx", "export")
    float32 = onnx.TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input)}
    types.update({i.name: i.data_type for i in graph.initializer})
    outputs = {o.name for o in model.graph.output}
    replace = {}
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
        if to == float32 and types.get(node.input[0]) == float32 and node.output[0] not in outputs:
            replace[node.output[0]] = node.input[0]
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            while name in replace:
                name = replace[name]
            node.input[i] = name
    dead = [n for n in model.graph.node if n.op_type == "Cast" and n.output[0] in replace]
    for node in dead:
        model.graph.node.remove(node)
    return len(dead)
