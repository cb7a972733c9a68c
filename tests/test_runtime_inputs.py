"""lusifer-embed on bad input: clear message, non-zero exit, nothing written; shard discovery; null policies."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_runtime_support import write_parquet

from lusifer.runtime import Embedder
from lusifer.runtime.cli import main
from lusifer.runtime.corpus import find_shards

pytest_plugins = ["test_runtime_support"]  # tiny_export, export_copy fixtures


def embed_cli(*args: str):
    """Run lusifer-embed in-process (on CPU unless --device is given)."""
    args = [*map(str, args), "--no-progress"]
    if "--device" not in args:
        args += ["--device", "cpu"]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def assert_fails(result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


def assert_nothing_written(out: Path) -> None:
    leftovers = [p.name for p in out.parent.glob(out.name + "*")] if out.parent.exists() else []
    assert leftovers == []


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out" / "vectors.npy"


def test_missing_corpus(tiny_export, tmp_path, out):
    result = embed_cli(tmp_path / "nope.parquet", "--out", out, "--model", tiny_export)
    assert_fails(result, "nope.parquet", "does not exist")


def test_corrupt_parquet(tiny_export, tmp_path, out):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    result = embed_cli(bad, "--out", out, "--model", tiny_export)
    assert_fails(result, "bad.parquet", "is not a readable parquet file")


def test_missing_column_lists_columns(tiny_export, tmp_path, out):
    path = write_parquet(tmp_path / "c.parquet", ["a", "b"], column="body", id=pa.array([1, 2]))
    result = embed_cli(path, "--out", out, "--model", tiny_export)
    assert_fails(result, "no column 'text'", "its columns are: body, id", "--column")
    assert_nothing_written(out)


def test_non_string_column(tiny_export, tmp_path, out):
    path = write_parquet(tmp_path / "c.parquet", ["a", "b"], id=pa.array([1, 2]))
    result = embed_cli(path, "--out", out, "--model", tiny_export, "--column", "id")
    assert_fails(result, "column 'id'", "has type int64; expected a string column")


@pytest.mark.parametrize("statistics", [True, False], ids=["stats", "no-stats"])
def test_nulls_are_reported_with_file_and_rows(tiny_export, tmp_path, out, statistics):
    folder = tmp_path / "corpus"
    write_parquet(folder / "part-0.parquet", ["a", "b", "c"])
    texts = [f"t{i}" for i in range(10)]
    texts[3] = texts[7] = None
    table = pa.table({"text": pa.array(texts, type=pa.string())})
    pq.write_table(table, folder / "part-1.parquet", write_statistics=statistics, row_group_size=4)
    result = embed_cli(folder, "--out", out, "--model", tiny_export)
    assert_fails(result, "2 null value(s)", "part-1.parquet", "row(s) 3, 7", "--on-null empty")
    assert "part-0.parquet" not in result.output
    assert_nothing_written(out)


def test_null_policies_keep_every_row(tiny_export, tmp_path):
    path = write_parquet(tmp_path / "c.parquet", ["first text", None, "third text"])
    emb = Embedder(tiny_export, device="cpu")
    expected = emb.embed(["first text", "", "third text"], kind="document")
    for policy in ("empty", "zero"):
        out = tmp_path / f"{policy}.npy"
        result = embed_cli(path, "--out", out, "--model", tiny_export, "--on-null", policy)
        assert result.exit_code == 0, result.output
        assert "null rows: 1" in result.output
        got = np.load(out)
        assert got.shape == (3, emb.dim)
        np.testing.assert_allclose(got[[0, 2]], expected[[0, 2]], atol=1e-6)
        if policy == "empty":
            np.testing.assert_allclose(got[1], expected[1], atol=1e-6)
        else:
            assert not got[1].any()


def test_no_model_and_no_default_asks_for_model_option(tmp_path, out, monkeypatch):
    # no cached default model and no trained weights: the default cannot be built, say how to proceed
    monkeypatch.setenv("LUSIFER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LUSIFER_SMALL_WEIGHTS", str(tmp_path / "no-weights"))
    path = write_parquet(tmp_path / "c.parquet", ["a"])
    result = embed_cli(path, "--out", out)
    assert_fails(result, "no-weights", "--model EXPORT_DIR")
    assert_nothing_written(out)


def test_cuda_requested_but_unavailable(tiny_export, tmp_path, out, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    path = write_parquet(tmp_path / "c.parquet", ["a"])
    result = embed_cli(path, "--out", out, "--model", tiny_export, "--device", "cuda")
    assert_fails(result, "CUDA was asked for", "no CUDAExecutionProvider", "--device cpu")
    assert_nothing_written(out)


def test_cuda_session_fallback_is_an_error(tiny_export, tmp_path, out, monkeypatch):
    import onnxruntime as ort

    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(dict.fromkeys(real + ["CUDAExecutionProvider"])))
    monkeypatch.setattr(ort.InferenceSession, "get_providers", lambda self: ["CPUExecutionProvider"])
    path = write_parquet(tmp_path / "c.parquet", ["a"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = embed_cli(path, "--out", out, "--model", tiny_export, "--device", "cuda")
    assert_fails(result, "CUDA was asked for but the onnxruntime session runs on")
    assert_nothing_written(out)


def test_export_checksum_mismatch(export_copy, tmp_path, out):
    graph = export_copy / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\x00")
    path = write_parquet(tmp_path / "c.parquet", ["a"])
    result = embed_cli(path, "--out", out, "--model", export_copy)
    assert_fails(result, "checksum mismatch", "model.onnx")
    assert_nothing_written(out)


def test_incomplete_export(export_copy, tmp_path, out):
    (export_copy / "model.onnx").unlink()
    path = write_parquet(tmp_path / "c.parquet", ["a"])
    result = embed_cli(path, "--out", out, "--model", export_copy)
    assert_fails(result, "is incomplete: missing model.onnx")


def test_output_must_be_npy(tiny_export, tmp_path):
    path = write_parquet(tmp_path / "c.parquet", ["a"])
    result = embed_cli(path, "--out", tmp_path / "vectors.bin", "--model", tiny_export)
    assert_fails(result, "must be a .npy or .parquet file")


def test_shard_discovery_folder_and_glob(tmp_path):
    folder = tmp_path / "c"
    for name in ("part-10.parquet", "part-2.parquet", "part-1.parquet", "sub/part-0.parquet"):
        write_parquet(folder / name, ["x"])
    (folder / "_SUCCESS").write_text("")
    write_parquet(folder / ".hidden" / "x.parquet", ["x"])
    write_parquet(folder / "_tmp.parquet", ["x"])
    names = [p.relative_to(folder).as_posix() for p in find_shards(folder)]
    assert names == ["part-1.parquet", "part-2.parquet", "part-10.parquet", "sub/part-0.parquet"]
    names = [p.name for p in find_shards(str(folder / "part-*.parquet"))]
    assert names == ["part-1.parquet", "part-2.parquet", "part-10.parquet"]


def test_empty_folder_and_unmatched_glob(tiny_export, tmp_path, out):
    (tmp_path / "empty").mkdir()
    assert_fails(embed_cli(tmp_path / "empty", "--out", out, "--model", tiny_export), "contains no .parquet files")
    assert_fails(embed_cli(str(tmp_path / "x-*.parquet"), "--out", out, "--model", tiny_export), "matches no files")


def test_missing_export_folder(tmp_path, out):
    path = write_parquet(tmp_path / "c.parquet", ["a"])
    result = embed_cli(path, "--out", out, "--model", tmp_path / "no-export")
    assert_fails(result, "no-export", "does not exist")
