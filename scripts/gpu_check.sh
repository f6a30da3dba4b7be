#!/usr/bin/env bash
# One prepared check of the GPU path, for a fresh CUDA machine (PyTorch + Triton preinstalled, no
# network, this tree copied over). It builds the package, runs the CUDA tests, the APM and model
# benchmarks and a short bf16 training run on the synthetic set, writes every log and result under
# one folder, and prints a summary. Sized to finish in about 7 minutes on an H100 (GPU_CHECK_BUDGET
# seconds, default 420: every step's limit is cut to what is left of it, most important steps first),
# so that a second, shorter try fits in a 15-minute device lease.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # on the GPU machine (OUT_DIR defaults to $OUT or gpu_check_out)
#   bash scripts/gpu_check.sh --cpu-smoke [DIR]  # the same steps at toy sizes on a CPU, to try the plumbing
#
# Each step has its own time limit and a failing step never stops the others; the exit status is
# the number of failed steps (0 = all passed). Results land in OUT_DIR as:
#   summary.txt, apm_cuda.{md,json} (fixed first config per kernel, with the HW sweep),
#   model_cuda.{md,json}, tuned/apm_cuda.{md,json} (autotuned; the configs chosen), logs.tar.gz (the rest)
# (eight files: the most the device tool brings back). Triton autotunes six configs per kernel and
# shape; on a fresh machine that is minutes of compiling, so every step but the tuned benchmark
# runs with AP3D_TRITON_AUTOTUNE=0 (the first config of each list).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
PYTEST_PAR=()
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE=1; shift; fi
OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR/logs"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOGS=$OUT_DIR/logs
PY=${PYTHON:-python3}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# The synthetic set is generated once into the output folder (nothing is downloaded, ever).
export XDG_CACHE_HOME=$OUT_DIR/cache
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-420}
declare -a SUMMARY=()
FAILED=0

if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu  # no TRITON_INTERPRET: the interpreter would put a (very slow) Triton row into the CPU bench
  BENCH_APM_ARGS=(--device cpu --no-sweep --no-flex --repeats 1 --warmup 1 --batch 2)
  BENCH_MODEL_ARGS=(--device cpu --quick --data-steps 0 --archs C2D,AP3D)
  TRAIN_ARGS=(--device cpu --amp none --epochs 1 --iters-per-epoch 2 --threads 2
              --dataset-option num_train_ids=8 --dataset-option num_test_ids=6 --dataset-option max_frames=24)
  PYTEST_MARK="gpu"
  PROFILE_ARGS=(--backend cpu --batch 1 --steps 2)
  PROFILE_MODEL_ARGS=(--device cpu --quick --archs C2D,AP3D --precisions fp32 --layouts contiguous
                      --compile off --data-steps 0 --profile default:fp32:contiguous)
else
  DEVICE=cuda
  BENCH_APM_ARGS=(--device cuda)
  # compile: minutes per network; the paper's shape first (AP3D/C2D at ResNet-50 is the figure asked for)
  BENCH_MODEL_ARGS=(--device cuda --compile off --shapes paper,default --precisions fp32,bf16 --data-steps 0)
  TRAIN_ARGS=(--device cuda --amp bf16 --epochs 2 --num-workers 8)
  PYTEST_MARK="gpu or triton"
  PROFILE_ARGS=(--backend triton)
  PROFILE_MODEL_ARGS=(--device cuda --shapes paper --archs C2D,AP3D --precisions bf16 --layouts contiguous
                      --compile off --data-steps 0 --profile paper:bf16:contiguous)
  # The GPU machine has cores to spare: spread the tests (each compiles its own kernels) over workers.
  "$PY" -c "import xdist" 2>/dev/null && PYTEST_PAR=(-n 8)
fi

# step NAME LIMIT_SECONDS COMMAND...: run one step with a time limit, log it, record pass/fail.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  local left=$(( BUDGET - (t0 - START) - 15 ))  # 15 s kept for the summary and the archive
  if [ "$left" -lt 20 ]; then
    SUMMARY+=("SKIP  $name (the ${BUDGET}-s budget is spent)")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [$name] (limit ${limit}s): $*"
  if [ "$(type -t "$1")" = function ]; then  # timeout runs programs, not shell functions
    timeout --signal=INT --kill-after=15 "$limit" bash -c "$(declare -f "$1"); PY=$PY; $*" >"$LOGS/$name.log" 2>&1
  else
    timeout --signal=INT --kill-after=15 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  fi
  local rc=$? dt=$(( $(date +%s) - t0 ))
  tail -n 25 "$LOGS/$name.log"
  if [ $rc -eq 0 ]; then
    SUMMARY+=("PASS  $name (${dt}s)")
  else
    [ $rc -eq 124 ] && rc="timeout after ${limit}s"
    SUMMARY+=("FAIL  $name (${dt}s, exit $rc; see logs/$name.log)")
    FAILED=$((FAILED + 1))
  fi
}

machine_facts() {
  date -u +%FT%TZ; uname -a; nproc
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "SMs", p.multi_processor_count, "memory GiB", round(p.total_memory / 2**30, 1),
          "capability", f"{p.major}.{p.minor}")
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton missing:", exc)
EOF
}

# Compile every autotuning config of every kernel at the benchmark's shapes, one process per
# config, in parallel: the autotuner afterwards finds them all in Triton's on-disk cache and only
# times them (compiling them one after another inside it took over a minute per shape).
precompile_configs() {
  local n
  n=$("$PY" -c "from ap3d_kernels.backends.triton.configs import GPU_CONFIG_CHOICES as g; print(len(g['fwd']))") || return 1
  local pids=() i
  for i in $(seq 0 $((n - 1))); do
    AP3D_TRITON_CONFIG=$i "$PY" -c '
import sys
import torch
sys.path.insert(0, "bench")
from bench_apm import STAGES  # the shapes the tuned benchmark runs
from ap3d_kernels import apm
for C, H, W in STAGES.values():
    for dtype in (torch.float32, torch.bfloat16):
        ck = C // 16
        x = torch.randn(2, C, 4, H, W, device="cuda", dtype=dtype, requires_grad=True)
        w = [torch.randn(ck, C, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3)]
        w.append(torch.randn(ck, device="cuda", dtype=dtype, requires_grad=True))
        apm(x, *w, backend="triton").sum().backward()
torch.cuda.synchronize()
' &
    pids+=($!)
  done
  local failed=0
  for i in "${pids[@]}"; do wait "$i" || failed=1; done
  return $failed
}

# GPU_CHECK_STEPS picks steps (comma list; default all), GPU_CHECK_TESTS the test paths.
STEPS=${GPU_CHECK_STEPS:-machine,build,tests,bench_apm,train,bench_model,profile,tune}
want() { [[ ",$STEPS," == *",$1,"* ]]; }
want machine && step machine 30 machine_facts
# The CPU extension is built in place (no pip, no network); the GPU path itself needs only Triton.
want build && step build 120 "$PY" setup.py build_ext --inplace
export AP3D_TRITON_AUTOTUNE=0
read -r -a TEST_PATHS <<<"${GPU_CHECK_TESTS:-tests}"
want tests && step tests 150 "$PY" -m pytest -q -m "$PYTEST_MARK" "${PYTEST_PAR[@]}" -p no:cacheprovider \
  --junitxml="$LOGS/pytest.xml" "${TEST_PATHS[@]}"
want bench_apm && step bench_apm 150 "$PY" bench/bench_apm.py "${BENCH_APM_ARGS[@]}" --out-dir "$OUT_DIR"
want train && step train 150 "$PY" -m reid.train "${TRAIN_ARGS[@]}" --output-dir "$OUT_DIR/train_ap3d"
if want bench_model && [ -f bench/bench_model.py ]; then
  step bench_model 150 "$PY" bench/bench_model.py "${BENCH_MODEL_ARGS[@]}" --out-dir "$OUT_DIR"
fi
if want profile; then  # where the fused APM's time goes, kernel by kernel (first config of each kernel)
  step profile_bf16 60 "$PY" bench/profile_apm.py --device "$DEVICE" --dtype bfloat16 "${PROFILE_ARGS[@]}"
  step profile_fp32 60 "$PY" bench/profile_apm.py --device "$DEVICE" --dtype float32 "${PROFILE_ARGS[@]}"
  # AP3D's training step against C2D's, op by op: where AP3D's extra time goes (into the archive)
  step profile_model 120 "$PY" bench/bench_model.py "${PROFILE_MODEL_ARGS[@]}" --out-dir "$LOGS/profile_model"
fi
if want tune && [ "$SMOKE" = 0 ]; then
  step precompile 120 precompile_configs
  export AP3D_TRITON_AUTOTUNE=1
  step bench_apm_tuned 150 "$PY" bench/bench_apm.py "${BENCH_APM_ARGS[@]}" --no-sweep --no-flex \
    --out-dir "$OUT_DIR/tuned"
fi

# ---- summary -------------------------------------------------------------------------------------
{
  echo "# GPU check summary ($(date -u +%FT%TZ), $(( $(date +%s) - START )) s, device $DEVICE)"
  head -n 12 "$LOGS/machine.log"
  echo
  printf '%s\n' "${SUMMARY[@]}"
  echo
  if [ -f "$LOGS/tests.log" ]; then
    echo "tests: $(grep -E '(passed|failed|skipped|error|no tests ran)' "$LOGS/tests.log" | tail -n 1)"
  fi
  for md in "$OUT_DIR"/apm_*.md "$OUT_DIR"/model_*.md "$OUT_DIR"/tuned/apm_*.md; do
    [ -f "$md" ] || continue
    echo; echo "## $(basename "$md")"; grep -E '^\|' "$md" | head -n 40
  done
  for md in "$LOGS"/profile_model/model_*.md; do
    [ -f "$md" ] || continue
    echo; echo "## AP3D vs C2D step, op by op"; grep -E '^\|' "$md" | tail -n 16
  done
  for prof in "$LOGS"/profile_*.log; do
    [ -f "$prof" ] || continue
    echo; echo "## $(basename "$prof" .log)"; grep -v -E '^(USDT|STAGE|-{20})' "$prof" | cut -c1-150 | head -n 34
  done
  if [ -f "$LOGS/train.log" ]; then
    echo; echo "## training (last lines)"; grep -E 'Rank-1|mAP|clips/s|epoch' "$LOGS/train.log" | tail -n 12
  fi
} | tee "$OUT_DIR/summary.txt"

# Everything else in one archive (the device tool brings back at most 8 files), then only the
# eight files listed at the top are left in OUT_DIR.
cp "$OUT_DIR/train_ap3d/results.json" "$LOGS/train_results.json" 2>/dev/null
tar -czf "$OUT_DIR/logs.tar.gz" -C "$OUT_DIR" logs \
  $(cd "$OUT_DIR" && ls -d train_ap3d/*.json train_ap3d/*.txt train_ap3d/*.yaml train_ap3d/*.jsonl train_ap3d/*.log 2>/dev/null)
rm -rf "$OUT_DIR/cache" "$OUT_DIR/train_ap3d" "$LOGS"
exit "$FAILED"
