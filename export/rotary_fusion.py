"""Rotary fusion for the fp16 graph: the traced ``apply_rotary_pos_emb`` -> ONNX Runtime's ``RotaryEmbedding``.

transformers' rotary embedding of a query or key ``x`` (``[B, N, S, H]``) is traced as::

    Add(Mul(x, cos), Mul(Concat(Neg(Slice(x, H/2:)), Slice(x, :H/2)), sin))

with ``cos``/``sin`` (``[B, 1, S, H]``, the two halves equal) computed from the decoder's position ids in the
graph: seven kernels per tensor per layer. Each match becomes one ``RotaryEmbedding`` (com.microsoft,
non-interleaved) that reads ``x``, the position ids the graph already computes, and ``cos``/``sin`` tables
(``[P, H/2]``). The tables are not rebuilt from the model's config: they are the graph's own rotary subgraph
evaluated (ONNX Runtime, CPU) on positions ``0 .. P-1``, so rope scaling or any other variant is carried over
exactly, and a variant whose halves differ (partial or interleaved rotary) is left unfused. The export's
parity validation checks the result.
"""

from __future__ import annotations

import logging

import numpy as np

from lusifer.export.onnx_graph import CONTRIB_DOMAIN, attr, ensure_contrib_opset, prune, small_constants, value_shapes

from lusifer.extras import require

logger = logging.getLogger(__name__)

INT64_MAX = np.iinfo(np.int64).max

def fuse_rotary(model, positions: int) -> dict[str, int]:
    """Replace every matching rotary embedding of ``model`` (in place) with ``RotaryEmbedding``.

    Args:
        model: The fp32 ModelProto (large tensors may be external; small ones must be in memory).
        positions: Rows of the cos/sin tables (the largest position id the graph may see, plus one).

    Returns:
        ``{"RotaryEmbedding": fused, "rotary_left": rotate-half patterns left unfused}``.
    """
    onnx = require("onnx", "export")
    graph = model.graph
    shapes, types = value_shapes(model, with_types=True)
    constants = small_constants(graph, onnx.numpy_helper)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    tables: dict[tuple, tuple | None] = {}
    replacements = []
    left = 0
    for concat in [n for n in graph.node if n.op_type == "Concat"]:
        match = _match(concat, producer, consumers, constants, shapes)
        if match is None:
            continue
        x, cos_u, sin_u, add = match
        key = (cos_u, sin_u)
        if key not in tables:
            tables[key] = _tables(model, cos_u, sin_u, producer, shapes, types, positions, len(tables))
        if tables[key] is None:
            left += 1
            continue
        replacements.append((add, x, tables[key]))
    for add, x, (pos, cos_name, sin_name, _, _) in replacements:
        index = list(graph.node).index(add)
        graph.node.remove(add)
        graph.node.insert(index, onnx.helper.make_node(
            "RotaryEmbedding", [x, pos, cos_name, sin_name], [add.output[0]], name=f"{add.name}_rotary",
            domain=CONTRIB_DOMAIN, interleaved=0))
    for found in tables.values():  # every table found is used by at least one replacement
        if found is not None:
            _, cos_name, sin_name, cos, sin = found
            graph.initializer.extend([onnx.numpy_helper.from_array(cos, cos_name),
                                      onnx.numpy_helper.from_array(sin, sin_name)])
    if replacements:
        prune(model)
        ensure_contrib_opset(model)
    logger.info("fused %d rotary embeddings into RotaryEmbedding (%d left as they are)", len(replacements), left)
    return {"RotaryEmbedding": len(replacements), "rotary_left": left}

def _slice_bounds(node, constants):
    """``(start, end)`` of a last-axis, step-1 Slice (``None`` for a bound computed at run time)."""
    if node.op_type != "Slice" or len(node.input) < 4:
        return None
    axes = constants.get(node.input[3])
    steps = constants.get(node.input[4]) if len(node.input) > 4 and node.input[4] else np.array([1])
    if axes is None or steps is None or axes.size != 1 or steps.size != 1 or int(steps.reshape(-1)[0]) != 1:
        return None
    if int(axes.reshape(-1)[0]) not in (-1, 3):
        return None
    start, end = constants.get(node.input[1]), constants.get(node.input[2])
    return (None if start is None else int(start.reshape(-1)[0]), None if end is None else int(end.reshape(-1)[0]))

def _match(concat, producer, consumers, constants, shapes):
    if attr(concat, "axis") not in (-1, 3) or len(concat.input) != 2:
        return None
    neg, first = producer.get(concat.input[0]), producer.get(concat.input[1])
    if neg is None or first is None or neg.op_type != "Neg":
        return None
    second = producer.get(neg.input[0])
    if second is None or second.op_type != "Slice" or first.op_type != "Slice" or second.input[0] != first.input[0]:
        return None
    x = first.input[0]
    dims = shapes.get(x)
    if not dims or len(dims) != 4 or not isinstance(dims[3], int) or dims[3] % 2:
        return None
    half = dims[3] // 2
    b_first, b_second = _slice_bounds(first, constants), _slice_bounds(second, constants)
    if b_first is None or b_second is None or b_first[0] != 0 or (b_second[1] is not None and b_second[1] < dims[3]):
        return None
    if (shapes.get(first.output[0]) or [None])[-1] != half or (shapes.get(second.output[0]) or [None])[-1] != half:
        return None
    users = consumers.get(concat.output[0], [])
    if len(users) != 1 or users[0].op_type != "Mul":
        return None
    mul_sin = users[0]
    sin_u = mul_sin.input[1] if mul_sin.input[0] == concat.output[0] else mul_sin.input[0]
    users = consumers.get(mul_sin.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    add = users[0]
    other = producer.get(add.input[0] if add.input[1] == mul_sin.output[0] else add.input[1])
    if other is None or other.op_type != "Mul" or x not in other.input:
        return None
    cos_u = other.input[1] if other.input[0] == x else other.input[0]
    for table in (cos_u, sin_u):
        t_dims = shapes.get(table)
        if not t_dims or len(t_dims) != 4 or t_dims[1] != 1 or t_dims[3] != dims[3]:
            return None
    return x, cos_u, sin_u, add

def _position_ids(cos_u, producer, shapes, types, seq_dim) -> str | None:
    """The int64 ``[B, S]`` tensor the cos table is computed from (nearest one upstream)."""
    int64 = 7
    frontier, seen = [cos_u], set()
    while frontier:
        name = frontier.pop(0)
        if name in seen:
            continue
        seen.add(name)
        dims = shapes.get(name)
        if types.get(name) == int64 and dims and len(dims) == 2 and dims[1] == seq_dim:
            return name
        node = producer.get(name)
        if node is not None and len(seen) < 64:
            frontier.extend(i for i in node.input if i)
    return None

def _tables(model, cos_u, sin_u, producer, shapes, types, positions, index):
    """``(position ids, cos name, sin name, cos [P, H/2], sin [P, H/2])`` for one cos/sin pair, or ``None``."""
    onnx = require("onnx", "export")
    ort = require("onnxruntime", "export")
    seq_dim = shapes[cos_u][2]
    pos = _position_ids(cos_u, producer, shapes, types, seq_dim)
    if pos is None:
        logger.info("rotary tables of %s: no int64 [B, S] position ids upstream; left unfused", cos_u)
        return None
    # the extractor needs the types of its boundary tensors; contrib ops upstream hide them from ONNX's inference
    boundary = [onnx.helper.make_tensor_value_info(n, types.get(n, 1), shapes[n]) for n in (pos, cos_u, sin_u)]
    model.graph.value_info.extend(boundary)
    try:
        sub = onnx.utils.Extractor(model).extract_model([pos], [cos_u, sin_u])
        session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
        ids = np.arange(positions, dtype=np.int64)[None, :]
        cos, sin = session.run(None, {pos: ids})
    except Exception as exc:  # a subgraph that needs more than the position ids, or does not run alone
        logger.info("rotary tables of %s cannot be evaluated from %s alone (%s); left unfused", cos_u, pos, exc)
        return None
    finally:
        for info in boundary:
            model.graph.value_info.remove(info)
    cos, sin = np.asarray(cos, np.float32).reshape(positions, -1), np.asarray(sin, np.float32).reshape(positions, -1)
    half = cos.shape[1] // 2
    if not (np.array_equal(cos[:, :half], cos[:, half:]) and np.array_equal(sin[:, :half], sin[:, half:])):
        logger.info("rotary tables of %s: halves differ (partial or interleaved rotary); left unfused", cos_u)
        return None
    return (pos, f"lusifer_rotary_cos_{index}", f"lusifer_rotary_sin_{index}",
            np.ascontiguousarray(cos[:, :half]), np.ascontiguousarray(sin[:, :half]))
