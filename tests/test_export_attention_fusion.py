"""Attention fusion: traced eager attention -> ``MultiHeadAttention``, for the encoder's layout (heads split from
``[B, S, N*H]`` tensors, ``K`` transposed in one step) and the decoder's (``Q``/``K`` after rotary-like ops,
``K`` transposed from ``[B, N, S, H]``); the result equals bidirectional attention with the padding mask."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from lusifer.export.attention_fusion import fuse_attention

B, S, N, H = 2, 6, 4, 8
D = N * H
SCALE = H ** -0.5


def _attention_graph(style: str):
    rng = np.random.default_rng(0)
    inits = {name: rng.standard_normal((D, D)).astype(np.float32) / 4 for name in ("wq", "wk", "wv")}
    inits |= {"split": np.array([0, 0, N, H], np.int64), "merge": np.array([0, 0, -1], np.int64),
              "scale": np.array(SCALE, np.float32), "rot": np.array(1.5, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", f"w{t}"], [f"{t}3"], name=f"proj_{t}") for t in "qkv"]
    nodes += [helper.make_node("Reshape", [f"{t}3", "split"], [f"{t}_bsnh"], name=f"split_{t}") for t in "qkv"]
    nodes += [helper.make_node("Transpose", ["v_bsnh"], ["v4"], name="v_heads", perm=[0, 2, 1, 3])]
    if style == "encoder":
        nodes += [helper.make_node("Transpose", ["q_bsnh"], ["q4"], name="q_heads", perm=[0, 2, 1, 3]),
                  helper.make_node("Transpose", ["k_bsnh"], ["kt"], name="k_heads_t", perm=[0, 2, 3, 1])]
    else:  # rotary-like ops after the head split keep Q and K in [B, N, S, H]
        nodes += [helper.make_node("Transpose", ["q_bsnh"], ["q_pre"], name="q_heads", perm=[0, 2, 1, 3]),
                  helper.make_node("Mul", ["q_pre", "rot"], ["q4"], name="q_rot"),
                  helper.make_node("Transpose", ["k_bsnh"], ["k_pre"], name="k_heads", perm=[0, 2, 1, 3]),
                  helper.make_node("Mul", ["k_pre", "rot"], ["k4"], name="k_rot"),
                  helper.make_node("Transpose", ["k4"], ["kt"], name="k_t", perm=[0, 1, 3, 2])]
    nodes += [
        helper.make_node("MatMul", ["q4", "kt"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v4"], ["ctx"], name="pv"),
        helper.make_node("Transpose", ["ctx"], ["ctx_bsnh"], name="ctx_t", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_bsnh", "merge"], ["out"], name="merge"),
    ]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, "seq", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", D])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), inits


def _reference(x, mask, inits, style):
    x = x.astype(np.float64)
    q, k, v = (np.transpose((x @ inits[f"w{t}"]).reshape(B, S, N, H), (0, 2, 1, 3)) for t in "qkv")
    if style == "decoder":
        q, k = q * 1.5, k * 1.5
    scores = q @ np.swapaxes(k, 2, 3) * SCALE + mask
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.transpose(p @ v, (0, 2, 1, 3)).reshape(B, S, D)


@pytest.mark.parametrize("style", ["encoder", "decoder"])
def test_eager_attention_becomes_bidirectional_multihead_attention(style):
    model, inits = _attention_graph(style)
    counts = fuse_attention(model)
    assert counts == {"MultiHeadAttention": 1, "attention_left": 0}
    ops = [n.op_type for n in model.graph.node]
    assert "Softmax" not in ops and ops.count("MultiHeadAttention") == 1
    mha = next(n for n in model.graph.node if n.op_type == "MultiHeadAttention")
    assert {a.name for a in mha.attribute} == {"num_heads", "scale"}  # no causal flag: attention stays bidirectional
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, S, D)).astype(np.float32)
    mask = np.zeros((B, 1, S, S), np.float32)
    mask[1, :, :, 4:] = np.finfo(np.float32).min  # second row: 2 padding positions (keys masked for every query)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x, "mask": mask})[0]
    np.testing.assert_allclose(got, _reference(x, mask, inits, style), rtol=1e-4, atol=1e-5)


def test_mask_broadcast_over_queries_is_left_unfused():
    """MultiHeadAttention takes the bias as [B, 1, S, T]; a [B, 1, 1, T] mask keeps the traced attention."""
    model, _ = _attention_graph("encoder")
    model.graph.input[1].CopyFrom(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "seq"]))
    assert fuse_attention(model) == {"MultiHeadAttention": 0, "attention_left": 1}
    assert "Softmax" in [n.op_type for n in model.graph.node]
