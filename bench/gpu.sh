#!/usr/bin/env bash
# Everything a GPU session needs, in one call of under ten minutes (the device tool's `run`):
#   build the CUDA extension, run the CUDA and Triton tests, run the GPU benchmark, leave the results
#   in $OUT (or bench/results/<gpu>-<date>/ when OUT is unset).
#   usage: bash bench/gpu.sh [--quick|--full]
set -uo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-}
GPU=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))")
DEST=${OUT:-bench/results/${GPU}-$(date -u +%Y%m%d)}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
status=0
{
  echo "== build ($(date -u))"
  FASTGAN_CUDA=1 python3 -m pip install -q --no-build-isolation --no-deps -e . || status=1
  python3 -m fastgan info
  echo "== tests: CUDA and Triton backends ($(date -u))"
  # The CUDA-only test files run whole; elsewhere the CUDA and Triton cases (-k matches module names too).
  timeout 200 python3 -m pytest -q tests/test_cuda_infonce_lse.py tests/test_cuda_spectral_norm.py \
      tests/test_ops.py tests/test_functional.py tests/test_infonce.py tests/test_infonce_lse.py \
      tests/test_spectral_norm_ops.py tests/test_triton_kernels.py -k "cuda or triton" || status=1
  echo "== compute-sanitizer memcheck and racecheck on the CUDA kernels ($(date -u))"
  for tool in memcheck racecheck; do
    timeout 45 compute-sanitizer --tool $tool --error-exitcode 1 python3 -m pytest -q -x tests/test_ops.py \
        -k "cuda and (2c or d2d or cosine) and not half" || status=1
    timeout 45 compute-sanitizer --tool $tool --error-exitcode 1 python3 -m pytest -q -x \
        tests/test_cuda_infonce_lse.py tests/test_cuda_spectral_norm.py -k "float32" || status=1
  done
  echo "== benchmark ($(date -u))"
  timeout 200 python3 -m fastgan bench --device cuda ${PRESET} --out "$DEST" || status=1
  echo "== done ($(date -u)), status $status"
} 2>&1 | tee "$DEST/gpu_log.txt"
exit $status
