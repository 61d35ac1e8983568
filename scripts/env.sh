# shellcheck shell=bash
# Set up (or check) fastgan's own virtual environment and build fastgan._C; sourced by
# scripts/bench.sh and scripts/test.sh. Idempotent: each step is skipped when what it installs or
# builds is already there and its inputs have not changed, so a second call takes seconds.
#
# Knobs (environment):
#   FASTGAN_VENV   where the environment lives (default: .venv in the repository, git-ignored)
#   PYTHON         the interpreter that creates it (default: python3; 3.10 or newer)
#   FASTGAN_TORCH  the torch requirement (default: the version CI tests, torch==2.13.0)
#   FASTGAN_CUDA   1/0 forces the CUDA kernels on/off (default: on when torch has CUDA and nvcc is found)
#   MAX_JOBS       parallel compile jobs (default: the number of CPUs)
# The environment is a plain venv (no --system-site-packages): what runs is what this script
# installed, the same on a fresh machine and on a developer's, and nothing outside it is changed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
VENV=${FASTGAN_VENV:-$ROOT/.venv}
TORCH_REQ=${FASTGAN_TORCH:-torch==2.13.0}
# The pins CI tests (README.md, "Install"): Triton 3.6's interpreter converts 1-element arrays with
# int(), which NumPy 2.4 refuses, hence numpy<2.4 (also in pyproject's extras). The two peers run in
# tests with --no-deps: their own requirements would pull other torch builds (a --no-deps install
# cannot be written as an extra).
NO_DEPS_PEERS="torch-mimicry==0.1.16 pytorch-metric-learning==2.9.0"
STAMPS=$VENV/.fastgan-stamps

say() { printf '[fastgan setup] %s\n' "$*"; }
fingerprint() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; printf '%s' "$2" >"$STAMPS/$1"; }

# 1. The virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  PY=${PYTHON:-python3}
  "$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' 2>/dev/null ||
    { echo "fastgan needs Python 3.10 or newer; set PYTHON=/path/to/python3.x" >&2; exit 1; }
  say "creating the virtual environment $VENV ($("$PY" --version))"
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python
pip_q() { "$VPY" -m pip install -q "$@"; }

# torch's version and CUDA version, read from torch/version.py without importing torch (seconds).
torch_meta() {
  "$VPY" - <<'PY' 2>/dev/null || true
import importlib.util, os, runpy
spec = importlib.util.find_spec("torch")
v = runpy.run_path(os.path.join(os.path.dirname(spec.origin), "version.py"))
print(v["__version__"], v.get("cuda") or "none")
PY
}

# 2. torch: the CUDA build where a GPU is present, else the CPU build (no multi-GB CUDA download).
torch_version=$(torch_meta | cut -d' ' -f1)
want_version=${TORCH_REQ#*==}
if [ -n "$torch_version" ] && { [ "$want_version" = "$TORCH_REQ" ] || [ "${torch_version%%+*}" = "$want_version" ]; }; then
  say "torch $torch_version already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  say "a GPU is present: installing $TORCH_REQ, the CUDA build from PyPI (several GB, a few minutes)"
  pip_q "$TORCH_REQ"
else
  # No GPU: the CPU wheel. One already on this machine's disk (pip's find-links) first, offline,
  # then its small dependencies from the usual index; else PyTorch's CPU index, whose torch has no
  # CUDA dependencies (about 200 MB instead of several GB).
  say "no GPU: installing $TORCH_REQ, the CPU build"
  if pip_q --no-index --no-deps "$TORCH_REQ" 2>/dev/null; then
    pip_q "$TORCH_REQ"
  else
    pip_q "$TORCH_REQ" --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
  fi
fi

# 3. fastgan itself (editable, pure Python: the extension is built in step 4) with the pinned
#    Triton and NumPy, plot support and the test tools (the extras of pyproject.toml).
deps_key=$(fingerprint pyproject.toml "${BASH_SOURCE[0]}")
if stamp_ok deps "$deps_key" && "$VPY" -c '
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) is None for m in ("fastgan", "triton", "pytest", "xdist", "matplotlib")))' 2>/dev/null; then
  say "fastgan (editable), Triton, NumPy, matplotlib and the test tools already installed"
else
  say "installing fastgan (editable) with the pinned Triton and NumPy, matplotlib and the test tools"
  pip_q "setuptools>=64" wheel ninja
  FASTGAN_NO_EXTENSION=1 pip_q --no-build-isolation -e ".[test,bench]"
  say "installing the peers the tests compare with, without their dependencies: $NO_DEPS_PEERS"
  # shellcheck disable=SC2086
  pip_q --no-deps $NO_DEPS_PEERS
  stamp_set deps "$deps_key"
fi

# 4. fastgan._C, in place (fastgan/_C*.so): rebuilt only when a source, a flag or torch changed.
# The CUDA kernels: FASTGAN_CUDA if set, else when torch has CUDA and nvcc is on PATH (as setup.py decides).
if [ -n "${FASTGAN_CUDA:-}" ]; then with_cuda=$FASTGAN_CUDA
elif [ "$(torch_meta | cut -d' ' -f2)" != none ] && command -v nvcc >/dev/null 2>&1; then with_cuda=1
else with_cuda=0; fi
ext_key=$(fingerprint $(find csrc -type f | sort) fastgan/_build_config.py setup.py; echo "$(torch_meta) cuda=$with_cuda native=${FASTGAN_NATIVE:-1}")
ext_key=$(printf '%s' "$ext_key" | sha256sum | cut -c1-16)
if stamp_ok ext "$ext_key" && ls fastgan/_C*.so >/dev/null 2>&1; then
  say "fastgan._C is up to date"
else
  say "building $("$VPY" -c 'import sys; sys.path.insert(0, "fastgan"); import _build_config as c; print(c.describe_build(bool(int(sys.argv[1]))))' "$with_cuda"); log: $VENV/build.log"
  start=$(date +%s)
  if ! FASTGAN_CUDA=$with_cuda MAX_JOBS=${MAX_JOBS:-$(nproc)} "$VPY" setup.py build_ext --inplace >"$VENV/build.log" 2>&1; then
    tail -n 40 "$VENV/build.log" >&2
    echo "fastgan: building fastgan._C failed (full log: $VENV/build.log)" >&2
    exit 1
  fi
  stamp_set ext "$ext_key"
  say "built fastgan._C in $(( $(date +%s) - start )) s"
fi
