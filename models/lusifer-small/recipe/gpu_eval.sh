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
python3 /tmp/src/models/lusifer-small/recipe/committed_weights.py /tmp/runs "$OUT"  # the weights to commit
cat $OUT/results.md || true
