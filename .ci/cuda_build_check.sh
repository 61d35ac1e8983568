#!/usr/bin/env bash
# The GPU user's build, without a GPU: build the full extension (CPU kernels, CUDA kernels and their
# torch glue, sm_80 and sm_90) against the CUDA torch the GPU machines run, load it, and check that
# the CUDA kernels are registered. Loading needs the CUDA runtime libraries (pip's nvidia-* packages,
# installed with that torch), not a driver. The CUDA toolkit is found from `nvcc` on PATH
# (fastgan/_build_config.py), so this also proves a wrapper-script nvcc works without CUDA_HOME.
#
# Its environment lives outside the test environment, cached between runs on one machine:
#   $FASTGAN_CI_CACHE (default ~/.cache/fastgan-ci)/cuda-venv   torch 2.11.0 (CUDA 13.0), about 5 GB
#   $FASTGAN_CI_CACHE/cuda-build                                  ninja's objects (incremental)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${FASTGAN_CI_CACHE:-$HOME/.cache/fastgan-ci}
VENV=$CACHE/cuda-venv
TORCH_REQ=${FASTGAN_CUDA_TORCH:-torch==2.11.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
say() { printf '[cuda build check] %s\n' "$*"; }
command -v nvcc >/dev/null 2>&1 || { say "no nvcc on PATH: skipped"; exit 0; }

start=$(date +%s)
mkdir -p "$CACHE"
[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "${PYTHON:-python3}" -m venv "$VENV"; }
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is None or not torch.__version__.startswith('${TORCH_REQ#*==}'))" 2>/dev/null; then
  say "installing $TORCH_REQ, the CUDA build (about 5 GB, cached in $VENV for later runs)"
  "$VENV/bin/python" -m pip install -q "$TORCH_REQ" "setuptools>=64" wheel ninja "numpy<2.4"
fi
say "torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)') ready after $(( $(date +%s) - start )) s"

build=$CACHE/cuda-build
mkdir -p "$build/lib" "$build/temp"
t0=$(date +%s)
say "building fastgan._C with the CUDA kernels for sm_80 and sm_90 (CUDA_HOME from nvcc; log: $build/build.log)"
if ! env -u CUDA_HOME -u CUDA_PATH FASTGAN_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$VENV/bin/python" setup.py build_ext --build-lib "$build/lib" --build-temp "$build/temp" >"$build/build.log" 2>&1; then
  tail -n 40 "$build/build.log"
  say "FAILED: the CUDA build does not compile or link"
  exit 1
fi
say "built in $(( $(date +%s) - t0 )) s"
so=$(ls "$build"/lib/fastgan/_C*.so)
"$VENV/bin/python" - "$so" <<'PY'
import sys

import torch

torch.ops.load_library(sys.argv[1])
ops = ("contrastive_lse", "contrastive_lse_backward", "cosine_similarity_matrix", "cosine_similarity_matrix_backward",
       "pair_cosine", "pair_cosine_backward", "lse_combine", "lse_combine_backward", "infonce_lse",
       "d2d_epilogue", "d2d_epilogue_backward", "supcon_epilogue", "supcon_epilogue_backward",
       "same_class_cosine_sum", "same_class_cosine_sum_backward",
       "spectral_norm_power_iteration_", "spectral_norm_apply")
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan::{op}", "CUDA")]
cpu = torch._C._dispatch_has_kernel_for_dispatch_key("fastgan::contrastive_lse", "CPU")
if missing or not cpu:
    sys.exit(f"[cuda build check] FAILED: no CUDA kernel registered for {missing} (CPU kernel: {cpu})")
print(f"[cuda build check] {sys.argv[1].rsplit('/', 1)[-1]} loads (torch {torch.__version__}, no GPU needed); "
      f"CUDA kernels registered for {', '.join(ops)}")
PY
say "done in $(( $(date +%s) - start )) s"
