"""Output extras of embed_corpus / lusifer-embed: ids carried through, parquet output, compact dtypes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_runtime_support import corpus_texts, kill_cli_after_rows, read_sidecar, write_parquet

from lusifer.runtime import CorpusError, Embedder, embed_corpus
from lusifer.runtime.cli import main
from lusifer.runtime.compact import Quantizer, dequantize, quantize
from lusifer.runtime.parquet_writer import read_metadata

pytest_plugins = ["test_runtime_support"]  # tiny_export fixture

N = 150


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus_texts(N, seed=5)


@pytest.fixture(scope="module")
def reference(tiny_export, texts) -> np.ndarray:
    """Normalised float32 vectors of ``texts`` (the model's default)."""
    return Embedder(tiny_export, device="cpu").embed(texts, kind="document")


@pytest.fixture(scope="module")
def corpus(texts, tmp_path_factory) -> Path:
    """Two shards with an int id column (ids are not row positions) and a string id column."""
    folder = tmp_path_factory.mktemp("ids-corpus")
    ids = [1000 + 7 * i for i in range(N)]
    for k, (a, b) in enumerate([(0, 60), (60, N)]):
        write_parquet(folder / f"part-{k}.parquet", texts[a:b], row_group_size=25,
                      doc_id=pa.array(ids[a:b], type=pa.int32() if k == 0 else pa.int64()),
                      key=pa.array([f"doc-{i:04d}" for i in range(a, b)]))
    return folder


def cli(*args):
    args = [*map(str, args), "--no-progress", "--device", "cpu"]
    return CliRunner().invoke(main, args, catch_exceptions=False)


# ---- compact dtypes: the sentence-transformers definitions, written out by hand -------------------------------
def _reference_scalar(x: np.ndarray, ranges: np.ndarray, dtype: str) -> np.ndarray:
    starts = ranges[0, :]
    steps = (ranges[1, :] - ranges[0, :]) / 255
    if dtype == "uint8":
        return ((x - starts) / steps).astype(np.uint8)
    return ((x - starts) / steps - 128).astype(np.int8)


def test_compact_dtypes_follow_the_sentence_transformers_definitions():
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(200, 24)).astype(np.float32)
    ranges = np.vstack((calib.min(axis=0), calib.max(axis=0)))
    inside = np.clip(rng.normal(size=(50, 24)).astype(np.float32), ranges[0], ranges[1])
    for dtype in ("int8", "uint8"):
        q = Quantizer(dtype)
        got_calib, record = q.encode(calib)  # the first block calibrates
        assert record["ranges"] == ranges.tolist() and record["calibration_rows"] == 200
        np.testing.assert_array_equal(got_calib, _reference_scalar(calib, ranges, dtype))
        got, again = q.encode(inside)
        assert again is None and got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, _reference_scalar(inside, ranges, dtype))
        # beyond the calibrated range: clipped to the code range (the reference leaves this undefined)
        out_of_range = np.stack([ranges[0] - 1, ranges[1] + 1])
        low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
        np.testing.assert_array_equal(quantize(out_of_range, dtype, ranges), [[low] * 24, [high] * 24])
        back = dequantize(got, dtype, ranges)
        assert np.abs(back - inside).max() <= (ranges[1] - ranges[0]).max() / 255 + 1e-6
    x = rng.normal(size=(5, 16)).astype(np.float32)
    x[0, :8] = 0.0  # zero is not > 0
    bits = (x > 0).astype(np.uint8)
    by_hand = np.array([[int("".join(map(str, row[k:k + 8])), 2) for k in range(0, 16, 8)] for row in bits])
    np.testing.assert_array_equal(quantize(x, "ubinary"), by_hand.astype(np.uint8))
    np.testing.assert_array_equal(quantize(x, "binary"), (by_hand - 128).astype(np.int8))
    assert quantize(x, "binary")[0, 0] == -128
    np.testing.assert_array_equal(dequantize(quantize(x, "binary"), "binary", dim=16), np.where(x > 0, 1.0, -1.0))
    # a dimension constant over the calibration rows (step 0) maps its value to the lowest code
    flat = np.ones((3, 2), dtype=np.float32)
    np.testing.assert_array_equal(Quantizer("uint8").encode(flat)[0], np.zeros((3, 2), dtype=np.uint8))


def test_int8_and_binary_outputs_calibrate_on_the_first_chunk(tiny_export, corpus, reference, tmp_path):
    out = tmp_path / "v.npy"
    embed_corpus(corpus, out, tiny_export, device="cpu", dtype="int8", chunk_rows=40, progress=False)
    stored = read_sidecar(out)["quantization"]
    ranges = np.asarray(stored["ranges"], dtype=np.float32)
    assert stored["calibration_rows"] == 40 and stored["dtype"] == "int8"
    np.testing.assert_allclose(ranges, np.vstack((reference[:40].min(0), reference[:40].max(0))), atol=1e-6)
    got = np.load(out)
    assert got.dtype == np.int8 and got.shape == reference.shape
    expected = np.clip((reference - ranges[0]) / ((ranges[1] - ranges[0]) / 255) - 128, -128, 127)
    assert np.abs(got.astype(np.int32) - expected.astype(np.int8)).max() <= 1  # fp noise at bucket edges
    assert (got == expected.astype(np.int8)).mean() > 0.99
    out = tmp_path / "b.npy"
    result = cli(corpus, "--out", out, "--model", tiny_export, "--dtype", "ubinary")
    assert result.exit_code == 0, result.output
    packed = np.load(out)
    assert packed.dtype == np.uint8 and packed.shape == (N, reference.shape[1] // 8)
    sure = np.abs(reference) > 1e-5  # leave out signs that fp noise could flip
    assert (np.unpackbits(packed, axis=1).astype(bool) == (reference > 0))[sure].all()


# ---- parquet output and ids ------------------------------------------------------------------------------------
def test_parquet_output_carries_int_ids_in_row_order(tiny_export, corpus, reference, tmp_path):
    out = tmp_path / "vectors.parquet"
    result = cli(corpus, "--out", out, "--model", tiny_export, "--id-column", "doc_id", "--unique-ids",
                 "--chunk-rows", "32")
    assert result.exit_code == 0, result.output
    assert "ids from column 'doc_id'" in result.output
    table = pq.read_table(out)
    assert table.column_names == ["id", "embedding"]
    assert table.schema.field("id").type == pa.int64()
    emb_type = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(emb_type) and emb_type.list_size == reference.shape[1]
    assert emb_type.value_type == pa.float32()
    assert table.column("id").to_pylist() == [1000 + 7 * i for i in range(N)]
    vectors = np.stack(table.column("embedding").to_numpy())
    np.testing.assert_allclose(vectors, reference, atol=1e-6)
    meta = read_metadata(out)
    assert meta["id_column"] == "doc_id" and meta["dtype"] == "float32" and meta["dim"] == reference.shape[1]
    side = read_sidecar(out)
    assert side["status"] == "complete" and side["identity"]["ids"] == {"column": "doc_id", "type": "int64"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.parquet", "vectors.parquet.json"]


def test_float16_and_int8_parquet_outputs(tiny_export, corpus, reference, tmp_path):
    out = tmp_path / "h.parquet"
    embed_corpus(corpus, out, tiny_export, device="cpu", dtype="float16", progress=False)
    table = pq.read_table(out)
    assert table.column_names == ["embedding"] and table.schema.field("embedding").type.value_type == pa.float16()
    np.testing.assert_allclose(np.stack(table.column("embedding").to_numpy()).astype(np.float32), reference,
                               atol=2e-3)
    out = tmp_path / "q.parquet"
    embed_corpus(corpus, out, tiny_export, device="cpu", dtype="int8", id_column="key", progress=False)
    meta = read_metadata(out)
    assert meta["quantization"] == read_sidecar(out)["quantization"]  # the parquet file is self-describing
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [f"doc-{i:04d}" for i in range(N)]
    codes = np.stack(table.column("embedding").to_numpy())
    assert codes.dtype == np.int8
    back = dequantize(codes, "int8", np.asarray(meta["quantization"]["ranges"]))
    assert (back * reference).sum(axis=1).min() > 0.98


def test_npy_output_with_string_ids_writes_an_ids_file(tiny_export, corpus, reference, tmp_path):
    out = tmp_path / "v.npy"
    summary = embed_corpus(corpus, out, tiny_export, device="cpu", id_column="key", unique_ids=True, progress=False)
    assert summary.id_column == "key"
    np.testing.assert_allclose(np.load(out), reference, atol=1e-6)
    ids = pq.read_table(Path(str(out) + ".ids.parquet"))
    assert ids.column_names == ["id"] and ids.schema.field("id").type == pa.string()
    assert ids.column("id").to_pylist() == [f"doc-{i:04d}" for i in range(N)]
    assert read_sidecar(out)["identity"]["ids"] == {"column": "key", "type": "string"}
    # a resume with another id column (or none) is a different job
    refused = cli(corpus, "--out", out, "--model", tiny_export, "--resume", "--id-column", "doc_id")
    assert refused.exit_code != 0 and "ids.column: was \"key\", now \"doc_id\"" in refused.output
    # --overwrite without ids removes the stale ids file
    assert cli(corpus, "--out", out, "--model", tiny_export, "--overwrite").exit_code == 0
    assert not Path(str(out) + ".ids.parquet").exists()


def test_bad_ids_are_rejected_before_embedding(tiny_export, texts, tmp_path):
    def corpus_with(name, **columns):
        return write_parquet(tmp_path / name / "part-0.parquet", texts[:30], row_group_size=8, **columns)

    nulls = corpus_with("nulls", doc_id=pa.array([*range(12), None, *range(13, 30)], type=pa.int64()))
    result = cli(nulls.parent, "--out", tmp_path / "a.parquet", "--model", tiny_export, "--id-column", "doc_id")
    assert result.exit_code != 0
    assert f"id column 'doc_id' has a null at row 12 (row 12 of {str(nulls)!r})" in result.output
    dup = corpus_with("dup", doc_id=pa.array(["a", "b", "c", "d", "c", "b"] + [f"x{i}" for i in range(24)]))
    result = cli(dup, "--out", tmp_path / "b.parquet", "--model", tiny_export, "--id-column", "doc_id",
                 "--unique-ids")
    assert result.exit_code != 0
    assert "id 'c' is at row 2 (row 2 of" in result.output and "and again at row 4 (row 4 of" in result.output
    assert cli(dup, "--out", tmp_path / "b.parquet", "--model", tiny_export, "--id-column", "doc_id").exit_code == 0
    shards = tmp_path / "dup-shards"  # integer ids repeated across files: rows named globally and per file
    write_parquet(shards / "part-0.parquet", texts[:10], doc_id=pa.array([9, 3, *range(100, 108)], type=pa.int32()))
    write_parquet(shards / "part-1.parquet", texts[10:20], doc_id=pa.array([*range(200, 205), 9, 3, *range(3)]))
    with pytest.raises(CorpusError, match=r"id 9 is at row 0 \(row 0 of .*part-0.parquet'\) and again at row 15 "
                                          r"\(row 5 of .*part-1.parquet'\)"):
        embed_corpus(shards, tmp_path / "d.npy", tiny_export, device="cpu", id_column="doc_id", unique_ids=True)
    floats = corpus_with("floats", score=pa.array(np.linspace(0, 1, 30)))
    result = cli(floats, "--out", tmp_path / "c.npy", "--model", tiny_export, "--id-column", "score")
    assert result.exit_code != 0 and "has type double; expected integers or strings" in result.output
    result = cli(floats, "--out", tmp_path / "c.npy", "--model", tiny_export, "--id-column", "nope")
    assert result.exit_code != 0 and "has no id column 'nope'; its columns are: text, score" in result.output
    result = cli(floats, "--out", tmp_path / "c.npy", "--model", tiny_export, "--unique-ids")
    assert result.exit_code != 0 and "--unique-ids needs --id-column" in result.output
    result = cli(floats, "--out", tmp_path / "c.npy", "--model", tiny_export, "--format", "parquet")
    assert result.exit_code != 0 and "name the output *.parquet" in result.output
    result = cli(floats, "--out", tmp_path / "c.csv", "--model", tiny_export)
    assert result.exit_code != 0 and "must be a .npy or .parquet file" in result.output
    result = cli(floats, "--out", tmp_path / "c.npy", "--model", tiny_export, "--dtype", "int4")
    assert result.exit_code != 0 and "'int4' is not one of" in result.output
    assert not any(p.name.startswith("c.") for p in tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name,dtype", [("v.parquet", "int8"), ("v.npy", "uint8")])
def test_kill_mid_run_then_resume_gives_identical_files(tiny_export, corpus, tmp_path, name, dtype):
    opts = ["--model", str(tiny_export), "--chunk-rows", "16", "--token-budget", "400", "--device", "cpu",
            "--dtype", dtype, "--id-column", "key", "--no-progress"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    result = CliRunner().invoke(main, [str(corpus), "--out", str(ref_dir / name), *opts], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = run_dir / name
    kill_cli_after_rows([corpus, "--out", out, *opts], out, 32)
    state = read_sidecar(out)
    assert state["status"] == "in_progress" and 32 <= state["progress"]["completed_rows"] < N
    assert state["quantization"]["calibration_rows"] == 16  # calibrated on chunk 0, stored with it
    assert not out.exists()
    Path(run_dir / f".{name}.json.99999.0a1b2c3d.partial").write_text("{")  # as a kill during a sidecar update leaves
    resumed = CliRunner().invoke(main, [str(corpus), "--out", str(out), "--model", str(tiny_export), "--resume",
                                        "--dtype", dtype, "--id-column", "key", "--no-progress", "--device", "cpu"],
                                 catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in ref_dir.iterdir())  # no temp files
    for ref_file in ref_dir.iterdir():
        if not ref_file.name.endswith(".json"):
            assert (run_dir / ref_file.name).read_bytes() == ref_file.read_bytes(), ref_file.name
    assert read_sidecar(out)["quantization"] == read_sidecar(ref_dir / name)["quantization"]


def test_resume_after_a_kill_during_the_parquet_conversion(tiny_export, corpus, tmp_path, monkeypatch):
    """The staging file is complete but the parquet output is not there yet: --resume only converts."""
    import lusifer.runtime.outputs as outputs_mod

    ref = tmp_path / "ref.parquet"
    embed_corpus(corpus, ref, tiny_export, device="cpu", id_column="doc_id", progress=False)
    out = tmp_path / "v.parquet"

    left = tmp_path / ".v.parquet.99999.0a1b2c3d.partial"  # the temporary file of a killed conversion

    def killed(staging, dest, *args, **kwargs):
        left.write_bytes(b"half a file")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(outputs_mod, "write_parquet_from_staging", killed)
        with pytest.raises(KeyboardInterrupt):
            embed_corpus(corpus, out, tiny_export, device="cpu", id_column="doc_id", progress=False)
    assert not out.exists() and read_sidecar(out)["progress"]["completed_rows"] == N
    summary = embed_corpus(corpus, out, tiny_export, device="cpu", id_column="doc_id", resume=True, progress=False)
    assert summary.rows_this_run == 0 and summary.resumed_from == N
    assert out.read_bytes() == ref.read_bytes()
    assert not Path(str(out) + ".staging.npy").exists() and not left.exists()
    assert json.loads(Path(str(out) + ".json").read_text())["status"] == "complete"


@pytest.mark.parametrize("lengths", [["--chunk-tokens", "20", "--chunk-overlap", "4"], ["--max-length", "48"]],
                         ids=["windows", "truncated"])
def test_lengths_with_ids_and_parquet_int8_survive_a_kill(tiny_export, corpus, tmp_path, lengths):
    """Both halves of issue 26 in one run: long rows as windows (or cut and listed by id), ids carried into a
    parquet int8 output calibrated on the first chunk of pooled row vectors; SIGKILLed, then resumed with
    only --resume (length options from the sidecar), the files are byte-identical to an uninterrupted run."""
    keys = [f"doc-{i:04d}" for i in range(N)]
    opts = ["--model", str(tiny_export), "--chunk-rows", "8", "--token-budget", "400", "--device", "cpu",
            "--dtype", "int8", "--id-column", "key", "--no-progress", *lengths]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    reference = CliRunner().invoke(main, [str(corpus), "--out", str(ref_dir / "v.parquet"), *opts],
                                   catch_exceptions=False)
    assert reference.exit_code == 0, reference.output
    out = run_dir / "v.parquet"
    kill_cli_after_rows([corpus, "--out", out, *opts], out, 8)
    killed = read_sidecar(out)
    done = killed["progress"]["completed_rows"]
    assert killed["status"] == "in_progress" and 8 <= done < N and not out.exists()
    resumed = CliRunner().invoke(main, [str(corpus), "--out", str(out), "--model", str(tiny_export), "--resume",
                                        "--dtype", "int8", "--id-column", "key", "--no-progress", "--device", "cpu"],
                                 catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed at row {done}" in resumed.output
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in ref_dir.iterdir())
    assert out.read_bytes() == (ref_dir / "v.parquet").read_bytes()
    ref, final = read_sidecar(ref_dir / "v.parquet"), read_sidecar(out)
    assert final["identity"] == ref["identity"] and final["quantization"] == ref["quantization"]
    for key in ("truncated", "truncated_rows", "truncated_ids", "windowed_rows", "windows"):
        assert final["summary"][key] == ref["summary"][key], key

    # one output row per corpus row, ids in order, int8 codes of the pooled row vectors calibrated on chunk 0
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == keys
    floats = tmp_path / "floats.npy"
    options = dict(chunk_tokens=20, chunk_overlap=4) if lengths[0] == "--chunk-tokens" else dict(max_length=48)
    embed_corpus(corpus, floats, tiny_export, device="cpu", chunk_rows=8, token_budget=400, progress=False,
                 **options)
    floats = np.load(floats)
    ranges = np.asarray(final["quantization"]["ranges"], dtype=np.float32)
    assert final["quantization"]["calibration_rows"] == 8
    np.testing.assert_array_equal(ranges, np.vstack((floats[:8].min(0), floats[:8].max(0))))
    codes = np.stack(table.column("embedding").to_numpy())
    assert codes.dtype == np.int8 and codes.shape == floats.shape
    np.testing.assert_array_equal(codes, quantize(floats, "int8", ranges))

    summary = final["summary"]
    if lengths[0] == "--chunk-tokens":
        assert summary["truncated"] == 0 and summary["windowed_rows"] > 0 and summary["windows"] > 2 * 8
    else:  # cut rows listed by position and by id, the listing carried over the kill
        rows = summary["truncated_rows"]
        assert summary["truncated"] > len(rows) == 10 and rows[0] < done
        assert summary["truncated_ids"] == [keys[r] for r in rows]
        assert killed["progress"]["truncated_ids"] == [keys[r] for r in rows if r < done]
        assert f"(ids 'doc-{rows[0]:04d}' (row {rows[0]}), " in resumed.output
