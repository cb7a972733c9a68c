#!/usr/bin/env bash
# Lease-time fallback: train stage 2 of the full run alone (after stage 1), merge, then evaluate.
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
R=/tmp/src/models/lusifer-small/recipe
O=/tmp/runs
while [ ! -f $O/full-s1/model/lusifer_config.json ]; do sleep 5; done
python3 -m lusifer.train stage2 --config $R/stage2.yaml --set model_path=$O/full-s1/model \
  --set "train_files=[/tmp/data/stage2_pairs.jsonl]" --output-dir $O/full-s2 --resume > $O/full-s2.log 2>&1 \
 && python3 -m lusifer.train merge $O/full-s2 --out $O/full-merged --device cuda >> $O/full-s2.log 2>&1
touch $O/S2DONE
