"""fp16 and INT8 variants, external data, overwrite, and failures that must leave nothing half-written."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import MULTILINGUAL_TEXTS, bidirectional_and_causal

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from lusifer.export import ExportParityError, export_model
from lusifer.export.manifest import sha256_file

from lusifer import LusiferModel
from lusifer.onnx_interface import MANIFEST_NAME, MIN_COSINE, ExportManifest
from lusifer.vectors import row_cosines

PAIR = ("bert", "qwen2")  # Qwen2 has attention biases; BERT has absolute positions from 0


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fp16_export(tiny_factory, tmp_path_factory, one_torch_thread):
    """fp16 + int8 export with external data forced (threshold 0), over a previous export folder."""
    target = tmp_path_factory.mktemp("fp16") / "export"
    target.mkdir()
    (target / MANIFEST_NAME).write_text("{}")
    (target / "model.onnx").write_text("stale")
    records = _Records()
    export_logger = logging.getLogger("lusifer.export")
    level = export_logger.level
    export_logger.setLevel(logging.INFO)
    export_logger.addHandler(records)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("lusifer.export.onnx_export.EXTERNAL_DATA_THRESHOLD_BYTES", 0)
            manifest = export_model(tiny_factory(*PAIR), target, dtype="fp16", quantize="int8", overwrite=True,
                                    fp16_fusions="all", int8_scheme="dynamic")
    finally:
        export_logger.removeHandler(records)
        export_logger.setLevel(level)
    return target, manifest, records.records


@pytest.fixture(scope="module")
def model(tiny_factory):
    return LusiferModel.from_pretrained(tiny_factory(*PAIR))


def run(path: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (emb,) = session.run(None, {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)})
    return emb


def test_fp16_and_int8_variants_validate(fp16_export, model):
    folder, manifest, _ = fp16_export
    assert set(manifest.variants) == {"fp16", "int8"}
    assert not (folder / "model.onnx").exists()  # the stale file of the replaced export is gone
    fp16, int8 = manifest.variants["fp16"], manifest.variants["int8"]
    assert (fp16.file, fp16.dtype, fp16.quantization) == ("model_fp16.onnx", "fp16", None)
    assert (int8.file, int8.dtype, int8.quantization) == ("model_int8.onnx", "fp32", "int8")
    assert fp16.parity["min_cosine"] >= MIN_COSINE["fp16"]
    assert int8.parity["min_cosine"] >= MIN_COSINE["int8"]
    enc = model.tokenize(MULTILINGUAL_TEXTS, kind="document")
    want = model.encode(MULTILINGUAL_TEXTS, kind="document", normalize=False)
    for info in (fp16, int8):
        got = run(folder / info.file, enc["input_ids"].numpy(), enc["attention_mask"].numpy())
        assert got.dtype == np.float32
        assert row_cosines(got, want).min() >= info.parity["tolerance_min_cosine"]


def test_external_data_files_are_listed_and_checksummed(fp16_export):
    folder, manifest, _ = fp16_export
    for info in manifest.variants.values():
        assert set(info.files) == {info.file, info.file + ".data"}
        for name, sha in info.files.items():
            assert sha256_file(folder / name) == sha
    graph = onnx.load(str(folder / "model_fp16.onnx"), load_external_data=False)
    assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.graph.initializer)
    assert ExportManifest.load(folder).to_dict() == manifest.to_dict()


def test_fp16_graph_keeps_sensitive_math_in_fp32(fp16_export):
    """MatMuls, the fused norms (fp32 statistics inside ONNX Runtime's kernels), attention and rotary run in
    fp16; pooling stays fp32; I/O types unchanged."""
    folder, _, _ = fp16_export
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(folder / "model_fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.graph.value_info, *graph.graph.input, *graph.graph.output]}
    types.update({i.name: i.data_type for i in graph.graph.initializer})
    FLOAT, FLOAT16, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64
    seen: dict[str, set] = {}
    for node in graph.graph.node:
        if node.input:
            seen.setdefault(node.op_type, set()).add(types.get(node.input[0]))
    assert seen["MatMul"] == {FLOAT16}
    for op in ("SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"):
        assert seen[op] == {FLOAT16}, op
    assert not {"Pow", "Sqrt"} & set(seen)  # no unfused RMSNorm statistics left
    assert seen["MultiHeadAttention"] == {FLOAT16} and "Softmax" not in seen  # every attention fused
    assert seen["RotaryEmbedding"] == {FLOAT16} and "Neg" not in seen  # every rotary embedding fused
    assert "Cos" not in seen  # rotary angles are computed at export time (fp32), their cos/sin stored as tables
    assert seen["ReduceSum"] == {FLOAT}  # pooling
    assert [types[i.name] for i in graph.graph.input] == [INT64, INT64]
    assert types[graph.graph.output[0].name] == FLOAT


def test_int8_with_fp16_warns(fp16_export):
    _, _, records = fp16_export
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("INT8 is a CPU graph" in m and "CUDA" in m for m in warnings)
    assert any("int8 drift per language" in r.getMessage() for r in records)


def test_int8_below_floor_fails_and_leaves_nothing(tiny_factory, tmp_path):
    from click.testing import CliRunner
    from lusifer.export.cli import main

    target = tmp_path / "export"
    result = CliRunner().invoke(
        main, [str(tiny_factory(*PAIR)), "--out", str(target), "--quantize", "int8", "--int8-scheme", "dynamic",
               "--int8-min-cosine", "1.0"]
    )
    assert result.exit_code != 0
    # no mix of INT8 and fp32 units reaches cosine 1 on the calibration texts: nothing to validate
    assert "ExportError" in result.output and "INT8" in result.output
    assert "min cosine 1 on the calibration texts" in result.output and "int8_min_cosine" in result.output
    assert isinstance(result.exception, SystemExit)
    assert list(tmp_path.iterdir()) == []  # neither the export nor its staging folder


def test_optional_int8_below_floor_is_left_out(tiny_factory, tmp_path):
    """--int8-optional: the export succeeds without the INT8 graph and says why."""
    from click.testing import CliRunner
    from lusifer.export.cli import main

    target = tmp_path / "export"
    result = CliRunner().invoke(
        main, [str(tiny_factory(*PAIR)), "--out", str(target), "--quantize", "int8", "--int8-min-cosine", "1.0",
               "--int8-optional", "--int8-scheme", "dynamic"],
    )
    assert result.exit_code == 0, result.output
    assert "int8: left out (ExportError" in result.output
    manifest = ExportManifest.load(target)
    assert set(manifest.variants) == {"fp32"}
    assert manifest.source["int8_quantization"]["skipped"].startswith("ExportError")
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "model.onnx", "tokenizer.json"]


def test_int8_options_from_the_cli(tiny_factory, tmp_path):
    """7-bit int8 weights, no smoothing, no outlier split, fp32 token table."""
    from click.testing import CliRunner
    from lusifer.export.cli import main

    target = tmp_path / "export"
    result = CliRunner().invoke(
        main, [str(tiny_factory(*PAIR)), "--out", str(target), "--quantize", "int8", "--int8-scheme", "dynamic", "--int8-weights", "int8",
               "--int8-smooth-alpha", "0", "--int8-outlier-share", "0", "--no-int8-embeddings",
               "--int8-min-cosine", "0.9"],
    )
    assert result.exit_code == 0, result.output
    info = ExportManifest.load(target).source["int8_quantization"]
    assert (info["weight_type"], info["smooth_alpha"], info["outlier_share"]) == ("int8", 0.0, 0.0)
    assert info["smoothed_inputs"] == 0 and info["outlier_channels_fp32"] == 0 and info["int8_token_tables"] == []
    graph = onnx.load(str(target / "model_int8.onnx"))
    inits = {i.name: i for i in graph.graph.initializer}
    assert not any(n.name.endswith(("_smooth", "_outliers", "_dequant")) for n in graph.graph.node)
    integer = [n for n in graph.graph.node if n.op_type in ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")]
    assert integer and all(inits[n.input[1]].data_type == onnx.TensorProto.INT8 for n in integer)


def test_parity_error_carries_figures(tiny_factory, tmp_path, monkeypatch):
    """A graph that drifts from PyTorch raises ExportParityError with its figures; a previous export survives."""
    from lusifer.export import validate

    target = tmp_path / "export"
    target.mkdir()
    (target / MANIFEST_NAME).write_text("{}")
    original = validate.torch_reference

    def drifted(model):
        ref = original(model)
        ref.embeddings = ref.embeddings + np.random.default_rng(0).normal(0, 1, ref.embeddings.shape).astype(np.float32)
        return ref

    monkeypatch.setattr(validate, "torch_reference", drifted)
    with pytest.raises(ExportParityError) as info:
        export_model(tiny_factory(*PAIR), target, overwrite=True)
    err = info.value
    assert err.variant == "fp32" and err.tolerance == MIN_COSINE["fp32"]
    assert err.min_cosine < MIN_COSINE["fp32"] and err.max_abs_diff > 0.1
    assert "min cosine" in str(err) and "0.9999" in str(err) and "max abs diff" in str(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert [p.name for p in target.iterdir()] == [MANIFEST_NAME]  # the old export is untouched


@pytest.mark.gpu
def test_fp16_graph_on_cuda_matches_pytorch(fp16_export, model):
    """The fp16 graph is for the CUDA execution provider: run it there (needs onnxruntime-gpu and a GPU)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.fail(f"CUDAExecutionProvider missing (providers: {ort.get_available_providers()}); install onnxruntime-gpu")
    folder, manifest, _ = fp16_export
    session = ort.InferenceSession(
        str(folder / manifest.variants["fp16"].file), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    enc = model.tokenize(MULTILINGUAL_TEXTS, kind="query", instruction="Find the same sentence")
    (got,) = session.run(None, {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()})
    want = model.encode(MULTILINGUAL_TEXTS, kind="query", instruction="Find the same sentence", normalize=False)
    assert got.dtype == np.float32
    assert row_cosines(got, want).min() >= MIN_COSINE["fp16"]


def test_fused_fp16_graph_is_bidirectional_and_padding_side_invariant(fp16_export, model):
    """The fused graph (MultiHeadAttention, RotaryEmbedding) keeps bidirectional attention and gives the same
    vectors for left and right padding (rotary positions follow the mask), within fp16 error."""
    folder, manifest, _ = fp16_export
    path = folder / manifest.variants["fp16"].file
    enc = model.tokenize(MULTILINGUAL_TEXTS, kind="document")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    got = run(path, ids.numpy(), mask.numpy())
    bidirectional, causal = bidirectional_and_causal(model, ids, mask)
    to_bidirectional, to_causal = np.abs(got - bidirectional).max(), np.abs(got - causal).max()
    assert to_causal > 5 * to_bidirectional, (to_bidirectional, to_causal)
    pad = manifest.pad_token_id
    n = mask.sum(1).numpy()
    width = ids.shape[1] + 3
    left_ids = np.full((len(n), width), pad, np.int64)
    left_mask = np.zeros((len(n), width), np.int64)
    for i, k in enumerate(n):
        left_ids[i, width - k:] = ids[i, :k].numpy()
        left_mask[i, width - k:] = 1
    left = run(path, left_ids, left_mask)
    assert row_cosines(left, got).min() >= MIN_COSINE["fp16"]
    np.testing.assert_allclose(left, got, atol=2 * to_bidirectional + 1e-4)


def test_int8_runs_one_row_per_pass_so_a_vector_does_not_depend_on_its_batch(fp16_export, caplog):
    """Dynamic INT8 scales are per forward pass: batched, a row's vector would change with its batch-mates."""
    from lusifer.runtime import Embedder

    target, _, _ = fp16_export
    int8 = Embedder(target, device="cpu", variant="int8", threads=1)
    assert int8.one_row_per_pass and int8.rows_per_pass(None) == 1
    texts = MULTILINGUAL_TEXTS[:5]
    batches = int8.make_batches(int8.tokenize(texts))
    assert [len(b.positions) for b in batches] == [1] * len(texts)
    alone = np.concatenate([int8.embed([t]) for t in texts])
    with caplog.at_level(logging.WARNING, logger="lusifer.runtime"):
        together = int8.embed(texts + ["a much longer text " * 20], max_batch_rows=64)[: len(texts)]
    np.testing.assert_array_equal(together, alone)
    assert "max_batch_rows=64 ignored" in caplog.text
    fp16 = Embedder(target, device="cpu", variant="fp16", threads=1)
    assert not fp16.one_row_per_pass and fp16.rows_per_pass(None) > 1
