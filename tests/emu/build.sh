#!/usr/bin/env bash
# Builds the emulated CUDA kernels (csrc/cuda/*.cu as C++ on the CPU, csrc/emu/simt.h) and the test
# entry points into one shared library under AddressSanitizer and UBSan: build.sh OUT.so
# tests/test_cuda_emulation.py calls it (cached by a hash of these sources).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
flags=(-std=c++17 -O1 -g -fPIC -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
       -Wall -Wextra -Wno-unknown-pragmas -Werror -Icsrc/emu/include -Icsrc -Icsrc/cuda)
srcs=(csrc/cuda/*.cu tests/emu/*.cu tests/emu/entry.cpp)
# One compiler per translation unit, two at a time (CI has two cores).
printf '%s\n' "${srcs[@]}" | xargs -P "${JOBS:-2}" -I{} sh -c \
  '${CXX:-g++} "$@" -x c++ -c "{}" -o "'"$tmp"'/$(basename "{}").o"' sh "${flags[@]}"
objs=("$tmp"/*.o)
${CXX:-g++} -shared -fsanitize=address,undefined -o "$out.tmp" "${objs[@]}"
mv "$out.tmp" "$out"
