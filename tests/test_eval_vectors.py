"""lusifer-eval's per-run embedding cache and --save-vectors: same scores, and vectors that reproduce them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_eval_cli import suite_dir  # noqa: F401  (fixture: the tiny synthetic suite, English texts repeat)
from test_runtime_support import export_tiny

from lusifer.evaluation.cli import main
from lusifer.evaluation.runner import load_task_vectors, save_task_vectors, score_task
from lusifer.evaluation.suite import load_suite, load_task


@pytest.fixture(scope="module")
def export_dir(tiny_factory, tmp_path_factory):
    return export_tiny(tiny_factory(), tmp_path_factory.mktemp("eval-vectors") / "fp32")


def _run(tmp_path, name, *args):
    out = tmp_path / f"{name}.json"
    result = CliRunner().invoke(main, [*map(str, args), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text("utf-8"))["runs"]


@pytest.mark.parametrize("model", ["export", "lusifer"])
def test_cache_embeds_repeated_texts_once_with_identical_scores(model, export_dir, tiny_factory, suite_dir,  # noqa: F811
                                                                 tmp_path):
    folder = export_dir if model == "export" else tiny_factory()
    cached, = _run(tmp_path, "cached", folder, "--suite", suite_dir, "--batch-size", "3")
    fresh, = _run(tmp_path, "fresh", folder, "--suite", suite_dir, "--batch-size", "3", "--no-cache")
    assert [t["scores"] for t in cached["tasks"]] == [t["scores"] for t in fresh["tasks"]]
    assert cached["averages"] == fresh["averages"]
    by_name = {t["name"]: t for t in cached["tasks"]}
    # the ru bitext task repeats two English sentences of the es task (same instruction): embedded once
    assert by_name["bitext-ru"]["texts_embedded"] == by_name["bitext-ru"]["distinct_texts"] - 2
    assert cached["timings"]["texts_from_cache"] == 2 and fresh["timings"]["texts_from_cache"] == 0
    assert cached["timings"]["texts_embedded"] == fresh["timings"]["texts_embedded"] - 2


def test_saved_vectors_reproduce_each_task_score(export_dir, suite_dir, tmp_path):  # noqa: F811
    vectors = tmp_path / "vectors"
    run, = _run(tmp_path, "r", export_dir, "--suite", suite_dir, "--save-vectors", vectors, "--name", "small onnx")
    folder = vectors / "small_onnx"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{t['name']}.npz" for t in run["tasks"])
    for task in run["tasks"]:
        saved = load_task_vectors(folder / f"{task['name']}.npz")
        assert (saved["task"], saved["type"], saved["lang"], saved["instruction"]) == (
            task["name"], task["type"], task["lang"], task["instruction"])
        assert saved["embeddings1"].dtype == np.float32 and saved["embeddings1"].shape[0] == task["rows"]
        assert score_task(saved["type"], saved["embeddings1"], saved["embeddings2"], saved["gold"]) == task["scores"]


def test_vectors_file_round_trip_and_bad_file(suite_dir, tmp_path):  # noqa: F811
    data = load_task(load_suite(suite_dir).task("sts-en"))
    e = np.random.default_rng(0).normal(size=(len(data), 8)).astype(np.float32)
    path = save_task_vectors(tmp_path / "sts-en.npz", data, e, e[::-1], "Retrieve")
    saved = load_task_vectors(path)
    assert np.array_equal(saved["embeddings2"], e[::-1]) and list(saved["gold"]) == data.scores
    assert [p.name for p in tmp_path.iterdir()] == ["sts-en.npz"]  # no temporary file left
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz is not a task vectors file"):
        load_task_vectors(tmp_path / "bad.npz")
