#!/usr/bin/env bash
# The paper's Table 3 on ML-1M at CPU scale: the CF backbones with their plain commands, then every LLM method on
# the 480-step budget (configs/cora.py), each scored on all 7,331 test rows (warm and cold too), its results.json
# and per-row scores copied to results/table3/NAME. Resumable: rerun it after a stop; finished entries are skipped.
# Usage: bash results/table3.sh [NAME...]    (default: every entry, in the order below)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export CORA_DATA=${CORA_DATA:-../shared/data}  # where the presets read ml-1m-collm
DATA=$CORA_DATA/ml-1m-collm
RESULTS=${RESULTS:-results/table3}
ENTRIES=("$@")
[ ${#ENTRIES[@]} -eq 0 ] && ENTRIES=(mf lightgcn sasrec cora-mf tallrec collm-mf binllm prompt4nr personprompt icl
                                     collm-lightgcn collm-sasrec cora-lightgcn cora-sasrec)

keep() {  # keep DEST FILE...: the files (scores.jsonl gzipped) under $RESULTS/DEST
  local dest=$RESULTS/$1; shift
  mkdir -p "$dest"
  for f in "$@"; do
    if [ "${f##*/}" = scores.jsonl ]; then gzip -nc "$f" > "$dest/scores.jsonl.gz"; else cp "$f" "$dest/"; fi
  done
  echo "done $dest $(date -u +%H:%M)"
}

cf() {  # the CF backbone with the plain command (its per-row test scores were added later: retrain without them)
  local run=runs/cf/ml1m-$1
  [ -f "$run/scores.jsonl" ] || $PY train.py cf train --model "$1" --data "$DATA" --out "$run" --no-progress
}

for name in "${ENTRIES[@]}"; do
  [ -f "$RESULTS/$name/scores.jsonl.gz" ] && continue
  case $name in
    mf|lightgcn|sasrec)
      cf "$name"
      keep "$name" "runs/cf/ml1m-$name/results.json" "runs/cf/ml1m-$name/scores.jsonl" ;;
    icl)
      cf mf
      out=runs/zero-shot-ml1m-3titles
      [ -f "$out/results.json" ] ||
        $PY eval.py --zero-shot --data "$DATA" --cf runs/cf/ml1m-mf --split test --max-titles 3 --out "$out" --no-progress
      keep icl "$out/results.json" "$out/scores.jsonl" ;;
    *)
      preset=$name-ml1m-480steps run=runs/baselines/$name-ml1m-480steps
      case $name in *lightgcn) cf lightgcn ;; *sasrec) cf sasrec ;; *) cf mf ;; esac
      case $name in collm-*|personprompt) [ -f runs/baselines/tallrec-ml1m-480steps/summary.json ] ||
        $PY train.py cora --preset tallrec-ml1m-480steps --no-progress ;; esac
      $PY train.py cora --preset "$preset" --no-progress
      [ -f "$run/eval-test/results.json" ] ||
        $PY eval.py --run "$run" --split test --out "$run/eval-test" --no-progress
      keep "$name" "$run/eval-test/results.json" "$run/config.json" "$run/metrics.jsonl" "$run/summary.json" \
        "$run/eval-test/scores.jsonl" ;;
  esac
done
