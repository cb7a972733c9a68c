"""Rotary fusion: the traced ``apply_rotary_pos_emb`` -> ``RotaryEmbedding`` with cos/sin tables evaluated from
the graph's own rotary subgraph; exact for per-row position ids (left padding shifts them)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from lusifer.export.rotary_fusion import fuse_rotary

B, N, S, H = 2, 3, 5, 8
THETA = 10000.0


def _rotary_graph(partial: bool = False):
    inv_freq = (1.0 / THETA ** (np.arange(0, H, 2) / H)).astype(np.float32)
    second = inv_freq * (2.0 if partial else 1.0)  # unequal halves: not the rotate-half layout RotaryEmbedding does
    inits = {
        "inv_a": inv_freq.reshape(1, 1, -1), "inv_b": second.reshape(1, 1, -1),
        "axis_last": np.array([-1], np.int64), "axis_heads": np.array([1], np.int64),
        "zero": np.array([0], np.int64), "half": np.array([H // 2], np.int64),
        "end": np.array([np.iinfo(np.int64).max], np.int64),
    }
    nodes = [
        helper.make_node("Unsqueeze", ["pos", "axis_last"], ["pos3"], name="pos_unsqueeze"),
        helper.make_node("Cast", ["pos3"], ["pos_f"], name="pos_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pos_f", "inv_a"], ["fa"], name="freqs_a"),
        helper.make_node("Mul", ["pos_f", "inv_b"], ["fb"], name="freqs_b"),
        helper.make_node("Concat", ["fa", "fb"], ["emb"], name="emb", axis=-1),
        helper.make_node("Cos", ["emb"], ["cos"], name="cos"),
        helper.make_node("Sin", ["emb"], ["sin"], name="sin"),
        helper.make_node("Unsqueeze", ["cos", "axis_heads"], ["cos_u"], name="cos_u"),
        helper.make_node("Unsqueeze", ["sin", "axis_heads"], ["sin_u"], name="sin_u"),
        helper.make_node("Mul", ["x", "cos_u"], ["x_cos"], name="x_cos"),
        helper.make_node("Slice", ["x", "zero", "half", "axis_last"], ["x1"], name="first_half"),
        helper.make_node("Slice", ["x", "half", "end", "axis_last"], ["x2"], name="second_half"),
        helper.make_node("Neg", ["x2"], ["neg"], name="neg"),
        helper.make_node("Concat", ["neg", "x1"], ["rot"], name="rotate_half", axis=-1),
        helper.make_node("Mul", ["rot", "sin_u"], ["rot_sin"], name="rot_sin"),
        helper.make_node("Add", ["x_cos", "rot_sin"], ["y"], name="rotary_add"),
    ]
    graph = helper.make_graph(
        nodes, "rotary",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N, "seq", H]),
         helper.make_tensor_value_info("pos", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N, "seq", H])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x, pos):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "pos": pos})[0]


def test_rotary_becomes_rotary_embedding_and_keeps_per_row_positions():
    model = _rotary_graph()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, N, S, H)).astype(np.float32)
    pos = np.array([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]], np.int64)  # row 0 left-padded: its positions start late
    want = _run(model, x, pos)
    assert fuse_rotary(model, positions=64) == {"RotaryEmbedding": 1, "rotary_left": 0}
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["RotaryEmbedding"]  # the cos/sin subgraph is gone: tables are initializers
    np.testing.assert_allclose(_run(model, x, pos), want, rtol=1e-5, atol=1e-5)


def test_rotary_with_unequal_halves_is_left_unfused():
    model = _rotary_graph(partial=True)
    assert fuse_rotary(model, positions=64) == {"RotaryEmbedding": 0, "rotary_left": 1}
    assert "Neg" in [n.op_type for n in model.graph.node]
