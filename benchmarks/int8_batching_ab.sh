#!/usr/bin/env bash
# INT8 batched (one dynamic-quantisation scale per batch, as the runtime did before 2026-12-03) vs one row per forward pass
# (the runtime now), back to back on one corpus: rows/s and peak RSS of lusifer-embed.
# usage: bash benchmarks/int8_batching_ab.sh CORPUS.parquet EXPORT_DIR [OUT_DIR]  -> OUT_DIR/int8_batching_ab.md
set -euo pipefail
C=$1; M=$2; O=${3:-benchmarks/results}; W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
{
  echo "# INT8 batched vs one row per forward pass ($(date -u +%FT%TZ), $(nproc) CPUs, git $(git rev-parse --short HEAD))"
  echo; echo "corpus \`${C#"$PWD"/}\`, export \`${M#"$PWD"/}\`, 2 threads"; echo '```'
  /usr/bin/time -f "batched: wall %e s, peak RSS %M KiB" python -c 'import sys; import lusifer.runtime.embedder as e
e.ONE_ROW_PER_PASS_QUANTIZATIONS = frozenset()  # the old behaviour: batches by token budget
from lusifer.runtime.cli import main; sys.exit(main())' "$C" --out "$W/batched.npy" --model "$M" --variant int8 \
    --device cpu --threads 2 --kind document --no-progress 2>&1 | grep -E "rows/s|wall"
  /usr/bin/time -f "one row per pass: wall %e s, peak RSS %M KiB" python -c 'import sys
from lusifer.runtime.cli import main; sys.exit(main())' "$C" --out "$W/rowwise.npy" --model "$M" --variant int8 \
    --device cpu --threads 2 --kind document --no-progress 2>&1 | grep -E "rows/s|wall"
  echo '```'
} > "$O/int8_batching_ab.md"
cat "$O/int8_batching_ab.md"
