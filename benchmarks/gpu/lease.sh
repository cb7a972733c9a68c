#!/usr/bin/env bash
# The GPU runs of one lease on a lent GPU machine (H100 or H200), after benchmarks/gpu/setup.sh (which copies
# the source, with benchmarks/corpus when carried, to /tmp/src and installs onnxruntime-gpu into /tmp/site).
#   lease.sh prepare  start, detached, lusifer-small's merge + fp16 export and the paper-shape random model's
#                         build + fp16 export (CPU-bound, side by side); markers /tmp/work/{SMALL,PAPER}_DONE
#   lease.sh prepare-small   the lusifer-small half of prepare only
#   lease.sh wait     wait up to 9 minutes for the markers of what was started; print the logs' tails
#   lease.sh small    lusifer-small: the four rows on 20k rows, then lusifer-embed vs model-only on 200k rows
#                         (when gpu-200k.parquet was carried)
#   lease.sh check    correctness on CUDA: lusifer-small's fp16 exports (--fp16-fusions norm, none, all)
#                         vs PyTorch fp32 per language (benchmarks.cuda_parity), then the gpu-marked tests
#   lease.sh paper    paper shape (PAPER_LAYERS decoder layers, default 8; export fusions PAPER_FUSIONS, default
#                         norm): the four rows on 20k rows, then CUDA kernel time by category
#   lease.sh e2e      lusifer-small on 200k rows: lusifer-embed (and with --inflight 2), model-only, model-only on the graph
#                         without fusions (ort-baseline) and on the --fp16-fusions all graph with ONNX Runtime's
#                         attention kernel and without cuDNN attention (ort-attention, ort-attention-no-cudnn),
#                         E2E_REPEATS rounds (default 2) in turn, then CUDA kernel time by category
#   lease.sh e2e-threads  lusifer-small on 200k rows: lusifer-embed and model-only with the runtime's CUDA
#                         session (one intra-op thread) and with ONNX Runtime's own pool (one spinning thread
#                         per core, the runtime's setting before 2026-12-03), E2E_REPEATS rounds (2)
#   lease.sh e2e-budget   lusifer-embed and model-only on 200k rows with BUDGET padded tokens per batch
#                         (default 65536) and BUDGET_ROWS rows (default 2048) instead of the runtime's 16384 / 512
#   lease.sh measure  detached driver (run-measure): prepare-small (SMALL_EXPORTS, default fp16), then with
#                         the GPU and CPU to themselves e2e-threads, e2e-budget, scaling, then the paper shape's
#                         export (PAPER_FUSIONS) and paper; results in /tmp/results/<step>, bundled by collect
#   lease.sh scaling  lusifer-small's fp16 export through lusifer-embed on CUDA at 10k, 100k, 1M rows (SCALING_SIZES)
#                         built from /tmp/data/eval (setup.sh unpacks it from benchmarks/corpus/eval.tgz)
#   lease.sh all      everything above in one detached driver (run-all): lusifer-small's 700-step training
#                         (when gpu-data.tgz was staged; benchmarks/gpu/train_all.sh full) on the GPU while the
#                         exports run on the CPU; check alongside; then evaluation of the trained model
#                         (benchmarks/gpu/eval_full.sh), paper, e2e (E2E_REPEATS=1) and scaling with the GPU to themselves
#   lease.sh ablations [ROW...]  the model card's ablation rows (frozenenc, connonly, rfonly, llmonly, distill, distillme5;
#                         default llmonly; refs1: lusifer-small with the reference stage 1, its alignment-only
#                         and full models, alone in a lease) trained concurrently at S2_STEPS (default 700, as lusifer-small)
#                         with gpu-data.tgz staged, each evaluated (benchmarks/gpu/eval.sh ROW) once merged. Two rows
#                         per lease: all four at once took ~40 min on the H200, over a lease
#   lease.sh collect  wait up to COLLECT_S (540) seconds for the driver, bundling /tmp/results into
#                         $OUT/results.tgz (+ the trained weights beside it: a call returns at most 8 files)
# Results go to $OUT (gpu_small, gpu_small_200k, gpu_small_200k_e2e, gpu_paper .json/.md). Corpora and staging: docs/gpu-runs.md.
set -uo pipefail
# TOKENIZERS_PARALLELISM stays unset, as in a user's run (lusifer-embed on CUDA caps the pool at 4 threads itself)
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
unset TOKENIZERS_PARALLELISM
W=/tmp/work
C=/tmp/src/benchmarks/corpus
L=${PAPER_LAYERS:-8}
cd /tmp/src
PF=${PAPER_FUSIONS:-norm}  # the paper-shape export's --fp16-fusions (all: ONNX Runtime attention, cuDNN attention off)
paper_args=(--shape paper --decoder-layers "$L" --tokenizer /tmp/base/encoder-me5-small --corpus $C/gpu-20k.parquet
            --work-dir $W/gpu --fp16-fusions "$PF")
[ "$PF" = norm ] || paper_args+=(--name "gpu_paper_$PF")
prepare_small() {
  mkdir -p $W && echo small >> $W/STARTED
  setsid nohup bash -c "python3 -m benchmarks.prepare_small --base /tmp/base --out-dir $W/small --exports ${SMALL_EXPORTS:-fp16,fp16-unfused,fp16-all}; \
    echo \$? > $W/SMALL_DONE" > $W/small_prepare.log 2>&1 < /dev/null &
}
case "${1:-}" in
  prepare)
    prepare_small
    echo paper >> $W/STARTED
    setsid nohup bash -c "python3 -m benchmarks.gpu_suite ${paper_args[*]} --prepare-only; echo \$? > $W/PAPER_DONE" \
      > $W/paper_prepare.log 2>&1 < /dev/null &
    sleep 2; echo launched ;;
  prepare-small)
    prepare_small; sleep 2; echo launched ;;
  wait)
    started=$(sort -u $W/STARTED 2>/dev/null)
    for _ in $(seq 108); do
      left=0; for f in $started; do [ -f $W/${f^^}_DONE ] || left=1; done
      [ $left = 0 ] && break; sleep 5
    done
    for f in $started; do echo "== $f: exit $(cat $W/${f^^}_DONE 2>/dev/null || echo running)"; tail -c 1500 $W/${f}_prepare.log; echo; done
    df -h /tmp | tail -1; free -g | head -2 ;;
  small)
    python3 -m benchmarks.gpu_suite --shape small --model-dir $W/small/merged --export-dir $W/small/export-fp16 \
      --corpus $C/gpu-20k.parquet --work-dir $W/gpu --repeats 1 --out-dir "$OUT" || exit
    cp $W/small/export-fp16.json "$OUT/"
    if [ -f $C/gpu-200k.parquet ]; then
      python3 -m benchmarks.gpu_suite --shape small --model-dir $W/small/merged --export-dir $W/small/export-fp16 \
        --corpus $C/gpu-200k.parquet --work-dir $W/gpu --only lusifer-embed,ort-model-only --repeats 2 \
        --name gpu_small_200k --out-dir "$OUT"
    fi ;;
  check)
    python3 -m benchmarks.cuda_parity --model-dir $W/small/merged --export-dir $W/small/export-fp16 \
      --export-dir $W/small/export-fp16-unfused --export-dir $W/small/export-fp16-all --corpus $C/gpu-20k.parquet --out-dir "$OUT" --name cuda_parity_small
    if python3 -c "import pytest" 2>/dev/null; then
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tail -15
    else echo "pytest not staged: gpu-marked tests skipped"; fi ;;
  paper)
    python3 -m benchmarks.gpu_suite "${paper_args[@]}" --repeats 1 --profile --out-dir "$OUT" ;;
  e2e)
    python3 -m benchmarks.gpu_suite --shape small --model-dir $W/small/merged --export-dir $W/small/export-fp16 \
      --corpus $C/gpu-200k.parquet --work-dir $W/gpu \
      --only lusifer-embed,lusifer-embed-inflight2,ort-model-only,ort-baseline,ort-attention,ort-attention-no-cudnn \
      --baseline-export $W/small/export-fp16-unfused --attention-export $W/small/export-fp16-all --profile \
      --repeats "${E2E_REPEATS:-2}" --name gpu_small_200k_e2e --out-dir "$OUT" ;;
  e2e-threads)
    python3 -m benchmarks.gpu_suite --shape small --model-dir $W/small/merged --export-dir $W/small/export-fp16 \
      --corpus $C/gpu-200k.parquet --work-dir $W/gpu \
      --only lusifer-embed,ort-model-only,lusifer-embed-ort-pool,ort-model-only-pool \
      --repeats "${E2E_REPEATS:-2}" --name gpu_small_200k_e2e_threads --out-dir "$OUT" ;;
  e2e-budget)
    python3 -m benchmarks.gpu_suite --shape small --model-dir $W/small/merged --export-dir $W/small/export-fp16 \
      --corpus $C/gpu-200k.parquet --work-dir $W/gpu --only lusifer-embed,ort-model-only \
      --token-budget "${BUDGET:-65536}" --max-batch-rows "${BUDGET_ROWS:-2048}" \
      --repeats "${E2E_REPEATS:-2}" --name "gpu_small_200k_e2e_budget${BUDGET:-65536}" --out-dir "$OUT" ;;
  measure)
    mkdir -p $W /tmp/results
    setsid nohup bash "$0" run-measure > $W/driver.log 2>&1 < /dev/null &
    sleep 2; echo launched ;;
  run-measure)
    SMALL_EXPORTS=${SMALL_EXPORTS:-fp16} bash "$0" prepare-small
    until [ -f $W/SMALL_DONE ]; do sleep 5; done
    tail -c 1500 $W/small_prepare.log > /tmp/results/small_prepare.log
    for step in e2e-threads e2e-budget scaling; do
      mkdir -p /tmp/results/$step && OUT=/tmp/results/$step bash "$0" $step > /tmp/results/$step/$step.log 2>&1
      touch /tmp/results/${step^^}_DONE
    done
    mkdir -p /tmp/results/paper
    python3 -m benchmarks.gpu_suite "${paper_args[@]}" --prepare-only > /tmp/results/paper/paper_prepare.log 2>&1 \
      && OUT=/tmp/results/paper bash "$0" paper > /tmp/results/paper/paper.log 2>&1
    touch /tmp/results/ALL_DONE ;;
  scaling)  # lusifer-embed on CUDA at 10k, 100k and 1M rows (corpora built from the development suite)
    python3 -m benchmarks.scaling --model $W/small/export-fp16 --variant fp16 --device cuda \
      --suite /tmp/data/eval --sizes ${SCALING_SIZES:-10000,100000,1000000} --work-dir $W/scaling \
      --name gpu_small_scaling --out-dir "$OUT" ;;
  all)  # one lease, everything: detached driver (run-all) that trains while the CPU-bound exports run
    mkdir -p $W /tmp/results
    setsid nohup bash "$0" run-all > $W/driver.log 2>&1 < /dev/null &
    sleep 2; echo launched ;;
  run-all)
    # 1. lusifer-small's 700-step training on the GPU while the exports (CPU) are prepared
    G=/tmp/src/benchmarks/gpu
    if [ -f /tmp/data/stage2_pairs.jsonl ]; then
      mkdir -p /tmp/runs
      setsid nohup bash -c "S2_FULL_STEPS=${S2_FULL_STEPS:-700} GC=${GC:-null} bash $G/train_all.sh full; echo \$? > $W/TRAIN_DONE" \
        > $W/train.log 2>&1 < /dev/null &
    else echo 0 > $W/TRAIN_DONE; fi
    bash "$0" prepare
    until [ -f $W/SMALL_DONE ]; do sleep 5; done
    # 2. correctness on CUDA (alongside training: not a timing)
    mkdir -p /tmp/results/check && OUT=/tmp/results/check bash "$0" check > /tmp/results/check/check.log 2>&1
    touch /tmp/results/CHECK_DONE
    # 3. evaluate the trained model, keep its small weights
    until [ -f $W/TRAIN_DONE ]; do sleep 5; done
    if [ -d /tmp/runs/full-merged ]; then
      mkdir -p /tmp/results/train && OUT=/tmp/results/train bash $G/eval_full.sh > /tmp/results/train/eval.log 2>&1
    fi
    touch /tmp/results/TRAIN_EVAL_DONE
    # 4. timings, the GPU to themselves
    until [ -f $W/PAPER_DONE ]; do sleep 5; done
    mkdir -p /tmp/results/paper && OUT=/tmp/results/paper bash "$0" paper > /tmp/results/paper/paper.log 2>&1
    touch /tmp/results/PAPER_DONE
    mkdir -p /tmp/results/e2e && OUT=/tmp/results/e2e E2E_REPEATS=${E2E_REPEATS:-1} bash "$0" e2e > /tmp/results/e2e/e2e.log 2>&1
    touch /tmp/results/E2E_DONE
    if [ -f /tmp/data/eval/suite.json ]; then
      mkdir -p /tmp/results/scaling && OUT=/tmp/results/scaling bash "$0" scaling > /tmp/results/scaling/scaling.log 2>&1
    fi
    touch /tmp/results/ALL_DONE ;;
  ablations)  # ablation rows (arguments; default llmonly, the one left at 300 steps) at lusifer-small's 700 stage-2 steps, then evaluated
    shift; export ROWS="${*:-llmonly}"
    mkdir -p $W /tmp/results
    setsid nohup bash "$0" run-ablations > $W/driver.log 2>&1 < /dev/null &
    sleep 2; echo launched ;;
  run-ablations)
    G=/tmp/src/benchmarks/gpu
    mkdir -p /tmp/runs /tmp/results/ablations
    # each row is evaluated as soon as it is merged; its JSON lands in /tmp/results/ablations at once
    # two rows at once fit the H200's memory without GradCache (GC=null), as lusifer-small itself was trained
    OUT=/tmp/results/ablations S2_STEPS=${S2_STEPS:-700} GC=${GC:-null} bash $G/train_all.sh ablations > $W/train.log 2>&1
    python3 -m lusifer.evaluation.cli compare /tmp/results/ablations/*.json --out /tmp/results/ablations/results.md \
      > /tmp/results/ablations/compare.log 2>&1
    touch /tmp/results/ALL_DONE ;;
  collect)  # wait up to COLLECT_S (default 540) for the driver, bundling results into $OUT as they come:
    # a call brings back at most 8 files of at most 16 MiB each, so everything but the weights goes into one
    # results.tgz and the two weight files travel beside it
    bundle() {
      mkdir -p /tmp/results/runs && for m in /tmp/runs/*/metrics.jsonl; do
        [ -f "$m" ] && cp "$m" /tmp/results/runs/"$(basename "$(dirname "$m")")"-metrics.jsonl; done
      cp /tmp/runs/*.log /tmp/results/runs/ 2>/dev/null
      tar czf "$OUT/results.tgz.part" --exclude='*.safetensors' -C /tmp/results . 2>/dev/null \
        && mv "$OUT/results.tgz.part" "$OUT/results.tgz"
      cp /tmp/results/train/*.safetensors "$OUT/" 2>/dev/null
    }
    for _ in $(seq $(( ${COLLECT_S:-540} / 10 ))); do
      bundle; [ -f /tmp/results/ALL_DONE ] && break; sleep 10
    done
    bundle
    ls /tmp/results; tail -n 5 $W/driver.log $W/train.log 2>/dev/null; tail -c 400 /tmp/runs/full.log 2>/dev/null
    tail -n 1 /tmp/runs/*-s*/metrics.jsonl 2>/dev/null; tail -c 600 $W/*_prepare.log ;;
  *) echo "usage: $0 prepare|prepare-small|wait|check|small|paper|e2e|e2e-threads|e2e-budget|scaling|all|measure|ablations|collect" >&2; exit 2 ;;
esac
