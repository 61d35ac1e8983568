#!/usr/bin/env bash
# shellcheck disable=SC2329  # the step functions run through run_step (exported, bash -c)
# Everything a GPU session needs, in one call (issue 13.4), on a bare H100/H200 machine (PyTorch,
# CUDA toolkit with nvcc and compute-sanitizer, Triton, ninja; no network), in under 8 minutes:
#   1 build      the extension with the CUDA kernels (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise)
#   2 info       python -m fastgan info, nvidia-smi
#   3 selftest   python -m fastgan selftest (every backend against the reference)
#   4 bench      python -m fastgan bench --quick on the GPU (the sizes of issue 14.5's targets),
#                bfloat16, with the performance model's prediction next to each measurement
#   5 tests      the CUDA and Triton cases of the test suite (pytest)
#   6-8 memcheck, racecheck, synccheck   compute-sanitizer on bench/gpu_sanitize.py (each op once)
# Every step is time-boxed (timeout) within one overall budget, so one hang cannot eat the session;
# a failing step is recorded (rc per step) and the next one runs. Results:
#   OUTDIR/summary.txt      step, rc, seconds, and the one-line verdict of each step
#   OUTDIR/selftest.txt     the selftest's lines
#   OUTDIR/tests.txt        pytest's summary (failures and errors)
#   OUTDIR/sanitize.txt     the sanitizers' error summaries
#   OUTDIR/table.txt, results.csv, results.json   the benchmark
#   OUTDIR/gpu_results.tar.gz   every log and file above (the device tool returns at most 8 files)
# usage: bash bench/gpu.sh OUTDIR        (env: GPU_SH_BUDGET seconds, default 450; SKIP_BUILD=1)
set -u
cd "$(dirname "$0")/.." || exit 2
OUTDIR=${1:-${OUT:-}}
if [ -z "$OUTDIR" ]; then
  echo "usage: bash bench/gpu.sh OUTDIR" >&2
  exit 2
fi
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d)
LOGS=$WORK/logs
mkdir -p "$LOGS"
BUDGET=${GPU_SH_BUDGET:-450}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1  # no network: never try an index
SUMMARY=$WORK/summary.txt
echo "gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) budget ${BUDGET}s, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')" > "$SUMMARY"
printf '%-10s %4s %6s  %s\n' step rc secs verdict >> "$SUMMARY"
FAILED=0

# run_step NAME MAX_SECONDS VERDICT_REGEX CMD...: runs CMD under timeout min(MAX, time left - 20 s),
# its output into logs/NAME.log; records rc, seconds and the last line matching VERDICT_REGEX.
run_step() {
  local name=$1 max=$2 pattern=$3
  shift 3
  local now left limit t0 rc verdict
  now=$(date +%s)
  left=$((DEADLINE - now - 20))
  limit=$((max < left ? max : left))
  if [ "$limit" -lt 10 ]; then
    printf '%-10s %4s %6s  %s\n' "$name" skip 0 "no time left in the ${BUDGET}s budget" >> "$SUMMARY"
    FAILED=1
    return 0
  fi
  echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
  t0=$(date +%s)
  # bash -c: a step may be one of the functions below (exported), which timeout cannot run itself.
  timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  verdict=$(grep -E "$pattern" "$LOGS/$name.log" | tail -n 1 | cut -c1-150)
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && verdict="TIMED OUT after ${limit}s; ${verdict}"
  [ "$rc" -ne 0 ] && FAILED=1
  printf '%-10s %4s %6s  %s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$verdict" >> "$SUMMARY"
  tail -n 3 "$LOGS/$name.log"
  return 0
}

build() {
  if [ "${SKIP_BUILD:-0}" = 1 ]; then echo "build skipped (SKIP_BUILD=1)"; return 0; fi
  # In place (fastgan/_C*.so next to the sources): no install, no index, no build isolation.
  FASTGAN_CUDA=1 "$PY" setup.py build_ext --inplace && echo "build ok"
}

gpu_info() {
  nvidia-smi || true
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  "$PY" -m fastgan info
}

tests() {
  local xdist=()
  # Parallel where there are cores to spare (a 16-core GPU host), serial on a small machine.
  [ "$(nproc)" -ge 8 ] && "$PY" -c "import xdist" 2>/dev/null && xdist=(-n 8)
  local files=()
  for f in tests/test_cuda_*.py tests/test_triton_*.py tests/test_ops.py tests/test_functional.py \
           tests/test_infonce.py tests/test_infonce_lse.py tests/test_spectral_norm_ops.py tests/test_spectral_norm.py \
           tests/test_pair_cosine.py tests/test_loss_terms.py; do
    [ -e "$f" ] && files+=("$f")
  done
  # The CUDA-only and Triton-only files whole (-k matches module names too), elsewhere their cases.
  "$PY" -m pytest -q -p no:cacheprovider "${xdist[@]}" -rfE -k "cuda or triton" "${files[@]}"
}

sanitize() {
  local tool=$1 cs
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  [ -x "$cs" ] || { echo "compute-sanitizer not found"; return 3; }
  local extra=()
  [ "$tool" = memcheck ] && extra=(--leak-check no)
  # No caching allocator under memcheck: an out-of-bounds access inside a cached block is caught.
  PYTORCH_NO_CUDA_MEMORY_CACHING=$([ "$tool" = memcheck ] && echo 1 || echo 0) \
    "$cs" --tool "$tool" "${extra[@]}" --error-exitcode 1 --print-limit 20 "$PY" bench/gpu_sanitize.py
}

export -f build gpu_info tests sanitize
export PY WORK
run_step build 240 "build ok|error|Error" build
run_step info 30 "extension|auto" gpu_info
run_step selftest 120 "^selftest:" "$PY" -m fastgan selftest
# The benchmark before the tests: its predicted-vs-measured table is what a session must bring back.
# --quick: the sizes of issue 14.5's targets (2C at 64x512 and 1024x768, InfoNCE 64x64x1024, the
# 12-layer SN model); each torch.compile path compiles once per case, which is most of the time.
run_step bench 180 "wrote|Error" "$PY" -m fastgan bench --device cuda --dtype bfloat16 --quick --budget 0.2 \
    --out "$WORK/bench"
run_step tests 150 "passed|failed|error" tests
for tool in memcheck racecheck synccheck; do
  run_step "$tool" 45 "ERROR SUMMARY|gpu_sanitize:|not found" sanitize "$tool"
done

echo "total $(($(date +%s) - START))s, $([ "$FAILED" = 0 ] && echo 'every step passed' || echo 'SOME STEP FAILED')" >> "$SUMMARY"
# The <= 8 top-level files, then everything in one tarball.
cp "$SUMMARY" "$OUTDIR/summary.txt"
grep -E "PASS|FAIL|selftest:|not tested" "$LOGS/selftest.log" > "$OUTDIR/selftest.txt" 2>/dev/null
grep -E "^(FAILED|ERROR)|passed|failed|error" "$LOGS/tests.log" > "$OUTDIR/tests.txt" 2>/dev/null
for tool in memcheck racecheck synccheck; do
  echo "== $tool"
  grep -E "ERROR SUMMARY|RAISED|gpu_sanitize:|Invalid|Race|Barrier|not found" "$LOGS/$tool.log" 2>/dev/null | head -n 40
done > "$OUTDIR/sanitize.txt"
for f in table.txt results.csv results.json; do
  [ -e "$WORK/bench/$f" ] && cp "$WORK/bench/$f" "$OUTDIR/$f"
done
tar -C "$WORK" -czf "$OUTDIR/gpu_results.tar.gz" .
rm -rf "$WORK"
cat "$OUTDIR/summary.txt"
exit "$FAILED"
