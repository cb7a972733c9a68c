#!/usr/bin/env bash
# The whole pipeline on tiny random models, on CPU, in a few minutes. Usage: examples/tiny/run.sh OUTDIR
# Re-running continues where it stopped (training resumes from the latest checkpoints).
set -euo pipefail
out=${1:?usage: examples/tiny/run.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
# tiny models: one thread is fastest (thread start-up costs more than the matrix products)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 1. tiny random base models and an untrained LusiferModel (OUTDIR/tiny/model)
python -m lusifer.tiny "$out/tiny"
python - "$out/tiny/model" <<'PY'
import sys
from lusifer import LusiferModel
model = LusiferModel.from_pretrained(sys.argv[1])
emb = model.encode(["The cat sleeps.", "El gato duerme.", "Кошка спит."], kind="query", instruction="Find the same sentence")
print("embeddings", emb.shape, "cosine en-es %.3f en-ru %.3f" % (emb[0] @ emb[1], emb[0] @ emb[2]))
PY

# 2. stage 1: alignment on English text and question/answer pairs -> merged model in OUTDIR/stage1/model
lusifer-train stage1 --config "$here/stage1.yaml" --set "model_path=$out/tiny/model" --output-dir "$out/stage1" --resume

# 3. stage 2: contrastive finetuning with LoRA (GradCache) -> checkpoints in OUTDIR/stage2
lusifer-train stage2 --config "$here/stage2.yaml" --set "model_path=$out/stage1/model" --output-dir "$out/stage2" --resume

# 4. merge LoRA into a standalone model folder: OUTDIR/merged
lusifer-train merge "$out/stage2" --out "$out/merged"
python "$here/retrieval.py" "$out/tiny/model" "$out/merged"

# ---- export and embedding: OUTDIR/export, OUTDIR/export-int8, OUTDIR/vectors.npy ----
# 5. the whole encoder-connector-LLM graph to ONNX, validated against PyTorch (fp32; fp32 + dynamic INT8)
lusifer-export "$out/merged" --out "$out/export" --overwrite
lusifer-export "$out/merged" --out "$out/export-int8" --quantize int8 --overwrite

# 6. embed a multilingual parquet corpus with ONNX Runtime (no torch in the runtime)
lusifer-embed "$here/../corpus/multilingual.parquet" --out "$out/vectors.npy" --model "$out/export-int8" --overwrite
python -c "import numpy as np, sys; v = np.load(sys.argv[1]); print('vectors', v.shape, v.dtype)" "$out/vectors.npy"
