"""The fp16 graph clean-up: ONNX Runtime >= 1.31 refuses repeated node names and repeated output definitions,
which the fp16 converter produced for a LayerNorm output feeding several fp32 consumers (seen on the H100
with onnxruntime-gpu 1.31.1)."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from lusifer.export.fp16 import make_node_names_unique


def _graph_with_repeats():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])
    nodes = [
        helper.make_node("Cast", ["x"], ["x32"], name="x_cast_to_fp32_node", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["x"], ["x32"], name="x_cast_to_fp32_node", to=TensorProto.FLOAT),  # exact repeat
        helper.make_node("Relu", ["x32"], ["y"], name="act"),
        helper.make_node("Neg", ["x32"], ["z"], name="act"),  # same name, different node
    ]
    graph = helper.make_graph(nodes, "g", [x], [y, z])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_repeated_casts_are_dropped_and_names_made_unique():
    model = _graph_with_repeats()
    changed = make_node_names_unique(model)
    assert changed == 2
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names)) == 3
    outputs = [o for n in model.graph.node for o in n.output]
    assert len(outputs) == len(set(outputs))
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, z = sess.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float16)})
    np.testing.assert_allclose(y, [0.0, 2.0])
    np.testing.assert_allclose(z, [1.0, -2.0])


def test_clean_graph_is_left_alone():
    model = _graph_with_repeats()
    make_node_names_unique(model)
    before = model.SerializeToString()
    assert make_node_names_unique(model) == 0
    assert model.SerializeToString() == before
