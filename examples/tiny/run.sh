#!/usr/bin/env bash
# The whole pipeline on tiny random models, on CPU, in a few minutes. Usage: examples/tiny/run.sh OUTDIR
set -euo pipefail
out=${1:?usage: examples/tiny/run.sh OUTDIR}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error
python -m lusifer.tiny "$out/tiny"
python - "$out/tiny/model" <<'PY'
import sys
from lusifer import LusiferModel
model = LusiferModel.from_pretrained(sys.argv[1])
emb = model.encode(["The cat sleeps.", "El gato duerme.", "Кошка спит."], kind="query", instruction="Find the same sentence")
print("embeddings", emb.shape, "cosine en-es %.3f en-ru %.3f" % (emb[0] @ emb[1], emb[0] @ emb[2]))
PY
