"""embed_corpus / lusifer-embed end to end: equality with Embedder and LusiferModel, shards, order, resume."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import MULTILINGUAL_TEXTS
from test_runtime_support import corpus_texts, kill_cli_after_rows, read_sidecar, write_parquet

from lusifer.runtime import Embedder, OutputError, embed_corpus
from lusifer.runtime.batching import make_batch, plan_batches
from lusifer.runtime.tokenize import TokenizedTexts
from lusifer.runtime.cli import main
from lusifer.runtime.corpus import READ_BUFFER_BYTES, iter_chunks, open_corpus

pytest_plugins = ["test_runtime_support"]  # tiny_export, export_copy fixtures


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return MULTILINGUAL_TEXTS + corpus_texts(300)


@pytest.fixture(scope="module")
def reference(tiny_export, texts) -> np.ndarray:
    return Embedder(tiny_export, device="cpu").embed(texts, kind="document")


def cli(*args):
    """Run lusifer-embed in-process (on CPU unless --device is given)."""
    args = [*map(str, args), "--no-progress"]
    if "--device" not in args:
        args += ["--device", "cpu"]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_corpus_matches_embedder_and_lusifer_model(tiny_export, tiny_factory, texts, reference, tmp_path):
    from lusifer.modeling import LusiferModel

    corpus = write_parquet(tmp_path / "corpus.parquet", texts, row_group_size=50)
    out = tmp_path / "vectors.npy"
    result = cli(corpus, "--out", out, "--model", tiny_export, "--device", "cpu")
    assert result.exit_code == 0, result.output
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == reference.shape
    np.testing.assert_allclose(got, reference, atol=1e-6)
    model = LusiferModel.from_pretrained(tiny_factory())
    assert (got * model.encode(texts, kind="document")).sum(axis=1).min() > 0.9999
    side = read_sidecar(out)
    assert side["status"] == "complete" and side["progress"]["completed_rows"] == len(texts)
    assert side["identity"]["corpus"]["files"][0]["rows"] == len(texts)
    assert len(side["identity"]["model"]["sha256"]) == 64
    summary = side["summary"]
    assert summary["rows_per_s"] > 0 and summary["tokens_per_s"] > 0
    timing = summary["timing"]  # where the span went: model, waiting for tokens, handing to the writer, last commit
    assert 0 < timing["first_batch_s"] <= summary["seconds"]
    spent = timing["infer_s"] + timing["wait_tokens_s"] + timing["handoff_s"] + timing["tail_s"]
    assert 0 < timing["infer_s"] and spent <= summary["seconds"]
    assert summary["warmup_seconds"] == 0.0  # warm-up is for CUDA only
    assert "of which model" in result.output
    formatted = model.format(texts, "document", None)
    n_truncated = sum(len(model.tokenizer(t)["input_ids"]) > model.config.max_length for t in formatted)
    assert summary["truncated"] == n_truncated > 0
    assert f"truncated at max length: {n_truncated} row(s)" in result.output
    assert "rows/s" in result.output and "tokens/s" in result.output
    assert not Path(str(out) + ".partial").exists()


def test_shard_folder_and_glob_keep_corpus_order(tiny_export, texts, reference, tmp_path):
    folder = tmp_path / "shards"
    bounds = [0, 7, 120, 121, 250, len(texts)]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        write_parquet(folder / f"part-{i * 5}.parquet", texts[a:b], row_group_size=40)  # part-0, -5, -10 ...
    for spec in (folder, str(folder / "part-*.parquet")):
        out = tmp_path / f"v{hash(str(spec)) & 0xFFFF}.npy"
        summary = embed_corpus(spec, out, tiny_export, device="cpu", progress=False, chunk_rows=64, token_budget=300)
        assert summary.rows == len(texts)
        np.testing.assert_allclose(np.load(out), reference, atol=1e-6)


@pytest.mark.parametrize("inflight", [1, 2])
def test_order_restored_under_length_sorting(tiny_export, tmp_path, inflight):
    rng = np.random.default_rng(1)
    base = corpus_texts(200, seed=3)
    texts = [base[i][: int(rng.integers(1, len(base[i]) + 1))] for i in range(200)]
    emb = Embedder(tiny_export, device="cpu")
    one_by_one = np.concatenate([emb.embed([t], kind="query") for t in texts])
    corpus = write_parquet(tmp_path / "c.parquet", texts)
    out = tmp_path / "v.npy"
    embed_corpus(corpus, out, tiny_export, kind="query", device="cpu", progress=False, chunk_rows=97,
                 token_budget=256, max_batch_rows=16, inflight=inflight)
    np.testing.assert_allclose(np.load(out), one_by_one, atol=1e-5)


def test_float16_output_and_instruction(tiny_export, texts, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", texts[:50])
    out = tmp_path / "v.npy"
    result = cli(corpus, "--out", out, "--model", tiny_export, "--dtype", "float16", "--kind", "query",
                 "--instruction", "Find the same sentence")
    assert result.exit_code == 0, result.output
    got = np.load(out)
    assert got.dtype == np.float16
    expected = Embedder(tiny_export, device="cpu").embed(texts[:50], kind="query", instruction="Find the same sentence")
    np.testing.assert_allclose(got.astype(np.float32), expected, atol=2e-3)


def test_existing_output_refused_then_overwrite_and_resume(tiny_export, texts, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", texts[:20])
    out = tmp_path / "v.npy"
    assert cli(corpus, "--out", out, "--model", tiny_export).exit_code == 0
    before = out.read_bytes()
    refused = cli(corpus, "--out", out, "--model", tiny_export)
    assert refused.exit_code != 0 and "already exists; pass --overwrite" in refused.output
    assert out.read_bytes() == before
    again = cli(corpus, "--out", out, "--model", tiny_export, "--resume")
    assert again.exit_code == 0 and "already complete" in again.output
    over = cli(corpus, "--out", out, "--model", tiny_export, "--overwrite", "--dtype", "float16")
    assert over.exit_code == 0, over.output
    assert np.load(out).dtype == np.float16
    both = cli(corpus, "--out", out, "--model", tiny_export, "--overwrite", "--resume")
    assert both.exit_code != 0 and "exclude each other" in both.output


def test_resume_refuses_a_different_job(tiny_export, texts, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", texts[:20])
    out = tmp_path / "v.npy"
    assert cli(corpus, "--out", out, "--model", tiny_export).exit_code == 0
    result = cli(corpus, "--out", out, "--model", tiny_export, "--resume", "--kind", "query")
    assert result.exit_code != 0
    assert "options.kind: was \"document\", now \"query\"" in result.output
    with pytest.raises(OutputError, match="different batching: chunk_rows=7"):
        embed_corpus(corpus, out, tiny_export, device="cpu", resume=True, chunk_rows=7, progress=False)


def test_kill_mid_run_then_resume_gives_identical_file(tiny_export, texts, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", texts, row_group_size=33)
    opts = ["--model", str(tiny_export), "--chunk-rows", "24", "--token-budget", "400", "--device", "cpu",
            "--no-progress"]
    reference = tmp_path / "ref.npy"
    assert cli(corpus, "--out", reference, *opts[:-1]).exit_code == 0
    out = tmp_path / "v.npy"
    proc = kill_cli_after_rows([corpus, "--out", out, *opts], out, 48)
    assert proc.returncode == -signal.SIGKILL
    state = read_sidecar(out)
    done = state["progress"]["completed_rows"]
    assert state["status"] == "in_progress" and 48 <= done < len(texts)
    assert not out.exists() and Path(str(out) + ".partial").exists()
    refused = cli(corpus, "--out", out, *opts[:-1])
    assert refused.exit_code != 0 and f"({done} of {len(texts)} rows done); pass --resume" in refused.output
    resumed = cli(corpus, "--out", out, "--model", tiny_export, "--resume")  # batching comes from the sidecar
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed at row {done}" in resumed.output
    assert out.read_bytes() == reference.read_bytes()
    final = read_sidecar(out)
    assert final["status"] == "complete" and [r["start_row"] for r in final["runs"]] == [0, done]
    assert final["summary"]["truncated"] == read_sidecar(reference)["summary"]["truncated"]


def test_plan_batches_respects_budget_and_covers_all():
    lengths = np.array([5, 60, 3, 60, 17, 1, 33, 33, 2, 70])
    batches = plan_batches(lengths, token_budget=100, max_rows=3)
    covered = np.concatenate(batches)
    assert sorted(covered.tolist()) == list(range(len(lengths)))
    assert lengths[covered].tolist() == sorted(lengths.tolist(), reverse=True)
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * lengths[b].max() <= 100


def test_make_batch_right_pads_each_row_with_its_own_ids():
    rng = np.random.default_rng(0)
    lengths = np.array([4, 0, 7, 1, 7, 3])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = TokenizedTexts(ids=rng.integers(5, 900, offsets[-1]), offsets=offsets, truncated=np.zeros(6, bool))
    positions = np.array([2, 0, 1, 5])
    batch = make_batch(tokens, positions, pad_token_id=1)
    assert batch.input_ids.shape == (4, 7) and batch.input_ids.dtype == np.int64
    for r, pos in enumerate(positions):
        n = lengths[pos]
        assert batch.input_ids[r, :n].tolist() == tokens.row(pos).tolist()
        assert (batch.input_ids[r, n:] == 1).all()
        assert batch.attention_mask[r].tolist() == [1] * n + [0] * (7 - n)
    assert batch.real_tokens == 14 and batch.padded_tokens == 28


def test_iter_chunks_resumes_at_chunk_boundaries(tmp_path):
    texts = [f"row {i}" for i in range(103)]
    folder = tmp_path / "c"
    write_parquet(folder / "a-1.parquet", texts[:40], row_group_size=9)
    write_parquet(folder / "a-2.parquet", [])
    write_parquet(folder / "a-3.parquet", texts[40:], row_group_size=25)
    corpus = open_corpus(folder)
    chunks = list(iter_chunks(corpus, 10))
    assert [s for s, _ in chunks] == list(range(0, 103, 10))
    assert [v for _, c in chunks for v in c] == texts
    for start in (30, 40, 70, 100):
        assert [v for _, c in iter_chunks(corpus, 10, start) for v in c] == texts[start:]


@pytest.mark.parametrize("row_group_size", [1000, None])  # many row groups; one row group (pyarrow's default)
def test_iter_chunks_arrow_memory_does_not_grow_with_the_file(tmp_path, row_group_size):
    """Streaming holds about one read buffer, not the file: pyarrow's default pre-buffering kept every column
    chunk read so far (~110 MB at 1M rows), which made peak RSS grow with the corpus."""
    blob = np.random.default_rng(0).bytes(128 * 40_000).hex()
    texts = [blob[i : i + 256] for i in range(0, len(blob), 256)]  # 40k rows of 256 random hex chars: ~10 MB
    path = tmp_path / "c.parquet"
    table = pa.table({"text": texts, "other": pa.array(np.arange(len(texts)))})
    pq.write_table(table, path, row_group_size=row_group_size, compression="none")
    del table
    corpus = open_corpus(path)
    base = pa.total_allocated_bytes()
    peak, seen = 0, []
    for start, values in iter_chunks(corpus, 2048):
        peak = max(peak, pa.total_allocated_bytes() - base)
        seen.append((start, values[0], len(values)))
    assert [s for s, _, _ in seen] == list(range(0, len(texts), 2048))
    assert [v for _, v, _ in seen] == texts[::2048] and sum(n for _, _, n in seen) == len(texts)
    column_bytes = sum(len(t) for t in texts)
    assert peak < 4 * READ_BUFFER_BYTES < column_bytes / 2, (peak, column_bytes)


@pytest.mark.gpu
def test_corpus_on_cuda_fp16_matches_cpu(tiny_factory, texts, reference, tmp_path):
    """On a GPU machine with onnxruntime-gpu: the default CUDA path (fp16 graph, IO binding) end to end."""
    from test_runtime_support import export_tiny

    fp16 = export_tiny(tiny_factory(), tmp_path / "fp16", dtype="fp16")
    corpus = write_parquet(tmp_path / "c.parquet", texts, row_group_size=50)
    out = tmp_path / "v.npy"
    result = cli(corpus, "--out", out, "--model", fp16, "--device", "cuda", "--chunk-rows", "64")
    assert result.exit_code == 0, result.output
    side = read_sidecar(out)
    assert side["summary"]["provider"] == "CUDAExecutionProvider" and side["summary"]["variant"] == "fp16"
    assert (np.load(out) * reference).sum(axis=1).min() > 0.999
