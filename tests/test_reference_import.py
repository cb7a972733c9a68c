"""Importing the released LUSIFER: a tiny checkpoint in the reference's exact key layout (peft-wrapped XLM-R and
Mistral under the reference's attribute names), checked against an independent forward written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from lusifer.tiny import build_tiny_decoder, build_tiny_encoder  # noqa: E402

LORA_R, LORA_ALPHA = 4, 12  # scale 3 (not the release's 2): a wrong scale cannot pass
INSTRUCTION = "Given a question, retrieve passages that answer it"
TEXTS = [
    "The cat sleeps on the warm windowsill.",
    "Кошка спит на тёплом подоконнике.",
    "猫は暖かい窓辺で眠っている。",
    "El gato duerme.",
    # longer than 512 tokens: the reference drops its closing </s>
    " ".join(["Die Katze schläft auf der warmen Fensterbank, und der Hund bellt im Garten."] * 40),
]


class _Connection(nn.Module):
    def __init__(self, e: int, h: int):
        super().__init__()
        self.ff = nn.Sequential(nn.Linear(e, e), nn.ReLU(), nn.Linear(e, h))


class _ReferenceLusifer(nn.Module):
    """The reference module tree: attribute names are the state-dict prefixes of the release."""

    def __init__(self, enc_dir: Path, llm_dir: Path):
        super().__init__()
        enc_cfg = transformers.AutoConfig.from_pretrained(enc_dir)
        llm_cfg = transformers.AutoConfig.from_pretrained(llm_dir)
        torch.manual_seed(11)
        learner = transformers.AutoModel.from_config(enc_cfg)  # with its pooler, as AutoModel loads it there
        linear = sorted({n.split(".")[-1] for n, m in learner.named_modules() if isinstance(m, nn.Linear)})
        self.universal_learner = peft.get_peft_model(
            learner,
            peft.LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=linear, bias="none",
                            task_type=peft.TaskType.FEATURE_EXTRACTION),
            adapter_name="universal_learner_lora",
        )
        llm = transformers.AutoModelForCausalLM.from_config(llm_cfg)
        self.encoder = peft.get_peft_model(
            llm,
            peft.LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, bias="none", task_type=peft.TaskType.FEATURE_EXTRACTION,
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
            adapter_name="encoder_lora",
        )
        e, h = enc_cfg.hidden_size, llm_cfg.hidden_size
        self.connection_module = _Connection(e, h)
        self.output_projection = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
        with torch.no_grad():  # peft starts lora_B at zero: make every adapter count
            for name, p in self.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.2)


def _reference_config(**changes) -> dict:
    config = {
        "universal_learner_name_or_path": "test/tiny-xlmr",
        "encoder_name_or_path": "test/tiny-mistral",
        "universal_learner_backbone_type": "xlm-r",
        "encoder_backbone_type": "mistral",
        "is_freeze_universal_learner": False,
        "is_freeze_encoder": False,
        "connection_type": "ff",
        "num_added_tokens": 0,
        "pooling_method": "mean",
        "encoder_lora_name": "encoder_lora",
        "universal_learner_lora_name": "universal_learner_lora",
        "encoder_lora_target_modules": "all",
        "universal_learner_lora_target_modules": "all",
        "loar_r": LORA_R,
        "lora_alpha": LORA_ALPHA,
        "dropout": 0.1,
        "attn_implementation": "sdpa",
        "model_dtype": "torch.float32",
    }
    config.update(changes)
    return config


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny release folder (config.json + model.safetensors) and its bases and reference module."""
    root = tmp_path_factory.mktemp("reference")
    enc_dir = build_tiny_encoder(root / "enc", "xlm-roberta", hidden_size=32, seed=3)
    llm_dir = build_tiny_decoder(root / "llm", "mistral", hidden_size=32, seed=4)
    ref = _ReferenceLusifer(enc_dir, llm_dir)
    src = root / "release"
    src.mkdir()
    state = {k: v.detach().contiguous() for k, v in ref.state_dict().items()}
    save_file(state, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(_reference_config(), indent=2))
    return {"root": root, "src": src, "enc": enc_dir, "llm": llm_dir, "ref": ref, "state": state}


# ---- the independent forward ------------------------------------------------------------------------
def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def _mistral_bidirectional(w: dict, cfg, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A Mistral decoder written out: RMSNorm, rotary, grouped-query attention over every unmasked key (no causal
    mask), SiLU MLP. ``x`` (B, T, H) right-padded inputs_embeds; positions 0..T-1 as the reference uses them."""
    b, t, h = x.shape
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or h // nh
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    freqs = torch.arange(t, dtype=torch.float64)[:, None] * inv[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    bias = torch.where(mask[:, None, None, :].bool(), 0.0, float("-inf")).to(torch.float64)
    eps = cfg.rms_norm_eps
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        y = _rms(x, w[p + "input_layernorm.weight"], eps)
        q = (y @ w[p + "self_attn.q_proj.weight"].T).view(b, t, nh, hd).transpose(1, 2)
        k = (y @ w[p + "self_attn.k_proj.weight"].T).view(b, t, nkv, hd).transpose(1, 2)
        v = (y @ w[p + "self_attn.v_proj.weight"].T).view(b, t, nkv, hd).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, t, nh * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        y = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = y @ w[p + "mlp.gate_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * (y @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    return _rms(x, w["model.norm.weight"], eps)


def _expected(release, texts: list[str], kind: str, instruction: str, projection: bool = True) -> np.ndarray:
    """The reference's encode, written independently: its text format, peft's own LoRA merge, the ReLU
    connector, the bidirectional Mistral above, the mean over the mask, the projection."""
    import copy

    ref = copy.deepcopy(release["ref"]).double().eval()
    learner = ref.universal_learner.merge_and_unload()
    llm = ref.encoder.merge_and_unload()
    w = {k: v for k, v in llm.state_dict().items()}
    tok = transformers.AutoTokenizer.from_pretrained(release["enc"])
    fmt = "<s>{i}.\n{t}</s>" if kind == "query" else "<s>{i}. Candidate:\n{t}</s>"
    out = []
    with torch.no_grad():
        for text in texts:  # one text at a time: no padding at all
            ids = tok(fmt.format(i=instruction, t=text), add_special_tokens=False, truncation=True,
                      max_length=512, return_tensors="pt")
            mask = ids["attention_mask"]
            states = learner(input_ids=ids["input_ids"], attention_mask=mask).last_hidden_state
            x = ref.connection_module.ff(states)
            y = _mistral_bidirectional(w, llm.config, x, mask)
            pooled = (y * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            out.append((ref.output_projection(pooled) if projection else pooled)[0].numpy())
    return np.stack(out).astype(np.float32)


# ---- tests ------------------------------------------------------------------------------------------
def test_import_reference_matches_independent_forward_and_its_export(release, tmp_path):
    """The imported model (PyTorch) and its fp32 ONNX export give the reference's vectors, truncation included."""
    from click.testing import CliRunner

    from lusifer.export.api import export_model
    from lusifer.modeling import LusiferModel
    from lusifer.onnx_interface import ExportManifest
    from lusifer.runtime.embedder import Embedder
    from lusifer.train.cli import main

    out = tmp_path / "imported"
    result = CliRunner().invoke(main, ["import-reference", str(release["src"]), "--out", str(out),
                                       "--encoder-dir", str(release["enc"]), "--llm-dir", str(release["llm"])])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "lusifer_config.json").read_text())
    assert (saved["connector_activation"], saved["prompt_style"], saved["truncation"]) == (
        "relu", "reference", "cut-specials")
    assert saved["projection_dim"] == 32 and saved["normalize"] is False

    model = LusiferModel.from_pretrained(out)
    long_ids = model.tokenize([TEXTS[-1]], "query", INSTRUCTION)["input_ids"][0]
    assert len(long_ids) == 512 and int(long_ids[-1]) != model.tokenizer.eos_token_id  # </s> cut, as the reference
    for kind, instruction in (("query", INSTRUCTION), ("document", "")):
        want = _expected(release, TEXTS, kind, instruction)
        got = model.encode(TEXTS, kind=kind, instruction=instruction, batch_size=3)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    export = tmp_path / "export"
    export_model(out, export, dtype="fp32")
    manifest = ExportManifest.load(export)
    assert (manifest.prompt_style, manifest.truncation, manifest.normalize) == ("reference", "cut-specials", False)
    assert manifest.source["connector_activation"] == "relu" and manifest.source["projection"] is True
    embedder = Embedder(export, device="cpu", variant="fp32")
    for kind, instruction in (("query", INSTRUCTION), ("document", "")):
        want = _expected(release, TEXTS, kind, instruction)
        got = embedder.embed(TEXTS, kind=kind, instruction=instruction)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() >= 0.9999, (kind, cos)


def test_import_reference_without_projection(release, tmp_path):
    """--no-projection embeds with the pooled LLM state (the reference's encode before March 2025)."""
    from lusifer.modeling import LusiferModel
    from lusifer.train.reference_import import import_reference

    out = import_reference(release["src"], tmp_path / "m", encoder_dir=release["enc"], llm_dir=release["llm"],
                           projection=False, show_progress=False)
    model = LusiferModel.from_pretrained(out)
    assert model.projection is None
    got = model.encode(TEXTS[:3], kind="query", instruction="")
    np.testing.assert_allclose(got, _expected(release, TEXTS[:3], "query", "", projection=False), atol=1e-4, rtol=0)


def _release_variant(release, tmp_path: Path, name: str, edit) -> Path:
    src = tmp_path / name
    src.mkdir()
    state = dict(release["state"])
    edit(state)
    save_file(state, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(_reference_config()))
    return src


def test_import_reference_errors_name_the_problem(release, tmp_path):
    """An unused key, a missing key, a shape mismatch and a pickled .ckpt each fail with a clear message,
    and nothing is written."""
    from click.testing import CliRunner

    from lusifer.train.cli import main
    from lusifer.train.reference_import import ReferenceImportError, import_reference

    bases = {"encoder_dir": release["enc"], "llm_dir": release["llm"], "show_progress": False}
    q_key = "encoder.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert q_key in release["state"]

    unused = _release_variant(release, tmp_path, "unused", lambda s: s.update({"encoder.extra_head.weight": torch.ones(2)}))
    with pytest.raises(ReferenceImportError, match=r"unused checkpoint key 'encoder\.extra_head\.weight'"):
        import_reference(unused, tmp_path / "o1", **bases)

    missing = _release_variant(release, tmp_path, "missing", lambda s: s.pop(q_key))
    with pytest.raises(ReferenceImportError, match=r"missing LLM weight 'model\.layers\.0\.self_attn\.q_proj\.weight'"):
        import_reference(missing, tmp_path / "o2", **bases)

    key = "connection_module.ff.2.weight"
    bad_shape = _release_variant(release, tmp_path, "shape", lambda s: s.update({key: torch.zeros(7, 32)}))
    with pytest.raises(ReferenceImportError, match=r"shape mismatch for 'connection_module\.ff\.2\.weight': "
                                                   r"checkpoint \[7, 32\], expected \[32, 32\]"):
        import_reference(bad_shape, tmp_path / "o3", **bases)

    lora = "encoder.base_model.model.model.layers.1.mlp.up_proj.lora_A.encoder_lora.weight"
    bad_lora = _release_variant(release, tmp_path, "lora", lambda s: s.update({lora: torch.zeros(5, 32)}))
    with pytest.raises(ReferenceImportError, match=r"LoRA shapes of 'model\.layers\.1\.mlp\.up_proj'"):
        import_reference(bad_lora, tmp_path / "o4", **bases)

    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "last.ckpt").write_bytes(b"not unpickled")
    (ckpt_dir / "config.json").write_text(json.dumps(_reference_config()))
    result = CliRunner().invoke(main, ["import-reference", str(ckpt_dir / "last.ckpt"), "--out", str(tmp_path / "o5")])
    assert result.exit_code != 0
    assert "pickled checkpoint" in result.output and "unpickling runs arbitrary code" in result.output
    with pytest.raises(ReferenceImportError, match="pickled checkpoint"):
        import_reference(ckpt_dir, tmp_path / "o6", **bases)

    with pytest.raises(ReferenceImportError, match="is a file; give the release folder"):
        import_reference(release["src"] / "model.safetensors", tmp_path / "o8", **bases)

    unknown = tmp_path / "unknown-base"
    unknown.mkdir()
    (unknown / "model.safetensors").write_bytes((release["src"] / "model.safetensors").read_bytes())
    (unknown / "config.json").write_text(json.dumps(_reference_config()))
    with pytest.raises(ReferenceImportError, match=r"'test/tiny-xlmr'.*pass --encoder-dir"):
        import_reference(unknown, tmp_path / "o7", show_progress=False)

    assert not any(p.name.startswith(("o", ".o")) for p in tmp_path.iterdir())


def test_known_bases_build_the_release_shapes():
    """The shipped configs of the two bases the release names give XLM-R-large and Mistral-7B-v0.3 shapes."""
    from lusifer.train.reference_import import expected_shapes, known_base

    enc = expected_shapes(known_base("Hieuman/xlm-aligned-for-mistral-v0.3", "encoder"), "encoder")
    llm = expected_shapes(known_base("mistralai/Mistral-7B-Instruct-v0.3", "llm"), "llm")
    assert enc["embeddings.word_embeddings.weight"] == (250002, 1024)
    assert enc["encoder.layer.23.intermediate.dense.weight"] == (4096, 1024)
    assert llm["model.layers.31.self_attn.k_proj.weight"] == (1024, 4096)
    assert llm["model.layers.31.mlp.down_proj.weight"] == (4096, 14336)
    assert llm["lm_head.weight"] == (32768, 4096)
    assert sum(math.prod(s) for s in llm.values()) == 7_248_023_552
