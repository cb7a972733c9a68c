"""Small helpers over ONNX graphs shared by the fp16 fusion passes: attributes, constants, shapes, pruning."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONTRIB_DOMAIN = "com.microsoft"
SMALL_TENSOR_BYTES = 1 << 20


def attr(node, name: str, default=None):
    """An int, float or ints attribute of ``node`` (``default`` when absent)."""
    for a in node.attribute:
        if a.name == name:
            if a.type == a.INTS:
                return list(a.ints)
            if a.type == a.INT:
                return a.i
            if a.type == a.FLOAT:
                return a.f
    return default


def scalar(name: str, constants: dict) -> float | None:
    """The value of a one-element constant tensor, or ``None``."""
    value = constants.get(name)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def small_constants(graph, numpy_helper) -> dict[str, np.ndarray]:
    """Values of one-element initializers and of ``Constant`` nodes (read without touching external data)."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer
              if len(i.dims) == 0 or (len(i.dims) == 1 and i.dims[0] == 1)}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
    return values


def value_shapes(model, with_types: bool = False):
    """Tensor name -> dims (ints where known, else symbol names) by ONNX Runtime's symbolic shape inference;
    with ``with_types`` also tensor name -> ONNX element type."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes, types = {}, {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                          for d in v.type.tensor_type.shape.dim]
        types[v.name] = v.type.tensor_type.elem_type
    return (shapes, types) if with_types else shapes


def prune(model) -> None:
    """Drop nodes whose outputs nobody reads (the replaced attention and the shape nodes that fed it)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def ensure_contrib_opset(model) -> None:
    """Declare the com.microsoft opset when the graph uses one of ONNX Runtime's contrib ops."""
    from onnx import helper

    if any(n.domain == CONTRIB_DOMAIN for n in model.graph.node) and not any(
        o.domain == CONTRIB_DOMAIN for o in model.opset_import
    ):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))


def load_small_external_tensors(model, base_dir: str | Path, limit: int = SMALL_TENSOR_BYTES) -> int:
    """Load external initializers of at most ``limit`` bytes (biases, norm weights, rotary frequencies) into
    ``model``, so the fusion passes can read them while the large weights stay on disk. Returns how many."""
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    loaded = 0
    for init in model.graph.initializer:
        if not uses_external_data(init):
            continue
        info = {e.key: e.value for e in init.external_data}
        if "length" in info:
            length = int(info["length"])
        else:  # torch's exporter writes one file per large tensor, with no length: the file's size is the length
            file = Path(base_dir) / info.get("location", "")
            length = file.stat().st_size - int(info.get("offset", 0)) if file.is_file() else limit + 1
        if length <= limit:
            load_external_data_for_tensor(init, str(base_dir))
            init.data_location = TensorProto.DEFAULT
            del init.external_data[:]
            loaded += 1
    return loaded
