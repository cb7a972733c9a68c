"""benchmarks/diagnostics_small.py end to end on tiny models: rows from saved vectors, ensembles, resumed work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from test_eval_cli import suite_dir  # noqa: F401  (fixture: the tiny synthetic suite)
from test_runtime_support import export_tiny

from benchmarks import diagnostics_small as diag
from lusifer.evaluation.cli import main as eval_main
from lusifer.evaluation.metrics import bitext_scores_from_predictions, spearman
from lusifer.evaluation.runner import load_task_vectors, score_task


@pytest.fixture(scope="module")
def setup(tiny_factory, tmp_path_factory, suite_dir):  # noqa: F811
    """A tiny export (row c), a tiny base encoder (row a) and a work folder whose merged model is the tiny
    LusiferModel (its encoder is row b), so no real weights are needed; every step run once into ``work``."""
    from lusifer.tiny import build_tiny_encoder

    root = tmp_path_factory.mktemp("diag")
    model = tiny_factory()
    export = export_tiny(model, root / "export")
    base = root / "base"
    build_tiny_encoder(base / "encoder-me5-small", "bert")
    (base / "base_models.json").write_text("{}", "utf-8")
    work = root / "work"
    shutil.copytree(model, work / "merged")
    diag.main(["--export", str(export), "--base", str(base), "--suite", str(suite_dir), "--work", str(work),
               "--results", str(root / "first"), "--steps", "a,b,c,e,f"])
    return export, base, work


def test_rows_ensembles_and_instruction_rows(setup, suite_dir, tmp_path):  # noqa: F811
    export, base, work = setup
    args = ["--export", str(export), "--base", str(base), "--suite", str(suite_dir), "--work", str(work),
            "--results", str(tmp_path), "--steps", "a,b,c,e,f"]
    before = {p: p.stat().st_mtime_ns for p in (work / "vectors").rglob("*.npz")}
    diag.main(args)  # a second call reuses every saved vector (no model is opened)
    assert {p: p.stat().st_mtime_ns for p in (work / "vectors").rglob("*.npz")} == before
    first = json.loads((work.parent / "first" / "diagnostics.json").read_text("utf-8"))
    data = json.loads((tmp_path / "diagnostics.json").read_text("utf-8"))
    assert data["coverage"]["complete"] and len(data["coverage"]["common_tasks"]) == 4
    assert set(data["rows"]) == {"a_encoder", "b_merged_encoder", "c_lusifer", "d_ensemble_a_c", "d_ensemble_b_c"}
    # row c is what lusifer-eval gives for the export
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(eval_main, [str(export), "--suite", str(suite_dir), "--out", str(out), "--variant", "fp32"])
    assert result.exit_code == 0, result.output
    run = json.loads(out.read_text("utf-8"))["runs"][0]
    assert data["rows"]["c_lusifer"]["averages"] == pytest.approx(run["averages"], abs=1e-9)
    # the ensemble is the nearest neighbour on the mean of the two cosine matrices
    a = load_task_vectors(work / "vectors" / "mE5-small" / "bitext-es.npz")
    c = load_task_vectors(work / "vectors" / "lusifer-small" / "bitext-es.npz")
    n = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sim = (n(a["embeddings1"]) @ n(a["embeddings2"]).T + n(c["embeddings1"]) @ n(c["embeddings2"]).T) / 2
    expected = bitext_scores_from_predictions(np.argmax(sim, axis=1))["f1"] * 100
    assert data["rows"]["d_ensemble_a_c"]["tasks"]["bitext-es"] == pytest.approx(expected)
    ins = data["instructions"]
    assert ins["tasks"] == ["sts-en", "sts-es"] and set(ins["rows"]) == {"evaluation", "training_stsb", "none"}
    assert ins["wordings"]["training_stsb"].startswith("Retrieve a sentence")
    assert data["max_length"]["lengths"]["total_over_128"] == 0 and "splice" not in data["max_length"]
    assert data["checks"]["lusifer"]["ok"] is not None  # complete, no limit: compared with the model card
    md = (tmp_path / "diagnostics.md").read_text("utf-8")
    assert "(d) ensemble (a)+(c)" in md and str(work) not in md and str(export) not in json.dumps(data)
    assert first["rows"] == data["rows"]


def test_partial_work_reports_the_common_tasks_only(setup, suite_dir, tmp_path):  # noqa: F811
    export, base, work = setup
    partial = tmp_path / "work"
    shutil.copytree(work, partial)
    (partial / "vectors" / "merged-encoder" / "sts-es.npz").unlink()
    diag.main(["--export", str(export), "--base", str(base), "--suite", str(suite_dir), "--work", str(partial),
               "--results", str(tmp_path), "--report-only"])
    data = json.loads((tmp_path / "diagnostics.json").read_text("utf-8"))
    assert not data["coverage"]["complete"] and "sts-es" not in data["coverage"]["common_tasks"]
    assert data["checks"]["lusifer"]["ok"] is None
    assert "not checked" in (tmp_path / "diagnostics.md").read_text("utf-8")


def test_limit_cuts_saved_vectors_and_skips_the_card_check(setup, suite_dir, tmp_path):  # noqa: F811
    export, base, work = setup
    diag.main(["--export", str(export), "--base", str(base), "--suite", str(suite_dir), "--work", str(work),
               "--results", str(tmp_path), "--report-only", "--limit", "2"])
    data = json.loads((tmp_path / "diagnostics.json").read_text("utf-8"))
    assert data["coverage"]["complete"] and data["checks"]["encoder"]["ok"] is None
    assert "first 2 rows" in data["checks"]["encoder"]["reason"]
    a = load_task_vectors(work / "vectors" / "mE5-small" / "sts-en.npz")
    expected = score_task("sts", a["embeddings1"][:2], a["embeddings2"][:2], a["gold"][:2])["spearman"]
    assert data["rows"]["a_encoder"]["tasks"]["sts-en"] == pytest.approx(expected)
    c = load_task_vectors(work / "vectors" / "lusifer-small" / "sts-en.npz")  # the ensemble is cut to 2 rows too
    cos = lambda v: np.sum(v["embeddings1"][:2] * v["embeddings2"][:2], axis=1) / (  # noqa: E731
        np.linalg.norm(v["embeddings1"][:2], axis=1) * np.linalg.norm(v["embeddings2"][:2], axis=1))
    expected = 100 * spearman((cos(a) + cos(c)) / 2, a["gold"][:2])
    assert data["rows"]["d_ensemble_a_c"]["tasks"]["sts-en"] == pytest.approx(expected)


def test_bad_step_is_an_error(setup, suite_dir, tmp_path, capsys):  # noqa: F811
    export, base, work = setup
    with pytest.raises(SystemExit) as exc:
        diag.main(["--export", str(export), "--base", str(base), "--suite", str(suite_dir), "--work", str(work),
                   "--results", str(tmp_path), "--steps", "a,z"])
    assert exc.value.code == 2 and "unknown step(s) ['z']" in capsys.readouterr().err
