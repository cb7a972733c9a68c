#!/usr/bin/env bash
# After gpu_setup.sh, in one lease: train the representation-finetuning-only ablation (stage 2 from an
# unaligned model) on the GPU while the paper-shape random model is built and exported on the CPU cores.
# Runs detached; markers /tmp/runs/RF_DONE and /tmp/runs/PAPER_PREP_DONE hold the exit codes.
# Then: gpu_eval_one.sh rfonly, and benchmarks.gpu_suite --shape paper (README of benchmarks/).
set -uo pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
rm -rf /tmp/src/benchmarks && cp -r benchmarks /tmp/src/
mkdir -p /tmp/runs
setsid nohup bash -c 'GC=${GC:-128} bash /tmp/src/models/lusifer-small/recipe/gpu_train_all.sh rfonly; echo $? > /tmp/runs/RF_DONE' \
  > /tmp/runs/rfonly.outer.log 2>&1 < /dev/null &
setsid nohup bash -c 'cd /tmp/src && python3 -m benchmarks.gpu_suite --shape paper --decoder-layers ${PAPER_LAYERS:-8} \
  --tokenizer /tmp/base/encoder-me5-small --corpus /tmp/src/benchmarks/corpus/gpu-20k.parquet \
  --work-dir /tmp/work/gpu --prepare-only; echo $? > /tmp/runs/PAPER_PREP_DONE' \
  > /tmp/runs/paper_prepare.log 2>&1 < /dev/null &
sleep 2; echo launched
