#!/usr/bin/env bash
# After `train_all.sh full`: evaluate the trained model (and its stage-1 model) on the development suite
# (benchmarks/gpu/eval.sh ROW) and copy to $OUT the results, the logs and the small weights to commit (fp16:
# stage-1 encoder LoRA, stage-2 trainable weights). The other rows of the model card: models/lusifer-small/results/.
set -uo pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
O=/tmp/runs
R=/tmp/src/models/lusifer-small/recipe  # committed_weights.py
G=/tmp/src/benchmarks/gpu
bash $G/eval.sh full &
bash $G/eval.sh alignonly &
wait
cp $O/full.log "$OUT/" 2>/dev/null
for s in s1 s2; do cp $O/full-$s/metrics.jsonl "$OUT/full-$s-metrics.jsonl"; cp $O/full-$s/final.json "$OUT/full-$s-final.json"; done
python3 $R/committed_weights.py $O "$OUT"
