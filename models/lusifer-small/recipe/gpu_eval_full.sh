#!/usr/bin/env bash
# After `gpu_train_all.sh full`: evaluate the trained model (and its stage-1 model) on the development suite
# and copy to $OUT the results, the logs and the small weights to commit (fp16: stage-1 encoder LoRA,
# stage-2 trainable weights). The other rows of the model card are in ../results from earlier leases.
set -uo pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
O=/tmp/runs
E=/tmp/eval && mkdir -p $E
ev() { python3 -m lusifer.evaluation.cli run "$1" --suite /tmp/data/eval --device cuda --batch-size 128 --name "$2" --out $E/$3.json --overwrite "${@:4}" > $E/$3.log 2>&1 || echo "eval $3 failed"; }
ev $O/full-merged "LUSIFER (full)" full &
ev $O/full-s1/model "Alignment only" alignonly &
wait
cp $E/*.json $E/*.log "$OUT/" 2>/dev/null
cp $O/full.log "$OUT/" 2>/dev/null
for s in s1 s2; do cp $O/full-$s/metrics.jsonl "$OUT/full-$s-metrics.jsonl"; cp $O/full-$s/final.json "$OUT/full-$s-final.json"; done
python3 /tmp/src/models/lusifer-small/recipe/committed_weights.py $O "$OUT"
