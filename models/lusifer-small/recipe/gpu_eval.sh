#!/usr/bin/env bash
# Evaluate every trained row plus the encoder alone on the development suite; copy small results to $OUT.
set -uo pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
O=/tmp/runs
E=/tmp/eval && mkdir -p $E
ev() { python3 -m lusifer.evaluation.cli run "$1" --suite /tmp/data/eval --device cuda --batch-size 128 --name "$2" --out $E/$3.json --overwrite "${@:4}" > $E/$3.log 2>&1 || echo "eval $3 failed"; }
ev /tmp/base/encoder-me5-small "mE5-small (encoder alone)" encoder --encoder-prefix "query: " &
[ -d $O/full-merged ] && ev $O/full-merged "LUSIFER (full)" full &
[ -d $O/full-s1/model ] && ev $O/full-s1/model "Alignment only" alignonly &
[ -d $O/rfonly-merged ] && ev $O/rfonly-merged "Representation finetuning only" rfonly &
[ -d $O/frozenenc-merged ] && ev $O/frozenenc-merged "Frozen multilingual encoder" frozenenc &
[ -d $O/connonly-merged ] && ev $O/connonly-merged "Connector only" connonly &
[ -d $O/llmonly-merged ] && ev $O/llmonly-merged "LLM alone (SmolLM2-135M, stage 2)" llmonly &
wait
python3 -m lusifer.evaluation.cli compare $E/*.json --out $OUT/results.md --chart $OUT/results.png || true
tar czf $OUT/eval_and_logs.tgz $E $O/*.log $O/*/metrics.jsonl $O/*/final.json 2>/dev/null || true
python3 - <<'PY'
# the committed weights: stage-1 encoder LoRA and stage-2 trainable weights of the full run, in fp16
import os, glob, json
from safetensors.torch import load_file, save_file
out = os.environ["OUT"]
for stage in ("s1", "s2"):
    ck = json.load(open(f"/tmp/runs/full-{stage}/final.json"))
    path = glob.glob(f"/tmp/runs/full-{stage}/checkpoints/step-*/weights.safetensors")
    path = sorted(path)[-1]
    w = load_file(path)
    if stage == "s1":
        w = {k: v for k, v in w.items() if "lora_" in k}
    w = {k: v.half().contiguous() for k, v in w.items()}
    save_file(w, f"{out}/full-{stage}.safetensors")
    print(stage, path, len(w), sum(v.numel() for v in w.values()))
PY
cat $OUT/results.md || true
