"""``lusifer-export --quantize int8 --int8-only``: a folder with the INT8 graph alone (the edge export), and how the
runtime treats it: embeds on CPU, refuses a variant it lacks, and says why it runs INT8 on a CPU without fast
int8 dot products."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from click.testing import CliRunner
from test_runtime_support import write_parquet

from conftest import MULTILINGUAL_TEXTS

from lusifer.checksums import sha256_file
from lusifer.export.cli import main as export_main
from lusifer.onnx_interface import MIN_COSINE, ExportManifest
from lusifer.runtime import Embedder
from lusifer.runtime.cli import main as embed_main

PAIR = ("xlm-roberta", "llama")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def export_cli(*args):
    return CliRunner().invoke(export_main, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_dir(tiny_factory):
    return tiny_factory(*PAIR)


@pytest.fixture(scope="module")
def int8_only(model_dir, tmp_path_factory, one_torch_thread):
    target = tmp_path_factory.mktemp("int8-only") / "export"
    result = export_cli(model_dir, "--out", target, "--quantize", "int8", "--int8-only")
    assert result.exit_code == 0, result.output
    assert "int8: model_int8.onnx  min cosine" in result.output and "fp32: model.onnx" not in result.output
    assert "fp32: validated (min cosine" in result.output and "not kept (--int8-only)" in result.output
    return target


def test_int8_only_folder_holds_the_int8_graph_alone_and_a_manifest_that_lists_it_alone(int8_only, model_dir,
                                                                                        tmp_path):
    assert sorted(p.name for p in int8_only.iterdir()) == ["manifest.json", "model_int8.onnx", "tokenizer.json"]
    manifest = ExportManifest.load(int8_only)
    assert list(manifest.variants) == ["int8"]
    info = manifest.variants["int8"]
    assert info.quantization == "int8-block" and info.file == "model_int8.onnx"
    assert info.parity["min_cosine"] >= MIN_COSINE["int8"]  # validated against PyTorch fp32
    assert info.files == {"model_int8.onnx": sha256_file(int8_only / "model_int8.onnx")}
    dropped = manifest.source["int8_only"]  # the fp32 graph was validated before it was dropped
    assert dropped["fp32_min_cosine"] >= MIN_COSINE["fp32"]
    # the INT8 graph is the file a full export ships beside model.onnx
    full = tmp_path / "full"
    result = export_cli(model_dir, "--out", full, "--quantize", "int8")
    assert result.exit_code == 0, result.output
    assert sha256_file(full / "model_int8.onnx") == info.files["model_int8.onnx"]
    assert not list(int8_only.parent.glob(".*"))  # no staging or work folder left beside it


def test_lusifer_embed_runs_an_int8_only_folder_on_cpu(int8_only, tmp_path):
    write_parquet(tmp_path / "corpus.parquet", MULTILINGUAL_TEXTS[:7])
    out = tmp_path / "vectors.npy"
    result = CliRunner().invoke(embed_main, [str(tmp_path / "corpus.parquet"), "--out", str(out), "--model",
                                             str(int8_only), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    vectors = np.load(out)
    sidecar = json.loads(out.with_name(out.name + ".json").read_text("utf-8"))
    model = sidecar["identity"]["model"]
    assert model["variant"] == "int8" and sorted(model["files"]) == ["model_int8.onnx", "tokenizer.json"]
    alone = Embedder(int8_only, device="cpu", threads=1).embed(MULTILINGUAL_TEXTS[:7], kind="document")
    assert vectors.shape == alone.shape
    np.testing.assert_allclose(vectors, alone, atol=1e-5)


def test_variant_fp32_on_an_int8_only_folder_names_the_variants_present(int8_only, tmp_path):
    write_parquet(tmp_path / "corpus.parquet", ["a", "b"])
    out = tmp_path / "vectors.npy"
    result = CliRunner().invoke(embed_main, [str(tmp_path / "corpus.parquet"), "--out", str(out), "--model",
                                             str(int8_only), "--device", "cpu", "--variant", "fp32", "--no-progress"])
    assert result.exit_code != 0
    assert "variant 'fp32' is not in this export; it has int8" in result.output, result.output
    assert not list(tmp_path.glob("vectors.npy*"))


def test_int8_only_runs_int8_on_a_cpu_without_fast_int8_and_logs_why(int8_only, monkeypatch, caplog):
    from lusifer.runtime import export_folder

    monkeypatch.setattr(export_folder, "cpu_has_fast_int8", lambda *a, **k: False)
    with caplog.at_level(logging.INFO, logger="lusifer.runtime"):
        embedder = Embedder(int8_only, device="cpu", threads=1)
    assert embedder.variant == "int8"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "without fast int8" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert "has no fp32 graph (it has int8)" in warned[0].getMessage()


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "add --quantize int8"),
        (["--quantize", "int8", "--dtype", "fp16"], "dtype='fp16' would drop the fp16 graph"),
        (["--quantize", "int8", "--int8-optional"], "could leave an export without any graph"),
    ],
    ids=["no-quantize", "fp16", "int8-optional"],
)
def test_int8_only_with_options_it_contradicts_fails_before_any_work(model_dir, tmp_path, extra, message):
    result = export_cli(model_dir, "--out", tmp_path / "export", "--int8-only", *extra)
    assert result.exit_code != 0 and "ExportOptionError" in result.output and message in result.output, result.output
    assert list(tmp_path.iterdir()) == []
