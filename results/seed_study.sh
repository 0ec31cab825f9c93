#!/usr/bin/env bash
# The CPU-budget CoRA-MF preset (cora-mf-ml1m-160steps) for several seeds and both batch orders, each
# scored on the same 2,000 test rows (drawn with --sample-seed 0). Resumable: rerun it after a stop.
# Usage: bash results/seed_study.sh [SEED...]    (default seeds 2023 1 2; ORDERS="uniform bucketed")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export CORA_DATA=${CORA_DATA:-../shared/data}  # where the presets read ml-1m-collm
RESULTS=${RESULTS:-results/seeds}
SEEDS=("$@")
[ ${#SEEDS[@]} -eq 0 ] && SEEDS=(2023 1 2)
[ -f runs/cf/ml1m-mf/results.json ] || $PY train.py cf train --model mf --data "$CORA_DATA/ml-1m-collm" --out runs/cf/ml1m-mf --no-progress
for seed in "${SEEDS[@]}"; do
  for order in ${ORDERS:-uniform bucketed}; do
    name=$order-s$seed run=runs/seeds/$order-s$seed
    flag=--bucket-train; [ "$order" = uniform ] && flag=--no-bucket-train
    $PY train.py cora --preset cora-mf-ml1m-160steps --seed "$seed" $flag --out "$run" --no-progress
    [ -f "$run/eval-test2000/results.json" ] ||
      $PY eval.py --run "$run" --split test --limit 2000 --sample-seed 0 --out "$run/eval-test2000" --no-progress
    mkdir -p "$RESULTS/$name"
    cp "$run/eval-test2000/results.json" "$run/config.json" "$run/metrics.jsonl" "$run/summary.json" "$RESULTS/$name/"
    gzip -nc "$run/eval-test2000/scores.jsonl" > "$RESULTS/$name/scores.jsonl.gz"
    echo "done $name $(date -u +%H:%M)"
  done
done
