"""The ``llm-only`` architecture (the LLM alone reading its own tokens, the English-centric embedder):
config validation, bidirectional attention over real tokens, padding invariance, save/load identity."""

import json
import logging

import numpy as np
import pytest
import torch

from conftest import DECODERS, MULTILINGUAL_TEXTS
from lusifer import LusiferConfig, LusiferModel
from lusifer.backbones import set_attention_causal
from lusifer.pooling import mean_pool
from lusifer.tiny import build_tiny_decoder


# ---- config ---------------------------------------------------------------------------------------------
def test_architecture_round_trips_and_defaults_to_lusifer(tmp_path):
    cfg = LusiferConfig(architecture="llm-only", llm_path="llm", projection_dim=8, max_length=128)
    assert cfg.is_llm_only
    assert LusiferConfig.from_json(cfg.to_json()) == cfg
    # a config written before the field existed loads as the LUSIFER architecture
    old = {k: v for k, v in LusiferConfig(encoder_path="enc", llm_path="llm").to_dict().items() if k != "architecture"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = LusiferConfig.from_json(tmp_path / "old.json")
    assert loaded.architecture == "lusifer" and not loaded.is_llm_only


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"architecture": "encoder-only"}, "architecture='encoder-only'"),
        ({"architecture": None}, "architecture=None"),
        ({"architecture": "llm-only", "encoder_path": "enc"}, "encoder_path='enc'.*no encoder"),
        ({"architecture": "llm-only", "connector_hidden": 64}, "connector_hidden=64.*no connector"),
        ({"architecture": "llm-only", "num_learnable_tokens": 4}, "num_learnable_tokens=4.*no connector"),
        ({"architecture": "llm-only", "encoder_hidden": 32}, "encoder_hidden=32"),
    ],
)
def test_bad_architecture_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        LusiferConfig(llm_path="llm", **fields)


# ---- model ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_reads_the_llm_tokens(tiny_llm_only_factory):
    """No encoder and no connector; forward is the LLM over its own token ids, mean pooled, projected."""
    model = LusiferModel.from_pretrained(tiny_llm_only_factory())
    assert model.encoder is None and model.connector is None and model.config.encoder_hidden is None
    assert len(model.tokenizer) == model.llm.get_input_embeddings().weight.shape[0]
    batch = model.tokenize(MULTILINGUAL_TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        got = model(ids, mask)
        positions = (mask.cumsum(-1) - 1).clamp(min=0) * mask
        states = model.decoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                               use_cache=False).last_hidden_state
        expected = model.projection(mean_pool(states, mask))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _first_state_change(model, causal: bool) -> float:
    set_attention_causal(model.llm, causal)
    batch = model.tokenize(["the cat sleeps on the warm windowsill", "a dog"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    changed = ids.clone()
    last = int(mask[0].sum()) - 1
    changed[0, last] = (ids[0, last] + 7) % len(model.tokenizer)  # a later real token of the first row
    with torch.no_grad():
        before = model.decoder_states(*model.llm_inputs(ids, mask))
        after = model.decoder_states(*model.llm_inputs(changed, mask))
    return (before[0, :2] - after[0, :2]).abs().max().item()


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_later_token_changes_earlier_state(tiny_llm_only_factory, decoder, attn):
    model = LusiferModel.from_pretrained(tiny_llm_only_factory(decoder))
    model.llm.set_attn_implementation(attn)
    assert model.llm.config.is_causal is False
    assert _first_state_change(model, causal=False) > 1e-4
    assert _first_state_change(model, causal=True) < 1e-6  # causal control


def _left_pad(input_ids, attention_mask, pad_id):
    ids = torch.full_like(input_ids, pad_id)
    mask = torch.zeros_like(attention_mask)
    for i in range(input_ids.shape[0]):
        n = int(attention_mask[i].sum())
        ids[i, -n:] = input_ids[i, :n]
        mask[i, -n:] = 1
    return ids, mask


@pytest.mark.parametrize("decoder", DECODERS)
def test_padding_side_and_batch_invariance(tiny_llm_only_factory, decoder):
    model = LusiferModel.from_pretrained(tiny_llm_only_factory(decoder))
    batch = model.tokenize(MULTILINGUAL_TEXTS, kind="document", instruction="Find the same sentence")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert not bool(mask.all())  # the batch is padded
    left_ids, left_mask = _left_pad(ids, mask, model.tokenizer.pad_token_id)
    with torch.no_grad():
        right = model(ids, mask)
        left = model(left_ids, left_mask)
    torch.testing.assert_close(left, right, atol=2e-5, rtol=1e-4)
    together = model.encode(MULTILINGUAL_TEXTS, batch_size=8)
    alone = np.stack([model.encode([t])[0] for t in MULTILINGUAL_TEXTS])
    np.testing.assert_allclose(together, alone, atol=2e-5)


@pytest.mark.parametrize("projection_dim", [16, None])
def test_save_load_identity(tiny_llm_only_factory, tmp_path, projection_dim):
    model = LusiferModel.from_pretrained(tiny_llm_only_factory("llama", projection_dim))
    before = model.encode(MULTILINGUAL_TEXTS, kind="query", instruction="Retrieve passages")
    saved = model.save_pretrained(tmp_path / "copy")
    assert sorted(p.name for p in saved.iterdir()) == ["llm", "lusifer.safetensors", "lusifer_config.json"]
    assert (saved / "llm" / "tokenizer.json").is_file()
    meta = json.loads((saved / "lusifer_config.json").read_text())
    assert meta["architecture"] == "llm-only" and meta["encoder_path"] == "" and meta["llm_path"] == "llm"
    reloaded = LusiferModel.from_pretrained(saved)
    np.testing.assert_array_equal(before, reloaded.encode(MULTILINGUAL_TEXTS, kind="query",
                                                          instruction="Retrieve passages"))
    assert reloaded.config.embedding_dim == (projection_dim or reloaded.config.llm_hidden)
    if projection_dim is None:
        assert len(reloaded.own_modules().state_dict()) == 0


def test_tokenizer_without_pad_pads_with_eos_on_the_right(tmp_path, caplog):
    llm = build_tiny_decoder(tmp_path / "llm", "llama")
    tok_config = json.loads((llm / "tokenizer_config.json").read_text())
    tok_config.pop("pad_token", None)
    tok_config["padding_side"] = "left"
    (llm / "tokenizer_config.json").write_text(json.dumps(tok_config))
    with caplog.at_level(logging.INFO, logger="lusifer.backbones"):
        model = LusiferModel.from_config(LusiferConfig(architecture="llm-only", llm_path=str(llm), max_length=32))
    assert model.tokenizer.pad_token_id == model.tokenizer.eos_token_id
    assert model.tokenizer.padding_side == "right"
    assert "no pad token" in caplog.text and "EOS" in caplog.text
    batch = model.tokenize(["a", "a much longer text"])
    assert batch["attention_mask"][0, -1] == 0  # right padded
    # the saved folder remembers the pad token: no second fallback when it is loaded
    saved = model.save_pretrained(tmp_path / "model")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lusifer.backbones"):
        again = LusiferModel.from_pretrained(saved)
    assert again.tokenizer.pad_token_id == model.tokenizer.pad_token_id and "no pad token" not in caplog.text


def test_tokenizer_larger_than_the_embedding_table_is_refused(tmp_path):
    """transformers gives a Qwen2 tokenizer without pad token a new <|endoftext|> pad token (one id past the
    tiny vocabulary): the model must refuse it instead of failing inside the embedding lookup."""
    from lusifer.backbones import ModelFolderError

    llm = build_tiny_decoder(tmp_path / "llm", "qwen2")
    tok_config = json.loads((llm / "tokenizer_config.json").read_text())
    tok_config.pop("pad_token", None)
    (llm / "tokenizer_config.json").write_text(json.dumps(tok_config))
    with pytest.raises(ModelFolderError, match="601 tokens but the LLM's embedding table has 600 rows"):
        LusiferModel.from_config(LusiferConfig(architecture="llm-only", llm_path=str(llm)))


def test_lusifer_folder_needs_its_encoder(tiny_model_dir, tmp_path):
    import shutil

    from lusifer.backbones import ModelFolderError

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    shutil.rmtree(copy / "encoder")
    with pytest.raises(ModelFolderError, match="encoder is missing"):
        LusiferModel.from_pretrained(copy)
