"""Backend selection, the FASTGAN_BACKEND override, errors for unavailable backends, the extension
loading and the layout (triton_kernels only under fastgan)."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import fastgan
from fastgan.backend import BackendUnavailableError, available_backends, resolve_backend


def test_auto_on_cpu_is_the_fused_cpu_kernel():
    assert fastgan.extension_info()["loaded"], fastgan.extension_info()
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"


def test_env_override(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    monkeypatch.setenv("FASTGAN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="CUDA tensors"):
        resolve_backend("auto", torch.device("cpu"))
    monkeypatch.setenv("FASTGAN_BACKEND", "nope")
    with pytest.raises(ValueError, match="FASTGAN_BACKEND must be one of"):
        resolve_backend("auto", torch.device("cpu"))


def test_explicit_backend_is_not_overridden(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    assert resolve_backend("cpu", torch.device("cpu")) == "cpu"


def test_available_backends_reasons():
    av = available_backends(torch.device("cpu"))
    assert set(av) == {"reference", "cpu", "cuda", "triton"}
    assert av["reference"] is None and av["cpu"] is None
    assert "CUDA tensors" in av["cuda"]


def test_ops_are_registered():
    for op in ("contrastive_lse", "contrastive_lse_backward", "cosine_similarity_matrix",
               "cosine_similarity_matrix_backward", "contrastive_lse_triton", "cosine_similarity_matrix_triton"):
        assert hasattr(torch.ops.fastgan, op), op
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastgan::contrastive_lse", "CPU")


def test_triton_kernels_live_under_fastgan_only():
    # PyPI has its own top-level `triton_kernels`: ours must only be reachable as fastgan.triton_kernels.
    spec = importlib.util.find_spec("triton_kernels")
    assert spec is None or "fastgan" not in (spec.origin or "")
    from fastgan._triton_loader import import_triton_kernels

    assert import_triton_kernels().__name__ == "fastgan.triton_kernels"


def test_import_without_extension_warns_once_and_falls_back(tmp_path):
    # A process where the compiled library can be neither imported nor built: one warning, and
    # backend="auto" runs the reference path.
    code = (
        "import sys, warnings\n"
        "sys.modules['fastgan._C'] = None\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import fastgan, torch\n"
        "    import fastgan.functional as F\n"
        "    e = torch.randn(4, 3); y = torch.tensor([0, 1, 0, 1])\n"
        "    out = F.conditional_contrastive_loss(e, e, y)\n"
        "    out2 = F.conditional_contrastive_loss(e, e, y)\n"
        "msgs = [str(x.message) for x in w if 'compiled extension' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "print(fastgan.backend.resolve_backend('auto', torch.device('cpu')))\n"
    )
    env = dict(os.environ, FASTGAN_JIT="0")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "reference"
