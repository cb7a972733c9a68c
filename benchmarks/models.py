"""Random-weight LUSIFER models of a given shape, for speed measurements (weights do not change the speed).

Shapes:

- ``small``: lusifer-small, multilingual-e5-small (BERT, 12 x 384) -> connector 1536 + 16 learnable tokens
  -> SmolLM2-135M (Llama, 30 x 576, 9 heads / 3 KV heads), max 128 tokens, no projection;
- ``paper``: the paper's scale, XLM-R-large (24 x 1024, vocab 250002) -> connector 1024 -> Mistral-7B (v0.3:
  32 x 4096, 14336 intermediate, 32 heads / 8 KV heads, vocab 32768) -> Linear-ReLU-Linear 4096 projection,
  max 512 tokens, no learnable tokens (the released ``xlmr-mistral_cl-phase2.yaml``);
- ``tiny``: the test-suite size (:mod:`lusifer.tiny`), for checking the scripts on CPU.

``decoder_layers`` cuts the decoder (the paper shape's 7B export needs ~30 GB of fp32 ONNX plus its fp16
copy; a lent machine's disk or time may not hold it). The tokenizer comes from a real folder (e.g. the
multilingual-e5-small folder built by ``lusifer-train prepare-base``: the XLM-R sentencepiece vocabulary), so
token counts are those of real text; the tiny shape uses the tiny BPE tokenizer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

SHAPES: dict[str, dict] = {
    "tiny": {
        "encoder": {"type": "xlm-roberta", "layers": 2, "hidden": 32, "heads": 4, "intermediate": 64,
                    "vocab": None, "max_positions": 516, "type_vocab": 1},
        "decoder": {"type": "llama", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "head_dim": 8,
                    "intermediate": 64, "vocab": 600},
        "lusifer": {"connector_hidden": 48, "num_learnable_tokens": 2, "max_length": 64, "projection_dim": 16,
                    "projection_hidden": 24},
    },
    "small": {
        "encoder": {"type": "bert", "layers": 12, "hidden": 384, "heads": 12, "intermediate": 1536,
                    "vocab": 250037, "max_positions": 512, "type_vocab": 2},
        "decoder": {"type": "llama", "layers": 30, "hidden": 576, "heads": 9, "kv_heads": 3, "head_dim": 64,
                    "intermediate": 1536, "vocab": 49152},
        "lusifer": {"connector_hidden": 1536, "num_learnable_tokens": 16, "max_length": 128},
    },
    "paper": {
        "encoder": {"type": "xlm-roberta", "layers": 24, "hidden": 1024, "heads": 16, "intermediate": 4096,
                    "vocab": 250002, "max_positions": 514, "type_vocab": 1},
        "decoder": {"type": "mistral", "layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128,
                    "intermediate": 14336, "vocab": 32768},
        "lusifer": {"connector_hidden": 1024, "num_learnable_tokens": 0, "max_length": 512, "projection_dim": 4096,
                    "projection_hidden": 4096},
    },
}
INFO_FILE = "benchmark_model.json"


def _tokenizer(tokenizer_dir: str | None, shape: str):
    from lusifer.tiny import build_tokenizer

    if tokenizer_dir is None:
        if shape != "tiny":
            raise ValueError(f"shape {shape!r} needs --tokenizer (a folder with a real XLM-R tokenizer, e.g. "
                             "BASE/encoder-me5-small from lusifer-train prepare-base)")
        return build_tokenizer()
    import transformers

    folder = Path(tokenizer_dir)
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"tokenizer folder {str(folder)!r} has no tokenizer.json")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    if tok.pad_token_id is None:
        raise ValueError(f"tokenizer in {str(folder)!r} has no pad token")
    return tok


def build_random_model(shape: str, out_dir: str | Path, tokenizer_dir: str | None = None,
                       decoder_layers: int | None = None, device: str = "cpu", seed: int = 0) -> Path:
    """Save a random-weight LusiferModel of ``shape`` (bfloat16 weights) to ``out_dir``; returns the folder.

    Raises:
        ValueError: unknown shape, bad layer count, or a tokenizer larger than the shape's vocabulary.
    """
    import torch
    import transformers

    from lusifer.backbones import set_attention_causal
    from lusifer.config import LusiferConfig
    from lusifer.modeling import LusiferModel

    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}; expected one of {', '.join(SHAPES)}")
    spec = SHAPES[shape]
    enc, dec = spec["encoder"], spec["decoder"]
    full_layers = dec["layers"]
    layers = full_layers if decoder_layers is None else decoder_layers
    if not 1 <= layers <= full_layers:
        raise ValueError(f"decoder_layers={decoder_layers}: expected 1 to {full_layers} for shape {shape!r}")
    tokenizer = _tokenizer(tokenizer_dir, shape)
    enc_vocab = enc["vocab"] or len(tokenizer)
    if len(tokenizer) > enc_vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but shape {shape!r} has an encoder vocabulary "
                         f"of {enc_vocab}; use the tokenizer of the real encoder")
    enc_cls = transformers.XLMRobertaConfig if enc["type"] == "xlm-roberta" else transformers.BertConfig
    enc_config = enc_cls(
        vocab_size=enc_vocab, hidden_size=enc["hidden"], num_hidden_layers=enc["layers"],
        num_attention_heads=enc["heads"], intermediate_size=enc["intermediate"],
        max_position_embeddings=enc["max_positions"], type_vocab_size=enc["type_vocab"],
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    dec_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}[dec["type"]]
    dec_kwargs = {"sliding_window": None} if dec["type"] == "mistral" else {}
    dec_config = dec_cls(
        vocab_size=dec["vocab"], hidden_size=dec["hidden"], intermediate_size=dec["intermediate"],
        num_hidden_layers=layers, num_attention_heads=dec["heads"], num_key_value_heads=dec["kv_heads"],
        head_dim=dec["head_dim"], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False, **dec_kwargs,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        encoder = transformers.AutoModel.from_config(enc_config, add_pooling_layer=False, dtype=torch.bfloat16)
        llm = transformers.AutoModelForCausalLM.from_config(dec_config, attn_implementation="sdpa",
                                                            dtype=torch.bfloat16)
        set_attention_causal(llm, False)
        config = LusiferConfig(**spec["lusifer"])
        model = LusiferModel(config, encoder, llm, tokenizer)
    out = model.save_pretrained(out_dir)
    info = {"shape": shape, "decoder_layers": layers, "decoder_layers_full": full_layers, "seed": seed,
            "tokenizer": str(tokenizer_dir) if tokenizer_dir else "lusifer.tiny BPE",
            "weights": "random (transformers init), bfloat16", "spec": spec}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", "utf-8")
    logger.info("saved a random %s-shape model (%d of %d decoder layers) to %s", shape, layers, full_layers, out)
    return out


def model_info(model_dir: str | Path) -> dict:
    """What :func:`build_random_model` recorded, or a note that the folder holds a trained model."""
    path = Path(model_dir) / INFO_FILE
    if path.is_file():
        return json.loads(path.read_text("utf-8"))
    return {"shape": "given model folder", "weights": "as saved (trained)"}
