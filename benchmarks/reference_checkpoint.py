"""A random-weight checkpoint in the released LUSIFER's exact layout: ``config.json`` + ``model.safetensors``.

``python -m benchmarks.reference_checkpoint --out DIR [--decoder-layers N] [--encoder-layers N] [--device cuda]``

The module tree is the reference's (``universal_learner``: XLM-R-large with its pooler, ``encoder``:
Mistral-7B-v0.3 with its LM head, each wrapped by peft ``get_peft_model`` with the release's adapter names, r=16,
alpha=32, LoRA on every linear layer of the encoder and on q/k/v/o/gate/up/down of the LLM; ``connection_module.ff``;
``output_projection``), built on the meta device, so the keys and shapes are exactly what peft writes. Values are
random (normal, std 0.02; norms at one; non-zero ``lora_B``), drawn on ``--device`` in bf16 as the release stores
them. Right for speed, memory and import/export checks, never for quality. The defaults are the release's full
shapes (32 decoder layers, ~7.9B values, ~15.8 GB); ``--decoder-layers`` / ``--encoder-layers`` cut them for dry runs,
and then ``OUT-bases/encoder`` and ``OUT-bases/llm`` are written beside ``OUT`` for ``import-reference``'s
``--encoder-dir`` / ``--llm-dir`` (the shipped configs describe the full shapes only).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

ENCODER_NAME = "Hieuman/xlm-aligned-for-mistral-v0.3"
LLM_NAME = "mistralai/Mistral-7B-Instruct-v0.3"
LLM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA = 16, 32


def reference_config() -> dict:
    """The release's ``config.json`` fields (the reference ``Lusifer.__init__`` arguments)."""
    return {
        "universal_learner_name_or_path": ENCODER_NAME,
        "encoder_name_or_path": LLM_NAME,
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
        "loar_r": R,
        "lora_alpha": ALPHA,
        "dropout": 0.1,
        "attn_implementation": "flash_attention_2",
    }


def base_configs(encoder_layers: int | None = None, decoder_layers: int | None = None):
    """The shipped configs of the two bases the release names, cut to the given layer counts."""
    from lusifer.train.reference_import import known_base

    enc = known_base(ENCODER_NAME, "encoder").config
    llm = known_base(LLM_NAME, "llm").config
    if encoder_layers:
        enc.num_hidden_layers = encoder_layers
    if decoder_layers:
        llm.num_hidden_layers = decoder_layers
    return enc, llm


def write_bases(out: Path, encoder_layers: int | None, decoder_layers: int | None) -> None:
    """``out/encoder`` (config.json + the offline XLM-R tokenizer) and ``out/llm`` (config.json): the
    ``--encoder-dir`` / ``--llm-dir`` of a cut checkpoint, whose shapes the shipped configs do not describe."""
    from lusifer.train.reference_import import Base, save_encoder_tokenizer

    enc, llm = base_configs(encoder_layers, decoder_layers)
    enc.save_pretrained(out / "encoder")
    llm.save_pretrained(out / "llm")
    save_encoder_tokenizer(Base(enc, "cut", tokenizer_kind="xlm-roberta"), out / "encoder", 512, None)


def layout(encoder_layers: int | None = None, decoder_layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every key of the release's state dict with its shape, from the module tree built on the meta device."""
    import peft
    import torch
    import transformers

    enc, llm = base_configs(encoder_layers, decoder_layers)
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):
        learner = transformers.AutoModel.from_config(enc)  # keeps its pooler, as the reference loads it
        linear = sorted({n.split(".")[-1] for n, m in learner.named_modules() if isinstance(m, torch.nn.Linear)})
        task = peft.TaskType.FEATURE_EXTRACTION
        learner = peft.get_peft_model(
            learner, peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=linear, bias="none", task_type=task),
            adapter_name="universal_learner_lora",
        )
        decoder = transformers.AutoModelForCausalLM.from_config(llm)
        decoder = peft.get_peft_model(
            decoder, peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=LLM_TARGETS, bias="none", task_type=task),
            adapter_name="encoder_lora",
        )
        for prefix, module in (("universal_learner.", learner), ("encoder.", decoder)):
            shapes.update({prefix + k: tuple(v.shape) for k, v in module.state_dict().items()})
    e, h = int(enc.hidden_size), int(llm.hidden_size)
    shapes.update({
        "connection_module.ff.0.weight": (e, e), "connection_module.ff.0.bias": (e,),
        "connection_module.ff.2.weight": (h, e), "connection_module.ff.2.bias": (h,),
        "output_projection.0.weight": (h, h), "output_projection.0.bias": (h,),
        "output_projection.2.weight": (h, h), "output_projection.2.bias": (h,),
    })
    return shapes


def _value(key: str, shape: tuple[int, ...], generator, device: str):
    import torch

    if key.endswith(("norm.weight", "LayerNorm.weight", "layernorm.weight")):
        return torch.ones(shape, dtype=torch.bfloat16, device=device)
    if key.endswith("bias"):
        return torch.zeros(shape, dtype=torch.bfloat16, device=device)
    t = torch.empty(shape, dtype=torch.float32, device=device)
    std = 1.0 / R if ".lora_A." in key else 0.02
    t.normal_(0.0, std, generator=generator)
    return t.to(torch.bfloat16)


def write_checkpoint(out: str | Path, encoder_layers: int | None = None, decoder_layers: int | None = None,
                     device: str = "cpu", seed: int = 0) -> dict:
    """Write ``out/config.json`` and ``out/model.safetensors``; return facts about them."""
    import torch
    from safetensors.torch import save_file

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = layout(encoder_layers, decoder_layers)
    generator = torch.Generator(device=device).manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        tensors[key] = _value(key, shape, generator, device).cpu()
    drawn = time.perf_counter() - started
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(reference_config(), indent=2) + "\n", "utf-8")
    if encoder_layers or decoder_layers:
        write_bases(out.parent / f"{out.name}-bases", encoder_layers, decoder_layers)
    facts = {
        "keys": len(tensors),
        "values": int(sum(t.numel() for t in tensors.values())),
        "bytes": (out / "model.safetensors").stat().st_size,
        "lora_pairs": sum(".lora_A." in k for k in tensors),
        "encoder_layers": encoder_layers or 24,
        "decoder_layers": decoder_layers or 32,
        "draw_seconds": round(drawn, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    logger.info("wrote %s: %s", out, facts)
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (config.json + model.safetensors)")
    parser.add_argument("--encoder-layers", type=int, default=None, help="cut XLM-R-large (24 layers)")
    parser.add_argument("--decoder-layers", type=int, default=None, help="cut Mistral-7B (32 layers)")
    parser.add_argument("--device", default="cpu", help="where the random values are drawn (cuda is faster)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(write_checkpoint(args.out, args.encoder_layers, args.decoder_layers, args.device, args.seed)))


if __name__ == "__main__":
    main()
