"""Write lusifer-small's stage-1 encoder, the teacher of stage-2 distillation, as a plain encoder folder.

Usage: python stage1_encoder.py BASE_ENCODER_DIR OUT_DIR [--weights MODEL_DIR]

The base encoder (mE5-small, ``lusifer-train prepare-base``'s ``encoder-me5-small``) with the committed stage-1
encoder LoRA (``stage1_encoder_lora.safetensors``: r=16, alpha=32 on query/key/value/dense; sha256 checked)
merged in: the encoder stage 2 starts from, hence what distillation with the adapters disabled distils
towards (docs/training.md). Evaluate it as the encoder alone:
``lusifer-eval run OUT_DIR --encoder-prefix "query: " --suite SUITE --out teacher.json``.
"""

import argparse
from pathlib import Path

import torch
import transformers

from lusifer.backbones import load_encoder
from lusifer.train.config import ENCODER_LORA_TARGETS
from lusifer.train.lora import apply_lora
from lusifer.train.lusifer_small import LORA_ALPHA, LORA_R, STAGE1_FILE, WEIGHT_SHA256, load_strict, verify_weight_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_encoder", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    files = verify_weight_files(args.weights, {STAGE1_FILE: WEIGHT_SHA256[STAGE1_FILE]})
    holder = torch.nn.Module()  # named like LusiferModel, so the file's "encoder." names match
    holder.encoder = apply_lora(load_encoder(args.base_encoder, dtype=torch.float32), list(ENCODER_LORA_TARGETS),
                                LORA_R, LORA_ALPHA, 0.0)
    lora = {n for n, _ in holder.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    loaded = load_strict(holder, files[STAGE1_FILE], lora)
    merged = holder.encoder.merge_and_unload()
    merged.save_pretrained(args.out, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(args.base_encoder).save_pretrained(args.out)
    print(f"{loaded} LoRA tensors of {files[STAGE1_FILE]} merged into {args.base_encoder}: {args.out}")


if __name__ == "__main__":
    main()
