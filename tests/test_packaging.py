"""Install layout, console scripts, and the torch-free runtime import."""

import subprocess
import sys

import pytest

BLOCK_TORCH = (
    "import sys\n"
    "class _Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, _Block())\n"
)


def test_runtime_imports_without_torch(tmp_path):
    code = BLOCK_TORCH + "import lusifer, lusifer.runtime, lusifer.onnx_interface\nprint('ok')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_no_generic_top_level_modules(tmp_path):
    code = "import importlib.util as u; print([m for m in ('train', 'export', 'runtime') if u.find_spec(m)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("script", ["lusifer-train", "lusifer-export", "lusifer-embed"])
def test_console_scripts_help(script):
    out = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_missing_extra_message():
    from lusifer.extras import MissingExtraError, require

    with pytest.raises(MissingExtraError, match=r"pip install 'lusifer\[ray\]'"):
        require("surely_not_a_module_xyz", extra="ray")
