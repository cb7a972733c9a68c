"""Bad input to the export: typed errors with clear messages, non-zero CLI exit, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from lusifer.export import (
    ExportOptionError,
    ModelDirError,
    OutputDirError,
    UnsupportedArchitectureError,
    export_model,
)
from lusifer.export.cli import main


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def copy_model(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_missing_model_dir(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        export_model(tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("remove", ["lusifer.safetensors", "lusifer_config.json", "encoder/tokenizer.json", "llm"])
def test_incomplete_model_dir(tiny_model_dir, tmp_path, remove):
    model = copy_model(tiny_model_dir, tmp_path)
    path = model / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(ModelDirError, match="incomplete") as info:
        export_model(model, tmp_path / "out")
    assert remove.split("/")[-1] in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("part,model_type", [("llm", "gpt2"), ("encoder", "deberta-v2")])
def test_unsupported_architecture(tiny_model_dir, tmp_path, part, model_type):
    model = copy_model(tiny_model_dir, tmp_path)
    config_file = model / part / "config.json"
    config = json.loads(config_file.read_text())
    config["model_type"] = model_type
    config_file.write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match=model_type):
        export_model(model, tmp_path / "out")


def test_output_equal_to_or_inside_model_dir(tiny_model_dir, tmp_path):
    model = copy_model(tiny_model_dir, tmp_path)
    for out in (model, model / "export", model / "llm" / "x"):
        with pytest.raises(OutputDirError, match="inside"):
            export_model(model, out)
    assert not (model / "export").exists()


def test_model_dir_inside_output(tiny_model_dir, tmp_path):
    model = copy_model(tiny_model_dir, tmp_path)
    (tmp_path / "manifest.json").write_text("{}")  # even a folder that looks like an export
    with pytest.raises(OutputDirError, match="inside the output folder"):
        export_model(model, tmp_path, overwrite=True)
    assert (model / "lusifer.safetensors").exists()


def test_existing_output_needs_overwrite_and_must_be_an_export(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputDirError, match="--overwrite"):
        export_model(tiny_model_dir, out)
    with pytest.raises(OutputDirError, match="not a lusifer export"):
        export_model(tiny_model_dir, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"
    (out / "notes.txt").unlink()
    file_out = tmp_path / "file"
    file_out.write_text("x")
    with pytest.raises(OutputDirError, match="not a folder"):
        export_model(tiny_model_dir, file_out)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dtype": "bf16"}, "dtype='bf16'"),
        ({"quantize": "int4"}, "quantize='int4'"),
        ({"opset": 12}, "opset=12"),
        ({"opset": 24}, "opset=24"),
        ({"int8_min_cosine": 1.5}, "int8_min_cosine=1.5"),
        ({"int8_min_cosine": 0}, "int8_min_cosine=0"),
        ({"int8_smooth_alpha": 1.5}, "smooth_alpha=1.5"),
        ({"int8_outlier_share": 0.9}, "outlier_share=0.9"),
        ({"int8_weight_type": "int4"}, "weight_type='int4'"),
        ({"int8_embeddings": "yes"}, "embeddings='yes'"),
        ({"int8_required": "no"}, "int8_required='no'"),
        ({"validation_device": "tpu"}, "validation_device='tpu'"),
        ({"validation_device": "cuda"}, "needs dtype='fp16'"),
        ({"validation_device": "cuda", "dtype": "fp16", "quantize": "int8"}, "no INT8 graph"),
    ],
)
def test_invalid_options(tiny_model_dir, tmp_path, kwargs, match):
    with pytest.raises(ExportOptionError, match=match):
        export_model(tiny_model_dir, tmp_path / "out", **kwargs)


def test_cli_errors_exit_nonzero_with_message(tiny_model_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, [str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "ModelDirError" in result.output and "does not exist" in result.output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    result = runner.invoke(main, [str(tiny_model_dir), "--out", str(busy)])
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = runner.invoke(main, [str(tiny_model_dir), "--out", str(tmp_path / "o"), "--opset", "9"])
    assert result.exit_code == 1 and "opset=9" in result.output
    result = runner.invoke(main, [str(tiny_model_dir), "--out", str(tmp_path / "o"), "--dtype", "int4"])
    assert result.exit_code == 2  # click rejects values outside the declared choices


def test_interrupted_export_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    """A crash after tracing removes the staging folder and keeps the previous export as it was."""
    from lusifer.export import onnx_export, validate

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    traced = []

    def crash(src, *args, **kwargs):
        traced.append(src.stat().st_size)
        raise KeyboardInterrupt

    monkeypatch.setattr(validate, "torch_reference", lambda model: None)  # not needed before the crash
    monkeypatch.setattr(onnx_export, "resave", crash)
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_model_dir, out, overwrite=True)
    assert traced and traced[0] > 0  # the crash came after a graph was written to the staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_import_without_torch_names_the_extra(tmp_path):
    code = (
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, _Block())\n"
        "from lusifer.export import export_model\n"
        "from lusifer.extras import MissingExtraError\n"
        "try:\n"
        "    export_model('m', 'o')\n"
        "except MissingExtraError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'lusifer[export]'" in proc.stdout
