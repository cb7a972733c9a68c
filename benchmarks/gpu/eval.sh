#!/usr/bin/env bash
# Evaluate trained rows on the development suite; copy results to $OUT.
#   eval.sh                 every trained row plus the encoder alone, then the comparison table and the
#                           weights to commit (after `train_all.sh` with lusifer-small itself)
#   eval.sh ROW...          only these rows (full, alignonly, rfonly, frozenenc, connonly, llmonly, encoder,
#                           refs1, refs1align: lusifer-small with the reference stage 1, full and alignment only,
#                           distill, distillme5, teacher: the stage-1 encoder alone, which the distill row distils towards),
#                           their JSON and log straight to $OUT (train_all.sh ablations calls it per row
#                           as soon as the row is merged, so a lease that ends early keeps the finished rows)
set -uo pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
O=/tmp/runs
E=/tmp/eval && mkdir -p $E "$OUT"
declare -A path=([full]=$O/full-merged [alignonly]=$O/full-s1/model [rfonly]=$O/rfonly-merged
  [frozenenc]=$O/frozenenc-merged [connonly]=$O/connonly-merged [llmonly]=$O/llmonly-merged
  [encoder]=/tmp/base/encoder-me5-small [refs1]=$O/refs1-merged [refs1align]=$O/refs1-s1/model
  [distill]=$O/distill-merged [distillme5]=$O/distillme5-merged [teacher]=$O/full-s1/model/encoder)
declare -A name=([full]="LUSIFER (full)" [alignonly]="Alignment only" [rfonly]="Representation finetuning only"
  [frozenenc]="Frozen multilingual encoder" [connonly]="Connector only"
  [llmonly]="LLM alone (SmolLM2-135M, stage 2)" [encoder]="mE5-small (encoder alone)"
  [refs1]="LUSIFER (full, reference stage 1)" [refs1align]="Alignment only (reference stage 1)"
  [distill]="LUSIFER + distillation, stage-1 encoder teaching (addition)"
  [distillme5]="LUSIFER + distillation, mE5-small teaching (addition)"
  [teacher]="Stage-1 encoder alone (distillation teacher)")
ev() {  # row
  local extra=(); case $1 in encoder|teacher) extra=(--encoder-prefix "query: ") ;; esac
  [ -d "${path[$1]}" ] || { echo "no $1 model at ${path[$1]}"; return 1; }
  python3 -m lusifer.evaluation.cli run "${path[$1]}" --suite /tmp/data/eval --device cuda --batch-size 128 \
    --name "${name[$1]}" --out $E/$1.json --overwrite "${extra[@]}" > $E/$1.log 2>&1 || echo "eval $1 failed"
  cp $E/$1.json $E/$1.log "$OUT/" 2>/dev/null
}
if [ $# -gt 0 ]; then
  for row in "$@"; do ev "$row"; done
  exit
fi
for row in encoder full alignonly rfonly frozenenc connonly llmonly refs1 refs1align distill distillme5 teacher; do
  [ -d "${path[$row]}" ] && ev $row &
done
wait
python3 -m lusifer.evaluation.cli compare $E/*.json --out $OUT/results.md --chart $OUT/results.png || true
tar czf $OUT/eval_and_logs.tgz $E $O/*.log $O/*/metrics.jsonl $O/*/final.json 2>/dev/null || true
[ -d $O/full-s2 ] && python3 /tmp/src/models/lusifer-small/recipe/committed_weights.py /tmp/runs "$OUT"  # the weights to commit
cat $OUT/results.md || true
