#!/usr/bin/env bash
# Compile-check the CUDA kernels (csrc/cuda/*.cu: plain CUDA, no torch headers) for sm_80 and sm_90.
# Nothing here runs on a GPU. The torch glue (csrc/cuda/*_cuda.cpp) is built only in CUDA builds; here
# it gets a syntax-only pass against the installed torch's headers, so a CUDA-only typo cannot wait
# for a GPU session to show.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The half/bfloat16 flags torch.utils.cpp_extension adds to every nvcc call (COMMON_NVCC_FLAGS): they
# remove __half's and __nv_bfloat16's implicit conversions, so code that compiles without them can
# still fail the real extension build.
torch_nvcc_flags="-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__"
# ptxas -v reports each kernel's registers and spills: any spill byte fails the check (issue 14.3:
# the accumulators stay on chip), e.g. "16 bytes spill stores" of an unroll too deep for sm_80.
for cu in csrc/cuda/*.cu; do
  for arch in 80 90; do
    log="$out/$(basename "$cu" .cu)_sm${arch}.ptxas"
    nvcc -c -std=c++17 -O3 --expt-relaxed-constexpr -Werror all-warnings -Icsrc $torch_nvcc_flags \
      -gencode "arch=compute_${arch},code=sm_${arch}" -Xptxas -v -o "$out/$(basename "$cu" .cu)_sm${arch}.o" "$cu" \
      2>"$log" || { cat "$log"; exit 1; }
    kernels=$(grep -c "bytes spill stores" "$log" || true)
    [ "$kernels" -gt 0 ] || { echo "nvcc: no ptxas report for $cu (sm_$arch)"; cat "$log"; exit 1; }
    if grep "bytes spill stores" "$log" | grep -vq " 0 bytes spill stores, 0 bytes spill loads"; then
      echo "nvcc: $cu spills on sm_$arch:"
      awk '/Compiling entry function/ { name = $0 } /bytes spill stores/ && !/ 0 bytes spill stores, 0 bytes spill loads/ {
             print name; print }' "$log"
      exit 1
    fi
    echo "nvcc: $cu compiles for sm_$arch, $kernels kernels, 0 spill bytes"
  done
done

# The CPU wheel ships the c10/cuda headers but not the one CMake generates (cuda_cmake_macros.h, a
# single define); a stand-in supplies it. Same flags as the build (fastgan/_build_config.py).
torch_inc=$(${PYTHON:-python3} -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")
mkdir -p "$out/shim/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$out/shim/c10/cuda/impl/cuda_cmake_macros.h"
# nvcc may be a wrapper script; ask it where its headers are.
cuda_inc=$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/.*INCLUDES="-I\([^"]*\)".*/\1/p' | head -n 1)
for cpp in csrc/cuda/*_cuda.cpp; do
  g++ -std=c++17 -fsyntax-only -DFASTGAN_WITH_CUDA=1 -Icsrc -I"$out/shim" -I"$torch_inc" \
    -I"$torch_inc/torch/csrc/api/include" -I"$cuda_inc" "$cpp" 2>"$out/glue.log" || { cat "$out/glue.log"; exit 1; }
  echo "g++: $cpp passes a syntax-only check against torch's headers"
done
