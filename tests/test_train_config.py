"""Training configs: validation errors name the field, JSON/YAML round trip, overrides and path resolution."""

import json

import pytest

from lusifer.train.config import ConfigError, Stage1Config, Stage2Config, load_config, parse_override

STAGE2_MIN = {"output_dir": "/tmp/run", "train_files": ["/tmp/pairs.jsonl"], "model_path": "/tmp/model"}
STAGE1_MIN = {"output_dir": "/tmp/run", "train_files": ["/tmp/text.jsonl"], "model_path": "/tmp/model"}


def test_defaults_follow_the_paper_and_issue():
    c1, c2 = Stage1Config(**STAGE1_MIN), Stage2Config(**STAGE2_MIN)
    assert (c1.lora_r, c1.lora_alpha, c1.mask_ratio) == (16, 32, 0.5)
    assert c2.temperature == 0.05
    assert c2.llm_lora_targets == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert c2.encoder_lora_targets == ["query", "key", "value", "dense"]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_file_round_trip(tmp_path, fmt):
    config = Stage2Config(**STAGE2_MIN, batch_size=4, learning_rate=3e-5, grad_cache_chunk_size=2)
    path = tmp_path / f"c.{fmt}"
    path.write_text(config.to_json() if fmt == "json" else config.to_yaml())
    assert load_config("stage2", path) == config


@pytest.mark.parametrize(
    "change, field",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"temperature": 0}, "temperature"),
        ({"precision": "fp8"}, "precision"),
        ({"train_files": []}, "train_files"),
        ({"train_files": ["data.csv"]}, r"train_files\[0\]"),
        ({"warmup_steps": 5000}, "warmup_steps"),
        ({"grad_cache_chunk_size": -1}, "grad_cache_chunk_size"),
        ({"disable_dropout": "yes"}, "disable_dropout"),
        ({"model_path": ""}, "model_path"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
    ],
)
def test_validation_names_the_field(change, field):
    with pytest.raises(ConfigError, match=field):
        Stage2Config.from_dict({**STAGE2_MIN, **change})


def test_unknown_field_and_wrong_stage_are_named():
    with pytest.raises(ConfigError, match="batchsize"):
        Stage2Config.from_dict({**STAGE2_MIN, "batchsize": 3})
    with pytest.raises(ConfigError, match="stage1"):
        Stage2Config.from_dict({**STAGE2_MIN, "stage": "stage1"})


def test_stage1_needs_exactly_one_starting_model():
    with pytest.raises(ConfigError, match="exactly one of model_path"):
        Stage1Config(output_dir="o", train_files=["t.jsonl"])
    with pytest.raises(ConfigError, match="exactly one of model_path"):
        Stage1Config(**STAGE1_MIN, model={"encoder_path": "e", "llm_path": "l"})
    with pytest.raises(ConfigError, match="model: .*num_learnable_tokens"):
        Stage1Config(output_dir="o", train_files=["t.jsonl"],
                     model={"encoder_path": "e", "llm_path": "l", "num_learnable_tokens": -1})
    ok = Stage1Config(output_dir="o", train_files=["t.jsonl"], model={"encoder_path": "e", "llm_path": "l"})
    assert ok.model["llm_path"] == "l"


def test_overrides_and_path_resolution(tmp_path, monkeypatch):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "s1.yaml").write_text(
        "train_files: [data/a.jsonl]\noutput_dir: runs/x\nlearning_rate: 1e-4\n"
        "model: {encoder_path: base/enc, llm_path: base/llm}\n"
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(
        "stage1",
        conf_dir / "s1.yaml",
        ["max_steps=7", "model.num_learnable_tokens=4", "encoder_lora_targets=[query, value]", "model.llm_path=other"],
        {"output_dir": "out", "resume_from": "latest"},
    )
    # paths in the file are relative to the file, overrides relative to the current folder
    assert config.train_files == [str(conf_dir / "data" / "a.jsonl")]
    assert config.model["encoder_path"] == str(conf_dir / "base" / "enc")
    assert config.model["llm_path"] == str(tmp_path / "other")
    assert config.output_dir == str(tmp_path / "out")
    assert config.learning_rate == 1e-4  # YAML reads 1e-4 as text; a float field accepts it
    assert (config.max_steps, config.model["num_learnable_tokens"]) == (7, 4)
    assert config.encoder_lora_targets == ["query", "value"]
    assert config.resume_from == "latest"


def test_bad_files_and_overrides(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config("stage2", bad)
    toml = tmp_path / "c.toml"
    toml.write_text("")
    with pytest.raises(ConfigError, match="must end with .json"):
        load_config("stage2", toml)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("max_steps")
    good = tmp_path / "ok.json"
    good.write_text(json.dumps(STAGE2_MIN))
    with pytest.raises(ConfigError, match="max_steps"):
        load_config("stage2", good, ["max_steps=many"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"distill_weight": -0.5}, r"distill_weight=-0.5 must be >= 0"),
        ({"distill_weight": 1, "distill_files": ["texts.txt"], "distill_batch_size": 4}, r"distill_files\[0\]='texts.txt'"),
        ({"distill_files": ["texts.jsonl"], "distill_batch_size": 4}, r"distill_weight=0 \(distillation off\)"),
        ({"distill_weight": 1, "distill_files": ["texts.jsonl"]}, "distill_batch_size=0"),
        ({"distill_weight": 1, "distill_batch_size": 4}, "distill_batch_size=4 but distill_files is empty"),
        ({"distill_batch_size": -1}, "distill_batch_size=-1"),
        ({"distill_weight": 1, "distill_teacher_pooling": "max"}, "distill_teacher_pooling='max'"),
        ({"distill_weight": 1, "distill_loss": "cosine"}, "distill_loss='cosine'"),
        ({"distill_weight": 1, "distill_temperature": 0}, "distill_temperature=0.0 must be > 0"),
        ({"distill_weight": 1, "model_path": "", "encoder_lora_targets": [],
          "model": {"architecture": "llm-only", "llm_path": "/tmp/llm"}}, "no encoder to distil from"),
        ({"distill_teacher_path": "/tmp/me5"}, r"distill_teacher_path='/tmp/me5' but distill_weight=0"),
    ],
)
def test_distillation_settings_are_checked(change, message):
    with pytest.raises(ConfigError, match=message):
        Stage2Config.from_dict({**STAGE2_MIN, **change})


def test_distillation_defaults_off_and_files_resolve(tmp_path):
    config = Stage2Config(**STAGE2_MIN)
    assert (config.distill, config.distill_weight, config.distill_files) == (False, 0.0, [])
    (tmp_path / "c.yaml").write_text("output_dir: run\ntrain_files: [p.jsonl]\nmodel_path: m\ndistill_weight: 1\n"
                                     "distill_files: [texts.jsonl]\ndistill_batch_size: 8\n")
    loaded = load_config("stage2", tmp_path / "c.yaml")
    assert loaded.distill and loaded.distill_files == [str(tmp_path / "texts.jsonl")]
    # a missing file is named when a run starts (a finished run's config still loads without its files)
    with pytest.raises(ConfigError, match=r"distill_files\[0\]=.*texts.jsonl.* does not exist"):
        loaded.check_distill_files()
