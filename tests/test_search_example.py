"""examples/search: embed a multilingual corpus, index it with FAISS, query it in several languages.

The fast test runs the example's plumbing on the tiny random export (hits are meaningless); the slow test runs
it as a user would, on the default model (lusifer-small, built into the cache on first use), and checks that
every query of ``queries.jsonl`` finds its passage first.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest_plugins = ["test_runtime_support"]  # tiny_export fixture

faiss = pytest.importorskip("faiss", reason="the [search] extra (faiss-cpu) is not installed")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "search"


def load_example():
    spec = importlib.util.spec_from_file_location("search_example", EXAMPLE / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def test_search_example_plumbing_on_the_tiny_export(tiny_export, tmp_path):
    example = load_example()
    hits_path = tmp_path / "hits.json"
    args = ["--work", str(tmp_path / "work"), "--model", str(tiny_export), "--chunk-tokens", "40",
            "--chunk-overlap", "8", "--top-k", "2", "--json", str(hits_path), "Wo schläft die Katze?", "火山"]
    result = CliRunner().invoke(example.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = read_jsonl(EXAMPLE / "corpus.jsonl")
    vectors = np.load(tmp_path / "work" / "vectors.npy")
    assert vectors.shape[0] == len(docs)
    index = faiss.read_index(str(tmp_path / "work" / "index.faiss"))
    assert index.ntotal == len(docs)
    hits = json.loads(hits_path.read_text("utf-8"))
    assert [h["text"] for h in hits] == ["Wo schläft die Katze?", "火山"]
    for h in hits:
        assert len(h["hits"]) == 2 and h["hits"][0]["score"] >= h["hits"][1]["score"]
        assert {x["id"] for x in h["hits"]} <= {d["id"] for d in docs}
    assert "split into windows of 40 text tokens" in result.output


@pytest.mark.slow
def test_search_example_finds_every_passage_across_languages(tmp_path):
    hits_path = tmp_path / "hits.json"
    cmd = [sys.executable, str(EXAMPLE / "search.py"), "--work", str(tmp_path / "work"), "--json", str(hits_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr
    queries = read_jsonl(EXAMPLE / "queries.jsonl")
    hits = json.loads(hits_path.read_text("utf-8"))
    assert len({q["lang"] for q in queries}) >= 5
    assert [h["hits"][0]["id"] for h in hits] == [q["expected"] for q in queries], first.stdout
    assert f"top-1 correct: {len(queries)} of {len(queries)}" in first.stdout
    assert "2 row(s), 6 window(s)" in first.stdout  # the two long articles were embedded whole
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)  # the corpus job is resumable
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr
