import json

import pytest

from lusifer import LusiferConfig


def test_json_round_trip(tmp_path):
    cfg = LusiferConfig(encoder_path="enc", llm_path="llm", num_learnable_tokens=4, projection_dim=8, max_length=128)
    path = tmp_path / "c.json"
    cfg.to_json(path)
    assert LusiferConfig.from_json(path) == cfg
    assert LusiferConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_length", 0),
        ("max_length", "512"),
        ("num_learnable_tokens", -1),
        ("connector_hidden", 0),
        ("projection_dim", 2.5),
        ("pooling", "cls"),
        ("attn_implementation", "flash"),
        ("query_template", "{text}"),
        ("document_template", "{instruction} {text} {other}"),
        ("normalize", "yes"),
        ("encoder_path", None),
        ("connector_activation", "swish"),
        ("prompt_style", "e5"),
        ("truncation", "left"),
    ],
)
def test_bad_value_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        LusiferConfig(**{field: value})


def test_unknown_field_is_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"max_length": 64, "poolling": "mean"}))
    with pytest.raises(ValueError, match="poolling"):
        LusiferConfig.from_json(path)


def test_invalid_json_is_reported(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        LusiferConfig.from_json(path)
