"""Attention fusion for the fp16 graph: the traced eager attention -> ONNX Runtime's ``MultiHeadAttention``.

transformers' eager attention (encoder and decoder alike) is traced as::

    MatMul(Q, Transpose(K, [0,1,3,2])) -> Mul(scale) -> Add(mask) -> Softmax -> MatMul(., V)
        -> Transpose([0,2,1,3]) -> Reshape([B, S, N*H])

with ``Q``, ``K`` and ``V`` in ``[B, N, S, H]`` (after rotary embeddings and, for grouped-query attention, the
repetition of the key/value heads); the encoder's ``K`` is instead transposed in one step,
``Transpose(K, [0,2,3,1])`` of ``[B, S, N, H]``. Each match becomes::

    MultiHeadAttention(query=[B, S, N*H], key=K, value=V, attention_bias=mask, num_heads=N, scale=scale)

(com.microsoft; not causal, so bidirectional attention is kept). Where ``Q``, ``K`` and ``V`` are head splits
(``Reshape``, ``Transpose``) of ``[B, S, N*H]`` projections, as in the encoder, those projections are passed
directly; otherwise the query is transposed back to ``[B, S, N*H]`` and key and value go in as ``[B, N, S, H]``
(the decoder, whose ``Q`` and ``K`` come out of the rotary embedding). One
kernel then does the scaled product, the mask, the softmax (fp32 accumulation) and the weighted sum,
instead of six kernels and two materialised ``[B, N, S, S]`` score tensors. The mask is the additive
padding mask the graph already computes; ``MultiHeadAttention`` needs it as ``[B or 1, 1, S, T]``, so an
attention whose mask broadcasts over the query axis is left as it is. The export's parity validation
(against PyTorch, with a causal control) checks the result.
"""

from __future__ import annotations

import logging

import numpy as np

from lusifer.export.onnx_graph import CONTRIB_DOMAIN, attr, ensure_contrib_opset, prune, scalar, small_constants, value_shapes

from lusifer.extras import require

logger = logging.getLogger(__name__)

def fuse_attention(model) -> dict[str, int]:
    """Replace every matching eager attention in ``model`` (in place) with ``MultiHeadAttention``.

    Args:
        model: The fp32 ModelProto (large tensors may be external; only small constants are read).

    Returns:
        ``{"MultiHeadAttention": fused, "attention_left": softmaxes left unfused}``.
    """
    onnx = require("onnx", "export")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    graph = model.graph
    shapes = value_shapes(model)
    constants = small_constants(graph, numpy_helper)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only_consumer(name: str, op: str):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    new_nodes: list[tuple[object, list]] = []  # (anchor node to insert before, nodes)
    fused = left = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        match = _match(softmax, producer, only_consumer, constants, shapes)
        if match is None:
            left += 1
            continue
        q, k, v, mask, scale, heads, out_reshape = match
        tag = f"lusifer_mha_{fused}"
        nodes: list = []
        query = _as_bsd(q, "q", tag, nodes, graph, helper, onnx)
        if k[0] is not None and v[0] is not None:  # both [B, L, N*H]
            key, value = k[0], v[0]
        else:  # both [B, N, L, H] (MultiHeadAttention takes 3-D or 4-D key and value, not a mix)
            key, value = _as_bnsh(k, "k", tag, nodes, helper), _as_bnsh(v, "v", tag, nodes, helper)
        nodes.append(helper.make_node("MultiHeadAttention", [query, key, value, "", "", mask], [out_reshape.output[0]],
                                      name=tag, domain=CONTRIB_DOMAIN, num_heads=int(heads), scale=float(scale)))
        new_nodes.append((out_reshape, nodes))
        fused += 1
    for anchor, nodes in new_nodes:
        index = list(graph.node).index(anchor)
        graph.node.remove(anchor)  # its output is now the MultiHeadAttention's
        for offset, node in enumerate(nodes):
            graph.node.insert(index + offset, node)
    if fused:
        prune(model)
        ensure_contrib_opset(model)
    logger.info("fused %d attention blocks into MultiHeadAttention (%d left as they are)", fused, left)
    return {"MultiHeadAttention": fused, "attention_left": left}

def _match(softmax, producer, only_consumer, constants, shapes):
    """The pieces of one eager attention around ``softmax``, or ``None`` when the pattern differs."""
    axis = attr(softmax, "axis", -1)
    if axis not in (-1, 3):
        return None
    add = producer.get(softmax.input[0])
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None
    scaled = mask = None
    for i in (0, 1):
        p = producer.get(add.input[i])
        if p is not None and p.op_type in ("Mul", "Div") and only_consumer(p.output[0], "Add") is add:
            scaled, mask = p, add.input[1 - i]
            break
    if scaled is None:
        return None
    qk = scale = None
    for i in ((0, 1) if scaled.op_type == "Mul" else (0,)):
        p = producer.get(scaled.input[i])
        c = scalar(scaled.input[1 - i], constants)
        if p is not None and p.op_type == "MatMul" and c:
            qk, scale = p, (c if scaled.op_type == "Mul" else 1.0 / c)
            break
    if qk is None or only_consumer(qk.output[0], scaled.op_type) is not scaled:
        return None
    kt = producer.get(qk.input[1])
    if kt is None or kt.op_type != "Transpose":
        return None
    pv = only_consumer(softmax.output[0], "MatMul")
    if pv is None or pv.input[0] != softmax.output[0]:
        return None
    out_t = only_consumer(pv.output[0], "Transpose")
    if out_t is None or attr(out_t, "perm") != [0, 2, 1, 3]:
        return None
    out_reshape = only_consumer(out_t.output[0], "Reshape")
    if out_reshape is None:
        return None
    q_dims = shapes.get(qk.input[0])
    if not q_dims or len(q_dims) != 4 or not all(isinstance(d, int) for d in q_dims[1::2]):
        return None  # the head count and size must be known
    heads, size = q_dims[1], q_dims[3]
    perm = attr(kt, "perm")
    if perm == [0, 1, 3, 2]:  # K is [B, N, L, H]
        k = _source(kt.input[0], "bnsh", producer, shapes, heads, size)
    elif perm == [0, 2, 3, 1]:  # K is [B, L, N, H]
        k = _source(kt.input[0], "bsnh", producer, shapes, heads, size)
    else:
        return None
    q = _source(qk.input[0], "bnsh", producer, shapes, heads, size)
    v = _source(pv.input[1], "bnsh", producer, shapes, heads, size)
    m_dims = shapes.get(mask)
    if None in (q, k, v) or not m_dims or len(m_dims) != 4 or m_dims[1] != 1 or m_dims[2] == 1:
        return None  # MultiHeadAttention's attention_bias is [B or 1, 1, S, T]
    if not np.isfinite(scale) or scale <= 0:
        return None
    return q, k, v, mask, scale, heads, out_reshape

def _source(name: str, layout: str, producer, shapes, heads: int, size: int):
    """One of Q/K/V as ``(bsd, (layout, name))``: ``bsd`` is the ``[B, S, N*H]`` tensor that ``name`` splits into
    heads (``Reshape``, then for ``bnsh`` a ``Transpose([0,2,1,3])``), or ``None``; ``(layout, name)`` is the
    4-D tensor itself. ``None`` when its shape does not have ``heads`` heads of ``size``."""
    dims = shapes.get(name)
    axis = 1 if layout == "bnsh" else 2
    if not dims or len(dims) != 4 or dims[axis] != heads or dims[3] != size:
        return None
    split = name
    if layout == "bnsh":
        t = producer.get(name)
        if t is None or t.op_type != "Transpose" or attr(t, "perm") != [0, 2, 1, 3]:
            return None, (layout, name)
        split = t.input[0]
    r = producer.get(split)
    if r is not None and r.op_type == "Reshape":
        src = shapes.get(r.input[0])
        if src and len(src) == 3 and src[2] == heads * size:
            return r.input[0], (layout, name)
    return None, (layout, name)

def _as_bsd(source, what: str, tag: str, nodes: list, graph, helper, onnx) -> str:
    """A ``[B, S, N*H]`` tensor for ``source`` (new Transpose/Reshape nodes appended when needed)."""
    bsd, (layout, name) = source
    if bsd is not None:
        return bsd
    if layout == "bnsh":
        nodes.append(helper.make_node("Transpose", [name], [f"{tag}_{what}_bsnh"], name=f"{tag}_{what}_transpose",
                                      perm=[0, 2, 1, 3]))
        name = f"{tag}_{what}_bsnh"
    shape = helper.make_tensor(f"{tag}_{what}_shape", onnx.TensorProto.INT64, [3], [0, 0, -1])
    graph.initializer.append(shape)
    nodes.append(helper.make_node("Reshape", [name, shape.name], [f"{tag}_{what}_bsd"], name=f"{tag}_{what}_reshape"))
    return f"{tag}_{what}_bsd"

def _as_bnsh(source, what: str, tag: str, nodes: list, helper) -> str:
    """A ``[B, N, S, H]`` tensor for ``source`` (a Transpose appended for a ``[B, S, N, H]`` one)."""
    _, (layout, name) = source
    if layout == "bnsh":
        return name
    nodes.append(helper.make_node("Transpose", [name], [f"{tag}_{what}_bnsh"], name=f"{tag}_{what}_transpose",
                                  perm=[0, 2, 1, 3]))
    return f"{tag}_{what}_bnsh"
