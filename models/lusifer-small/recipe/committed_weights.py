"""Write the weights lusifer-small commits from a finished `benchmarks/gpu/train_all.sh full` run, in fp16.

Usage: python committed_weights.py RUNS_DIR OUT_DIR
Writes OUT_DIR/full-s1.safetensors (the stage-1 encoder LoRA: the `lora_` tensors of the last stage-1
checkpoint) and OUT_DIR/full-s2.safetensors (every trainable tensor of the last stage-2 checkpoint), which
become `stage1_encoder_lora.safetensors` and `stage2_trainable.safetensors` in the model folder.
"""

import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def main() -> None:
    runs, out = Path(sys.argv[1]), Path(sys.argv[2])
    for stage in ("s1", "s2"):
        path = sorted((runs / f"full-{stage}" / "checkpoints").glob("step-*/weights.safetensors"))[-1]
        weights = load_file(path)
        if stage == "s1":
            weights = {k: v for k, v in weights.items() if "lora_" in k}
        weights = {k: v.half().contiguous() for k, v in weights.items()}
        save_file(weights, out / f"full-{stage}.safetensors")
        print(stage, path, len(weights), sum(v.numel() for v in weights.values()))


if __name__ == "__main__":
    main()
