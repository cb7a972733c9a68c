"""The INT8 graph rewrites and their measurement: exact float rewrites (SmoothQuant, outlier split, Gemm),
the switchable graph agreeing with the written INT8 graph, weight/activation quantisers matching ONNX
Runtime, units kept in fp32, and the sensitivity ladder."""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from lusifer.export import export_model
from lusifer.export.int8_graph import (
    dynamic_quantize,
    find_units,
    gemm_to_matmul,
    quantize_table,
    quantize_weight,
)
from lusifer.export.quantize import (
    Int8Options,
    Switchboard,
    build_int8,
    keep_steps,
    prepare_int8,
    score_units,
)
from lusifer.export.validate import calibration_batches
from lusifer.vectors import row_cosines

from lusifer import LusiferModel

PAIR = ("xlm-roberta", "llama")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fp32_graph(tiny_factory, tmp_path_factory, one_torch_thread):
    folder = tmp_path_factory.mktemp("int8-src") / "export"
    export_model(tiny_factory(*PAIR), folder)
    return folder / "model.onnx"


@pytest.fixture(scope="module")
def calibration(tiny_factory):
    return calibration_batches(LusiferModel.from_pretrained(tiny_factory(*PAIR)))


@pytest.fixture(scope="module")
def plan(fp32_graph, calibration, tmp_path_factory):
    work = tmp_path_factory.mktemp("int8-work")
    return prepare_int8(fp32_graph, work, calibration, Int8Options()), work


def _session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _embed(path, batches):
    session = _session(path)
    return np.concatenate([session.run(None, {"input_ids": i, "attention_mask": m})[0] for i, m in batches])


def test_units_are_every_linear_and_the_token_table(plan, fp32_graph):
    plan, _ = plan
    kinds = [u.kind for u in plan.units]
    graph = onnx.load(str(fp32_graph))
    inits = {i.name for i in graph.graph.initializer}
    linear = [n for n in graph.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]
    assert kinds.count("matmul") == len(linear) > 20  # Gemm nodes are rewritten as MatMul + Add
    assert kinds.count("embedding") == 1  # the encoder's token table (position tables are not read by input_ids)
    table = next(u for u in plan.units if u.kind == "embedding")
    assert "word_embeddings" in table.name


def test_smoothing_and_outlier_split_are_exact_in_float(plan, fp32_graph, calibration):
    plan, _ = plan
    assert plan.smoothing["inputs"] > 10 and plan.smoothing["inputs"] == plan.smoothing["folded"] + plan.smoothing["mul_nodes"]
    assert plan.outlier_channels > 0
    graph = onnx.load(str(plan.smoothed))
    assert any(n.name.endswith("_outliers_add") for n in graph.graph.node)
    want = _embed(fp32_graph, calibration)
    got = _embed(plan.smoothed, calibration)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_switchable_graph_equals_the_written_int8_graph(plan, calibration, tmp_path):
    """All off = the float graph; any mix = the INT8 graph written with the same units kept in fp32."""
    plan, work = plan
    board = Switchboard(plan, work, calibration)
    np.testing.assert_allclose(board.reference, _embed(plan.smoothed, calibration), atol=1e-6, rtol=1e-6)
    n = len(plan.units)
    for keep in ([], list(range(0, n, 3))):
        files = build_int8(plan, keep, tmp_path / "q.onnx")
        written = _embed(files[0], calibration)
        switched = board.embed(board.all_but(keep))
        np.testing.assert_allclose(switched, written, atol=1e-5, rtol=1e-4)
        assert row_cosines(written, board.reference).min() < 1  # something is quantised


def test_written_graph_keeps_the_chosen_units_in_fp32(plan, tmp_path, fp32_graph):
    plan, _ = plan
    keep = [i for i, u in enumerate(plan.units) if u.kind == "matmul"][:2]
    files = build_int8(plan, keep, tmp_path / "q.onnx")
    graph = onnx.load(str(files[0]))
    inits = {i.name: i for i in graph.graph.initializer}
    nodes = {n.name: n for n in graph.graph.node}
    for i in keep:
        assert nodes[plan.units[i].name].op_type == "MatMul"
        assert inits[plan.units[i].weight].data_type == onnx.TensorProto.FLOAT
    quantised = [u for i, u in enumerate(plan.units) if i not in keep and u.kind == "matmul"]
    assert all(u.name not in nodes and f"{u.name}_quant" in nodes for u in quantised)
    assert all(u.weight not in inits for u in quantised)  # float weights dropped
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("MatMulInteger") == len(quantised)
    table = next(u for u in plan.units if u.kind == "embedding")
    assert inits[f"{table.weight}_int8"].data_type == onnx.TensorProto.INT8
    assert files[0].stat().st_size < fp32_graph.stat().st_size


@pytest.mark.parametrize("weight_type", ["uint8", "int8"])
def test_weight_quantisation_is_per_column(weight_type):
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(64, 10)) * np.linspace(0.01, 3, 10)).astype(np.float32)
    q, scale, zero = quantize_weight(w, weight_type)
    assert q.dtype == np.dtype(weight_type) and scale.shape == zero.shape == (10,)
    back = (q.astype(np.float32) - zero.astype(np.float32)) * scale
    assert np.all(np.abs(back - w) <= scale / 2 + 1e-7)
    if weight_type == "int8":
        assert np.abs(q).max() <= 63 and not zero.any()  # 7 bits: u8 x s8 pairs stay below int16
    table = rng.normal(size=(30, 8)).astype(np.float32)
    tq, row_scale = quantize_table(table)
    assert tq.dtype == np.int8 and row_scale.shape == (30, 1)
    assert np.all(np.abs(tq * row_scale - table) <= row_scale / 2 + 1e-7)


def test_simulated_activation_quantiser_matches_onnx_runtime(tmp_path):
    helper = onnx.helper
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "dql", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 7])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 7])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(tmp_path / "dql.onnx"))
    x = (np.random.default_rng(1).normal(size=(50, 7)) * [1, 1, 1, 40, 1, 1, 0.1]).astype(np.float32)
    (want,) = _session(tmp_path / "dql.onnx").run(None, {"x": x})
    np.testing.assert_allclose(dynamic_quantize(x, x.min(), x.max()), want, atol=1e-6)


def test_gemm_becomes_matmul_exactly():
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(2)
    b, c = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "b", "c"], ["y"], name="proj", transB=1)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 5])],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(c, "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.normal(size=(3, 4)).astype(np.float32)
    assert gemm_to_matmul(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    assert [u.name for u in find_units(model)] == ["proj"]
    (got,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got, x @ b.T + c, rtol=1e-5, atol=1e-6)


def test_keep_steps():
    assert keep_steps(300)[:10] == [0, 1, 2, 3, 4, 6, 8, 12, 16, 24]
    assert max(keep_steps(300)) < 300 and keep_steps(3) == [0, 1, 2]


def test_sensitivity_scores_follow_the_chunk_losses(plan, calibration):
    plan, work = plan
    board = Switchboard(plan, work, calibration)
    scores = score_units(board, plan.local, calibration[:2])
    assert scores.shape == (len(plan.units),) and (scores >= 0).all() and scores.sum() > 0
    assert board.calibration is calibration  # restored after scoring on the subset


def test_ladder_keeps_units_until_the_floor_is_met(tiny_factory, tmp_path, caplog):
    """A floor the all-INT8 graph misses: the most sensitive units go back to fp32, and the graph validates."""
    with caplog.at_level(logging.INFO, logger="lusifer.export"):
        manifest = export_model(tiny_factory(*PAIR), tmp_path / "export", quantize="int8", int8_min_cosine=0.9999,
                                int8_scheme="dynamic")
    info = manifest.source["int8_quantization"]
    attempts = info["attempts"]
    assert attempts[0]["kept_fp32"] == 0 and attempts[-1]["kept_fp32"] == len(info["kept_fp32"]) > 0
    assert [a["kept_fp32"] for a in attempts] == keep_steps(info["units"])[: len(attempts)]
    assert attempts[-1]["min_cosine"] >= 0.9999
    assert manifest.variants["int8"].parity["min_cosine"] == attempts[-1]["min_cosine"]
    assert info["sensitivity_top"] and info["sensitivity_top"][0]["unit"] == info["kept_fp32"][0]
    graph = onnx.load(str(tmp_path / "export" / "model_int8.onnx"))
    ops = {n.name: n.op_type for n in graph.graph.node}
    assert all(ops.get(name) in ("MatMul", "Gather") for name in info["kept_fp32"])
    assert any("INT8 sensitivity" in r.getMessage() for r in caplog.records)
