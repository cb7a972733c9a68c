"""Shared helpers of the runtime tests (no tests here): tiny exports, parquet corpora, torch-blocked runs.

Exports are made with the real ``lusifer.export.export_model``, once per (model, dtype) per session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BLOCK_TORCH = (
    "import sys\n"
    "class _Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, _Block())\n"
)

_EXPORTS: dict = {}


def export_tiny(model_dir, out_dir: Path, dtype: str = "fp32") -> Path:
    """Export a tiny model with ``lusifer.export.export_model`` (cached per model folder and dtype)."""
    from lusifer.export import export_model

    key = (str(model_dir), dtype)
    if key not in _EXPORTS:
        export_model(model_dir, out_dir, dtype=dtype)
        _EXPORTS[key] = out_dir
    return _EXPORTS[key]


def write_parquet(path: Path, texts, column: str = "text", row_group_size: int | None = None, **extra) -> Path:
    """Write a parquet file with a string column (None values become nulls) and optional extra columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({column: pa.array(list(texts), type=pa.string()), **extra})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def corpus_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` multilingual texts of varied lengths (deterministic)."""
    from lusifer.tiny import sample_texts

    base = sample_texts()
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        k = int(rng.integers(1, 4))
        picks = rng.choice(len(base), size=k)
        texts.append(f"{i}: " + " ".join(base[j] for j in picks))
    return texts


def run_python(code: str, cwd, env=None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def read_sidecar(out: Path) -> dict:
    return json.loads(Path(str(out) + ".json").read_text("utf-8"))


@pytest.fixture(scope="session")
def tiny_export(tiny_factory, tmp_path_factory) -> Path:
    """fp32 export folder of the default tiny model (built once per session)."""
    return export_tiny(tiny_factory(), tmp_path_factory.mktemp("runtime-export") / "fp32")


@pytest.fixture
def export_copy(tiny_export, tmp_path) -> Path:
    """A private copy of the tiny export, to damage."""
    import shutil

    return Path(shutil.copytree(tiny_export, tmp_path / "export"))


# lusifer-embed with every chunk slowed down, so that a test can kill it between two commits
SLOW_CLI = (
    "import sys, time\n"
    "import lusifer.runtime.embedder as E\n"
    "orig = E.Embedder.run_batches\n"  # what the pipeline calls once per chunk
    "def slow(self, *a, **k):\n"
    "    time.sleep(0.25)\n"
    "    return orig(self, *a, **k)\n"
    "E.Embedder.run_batches = slow\n"
    "from lusifer.runtime.cli import main\n"
    "main(sys.argv[1:])\n"
)


def kill_cli_after_rows(args, out: Path, rows: int, timeout: float = 60) -> subprocess.Popen:
    """Run ``lusifer-embed ARGS`` (slowed) in a child process and SIGKILL it once its sidecar at ``out`` records
    at least ``rows`` committed rows; returns the finished process."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sidecar = Path(str(out) + ".json")
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if sidecar.exists() and read_sidecar(out)["progress"]["completed_rows"] >= rows:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    return proc
