"""lusifer-eval on an ONNX export folder: same figures as the PyTorch model, and no torch needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_eval_cli import suite_dir  # noqa: F401  (fixture: the tiny synthetic suite)
from test_runtime_support import BLOCK_TORCH, export_tiny  # export cached per session, shared with runtime tests

from lusifer.evaluation.cli import main


@pytest.fixture(scope="module")
def export_dir(tiny_factory, tmp_path_factory):
    return export_tiny(tiny_factory(), tmp_path_factory.mktemp("eval-export") / "fp32")


def test_export_scores_match_the_pytorch_model(export_dir, tiny_factory, suite_dir, tmp_path):  # noqa: F811
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, [str(export_dir), str(tiny_factory()), "--suite", str(suite_dir),
                                       "--out", str(out), "--name", "onnx", "--name", "torch"])
    assert result.exit_code == 0, result.output
    onnx_run, torch_run = json.loads(out.read_text("utf-8"))["runs"]
    assert onnx_run["model"]["kind"] == "export" and torch_run["model"]["kind"] == "lusifer"
    assert onnx_run["model"]["details"]["variant"] == "fp32"
    assert "onnxruntime" in onnx_run["versions"] and "torch" not in onnx_run["versions"]
    for a, b in zip(onnx_run["tasks"], torch_run["tasks"]):
        assert a["name"] == b["name"]
        for metric, value in b["scores"].items():
            assert a["scores"][metric] == pytest.approx(value, abs=1e-4), (a["name"], metric)


def test_export_evaluation_runs_without_torch(export_dir, suite_dir, tmp_path):  # noqa: F811
    out = tmp_path / "r.json"
    code = BLOCK_TORCH + (
        "from lusifer.evaluation.cli import main\n"
        "try:\n"
        f"    main([{str(export_dir)!r}, '--suite', {str(suite_dir)!r}, '--out', {str(out)!r}])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text("utf-8"))
    assert doc["complete"] and doc["runs"][0]["model"]["kind"] == "export"
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG" and out.with_suffix(".md").is_file()


def test_missing_export_variant_is_an_error(export_dir, suite_dir, tmp_path):  # noqa: F811
    result = CliRunner().invoke(main, [str(export_dir), "--suite", str(suite_dir), "--out", str(tmp_path / "r.json"),
                                       "--variant", "int8"])
    assert result.exit_code != 0 and "int8" in result.output
    assert not (tmp_path / "r.json").exists()
