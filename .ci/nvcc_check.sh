#!/usr/bin/env bash
# Compile-check the CUDA kernels (csrc/cuda/*.cu: plain CUDA, no torch headers) for sm_80 and sm_90.
# Nothing here runs on a GPU; the torch glue (csrc/cuda/*_cuda.cpp) is built only in CUDA builds.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for cu in csrc/cuda/*.cu; do
  for arch in 80 90; do
    nvcc -c -std=c++17 -O3 --expt-relaxed-constexpr -Werror all-warnings -Icsrc \
      -gencode "arch=compute_${arch},code=sm_${arch}" -o "$out/$(basename "$cu" .cu)_sm${arch}.o" "$cu"
  done
  echo "nvcc: $cu compiles for sm_80 and sm_90"
done
