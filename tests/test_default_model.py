"""The default model (lusifer-small): build from base folders + committed-style LoRA weights, cache, errors.

The fast tests build a tiny stand-in with the real key layout (peft-wrapped ``LusiferModel`` parameter names,
fp16 safetensors) and run the real builder on it; the slow test builds the real lusifer-small.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_runtime_support import BLOCK_TORCH
from lusifer.runtime.default_model import DEFAULT_MODEL_VERSION
from lusifer.vectors import row_cosines

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["The cat sleeps on the warm windowsill.", "El gato duerme en la ventana.", "Кошка спит.", "猫在睡觉。"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _randomize_and_round(params, std: float = 0.05) -> None:
    """Give LoRA/connector tensors random values that survive the fp16 round trip unchanged."""
    import torch

    with torch.no_grad():
        for p in params:
            p.copy_((torch.randn_like(p) * std).half().float())


def _save(model, names, path: Path) -> None:
    from safetensors.torch import save_file

    params = dict(model.named_parameters())
    save_file({n: params[n].detach().half().contiguous() for n in sorted(names)}, str(path))


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    """Tiny base folders + weights folder laid out like models/lusifer-small, and the unmerged reference."""
    import torch

    from lusifer.backbones import set_attention_causal
    from lusifer.config import LusiferConfig
    from lusifer.modeling import LusiferModel
    from lusifer.tiny import build_tiny_decoder, build_tiny_encoder
    from lusifer.train.config import ENCODER_LORA_TARGETS, LLM_LORA_TARGETS
    from lusifer.train.lora import apply_lora, merge_lora
    from lusifer.train.lusifer_small import STAGE1_FILE, STAGE2_FILE
    from lusifer.train.prepare_base import ENCODER_NAME, LLM_NAME

    root = tmp_path_factory.mktemp("tiny-release")
    enc = build_tiny_encoder(root / "base" / ENCODER_NAME, "bert", seed=0)
    llm = build_tiny_decoder(root / "base" / LLM_NAME, "llama", seed=1)
    weights = root / "weights"
    (weights / "recipe").mkdir(parents=True)
    (weights / "recipe" / "stage1.yaml").write_text(
        "model:\n  encoder_path: ENCODER\n  llm_path: LLM\n  connector_hidden: 48\n"
        "  num_learnable_tokens: 2\n  max_length: 64\ntrain_files: [x.jsonl]\n", encoding="utf-8")
    config = LusiferConfig(encoder_path=str(enc), llm_path=str(llm), connector_hidden=48, num_learnable_tokens=2,
                           max_length=64)
    torch.manual_seed(123)
    model = LusiferModel.from_config(config, dtype=torch.float32)
    model.requires_grad_(False)
    model.encoder = apply_lora(model.encoder, list(ENCODER_LORA_TARGETS), 16, 32, 0.0)
    lora1 = [n for n, _ in model.named_parameters() if ".lora_" in n]
    _randomize_and_round([p for n, p in model.named_parameters() if ".lora_" in n])
    _save(model, lora1, weights / STAGE1_FILE)
    merge_lora(model)
    model.encoder = apply_lora(model.encoder, list(ENCODER_LORA_TARGETS), 16, 32, 0.0)
    model.llm = apply_lora(model.llm, list(LLM_LORA_TARGETS), 16, 32, 0.0)
    names2 = [n for n, _ in model.named_parameters() if ".lora_" in n or n.startswith("connector.")]
    params = dict(model.named_parameters())
    _randomize_and_round([params[n] for n in names2])
    _save(model, names2, weights / STAGE2_FILE)
    set_attention_causal(model.llm, False)
    model.eval()
    reference = model.encode(TEXTS, kind="document")  # unmerged stage-2 model
    checksums = {STAGE1_FILE: _sha(weights / STAGE1_FILE), STAGE2_FILE: _sha(weights / STAGE2_FILE)}
    assert "encoder.base_model.model.encoder.layer.0.attention.self.key.lora_A.default.weight" in lora1
    return {"root": root, "base": root / "base", "weights": weights, "checksums": checksums, "reference": reference}


def test_build_merges_lora_and_exports_matching_embeddings(tiny_release, tmp_path):
    """Strict load + merge + export of the committed-weight layout: the export embeds like the unmerged model."""
    from lusifer.runtime.embedder import Embedder
    from lusifer.train.lusifer_small import build_lusifer_small

    out = tmp_path / "models" / "lusifer-small-x" / "export"
    built = build_lusifer_small(out, device="cpu", weights=tiny_release["weights"], base_dir=tiny_release["base"],
                                checksums=tiny_release["checksums"], progress=False)
    assert built == out.resolve() and (out / "manifest.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "int8"}  # the CPU build ships the block INT8 graph the runtime picks
    assert manifest["variants"]["int8"]["quantization"] == "int8-block"
    info = json.loads((out.parent / "export.build.json").read_text())
    assert info["merge"]["stage1"]["merged"] == ["encoder"]
    assert info["merge"]["stage2"]["merged"] == ["encoder", "llm"]
    assert info["merge"]["stage2"]["min_cosine"] > 0.9999
    got = Embedder(out, device="cpu", variant="fp32").embed(TEXTS, kind="document")
    assert row_cosines(got, tiny_release["reference"]).min() > 0.9999
    # no staging folders left; a second call reuses the export without rebuilding
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".export.staging")) == []
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert build_lusifer_small(out, weights=tiny_release["weights"], base_dir=tiny_release["base"],
                               checksums=tiny_release["checksums"], progress=False) == out.resolve()
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def _copy_weights(tiny_release, dest: Path) -> Path:
    import shutil

    shutil.copytree(tiny_release["weights"], dest)
    return dest


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_weight_file_is_named(tiny_release, tmp_path, damage):
    from lusifer.default_model import BuildError
    from lusifer.train.lusifer_small import STAGE2_FILE, build_lusifer_small

    weights = _copy_weights(tiny_release, tmp_path / "weights")
    file = weights / STAGE2_FILE
    if damage == "missing":
        file.unlink()
    else:
        data = bytearray(file.read_bytes())
        data[-10] ^= 0xFF
        file.write_bytes(bytes(data))
    out = tmp_path / "cache" / "export"
    with pytest.raises(BuildError, match=STAGE2_FILE) as info:
        build_lusifer_small(out, weights=weights, base_dir=tiny_release["base"], checksums=tiny_release["checksums"],
                            progress=False)
    assert ("missing" if damage == "missing" else "sha256") in str(info.value)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if "staging" in p.name] == []


def test_weight_file_with_wrong_keys_fails_strictly(tiny_release, tmp_path):
    from safetensors.torch import load_file, save_file

    from lusifer.default_model import BuildError
    from lusifer.train.lusifer_small import STAGE1_FILE, build_lusifer_small

    weights = _copy_weights(tiny_release, tmp_path / "weights")
    state = load_file(str(weights / STAGE1_FILE))
    state.pop(sorted(state)[0])
    save_file(state, str(weights / STAGE1_FILE))
    checksums = dict(tiny_release["checksums"], **{STAGE1_FILE: _sha(weights / STAGE1_FILE)})
    out = tmp_path / "cache" / "export"
    with pytest.raises(BuildError, match=rf"{STAGE1_FILE}.*1 missing key"):
        build_lusifer_small(out, weights=weights, base_dir=tiny_release["base"], checksums=checksums, progress=False)
    assert not out.exists()


def _run_blocked(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=120)


def test_runtime_only_install_gets_install_hint(tmp_path):
    """Without torch (runtime-only install) and no cache, lusifer-embed names the extra and --model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["Кошка спит.", "The cat sleeps."]}), corpus)
    code = (
        "from lusifer.runtime.cli import main\n"
        f"main([{str(corpus)!r}, '--out', {str(tmp_path / 'v.npy')!r}, '--device', 'cpu'])\n"
    )
    result = _run_blocked(code, {"LUSIFER_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 1, result.stderr
    assert "pip install 'lusifer[export]'" in result.stderr
    assert "--model EXPORT_DIR" in result.stderr
    assert "torch" in result.stderr and "Traceback" not in result.stderr


def test_cached_export_is_reused_without_build_extras(tmp_path):
    """A cached export is returned as is (no torch needed); LUSIFER_CACHE_DIR sets the cache root."""
    code = (
        "from lusifer.runtime.default_model import resolve_default_model\n"
        "print(resolve_default_model('cpu'))\n"
    )
    cache = tmp_path / "cache"
    export = cache / "models" / f"lusifer-small-{DEFAULT_MODEL_VERSION}" / "export"
    export.mkdir(parents=True)
    (export / "manifest.json").write_text("{}")
    result = _run_blocked(code, {"LUSIFER_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(export.resolve())


def test_missing_weights_folder_is_reported(tmp_path, monkeypatch):
    from lusifer.runtime.default_model import NoDefaultModelError, resolve_default_model

    monkeypatch.setenv("LUSIFER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LUSIFER_SMALL_WEIGHTS", str(tmp_path / "nowhere"))
    with pytest.raises(NoDefaultModelError, match="LUSIFER_SMALL_WEIGHTS.*--model EXPORT_DIR"):
        resolve_default_model("cpu")


@pytest.mark.slow
def test_real_lusifer_small_builds_and_embeds(tmp_path):
    """Builds the real lusifer-small (base packages from the registry or LUSIFER_CACHE_DIR) and embeds texts."""
    from lusifer.runtime.default_model import cache_root
    from lusifer.runtime.embedder import Embedder
    from lusifer.train.lusifer_small import build_lusifer_small

    out = build_lusifer_small(tmp_path / "export", cache_dir=cache_root(), device="cpu", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variants"]["fp32"]["parity"]["min_cosine"] > 0.9999
    vectors = Embedder(out, device="cpu").embed(["The cat sleeps.", "El gato duerme.", "Der Hund bellt laut."])
    assert vectors.shape == (3, 576)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2]  # translation closer than an unrelated sentence
