"""Shared helpers of the runtime tests (no tests here): tiny exports, parquet corpora, torch-blocked runs.

Exports are made once per (model, dtype) and cached for the session.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
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


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fallback_export(model_dir: Path, out_dir: Path) -> Path:
    """torch.onnx.export (TorchScript) of LusiferModel + a manifest, until lusifer.export exists."""
    import torch

    from lusifer.modeling import LusiferModel
    from lusifer.onnx_interface import (
        DYNAMIC_AXES,
        INPUT_NAMES,
        OUTPUT_NAMES,
        ExportManifest,
        VariantInfo,
    )

    model = LusiferModel.from_pretrained(model_dir).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids, attention_mask).float()

    out_dir.mkdir(parents=True, exist_ok=True)
    enc = model.tokenize(["a longer example sentence here", "short"])
    with torch.inference_mode():
        torch.onnx.export(
            Wrapper(model),
            (enc["input_ids"], enc["attention_mask"]),
            str(out_dir / "model.onnx"),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=DYNAMIC_AXES,
            opset_version=18,
            dynamo=False,
        )
    (out_dir / "tokenizer.json").write_bytes((Path(model_dir) / "encoder" / "tokenizer.json").read_bytes())
    cfg = model.config
    ExportManifest(
        embedding_dim=cfg.embedding_dim,
        max_length=cfg.max_length,
        pad_token_id=int(model.tokenizer.pad_token_id),
        variants={"fp32": VariantInfo(file="model.onnx", files={"model.onnx": _sha(out_dir / "model.onnx")})},
        query_template=cfg.query_template,
        document_template=cfg.document_template,
        default_query_instruction=cfg.default_query_instruction,
        default_document_instruction=cfg.default_document_instruction,
        normalize=cfg.normalize,
        tokenizer_sha256=_sha(out_dir / "tokenizer.json"),
    ).save(out_dir)
    return out_dir


def export_tiny(model_dir, out_dir: Path, dtype: str = "fp32") -> Path:
    """Export a tiny model (cached per model folder and dtype); real ``export_model`` when available."""
    key = (str(model_dir), dtype)
    if key not in _EXPORTS:
        try:
            from lusifer.export import export_model
        except ImportError:
            export_model = None
        if export_model is not None:
            export_model(model_dir, out_dir, dtype=dtype)
        elif dtype == "fp32":
            _fallback_export(Path(model_dir), out_dir)
        else:
            raise RuntimeError(f"dtype {dtype} needs lusifer.export.export_model")
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
