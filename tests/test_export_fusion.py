"""Norm fusion before fp16 conversion: a residual Add + RMSNorm written out as the tracer writes it becomes one
``SkipSimplifiedLayerNormalization`` and stays exact for activations whose squares overflow fp16."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from lusifer.export.fp16 import convert_to_fp16
from lusifer.export.fusion import fuse_norms
from lusifer.onnx_interface import INPUT_NAMES

HIDDEN = 16
EPS = 1e-6


def _traced_rmsnorm_graph(path):
    """``y = w * cast(x * 1/sqrt(mean(cast(x)^2) + eps))`` with ``x = a + b``, then a MatMul (as traced)."""
    rng = np.random.default_rng(0)
    a, b = INPUT_NAMES[0], "skip"
    consts = {
        "two": np.array(2.0, np.float32), "eps": np.array(EPS, np.float32), "one": np.array(1.0, np.float32),
        "axes": np.array([-1], np.int64), "w": rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32),
        "proj": rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) / 4,
    }
    nodes = [
        helper.make_node("Add", [a, b], ["x"], name="residual"),
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("Pow", ["xf", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1, name="mean"),
        helper.make_node("Add", ["ms", "eps"], ["mse"], name="add_eps"),
        helper.make_node("Sqrt", ["mse"], ["rms"], name="sqrt"),
        helper.make_node("Div", ["one", "rms"], ["inv"], name="inv"),
        helper.make_node("Mul", ["xf", "inv"], ["normed"], name="scale"),
        helper.make_node("Cast", ["normed"], ["normed_cast"], to=TensorProto.FLOAT, name="to_dtype"),
        helper.make_node("Mul", ["w", "normed_cast"], ["y"], name="weight"),
        helper.make_node("MatMul", ["y", "proj"], ["out"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes, "rmsnorm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "seq", HIDDEN]) for n in (a, b)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return consts


def _reference(a, b, consts):
    x = (a + b).astype(np.float64)
    y = consts["w"] * x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS)
    return y @ consts["proj"]


def _run(path, a, b):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAMES[0]: a, "skip": b})[0]


def test_fuse_norms_turns_residual_and_rmsnorm_into_one_op(tmp_path):
    _traced_rmsnorm_graph(tmp_path / "g.onnx")
    model = onnx.load(str(tmp_path / "g.onnx"))
    counts = fuse_norms(model)
    assert counts["SkipSimplifiedLayerNormalization"] == 1
    assert [n.op_type for n in model.graph.node] == ["SkipSimplifiedLayerNormalization", "MatMul"]


@pytest.mark.parametrize("fuse", ["norm", "none"])
def test_fp16_graph_is_exact_where_squares_overflow_fp16(tmp_path, fuse):
    """Activations of ~1000 (squares ~1e6 > fp16's 65504): the fused kernel and the unfused fp32 chain both hold."""
    consts = _traced_rmsnorm_graph(tmp_path / "g.onnx")
    convert_to_fp16(tmp_path / "g.onnx", tmp_path / "g16.onnx", fuse=fuse)
    graph = onnx.load(str(tmp_path / "g16.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    fused = fuse != "none"
    assert ("SkipSimplifiedLayerNormalization" in ops) is fused and ("Pow" in ops) is not fused
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((2, 5, HIDDEN)) * 1000).astype(np.float32)
    b = (rng.standard_normal((2, 5, HIDDEN)) * 10).astype(np.float32)
    got = _run(tmp_path / "g16.onnx", a, b)
    want = _reference(a, b, consts)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


def test_export_without_fusions_keeps_rmsnorm_statistics_in_fp32(tiny_factory, tmp_path, one_torch_thread):
    """``--no-fp16-fusions``: the traced RMSNorm ops stay, their statistics in fp32; the manifest says so."""
    from click.testing import CliRunner

    from lusifer.export.cli import main
    from lusifer.onnx_interface import ExportManifest

    target = tmp_path / "export"
    result = CliRunner().invoke(
        main, [str(tiny_factory("bert", "llama")), "--out", str(target), "--dtype", "fp16", "--no-fp16-fusions", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert ExportManifest.load(target).source["fp16_fusions"] == "none"
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(target / "model_fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in graph.graph.value_info}
    pows = [n for n in graph.graph.node if n.op_type == "Pow"]
    assert pows and {types.get(n.input[0]) for n in pows} == {TensorProto.FLOAT}
    assert not {n.op_type for n in graph.graph.node} & {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"}


def test_default_export_fuses_norms_but_not_attention(tiny_factory, tmp_path, one_torch_thread):
    """The default (``--fp16-fusions norm``): norms and bias+GELU fused; attention and rotary stay traced (fused
    attention ran slower on Hopper with ONNX Runtime 1.31); the manifest says which level."""
    from click.testing import CliRunner

    from lusifer.export.cli import main
    from lusifer.onnx_interface import ExportManifest

    target = tmp_path / "export"
    result = CliRunner().invoke(main, [str(tiny_factory("bert", "llama")), "--out", str(target), "--dtype", "fp16", "-q"])
    assert result.exit_code == 0, result.output
    assert ExportManifest.load(target).source["fp16_fusions"] == "norm"
    ops = {n.op_type for n in onnx.load(str(target / "model_fp16.onnx"), load_external_data=False).graph.node}
    assert {"SkipSimplifiedLayerNormalization", "SkipLayerNormalization"} <= ops
    assert not {"MultiHeadAttention", "RotaryEmbedding"} & ops and "Softmax" in ops


@pytest.mark.parametrize("value", ["no", True, "fused"])
def test_fp16_fusions_must_be_a_known_level(tiny_factory, tmp_path, value):
    from lusifer.export import export_model
    from lusifer.export.errors import ExportOptionError

    with pytest.raises(ExportOptionError, match=f"fp16_fusions={value!r} must be one of none, norm, all"):
        export_model(tiny_factory("bert", "llama"), tmp_path / "export", dtype="fp16", fp16_fusions=value)


def test_bias_gelu_fuses_when_the_bias_is_external_data(tmp_path, monkeypatch):
    """Graphs over 2 GB keep their tensors in a ``.data`` file while the passes run: the BiasGelu pass reads its
    bias from there, whatever the working directory is."""
    rng = np.random.default_rng(0)
    width = 2048  # an 8 KB bias: external, as in a real encoder's FFN
    consts = {"w": rng.standard_normal((HIDDEN, width)).astype(np.float32) / 4,
              "bias": rng.standard_normal(width).astype(np.float32),
              "sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
              "half": np.array(0.5, np.float32)}
    nodes = [
        helper.make_node("MatMul", [INPUT_NAMES[0], "w"], ["h"], name="fc"),
        helper.make_node("Add", ["h", "bias"], ["hb"], name="bias_add"),
        helper.make_node("Div", ["hb", "sqrt2"], ["d"], name="gelu_div"),
        helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
        helper.make_node("Mul", ["hb", "e1"], ["m"], name="gelu_mul"),
        helper.make_node("Mul", ["m", "half"], ["out"], name="gelu_half"),
    ]
    graph = helper.make_graph(
        nodes, "gelu", [helper.make_tensor_value_info(INPUT_NAMES[0], TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", width])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    src = tmp_path / "graph" / "g.onnx"
    src.parent.mkdir()
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src),
                    save_as_external_data=True, all_tensors_to_one_file=True, location="g.onnx.data",
                    size_threshold=1024)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    convert_to_fp16(src, tmp_path / "g16.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "g16.onnx")).graph.node]
    assert "BiasGelu" in ops and "Erf" not in ops
    x = rng.standard_normal((2, 3, HIDDEN)).astype(np.float32)
    h = x.astype(np.float64) @ consts["w"] + consts["bias"]
    from math import erf

    want = 0.5 * h * (1 + np.vectorize(erf)(h / np.sqrt(2)))
    session = ort.InferenceSession(str(tmp_path / "g16.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {INPUT_NAMES[0]: x})[0], want, rtol=2e-2, atol=2e-2)


def test_a_failing_fusion_pass_names_the_way_out(tmp_path, monkeypatch):
    """A fusion pass that breaks on some graph stops the export with a typed error naming --fp16-fusions none."""
    from lusifer.export import fp16
    from lusifer.export.errors import ExportGraphError

    _traced_rmsnorm_graph(tmp_path / "g.onnx")

    def broken(model):
        raise KeyError("some node")

    monkeypatch.setattr(fp16, "fuse_norms", broken)
    with pytest.raises(ExportGraphError, match="--fp16-fusions none"):
        convert_to_fp16(tmp_path / "g.onnx", tmp_path / "g16.onnx")
    assert not (tmp_path / "g16.onnx").exists()
    convert_to_fp16(tmp_path / "g.onnx", tmp_path / "g16.onnx", fuse="none")  # the way out works


def test_small_external_tensors_without_length_load(tmp_path):
    """torch's exporter writes each large-graph tensor to its own file with no ``length``: the fusion passes still
    get the small ones (a 7B trace is read as it is, without a consolidated fp32 copy)."""
    import onnx

    from lusifer.export.onnx_graph import load_small_external_tensors

    bias = numpy_helper.from_array(np.arange(64, dtype=np.float32), "bias")
    graph = helper.make_graph([helper.make_node("Add", ["x", "bias"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])], [bias])
    onnx.save_model(helper.make_model(graph), str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    init = model.graph.initializer[0]
    kept = [e for e in init.external_data if e.key == "location"]
    del init.external_data[:]
    init.external_data.extend(kept)  # as torch writes it: a location, no length
    assert load_small_external_tensors(model, tmp_path) == 1
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), np.arange(64, dtype=np.float32))
