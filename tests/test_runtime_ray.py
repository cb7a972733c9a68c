"""embed_corpus_ray / lusifer-embed --ray on a local 2-CPU Ray cluster: row identity, rerun, retries, errors."""

from __future__ import annotations

import json
import logging
import os
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_runtime_support import corpus_texts, run_python, write_parquet

from lusifer.runtime import CorpusError, OptionError, OutputError, embed_corpus
from lusifer.runtime.cli import main
from lusifer.runtime.ray_actor import EmbedActor

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
from lusifer.runtime.ray_job import embed_corpus_ray

pytest_plugins = ["test_runtime_support"]  # tiny_export fixture

BOUNDS = [0, 37, 38, 38, 120, 161]  # shards of 37, 1, 0, 82 and 41 rows


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def actor_that_dies_once(shard: int, marker: Path) -> type:
    """An :class:`EmbedActor` whose process exits (``os._exit``) on its first work item of ``shard``.

    Defined in a function, so Ray ships the class by value to its workers; ``marker`` (created just before the
    exit) makes the crash happen once across actor restarts and tells the test that an actor really died.
    """

    class DiesOnce(EmbedActor):
        def __call__(self, batch: dict) -> dict:
            if shard in {int(s) for s in batch["shard"]} and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    return DiesOnce


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory) -> Path:
    texts = corpus_texts(BOUNDS[-1], seed=3)
    folder = tmp_path_factory.mktemp("ray-corpus")
    for i, (a, b) in enumerate(pairwise(BOUNDS)):
        write_parquet(folder / f"part-{i * 5}.parquet", texts[a:b], row_group_size=16)  # part-0, -5, -10 ...
    return folder


@pytest.fixture(scope="module")
def reference(tiny_export, shard_folder, tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("ray-ref") / "vectors.npy"
    embed_corpus(shard_folder, out, tiny_export, device="cpu", progress=False)
    return np.load(out)


def _concat(out_dir: Path) -> np.ndarray:
    manifest = json.loads((out_dir / "manifest.json").read_text())
    return np.concatenate([np.load(out_dir / e["output"]) for e in manifest["shards"]])


def test_ray_matches_single_process_and_reruns_skip(local_ray, tiny_export, shard_folder, reference, tmp_path):
    out = tmp_path / "out"
    summary = embed_corpus_ray(shard_folder, out, tiny_export, num_actors=2, rows_per_task=16, progress=False)
    assert summary.rows_this_run == BOUNDS[-1] and summary.shards_embedded == 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["identity"]["model"]["sha256"]) == 64
    assert [e["output"] for e in manifest["shards"]] == [f"part-{i * 5}.npy" for i in range(5)]
    assert [e["rows"] for e in manifest["shards"]] == [b - a for a, b in pairwise(BOUNDS)]
    assert all(e["status"] == "complete" for e in manifest["shards"])
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json"] + [e["output"] for e in manifest["shards"]])
    np.testing.assert_allclose(_concat(out), reference, atol=1e-6)

    # rerun: nothing to do; a removed shard file and a manifest entry marked unfinished are redone
    again = embed_corpus_ray(shard_folder, out, tiny_export, num_actors=2, progress=False)
    assert again.shards_embedded == 0 and again.rows_this_run == 0
    (out / "part-5.npy").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][3]["status"] = "in_progress"
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = os.stat(out / "part-0.npy").st_mtime_ns
    third = embed_corpus_ray(shard_folder, out, tiny_export, num_actors=1, progress=False)
    assert third.shards_embedded == 2 and third.rows_this_run == 1 + 82 and third.shards_skipped == 3
    assert os.stat(out / "part-0.npy").st_mtime_ns == before
    np.testing.assert_allclose(_concat(out), reference, atol=1e-6)


def test_killed_actor_work_is_retried(local_ray, tiny_export, shard_folder, reference, tmp_path, monkeypatch):
    from lusifer.runtime import ray_job

    marker = tmp_path / "actor-died"
    monkeypatch.setattr(ray_job, "EmbedActor", actor_that_dies_once(3, marker))  # the 82-row shard
    embed_corpus_ray(shard_folder, tmp_path / "out", tiny_export, num_actors=1, rows_per_task=32, progress=False)
    assert marker.exists()  # an actor really died
    np.testing.assert_allclose(_concat(tmp_path / "out"), reference, atol=1e-6)


def test_error_in_actor_reaches_caller_as_itself(local_ray, tiny_export, shard_folder, tmp_path, monkeypatch):
    from lusifer.runtime import ray_job

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in shard_folder.iterdir():
        (corpus / f.name).write_bytes(f.read_bytes())
    checked = ray_job.ShardOutputs.open

    def open_then_change_corpus(*args, **kwargs):  # the corpus changes after the driver checked it
        outputs = checked(*args, **kwargs)
        write_parquet(corpus / "part-15.parquet", ["x", None] * 41, row_group_size=16)
        return outputs

    monkeypatch.setattr(ray_job.ShardOutputs, "open", open_then_change_corpus)
    with pytest.raises(CorpusError, match="has a null at row 1.*raised in a Ray actor"):
        embed_corpus_ray(corpus, tmp_path / "out", tiny_export, num_actors=1, progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "in_progress" and manifest["shards"][3]["status"] != "complete"


def test_bad_inputs_fail_before_ray_work(tiny_export, shard_folder, tmp_path):
    with pytest.raises(CorpusError, match="no column 'body'.*text"):
        embed_corpus_ray(shard_folder, tmp_path / "a", tiny_export, column="body", address="ray://nowhere:1")
    with pytest.raises(ValueError, match="num_gpus_per_actor=2"):
        embed_corpus_ray(shard_folder, tmp_path / "b", tiny_export, num_gpus_per_actor=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        embed_corpus_ray(shard_folder, tmp_path / "file", tiny_export, address="ray://nowhere:1")
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"format": "lusifer-embed-ray/1", "identity": {
        "dim": 1, "dtype": "float32"}, "shards": []}))
    with pytest.raises(OutputError, match="describes another job.*dim: was 1"):
        embed_corpus_ray(shard_folder, other, tiny_export, address="ray://nowhere:1")
    result = CliRunner().invoke(main, [str(shard_folder), "--out", str(tmp_path / "c"), "--model", str(tiny_export),
                                       "--column", "body", "--ray", "ray://nowhere:1", "--no-progress"])
    assert result.exit_code != 0 and "no column 'body'" in result.output


def test_cli_ray(local_ray, tiny_export, shard_folder, reference, tmp_path):
    out = tmp_path / "cli-out"
    args = [str(shard_folder), "--out", str(out), "--model", str(tiny_export), "--no-progress", "--ray"]
    result = CliRunner().invoke(main, args + ["--num-actors", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "wrote 5 shard(s)" in result.output and "1 actor(s)" in result.output
    np.testing.assert_allclose(_concat(out), reference, atol=1e-6)
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0 and "already complete" in result.output


def test_int8_shards_are_one_row_per_pass_and_marked_so(local_ray, tiny_factory, shard_folder, tmp_path):
    """INT8 actors embed one row per forward pass (vectors as the single-process INT8 run gives them) and the
    output's identity says so, so shards of an older batched INT8 run are not resumed."""
    from lusifer.export import export_model

    export = tmp_path / "int8-export"
    export_model(tiny_factory(), export, dtype="fp32", quantize="int8", int8_scheme="dynamic")
    single = tmp_path / "single.npy"
    embed_corpus(shard_folder, single, export, device="cpu", variant="int8", progress=False)
    out = tmp_path / "out"
    embed_corpus_ray(shard_folder, out, export, variant="int8", num_actors=2, rows_per_task=16, max_batch_rows=64,
                     progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["batching"] == {"one_row_per_pass": True}
    np.testing.assert_array_equal(_concat(out), np.load(single))


def test_length_options_on_ray_match_the_single_process_job(local_ray, tiny_export, shard_folder, tmp_path):
    """--max-length and --chunk-tokens give the single-process vectors; truncated rows are listed in corpus order."""
    single = tmp_path / "single.npy"
    cut = embed_corpus(shard_folder, single, tiny_export, device="cpu", progress=False, max_length=24)
    out = tmp_path / "cut"
    summary = embed_corpus_ray(shard_folder, out, tiny_export, num_actors=2, rows_per_task=16, progress=False,
                               max_length=24)
    np.testing.assert_allclose(_concat(out), np.load(single), atol=1e-6)
    assert summary.truncated == cut.truncated > 0 and summary.truncated_rows == cut.truncated_rows
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["options"]["max_length"] == 24
    assert sum(e["truncated"] for e in manifest["shards"]) == cut.truncated
    with pytest.raises(OutputError, match="options.max_length: was 24, now 64"):
        embed_corpus_ray(shard_folder, out, tiny_export, progress=False)
    chunked = embed_corpus(shard_folder, tmp_path / "chunked.npy", tiny_export, device="cpu", progress=False,
                           chunk_tokens=20, chunk_overlap=3)
    summary = embed_corpus_ray(shard_folder, tmp_path / "windows", tiny_export, num_actors=2, rows_per_task=16,
                               progress=False, chunk_tokens=20, chunk_overlap=3)
    np.testing.assert_allclose(_concat(tmp_path / "windows"), np.load(tmp_path / "chunked.npy"), atol=1e-6)
    assert summary.windows == chunked.windows > 2 * summary.windowed_rows > 0 and summary.truncated == 0
    assert "split into windows of 20 text tokens (overlap 3)" in summary.format()
    with pytest.raises(OptionError, match="max_length=65 is outside 1..64"):
        embed_corpus_ray(shard_folder, tmp_path / "bad", tiny_export, max_length=65, address="ray://nowhere:1")


def test_without_ray_the_cli_says_which_extra_to_install(tiny_export, shard_folder, tmp_path):
    block_ray = (
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n"
        "            raise ImportError('ray is blocked in this test')\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    code = block_ray + (
        "from click.testing import CliRunner\n"
        "from lusifer.runtime.cli import main\n"
        f"r = CliRunner().invoke(main, [{str(shard_folder)!r}, '--out', {str(tmp_path / 'o')!r}, '--model', "
        f"{str(tiny_export)!r}, '--ray', '--no-progress'])\n"
        "print(r.exit_code, r.output)\n"
    )
    proc = run_python(code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("1 ") and "pip install 'lusifer[ray]'" in proc.stdout, proc.stdout


def test_ray_parquet_shards_with_ids_and_int8(local_ray, tiny_export, shard_folder, tmp_path, caplog):
    """One parquet per shard (ids of that shard in its id column, int8 codes calibrated once on the first work
    item and kept in the manifest), as the single-process job gives them; a .npy folder gets ids files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lusifer.runtime.compact import quantize

    corpus = tmp_path / "corpus"
    for i, (a, b) in enumerate(pairwise(BOUNDS)):
        texts = pq.read_table(shard_folder / f"part-{i * 5}.parquet").column("text").to_pylist()
        write_parquet(corpus / f"part-{i * 5}.parquet", texts, row_group_size=16,
                      doc=pa.array([f"d{r}" for r in range(a, b)], type=pa.string()))
    single = tmp_path / "single.npy"
    embed_corpus(corpus, single, tiny_export, device="cpu", progress=False)
    floats = np.load(single)
    out = tmp_path / "out"
    caplog.clear()  # the single-process run above warned too
    with caplog.at_level(logging.WARNING, logger="lusifer.runtime.lengths"):
        summary = embed_corpus_ray(corpus, out, tiny_export, num_actors=2, rows_per_task=16, dtype="int8",
                                   output_format="parquet", id_column="doc", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    warnings = [r.getMessage() for r in caplog.records if "were cut" in r.getMessage()]
    assert len(warnings) == 1 and "(ids 'd" in warnings[0], warnings  # the >1% warning names rows by id too
    # rows cut at the tiny export's 64 tokens are listed by id too (looked up when their shard completes)
    assert summary.truncated_rows and summary.truncated_ids == [f"d{r}" for r in summary.truncated_rows]
    first = summary.truncated_rows[0]
    assert f"ids 'd{first}' (row {first})" in summary.format()
    assert [e["output"] for e in manifest["shards"]] == [f"part-{i * 5}.parquet" for i in range(5)]
    assert manifest["identity"]["format"] == "parquet" and manifest["identity"]["ids"]["column"] == "doc"
    ranges = np.asarray(manifest["quantization"]["ranges"], dtype=np.float32)
    assert manifest["quantization"]["calibration_rows"] == 16  # the first work item: rows 0-15 of part-0
    np.testing.assert_allclose(ranges, np.vstack((floats[:16].min(0), floats[:16].max(0))), atol=1e-6)
    tables = [pq.read_table(out / e["output"]) for e in manifest["shards"]]
    assert sum((t.column("id").to_pylist() for t in tables), []) == [f"d{r}" for r in range(BOUNDS[-1])]
    codes = np.concatenate([np.stack(t.column("embedding").to_numpy()) for t in tables if t.num_rows])
    assert codes.dtype == np.int8
    assert np.abs(codes.astype(int) - quantize(floats, "int8", ranges).astype(int)).max() <= 1  # fp noise only
    outputs = [e["output"] for e in manifest["shards"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *outputs])
    again = embed_corpus_ray(corpus, out, tiny_export, num_actors=1, dtype="int8", output_format="parquet",
                             id_column="doc", progress=False)
    assert again.shards_embedded == 0
    with pytest.raises(OutputError, match="describes another job.*ids: was"):
        embed_corpus_ray(corpus, out, tiny_export, dtype="int8", output_format="parquet", progress=False)
    npy = tmp_path / "npy"
    result = CliRunner().invoke(main, [str(corpus), "--out", str(npy), "--model", str(tiny_export), "--no-progress",
                                       "--ray", "--num-actors", "1", "--id-column", "doc", "--dtype", "ubinary"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ids = [pq.read_table(npy / f"part-{i * 5}.npy.ids.parquet").column("id").to_pylist() for i in range(5)]
    assert sum(ids, []) == [f"d{r}" for r in range(BOUNDS[-1])]
    packed = _concat(npy)
    assert packed.dtype == np.uint8 and packed.shape == (BOUNDS[-1], floats.shape[1] // 8)
    sure = np.abs(floats) > 1e-5
    assert (np.unpackbits(packed, axis=1).astype(bool) == (floats > 0))[sure].all()
