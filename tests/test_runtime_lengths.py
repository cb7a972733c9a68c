"""Length control and long documents: --max-length, the truncated-row listing, --chunk-tokens windows, resume."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MULTILINGUAL_TEXTS
from test_runtime_support import corpus_texts, read_sidecar, write_parquet
from tokenizers import Tokenizer

from lusifer.runtime import Embedder, OutputError, embed_corpus
from lusifer.runtime.chunking import ChunkSettings, RowEncoder, window_bounds
from lusifer.runtime.cli import main
from lusifer.runtime.errors import OptionError
from lusifer.runtime.lengths import TRUNCATED_LISTED, TruncationTally, resolve_max_length
from lusifer.runtime.writer import VectorWriter

pytest_plugins = ["test_runtime_support"]  # tiny_export fixture

INSTRUCTION = "Represent the passage for retrieval"


def cli(*args):
    args = [*map(str, args), "--no-progress", "--device", "cpu"]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def full_tokenizer(export: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(export / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def assert_nothing_written(out: Path) -> None:
    assert [p.name for p in out.parent.glob(out.name + "*")] == []


@pytest.fixture(scope="module")
def embedder(tiny_export) -> Embedder:
    return Embedder(tiny_export, device="cpu")


def test_max_length_cuts_rows_lists_the_first_and_warns_once(tiny_export, tmp_path, caplog):
    texts: list = corpus_texts(80, seed=5)
    texts[3] = None  # a null row (zero vector) shifts nothing: rows are listed by corpus position
    corpus = write_parquet(tmp_path / "c.parquet", texts)
    out = tmp_path / "v.npy"
    with caplog.at_level(logging.WARNING, logger="lusifer.runtime.lengths"):
        result = cli(corpus, "--out", out, "--model", tiny_export, "--max-length", 32, "--on-null", "zero",
                     "--chunk-rows", 16)
    assert result.exit_code == 0, result.output
    kept = [i for i, t in enumerate(texts) if t is not None]
    expected = Embedder(tiny_export, device="cpu", max_length=32).embed([texts[i] for i in kept], kind="document")
    got = np.load(out)
    np.testing.assert_allclose(got[kept], expected, atol=1e-6)
    assert not got[3].any()
    tok = full_tokenizer(tiny_export)
    cut = [i for i in kept if len(tok.encode(texts[i]).ids) > 32]
    assert 0 < len(cut) < len(kept)
    side = read_sidecar(out)
    assert side["identity"]["options"]["max_length"] == 32
    assert side["summary"]["truncated"] == len(cut)
    assert side["summary"]["truncated_rows"] == cut[:TRUNCATED_LISTED]
    listed = ", ".join(map(str, cut[:TRUNCATED_LISTED]))
    assert f"truncated at max length: {len(cut)} row(s) (rows {listed}, ...) [max length 32 tokens]" in result.output
    warnings = [r for r in caplog.records if "were cut" in r.getMessage()]
    assert len(warnings) == 1 and "max length of 32 tokens" in warnings[0].getMessage()  # 5 chunks, one warning


def test_no_warning_when_few_rows_are_cut(tiny_export, tmp_path, caplog):
    texts = ["short text"] * 150 + [" ".join(corpus_texts(6))]  # 1 of 151 rows cut: under 1%
    corpus = write_parquet(tmp_path / "c.parquet", texts)
    with caplog.at_level(logging.WARNING, logger="lusifer.runtime.lengths"):
        summary = embed_corpus(corpus, tmp_path / "v.npy", tiny_export, device="cpu", progress=False)
    assert summary.truncated == 1 and summary.truncated_rows == [150]
    assert not [r for r in caplog.records if "were cut" in r.getMessage()]


@pytest.mark.parametrize(("args", "message"), [
    (["--max-length", 65], "max_length=65 is outside 1..64"),
    (["--max-length", 0], "Invalid value for '--max-length'"),
    (["--max-length", 9, "--instruction", INSTRUCTION], "max_length=9 leaves no room for text"),
    (["--chunk-tokens", 63], "chunk_tokens=63 does not fit"),
    (["--chunk-tokens", 30, "--max-length", 20], "chunk_tokens=30 does not fit"),
    (["--chunk-tokens", 8, "--chunk-overlap", 8], "chunk_overlap=8: expected 0 to 7"),
    (["--chunk-overlap", 2], "--chunk-overlap 2 needs --chunk-tokens"),
])
def test_bad_length_options_fail_before_writing(tiny_export, tmp_path, args, message):
    corpus = write_parquet(tmp_path / "c.parquet", ["a text"])
    out = tmp_path / "out" / "v.npy"
    result = cli(corpus, "--out", out, "--model", tiny_export, *args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert not out.parent.exists() or assert_nothing_written(out) is None


def test_length_helpers_reject_bad_values():
    assert resolve_max_length(None, 128) == 128 and resolve_max_length(40, 128) == 40
    for bad in (129, 0, True, 1.5):
        with pytest.raises(OptionError, match="max_length"):
            resolve_max_length(bad, 128)
    with pytest.raises(OptionError, match="chunk_tokens=0"):
        ChunkSettings(0)
    with pytest.raises(OptionError, match="needs chunk_tokens"):
        ChunkSettings.from_options(None, 4)
    assert ChunkSettings.from_options(None, None) is None
    assert window_bounds(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert window_bounds(4, 4, 2) == [(0, 4)]


def test_chunking_leaves_short_rows_bit_identical(tiny_export, tmp_path):
    tok = full_tokenizer(tiny_export)
    prompt = "Passage. Candidate:\n"
    overhead = len(tok.encode(prompt + "x").ids) - 1
    size = 64 - overhead
    pool = MULTILINGUAL_TEXTS + [t[: 10 + 2 * i] for i, t in enumerate(corpus_texts(60))]
    texts = [t for t in pool if len(tok.encode(prompt + t).ids) - overhead <= size]
    assert len(texts) > 30 and max(len(tok.encode(prompt + t).ids) - overhead for t in texts) > size - 10
    corpus = write_parquet(tmp_path / "c.parquet", texts)
    plain, chunked = tmp_path / "plain.npy", tmp_path / "chunked.npy"
    embed_corpus(corpus, plain, tiny_export, device="cpu", progress=False, instruction="Passage")
    summary = embed_corpus(corpus, chunked, tiny_export, device="cpu", progress=False, instruction="Passage",
                           chunk_tokens=size, chunk_overlap=5)
    assert summary.windowed_rows == 0 and summary.truncated == 0
    assert chunked.read_bytes() == plain.read_bytes()


def single_token_words(tok: Tokenizer, count: int) -> list[str]:
    """Words that are one token each after a space, so a window's text re-tokenises to the same ids."""
    words = sorted({w for t in MULTILINGUAL_TEXTS + corpus_texts(40) for w in t.split()})
    good = [w for w in words if len(tok.encode(" " + w, add_special_tokens=False).ids) == 1]
    assert len(good) >= 8
    return [good[i % len(good)] for i in range(count)]


def test_long_row_is_the_token_weighted_mean_of_its_windows(tiny_export, embedder, tmp_path):
    tok = full_tokenizer(tiny_export)
    words = single_token_words(tok, 70)
    long_text = "".join(" " + w for w in words)  # 70 text tokens, one per word
    texts = ["A short row.", long_text, MULTILINGUAL_TEXTS[5]]
    corpus = write_parquet(tmp_path / "c.parquet", texts)
    out = tmp_path / "v.npy"
    result = cli(corpus, "--out", out, "--model", tiny_export, "--instruction", INSTRUCTION, "--chunk-tokens", 24,
                 "--chunk-overlap", 5)
    assert result.exit_code == 0, result.output
    got = np.load(out)
    # by hand: windows of 24 words starting every 19 words, each embedded as its own text with the prompt
    starts = [0, 19, 38, 57]
    windows = [(s, min(s + 24, 70)) for s in starts]
    window_texts = ["".join(" " + w for w in words[a:b]) for a, b in windows]
    prompt = f"{INSTRUCTION}. Candidate:\n"
    full_ids = tok.encode(prompt + long_text).ids
    head = len(tok.encode(prompt + window_texts[0]).ids) - 24 - 1  # <s> and prompt tokens; </s> ends it
    for (a, b), text in zip(windows, window_texts):  # the windows' own ids are the slices of the row's ids
        assert tok.encode(prompt + text).ids == full_ids[:head] + full_ids[head + a : head + b] + full_ids[-1:]
    vectors = embedder.embed(window_texts, kind="document", instruction=INSTRUCTION)
    weights = np.array([b - a for a, b in windows], dtype=np.float64)
    mean = (weights[:, None] * vectors).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(got[1], mean / np.linalg.norm(mean), atol=1e-6)
    short = embedder.embed([texts[0], texts[2]], kind="document", instruction=INSTRUCTION)
    np.testing.assert_allclose(got[[0, 2]], short, atol=1e-6)
    side = read_sidecar(out)
    assert side["identity"]["options"]["chunk_tokens"] == 24 and side["identity"]["options"]["chunk_overlap"] == 5
    assert side["summary"]["windowed_rows"] == 1 and side["summary"]["windows"] == 4
    assert side["summary"]["truncated"] == 0
    assert "split into windows of 24 text tokens (overlap 5): 1 row(s), 4 window(s)" in result.output


def test_without_normalize_the_windows_are_averaged_raw(tiny_export, embedder, tmp_path):
    tok = full_tokenizer(tiny_export)
    words = single_token_words(tok, 90)
    text = "".join(" " + w for w in words)
    corpus = write_parquet(tmp_path / "c.parquet", [text])
    summary = embed_corpus(corpus, tmp_path / "v.npy", tiny_export, device="cpu", progress=False,
                           normalize=False, chunk_tokens=50)
    windows = [(0, 50), (50, 90)]
    raw = embedder.embed(["".join(" " + w for w in words[a:b]) for a, b in windows], kind="document",
                         normalize=False)
    expected = (50 * raw[0] + 40 * raw[1]) / 90
    np.testing.assert_allclose(np.load(tmp_path / "v.npy")[0], expected, atol=1e-6)
    assert summary.windows == 2


def test_encoder_keeps_the_prompt_in_every_window(embedder):
    encoder = RowEncoder(embedder.tokenizer, "query", "Find the passage", ChunkSettings(6, 2))
    rows = encoder.encode([" ".join(["word"] * 30), "tiny"])
    assert rows.rows == 2 and rows.first[-1] == len(rows.sequences)
    prompt_ids = embedder.tokenize([""], "query", "Find the passage").row(0)[:-1]  # <s> + prompt, no </s>
    first, last = rows.first[0], rows.first[1]
    assert last - first > 2
    for i in range(first, last):
        seq = rows.sequences.row(i)
        assert seq[: len(prompt_ids)].tolist() == prompt_ids.tolist() and len(seq) <= len(prompt_ids) + 6 + 1
    np.testing.assert_array_equal(rows.sequences.row(last), embedder.tokenize(["tiny"], "query",
                                                                               "Find the passage").row(0))


class _Interrupt(Exception):
    pass


def test_chunked_run_interrupted_then_resumed_is_byte_identical(tiny_export, tmp_path, monkeypatch):
    tok = full_tokenizer(tiny_export)
    long_rows = ["".join(" " + w for w in single_token_words(tok, 40 + 13 * i)) for i in range(6)]
    texts = [t for pair in zip(corpus_texts(30, seed=2), long_rows * 5) for t in pair]
    corpus = write_parquet(tmp_path / "c.parquet", texts)
    opts = dict(device="cpu", progress=False, chunk_rows=8, max_length=48, chunk_tokens=30, chunk_overlap=4)
    reference = tmp_path / "ref.npy"
    full = embed_corpus(corpus, reference, tiny_export, **opts)
    assert full.windowed_rows >= 30 and full.windows > 2 * full.windowed_rows and full.truncated == 0

    out = tmp_path / "v.npy"
    commit = VectorWriter.commit
    calls = []

    def failing_commit(self, *args):
        if len(calls) == 3:
            raise _Interrupt("stop here")
        calls.append(1)
        commit(self, *args)

    monkeypatch.setattr(VectorWriter, "commit", failing_commit)
    with pytest.raises(_Interrupt):
        embed_corpus(corpus, out, tiny_export, **opts)
    monkeypatch.setattr(VectorWriter, "commit", commit)
    assert read_sidecar(out)["progress"]["completed_rows"] == 24
    with pytest.raises(OutputError, match='options.chunk_overlap: was 4, now 0'):
        embed_corpus(corpus, out, tiny_export, device="cpu", progress=False, resume=True, chunk_tokens=30,
                     chunk_overlap=0)
    with pytest.raises(OutputError, match="options.max_length: was 48, now 64"):
        embed_corpus(corpus, out, tiny_export, device="cpu", progress=False, resume=True, max_length=64)
    resumed = embed_corpus(corpus, out, tiny_export, device="cpu", progress=False, resume=True)  # lengths inherited
    assert resumed.resumed_from == 24 and resumed.chunk_tokens == 30 and resumed.max_length == 48
    assert out.read_bytes() == reference.read_bytes()
    assert resumed.windowed_rows == full.windowed_rows and resumed.windows == full.windows


def test_tally_lists_the_first_rows_with_ids_and_resumes_from_the_sidecar(caplog):
    tally = TruncationTally(max_length=32)
    ids = np.array(["a", "b", "c", "d"])
    assert tally.add(100, np.array([1, 3]), ids) == 2
    assert tally.rows == [101, 103] and tally.ids == ["b", "d"]
    assert tally.describe_rows() == "ids 'b' (row 101), 'd' (row 103)"
    tally.add(200, np.arange(20), np.arange(20) + 7000)  # only the first TRUNCATED_LISTED rows are kept
    assert tally.count == 22 and len(tally.rows) == TRUNCATED_LISTED and tally.rows[2] == 200
    assert tally.ids[2] == 7000 and type(tally.ids[2]) is int  # JSON-friendly
    restored = TruncationTally.from_progress({"truncated": 22, **tally.progress_fields()}, 32)
    assert (restored.count, restored.rows, restored.ids) == (22, tally.rows, tally.ids)
    with caplog.at_level(logging.WARNING, logger="lusifer.runtime.lengths"):
        assert not restored.maybe_warn(2200)  # exactly 1%: no warning
        assert restored.maybe_warn(2199) and not restored.maybe_warn(100)  # above 1%: once
    assert len(caplog.records) == 1
