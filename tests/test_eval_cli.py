"""End to end: lusifer-eval on a tiny synthetic suite with a tiny LusiferModel and a tiny encoder-alone folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lusifer.evaluation.cli import main
from lusifer.evaluation.metrics import bitext_mining, sts

BITEXT = {
    "es": [("El gato duerme en la ventana.", "The cat sleeps on the window."),
           ("Hace mucho frío hoy.", "It is very cold today."),
           ("Me gusta el café por la mañana.", "I like coffee in the morning."),
           ("El tren sale a las siete.", "The train leaves at seven.")],
    "ru": [("Кошка спит.", "The cat sleeps on the window."),  # same English as es row 0: texts repeat
           ("Сегодня холодно.", "It is very cold today."),
           ("Я люблю кофе.", "I like coffee.")],
}
STS = {
    "en": [("A cat sleeps.", "A cat is sleeping.", 4.8), ("A man plays guitar.", "It rains in Paris.", 0.2),
           ("Dogs bark at night.", "A dog barks loudly.", 3.5), ("The sun is hot.", "The sun is hot.", 5.0)],
    "es": [("Un gato duerme.", "Un gato está durmiendo.", 4.8), ("Un hombre toca.", "Llueve en París.", 0.0),
           ("Los perros ladran.", "Un perro ladra.", 3.4)],
}


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    tasks = []
    for lang, rows in BITEXT.items():
        name = f"bitext-{lang}"
        (root / f"{name}.jsonl").write_text(
            "".join(json.dumps({"sentence1": a, "sentence2": b}, ensure_ascii=False) + "\n" for a, b in rows), "utf-8")
        tasks.append({"name": name, "type": "bitext", "lang": lang, "file": f"{name}.jsonl"})
    for lang, rows in STS.items():
        name = f"sts-{lang}"
        (root / f"{name}.jsonl").write_text(
            "".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}, ensure_ascii=False) + "\n"
                    for a, b, s in rows), "utf-8")
        tasks.append({"name": name, "type": "sts", "lang": lang, "file": f"{name}.jsonl"})
    (root / "suite.json").write_text(json.dumps({"tasks": tasks}), "utf-8")
    return root


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from lusifer.tiny import build_tiny_encoder

    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "encoder-alone", "bert")


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def two_model_run(tiny_factory, encoder_dir, suite_dir, tmp_path_factory):
    """One invocation over both models (default command, no 'run'), with Markdown and chart."""
    out = tmp_path_factory.mktemp("out")
    result = invoke(tiny_factory(), encoder_dir, "--suite", suite_dir, "--out", out / "results.json",
                    "--name", "LUSIFER", "--name", "encoder alone", "--markdown", out / "table.md",
                    "--chart", out / "chart.png", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_run_writes_results_markdown_and_chart(two_model_run, tiny_factory, encoder_dir, suite_dir):
    out, output = two_model_run
    doc = json.loads((out / "results.json").read_text("utf-8"))
    assert doc["format"] == "lusifer-eval-results" and doc["complete"] is True and "pending" not in doc
    lus, enc = doc["runs"]
    assert (lus["name"], lus["model"]["kind"]) == ("LUSIFER", "lusifer")
    assert (enc["name"], enc["model"]["kind"]) == ("encoder alone", "encoder")
    assert enc["model"]["path"] == str(encoder_dir.resolve())
    assert set(lus["suite"]["sha256"]) == {"suite.json", "bitext-es.jsonl", "bitext-ru.jsonl", "sts-en.jsonl",
                                           "sts-es.jsonl"}
    assert lus["settings"]["instructions"] == {"bitext": "Retrieve parallel sentences",
                                               "sts": "Retrieve semantically similar text"}
    for run in (lus, enc):
        assert [t["name"] for t in run["tasks"]] == ["bitext-es", "bitext-ru", "sts-en", "sts-es"]
        for t in run["tasks"]:
            if t["type"] == "bitext":
                assert set(t["scores"]) == {"accuracy", "precision", "recall", "f1"}
                assert all(0.0 <= v <= 100.0 for v in t["scores"].values())
            else:
                assert -100.0 <= t["scores"]["spearman"] <= 100.0
        assert set(run["languages"]) == {"es", "ru", "en"}
        assert run["averages"]["english"] == run["languages"]["en"]["sts_spearman"]
        assert run["averages"]["bitext"] == pytest.approx(
            (run["languages"]["es"]["bitext_f1"] + run["languages"]["ru"]["bitext_f1"]) / 2)
        assert run["averages"]["sts"] == run["languages"]["es"]["sts_spearman"]
        assert run["timings"]["texts_embedded"] > 0 and run["versions"]["torch"]
    # console: one per-language table per model
    assert "LUSIFER  [lusifer:" in output and "encoder alone  [encoder:" in output and "bitext F1" in output
    table = (out / "table.md").read_text("utf-8")
    header = table.splitlines()[0]
    assert header == ("| model | English | Bitext avg | STS avg | bitext es | bitext ru | STS en | STS es |")
    assert table.splitlines()[2].startswith("| LUSIFER | ") and table.splitlines()[3].startswith("| encoder alone | ")
    png = (out / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_scores_match_metrics_on_direct_embeddings(two_model_run, tiny_factory):
    """The runner's figures equal the metrics computed on LusiferModel.encode outputs for the same texts."""
    from lusifer.modeling import LusiferModel

    out, _ = two_model_run
    lus = json.loads((out / "results.json").read_text("utf-8"))["runs"][0]
    model = LusiferModel.from_pretrained(tiny_factory())
    by_name = {t["name"]: t for t in lus["tasks"]}
    for lang, rows in BITEXT.items():
        e1 = model.encode([a for a, _ in rows], "query", "Retrieve parallel sentences")
        e2 = model.encode([b for _, b in rows], "query", "Retrieve parallel sentences")
        expected = bitext_mining(e1, e2)
        got = by_name[f"bitext-{lang}"]["scores"]
        assert got["f1"] == pytest.approx(100 * expected["f1"]) and got["accuracy"] == pytest.approx(100 * expected["accuracy"])
    for lang, rows in STS.items():
        e1 = model.encode([a for a, _, _ in rows], "query", "Retrieve semantically similar text")
        e2 = model.encode([b for _, b, _ in rows], "query", "Retrieve semantically similar text")
        expected = sts(e1, e2, [s for _, _, s in rows])["spearman"]
        assert by_name[f"sts-{lang}"]["scores"]["spearman"] == pytest.approx(100 * expected, abs=1e-6)


def test_encoder_alone_is_masked_mean_pooling(encoder_dir):
    """Encoder alone: L2-normalised mean over non-padding tokens; a text's vector does not depend on its batch."""
    import torch
    from transformers import AutoTokenizer

    from lusifer.backbones import load_encoder
    from lusifer.evaluation.embedders import load_embedder

    embedder = load_embedder(encoder_dir, batch_size=4)
    text, longer = "Кошка спит.", "A much longer sentence that forces padding of the short one in its batch."
    together = embedder.embed([text, longer], "query", "ignored instruction")
    alone = embedder.embed([text], "query", None)
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)
    tok = AutoTokenizer.from_pretrained(encoder_dir)
    enc = tok([text], return_tensors="pt")
    with torch.inference_mode():
        states = load_encoder(encoder_dir)(**enc).last_hidden_state[0]
    expected = states.mean(0) / states.mean(0).norm()
    np.testing.assert_allclose(alone[0], expected.numpy(), atol=1e-5)
    prefixed = load_embedder(encoder_dir, encoder_prefix="query: ").embed([text], "query", None)
    assert not np.allclose(prefixed[0], alone[0])


def test_compare_merges_two_results(tiny_factory, encoder_dir, suite_dir, tmp_path):
    r1, r2 = tmp_path / "a" / "lusifer.json", tmp_path / "b" / "encoder.json"
    assert invoke("run", tiny_factory(), "--suite", suite_dir, "--out", r1, "--name", "LUSIFER",
                  "--limit", "3").exit_code == 0
    assert invoke("run", encoder_dir, "--suite", suite_dir, "--out", r2, "--kind-of-model", "encoder",
                  "--limit", "3").exit_code == 0
    assert (tmp_path / "a" / "lusifer.md").is_file() and (tmp_path / "a" / "lusifer.png").is_file()  # defaults
    result = invoke("compare", r1, r2, "--out", tmp_path / "table.md", "--chart", tmp_path / "chart.png",
                    "--json", tmp_path / "merged.json")
    assert result.exit_code == 0, result.output
    table = (tmp_path / "table.md").read_text("utf-8")
    assert result.output == table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split(" | ")[0] for r in rows[:2]] == ["| LUSIFER", "| encoder-alone"]
    assert "at most 3 rows per task" in table
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"
    merged = json.loads((tmp_path / "merged.json").read_text("utf-8"))
    assert [r["name"] for r in merged["runs"]] == ["LUSIFER", "encoder-alone"]
    assert merged["runs"][0]["tasks"][0]["rows"] == 3


def test_compare_refuses_incomparable_or_incomplete_results(two_model_run, encoder_dir, suite_dir, tmp_path):
    out, _ = two_model_run
    quick = tmp_path / "quick.json"
    assert invoke(encoder_dir, "--suite", suite_dir, "--out", quick, "--limit", "2").exit_code == 0
    result = CliRunner().invoke(main, ["compare", str(out / "results.json"), str(quick)])
    assert result.exit_code != 0 and "different suite or row limit" in result.output
    result = CliRunner().invoke(main, ["compare", str(out / "results.json"), str(quick), "--allow-different-suites"])
    assert result.exit_code == 0 and "encoder alone" in result.output and "encoder-alone" in result.output
    doc = json.loads(quick.read_text("utf-8"))
    doc.update(complete=False, pending=["other"])
    quick.write_text(json.dumps(doc), "utf-8")
    result = CliRunner().invoke(main, ["compare", str(quick)])
    assert result.exit_code != 0 and "marked incomplete" in result.output and "other" in result.output


def test_resume_continues_an_interrupted_run(tiny_factory, encoder_dir, suite_dir, tmp_path):
    out = tmp_path / "r.json"
    args = [tiny_factory(), encoder_dir, "--suite", suite_dir, "--out", out, "--limit", "2"]
    assert invoke(*args).exit_code == 0
    doc = json.loads(out.read_text("utf-8"))
    first, second = doc["runs"]
    # simulate an interruption after the first model
    doc.update(runs=[first], complete=False, pending=[second["name"]])
    out.write_text(json.dumps(doc), "utf-8")
    refused = CliRunner().invoke(main, [str(a) for a in args])
    assert refused.exit_code != 0 and "--resume" in refused.output
    assert invoke(*args, "--resume").exit_code == 0
    resumed = json.loads(out.read_text("utf-8"))
    assert resumed["complete"] is True
    assert resumed["runs"][0] == first  # reused, not recomputed
    assert [t["scores"] for t in resumed["runs"][1]["tasks"]] == [t["scores"] for t in second["tasks"]]
    changed = CliRunner().invoke(main, [str(a) for a in args] + ["--resume", "--batch-size", "7"])
    assert changed.exit_code != 0 and "other settings" in changed.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--kind-of-model", "lusifer"], "lusifer_config.json is missing"),
        (["--encoder-prefix", "query: ", "--kind-of-model", "export"], "applies only to encoder"),
        (["--device", "cuda"], "no CUDA device"),
        (["--name", "a", "--name", "b"], "2 name(s) for 1 model(s)"),
    ],
)
def test_bad_options_exit_non_zero_with_reason(encoder_dir, suite_dir, tmp_path, extra, message):
    import torch

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(main, [str(encoder_dir), "--suite", str(suite_dir), "--out", str(tmp_path / "r.json"),
                                       *extra])
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "r.json").exists()


def test_unknown_model_folder_and_bad_suite_are_reported(tmp_path, suite_dir, encoder_dir):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, [str(tmp_path / "empty"), "--suite", str(suite_dir), "--out", str(tmp_path / "r.json")])
    assert result.exit_code != 0 and "is not a model folder this evaluator knows" in result.output
    result = CliRunner().invoke(main, [str(encoder_dir), "--suite", str(tmp_path), "--out", str(tmp_path / "r.json")])
    assert result.exit_code != 0 and "has no suite.json" in result.output
