"""The LLM alone (``llm-only``) through the whole pipeline: stage-2 config checks, ``lusifer-train stage2``
from a base LLM folder, ``lusifer-train merge``, ``lusifer-export`` with ONNX Runtime parity, ``lusifer-embed``
and ``lusifer-eval`` on the export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_eval_cli import suite_dir  # noqa: F401  (fixture: the tiny synthetic suite)
from test_runtime_support import write_parquet

from conftest import MULTILINGUAL_TEXTS
from lusifer import LusiferConfig, LusiferModel
from lusifer.tiny import build_tiny_decoder
from lusifer.train.config import ConfigError, Stage1Config, Stage2Config
from lusifer.train.stage1 import Stage1Task
from lusifer.train.stage2 import Stage2Task
from lusifer.vectors import row_cosines

PAIRS = [{"query": f"which {t}?", "positive": f"the {t} is here", "negatives": [f"no {t}"], "instruction": "Find it"}
         for t in ["apple", "car", "house", "boat", "shirt", "door", "lamp", "cup"]]
INSTRUCTION = "Find the same sentence"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_llm(tmp_path_factory):
    return build_tiny_decoder(tmp_path_factory.mktemp("llm-only-base") / "llm-llama", "llama", seed=3)


# ---- configs --------------------------------------------------------------------------------------------
def _stage2(**fields):
    return Stage2Config(train_files=["pairs.jsonl"], output_dir="run", **fields)


def test_stage2_takes_model_fields_or_model_path(base_llm):
    config = _stage2(model={"architecture": "llm-only", "llm_path": str(base_llm)}, encoder_lora_targets=[])
    assert config.model["architecture"] == "llm-only"
    with pytest.raises(ConfigError, match="exactly one of model_path"):
        _stage2()
    with pytest.raises(ConfigError, match="exactly one of model_path"):
        _stage2(model_path="m", model={"architecture": "llm-only", "llm_path": "llm"}, encoder_lora_targets=[])
    with pytest.raises(ConfigError, match="model.llm_path is empty"):
        _stage2(model={"architecture": "llm-only"}, encoder_lora_targets=[])
    with pytest.raises(ConfigError, match="model.encoder_path is empty"):
        _stage2(model={"llm_path": "llm"})
    with pytest.raises(ConfigError, match="model: architecture='bert-only'"):
        _stage2(model={"architecture": "bert-only", "llm_path": "llm"}, encoder_lora_targets=[])
    with pytest.raises(ConfigError, match="model: connector_hidden=8 .*no connector"):
        _stage2(model={"architecture": "llm-only", "llm_path": "llm", "connector_hidden": 8}, encoder_lora_targets=[])


def test_llm_only_needs_no_encoder_lora(base_llm, tiny_llm_only_factory):
    with pytest.raises(ConfigError, match=r"encoder_lora_targets=\['query', 'key', 'value', 'dense'\] .*no encoder; "
                                          r"set encoder_lora_targets=\[\]"):
        _stage2(model={"architecture": "llm-only", "llm_path": str(base_llm)})
    # a saved llm-only folder is recognised before its weights load
    config = _stage2(model_path=str(tiny_llm_only_factory()))
    with pytest.raises(ConfigError, match="architecture 'llm-only'.*set encoder_lora_targets"):
        Stage2Task().build_model(config, torch.device("cpu"))


def test_stage1_refuses_the_llm_alone(base_llm, tiny_llm_only_factory):
    with pytest.raises(ConfigError, match="stage 1 aligns the multilingual encoder.*nothing to align"):
        Stage1Config(train_files=["t.jsonl"], output_dir="run", encoder_lora_targets=[],
                     model={"architecture": "llm-only", "llm_path": str(base_llm)})
    config = Stage1Config(train_files=["t.jsonl"], output_dir="run", model_path=str(tiny_llm_only_factory()))
    with pytest.raises(ConfigError, match="stage 1 aligns.*llm-only.*train the LLM alone with stage 2"):
        Stage1Task().build_model(config, torch.device("cpu"))


def test_stage2_trains_llm_lora_and_projection_only(tiny_llm_only_factory):
    config = _stage2(model_path=str(tiny_llm_only_factory()), encoder_lora_targets=[])
    model = Stage2Task().build_model(config, torch.device("cpu"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("projection.") for n in trainable)
    assert any(n.startswith("projection.") for n in trainable) and any(n.startswith("llm.") for n in trainable)


# ---- the whole pipeline ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline(base_llm, tmp_path_factory):
    """``lusifer-train stage2`` (model fields, as the recipe's llmonly row) -> ``merge`` -> ``lusifer-export``."""
    from lusifer.export.cli import main as export_cli
    from lusifer.train.cli import main as train_cli

    tmp = tmp_path_factory.mktemp("llm-only-pipeline")
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    (tmp / "stage2.yaml").write_text(
        "train_files: [pairs.jsonl]\nmodel_path: STAGE1\nbatch_size: 4\nlearning_rate: 2.0e-2\nwarmup_steps: 1\n"
        "max_length: 32\nsave_every: 100\nlog_every: 1\n"
    )
    runner = CliRunner()
    result = runner.invoke(train_cli, [
        "stage2", "--config", str(tmp / "stage2.yaml"), "--set", 'model_path=""',
        "--set", "model.architecture=llm-only", "--set", f"model.llm_path={base_llm}", "--set", "model.max_length=32",
        "--set", "encoder_lora_targets=[]", "--set", "grad_cache_chunk_size=3", "--max-steps", "6",
        "--output-dir", str(tmp / "run"), "--resume",
    ])
    assert result.exit_code == 0, result.output
    result = runner.invoke(train_cli, ["merge", str(tmp / "run"), "--out", str(tmp / "merged")])
    assert result.exit_code == 0, result.output
    assert "merged llm from" in result.output
    result = runner.invoke(export_cli, [str(tmp / "merged"), "--out", str(tmp / "export")])
    assert result.exit_code == 0, result.output
    return {"dir": tmp, "run": tmp / "run", "merged": tmp / "merged", "export": tmp / "export"}


def test_training_and_merge(pipeline, base_llm):
    metrics = [json.loads(line) for line in (pipeline["run"] / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 6 and all(np.isfinite(m["loss"]) for m in metrics)
    saved = json.loads((pipeline["run"] / "checkpoints" / "step-00000006" / "config.json").read_text())
    assert saved["model"]["architecture"] == "llm-only" and saved["encoder_lora_targets"] == []
    merged_dir = pipeline["merged"]
    assert sorted(p.name for p in merged_dir.iterdir()) == ["llm", "lusifer.safetensors", "lusifer_config.json"]
    merged = LusiferModel.from_pretrained(merged_dir)
    assert merged.config.architecture == "llm-only" and merged.config.max_length == 32 and merged.encoder is None
    start = LusiferModel.from_config(LusiferConfig(architecture="llm-only", llm_path=str(base_llm), max_length=32))
    m = merged.encode(MULTILINGUAL_TEXTS, kind="query", instruction=INSTRUCTION, normalize=False)
    s = start.encode(MULTILINGUAL_TEXTS, kind="query", instruction=INSTRUCTION, normalize=False)
    assert row_cosines(m, s).min() < 0.999  # the LoRA trained and was merged into the LLM


def test_export_is_self_contained_with_the_llm_tokenizer(pipeline):
    from lusifer.onnx_interface import ExportManifest

    export, merged = pipeline["export"], pipeline["merged"]
    manifest = ExportManifest.load(export)
    assert manifest.source["architecture"] == "llm-only" and manifest.source["encoder_model_type"] is None
    assert manifest.source["llm_model_type"] == "llama"
    # the LLM's tokenizer.json (written compactly: the same JSON data)
    assert json.loads((export / "tokenizer.json").read_text("utf-8")) == json.loads(
        (merged / "llm" / "tokenizer.json").read_text("utf-8"))
    model = LusiferModel.from_pretrained(merged)
    assert manifest.pad_token_id == model.tokenizer.pad_token_id and manifest.max_length == 32
    parity = manifest.variants["fp32"].parity
    assert parity["min_cosine"] > 0.9999 and parity["bidirectional_verified"]
    assert parity["padding_sides"] == ["left", "right"]
    # the graph takes LLM token ids: it holds the token table once and no LM head
    import onnx

    graph = onnx.load(str(export / "model.onnx"))
    tables = [i.name for i in graph.graph.initializer if "embed_tokens" in i.name or "lm_head" in i.name]
    assert len(tables) == 1 and "embed_tokens" in tables[0]


def test_runtime_embeds_like_the_model(pipeline, tmp_path):
    from lusifer.runtime import Embedder
    from lusifer.runtime.cli import main as embed_cli

    model = LusiferModel.from_pretrained(pipeline["merged"])
    embedder = Embedder(pipeline["export"], device="cpu")
    for kind in ("query", "document"):
        ours = embedder.embed(MULTILINGUAL_TEXTS, kind=kind, instruction=INSTRUCTION)
        theirs = model.encode(MULTILINGUAL_TEXTS, kind=kind, instruction=INSTRUCTION)
        assert row_cosines(ours, theirs).min() > 0.9999
    corpus = write_parquet(tmp_path / "corpus.parquet", MULTILINGUAL_TEXTS * 3)
    out = tmp_path / "vectors.npy"
    result = CliRunner().invoke(embed_cli, [str(corpus), "--out", str(out), "--model", str(pipeline["export"]),
                                            "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    vectors = np.load(out)
    assert vectors.shape == (len(MULTILINGUAL_TEXTS) * 3, model.config.embedding_dim)
    assert row_cosines(vectors, np.tile(model.encode(MULTILINGUAL_TEXTS, kind="document"), (3, 1))).min() > 0.9999


def test_evaluation_of_export_and_model(pipeline, suite_dir, tmp_path):  # noqa: F811
    from lusifer.evaluation.cli import main as eval_cli

    out = tmp_path / "r.json"
    result = CliRunner().invoke(eval_cli, [str(pipeline["export"]), str(pipeline["merged"]), "--suite", str(suite_dir),
                                           "--out", str(out), "--name", "onnx", "--name", "LLM alone"])
    assert result.exit_code == 0, result.output
    onnx_run, torch_run = json.loads(out.read_text("utf-8"))["runs"]
    assert torch_run["model"]["kind"] == "lusifer" and onnx_run["model"]["kind"] == "export"
    details = torch_run["model"]["details"]
    assert details["architecture"] == "llm-only" and details["encoder_type"] is None and details["llm_type"] == "llama"
    assert onnx_run["model"]["details"]["source"]["architecture"] == "llm-only"
    for a, b in zip(onnx_run["tasks"], torch_run["tasks"]):
        for metric, value in b["scores"].items():
            assert a["scores"][metric] == pytest.approx(value, abs=1e-4), (a["name"], metric)
