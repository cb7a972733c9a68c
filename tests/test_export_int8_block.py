"""The block INT8 graph (the default ``--int8-scheme``): ONNX Runtime's MatMulNBits with activations quantised per
row and block, validated like every export, run batched, and batch-invariant (a text's vector is the same alone
and among any batch-mates)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from click.testing import CliRunner

from conftest import MULTILINGUAL_TEXTS

from lusifer.export import export_model
from lusifer.export.cli import main as export_main
from lusifer.export.errors import ExportOptionError
from lusifer.onnx_interface import MIN_COSINE
from lusifer.vectors import row_cosines

PAIR = ("xlm-roberta", "llama")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def block_export(tiny_factory, tmp_path_factory, one_torch_thread):
    target = tmp_path_factory.mktemp("int8-block") / "export"
    result = CliRunner().invoke(export_main, [str(tiny_factory(*PAIR)), "--out", str(target), "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    return target


def test_block_int8_is_the_default_scheme_and_validates(block_export):
    from lusifer.onnx_interface import ExportManifest

    manifest = ExportManifest.load(block_export)
    info = manifest.variants["int8"]
    assert info.quantization == "int8-block"
    assert info.parity["min_cosine"] >= MIN_COSINE["int8"]
    summary = manifest.source["int8_quantization"]
    assert summary["scheme"] == "block" and summary["bits"] == 8 and summary["accuracy_level"] == 4
    graph = onnx.load(str(block_export / "model_int8.onnx"))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("MatMulNBits") == summary["matmuls"] > 20
    assert "DynamicQuantizeLinear" not in ops and "DynamicQuantizeMatMul" not in ops
    assert summary["token_tables"]  # the encoder's token table is int8
    int8_bytes = sum((block_export / f).stat().st_size for f in info.files)
    fp32_bytes = sum((block_export / f).stat().st_size for f in manifest.variants["fp32"].files)
    assert int8_bytes < 0.75 * fp32_bytes  # tiny layers are padded to whole blocks; lusifer-small: 0.26x


def test_block_int8_runs_batched_and_a_text_gets_the_same_vector_whatever_its_batch(block_export):
    """The same text alone and inside batches of different mates (and so different padding) gives vectors
    within 1e-5 cosine: the activation scales are per row and block, never per batch."""
    from lusifer.runtime import Embedder

    int8 = Embedder(block_export, device="cpu", variant="int8", threads=1)
    assert not int8.one_row_per_pass and int8.rows_per_pass(None) > 1
    texts = MULTILINGUAL_TEXTS[:6]
    batches = int8.make_batches(int8.tokenize(texts))
    assert max(len(b.positions) for b in batches) > 1  # really batched
    alone = np.concatenate([int8.embed([t]) for t in texts])
    mates = [
        texts,
        texts[::-1] + ["a much longer text that pads every other row " * 6],
        MULTILINGUAL_TEXTS[6:12] + texts[:3],
    ]
    for batch in mates:
        got = int8.embed(batch, max_batch_rows=64)
        for i, text in enumerate(batch):
            if text in texts:
                cos = row_cosines(got[i : i + 1], alone[texts.index(text) : texts.index(text) + 1])[0]
                assert cos >= 1 - 1e-5, (text, cos)
    fp32 = Embedder(block_export, device="cpu", variant="fp32", threads=1)
    assert row_cosines(alone, fp32.embed(texts)).min() >= MIN_COSINE["int8"]


def test_unknown_int8_scheme_is_refused(tiny_factory, tmp_path):
    with pytest.raises(ExportOptionError, match="int8_scheme='int4'"):
        export_model(tiny_factory(*PAIR), tmp_path / "x", quantize="int8", int8_scheme="int4")
    assert not (tmp_path / "x").exists()


def test_block_int8_below_its_floor_fails_and_leaves_nothing(tiny_factory, tmp_path):
    result = CliRunner().invoke(export_main, [str(tiny_factory(*PAIR)), "--out", str(tmp_path / "export"),
                                              "--quantize", "int8", "--int8-min-cosine", "1.0"])
    assert result.exit_code != 0 and "ExportParityError" in result.output and "int8" in result.output
    assert list(tmp_path.iterdir()) == []
