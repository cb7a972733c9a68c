"""Save/load round trip, the encode API, and clear errors on bad folders and inputs."""

import json
import shutil

import numpy as np
import pytest

from conftest import MULTILINGUAL_TEXTS
from lusifer import LusiferModel
from lusifer.backbones import ModelFolderError


def test_save_load_round_trip(tiny_model_dir, tmp_path):
    model = LusiferModel.from_pretrained(tiny_model_dir)
    before = model.encode(MULTILINGUAL_TEXTS, kind="document", instruction="Retrieve passages")
    saved = model.save_pretrained(tmp_path / "copy")
    after = LusiferModel.from_pretrained(saved).encode(MULTILINGUAL_TEXTS, kind="document", instruction="Retrieve passages")
    np.testing.assert_array_equal(before, after)
    meta = json.loads((saved / "lusifer_config.json").read_text())
    assert {"lusifer", "torch", "transformers"} <= set(meta["_versions"])
    assert (saved / "encoder" / "tokenizer.json").is_file()
    assert not list(saved.rglob("*.bin"))


def test_encode_contract(tiny_model_dir):
    model = LusiferModel.from_pretrained(tiny_model_dir)
    emb = model.encode(MULTILINGUAL_TEXTS)
    assert emb.dtype == np.float32 and emb.shape == (len(MULTILINGUAL_TEXTS), model.config.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    raw = model.encode(MULTILINGUAL_TEXTS, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    q = model.encode(["hello"], kind="query", instruction="Find it")
    d = model.encode(["hello"], kind="document", instruction="Find it")
    assert not np.allclose(q, d)
    assert model.encode([]).shape == (0, model.config.embedding_dim)


def test_prompt_format(tiny_model_dir):
    model = LusiferModel.from_pretrained(tiny_model_dir)
    assert model.format(["x"], "query", "Retrieve passages") == ["Retrieve passages.\nx"]
    assert model.format(["x"], "document", "Retrieve passages.") == ["Retrieve passages. Candidate:\nx"]
    assert model.format(["x"], "query", None) == ["x"]


@pytest.mark.parametrize("bad", [dict(kind="passage"), dict(batch_size=0), dict(texts=["ok", None])])
def test_encode_bad_input(tiny_model_dir, bad):
    model = LusiferModel.from_pretrained(tiny_model_dir)
    kwargs = {"texts": ["ok"], **bad}
    with pytest.raises(ValueError, match="|".join(k for k in bad if k != "texts") or "texts"):
        model.encode(**kwargs)


def test_missing_and_incomplete_folders(tiny_model_dir, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        LusiferModel.from_pretrained(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "lusifer.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="lusifer.safetensors"):
        LusiferModel.from_pretrained(broken)


def test_pickled_weights_are_refused(tiny_model_dir, tmp_path):
    broken = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, broken)
    for f in (broken / "llm").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelFolderError, match="pickled"):
        LusiferModel.from_pretrained(broken)


def test_unsupported_decoder_is_named(tiny_model_dir, tmp_path):
    broken = tmp_path / "gpt"
    shutil.copytree(tiny_model_dir, broken)
    cfg_file = broken / "llm" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["model_type"] = "gpt2"
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="gpt2"):
        LusiferModel.from_pretrained(broken)
