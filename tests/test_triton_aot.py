"""Triton kernels compiled ahead of time for sm_80 and sm_90a (bench/triton_aot.py), on a CPU-only
machine: the interpreter the other Triton tests use never lowers a kernel, so it cannot see a compile
error, a spill or a missing tensor-core path. Also: the launch configuration the wrappers choose on a
GPU (triton_kernels/configs.py) and the float32 matmul precision reaching the kernels."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastgan.ops._registry import triton_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLSE = triton_module("contrastive_lse")
INFO = triton_module("infonce_lse")
CONFIGS = triton_module("configs")
# The kernels whose main products must be on tensor cores for half inputs.
MMA_KERNELS = {"contrastive_lse._forward_kernel", "contrastive_lse._backward_rows_kernel",
               "contrastive_lse._backward_cols_kernel", "infonce_lse._forward_kernel",
               "infonce_lse._backward_m_kernel", "infonce_lse._backward_l_kernel",
               "cosine_similarity_matrix._scaled_gemm_kernel"}


@pytest.fixture(scope="module")
def aot(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "triton_aot.py"), "--cover", "each",
                           "--out", str(out / "table.md"), "--json", str(out / "rows.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"AOT compile failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    with open(out / "rows.json") as f:
        return json.load(f)


def test_aot_every_kernel_compiles_for_both_targets(aot):
    rows = aot["rows"]
    assert not [r for r in rows if r["error"]]
    for arch in (80, 90):
        compiled = {r["kernel"] for r in rows if r["arch"] == arch}
        assert compiled == set(aot["entry_kernels"]), f"sm_{arch}: not compiled: {set(aot['entry_kernels']) - compiled}"
    # Every configuration axis reached the compiler with each of its values.
    configs = " ".join(r["config"] for r in rows if r["kernel"].startswith("contrastive_lse."))
    for word in ("fp32", "fp16", "bf16", "K=1", "K=2", "K=3", "D=100", "D=1536", "labels", "extra", "relu"):
        assert word in configs
    assert "channels_last" in " ".join(r["config"] for r in rows if r["kernel"].startswith("infonce_lse."))


def test_aot_no_spills(aot):
    # Zero spill bytes also rules out the 32-register collapse seen before (32 registers, KBs spilled).
    bad = [(r["kernel"], r["config"], r["arch"], r["regs"], r["spill_stores"]) for r in aot["rows"]
           if r["spill_stores"] or r["spill_loads"]]
    assert not bad, f"spills: {bad}"


def test_aot_tensor_cores_for_half(aot):
    for r in aot["rows"]:
        if r["kernel"] in MMA_KERNELS and r["config"].split()[0] in ("fp16", "bf16"):
            found = r["hgmma"] if r["arch"] == 90 else r["hmma"]
            assert found, f"{r['kernel']} [{r['config']}] sm_{r['arch']}: no {'HGMMA' if r['arch'] == 90 else 'HMMA'}"


def _record(monkeypatch, module, name, seen):
    kernel = getattr(module, name)
    original = kernel.run

    def run(*args, **kwargs):
        seen.append((name, kwargs.get("PREC"), kwargs.get("GPREC")))
        return original(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", run)


@pytest.mark.parametrize("setting,want", [("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")])
def test_float32_matmul_precision_reaches_kernels(setting, want, monkeypatch):
    # The interpreter does not round to TF32, so the flag itself is what is checked here.
    seen = []
    for name in ("_forward_kernel", "_backward_rows_kernel", "_backward_cols_kernel"):
        _record(monkeypatch, CLSE, name, seen)
    for name in ("_forward_kernel", "_backward_m_kernel", "_backward_l_kernel"):
        _record(monkeypatch, INFO, name, seen)
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        a, b = torch.randn(5, 7), torch.randn(6, 7)
        args = (2.0, 0.0, False, True, 1e-8, False, 0, [0])
        lse, _ = CLSE.contrastive_lse_forward(a, b, None, None, None, *args)
        CLSE.contrastive_lse_backward(torch.ones_like(lse), a, b, None, None, None, lse, *args)
        l, m = torch.randn(3, 7, 4), torch.randn(3, 7)
        pos, neg = INFO.infonce_lse_forward(l, m, 2.0, None, True, 1e-8)
        INFO.infonce_lse_backward(torch.ones_like(pos), torch.ones_like(neg), l, m, neg, 2.0, None, True, 1e-8)
        # float64 is always IEEE.
        lse64, _ = CLSE.contrastive_lse_forward(a.double(), b.double(), None, None, None, *args)
    finally:
        torch.set_float32_matmul_precision(saved)
    assert len(seen) == 7
    for name, prec, gprec in seen[:6]:
        assert prec == want, (name, prec)
        assert gprec in (None, want), (name, gprec)
    assert seen[6][1] == "ieee"


def test_gpu_configs_are_chosen_per_arch():
    # The wrappers pick the table's configuration for the target, not the interpreter's.
    a = torch.randn(70, 100, dtype=torch.float16)
    for arch in (80, 90):
        with CONFIGS.force_arch(arch):
            meta, gmeta, launch = CLSE._meta(a, None, None, None, False, False, [0])
        cfg, want_launch = CONFIGS.contrastive(arch, torch.float16, 100)
        assert {k: meta[k] for k in cfg} == cfg and launch == want_launch
        assert str(gmeta["GT"]) == "fp16"
    meta, gmeta, launch = CLSE._meta(a, None, None, None, False, False, [0])
    assert launch == {} and (meta["BLOCK_N"], meta["BLOCK_M"], meta["BLOCK_D"]) == CLSE._blocks(100)
