"""python -m fastgan selftest: passes on this machine's backends (cpu, and Triton in the interpreter),
and reports FAIL with a non-zero exit code when a backend is broken (a kernel's result perturbed, or
an exception)."""
import io
import os
import subprocess
import sys

import pytest
import torch

from fastgan import selftest
from fastgan.ops._registry import triton_module


def _run(**kw):
    out = io.StringIO()
    rc = selftest.run(out=out, **kw)
    return rc, out.getvalue().splitlines()


def test_every_op_passes_on_the_cpu_backends():
    rc, lines = _run(devices=["cpu"])
    rows = [line for line in lines if line.split()[:1] and line.split()[0] in selftest.OPS]
    backends = {line.split()[1] for line in rows}
    assert backends == ({"cpu", "triton"} if not torch.cuda.is_available() else {"cpu"}), lines
    # every op x backend x dtype once, each a PASS
    assert len(rows) == len(selftest.OPS) * len(backends) * 2, lines
    assert all(line.split()[8] == "PASS" for line in rows), "\n".join(lines)
    assert rc == 0 and lines[-1].startswith(f"selftest: {len(rows)}/{len(rows)} PASS")


def test_a_perturbed_kernel_is_a_fail(monkeypatch):
    # The Triton spectral-norm apply kernel 0.1 % off: above every float tolerance, so FAIL.
    kernels = triton_module("spectral_norm")
    good = kernels.apply
    monkeypatch.setattr(kernels, "apply", lambda *a: good(*a) * 1.001)
    rc, lines = _run(ops=["spectral_norm", "2c"], devices=["cpu"], backends=["triton"])
    sn = [line for line in lines if line.startswith("spectral_norm")]
    assert sn and all(line.split()[8] == "FAIL" for line in sn), lines
    assert all(line.split()[8] == "PASS" for line in lines if line.startswith("2c")), lines
    assert rc == 1 and "FAIL" in lines[-1]


def test_a_crashing_backend_is_a_fail_with_its_message(monkeypatch):
    fused, reference = selftest.table()["2c"]

    def broken(*args, backend):
        if backend == "cpu":
            raise RuntimeError("kernel exploded")
        return fused(*args, backend=backend)

    monkeypatch.setitem(selftest.table(), "2c", (broken, reference))
    rc, lines = _run(ops=["2c"], devices=["cpu"], backends=["cpu"])
    assert rc == 1
    assert any("FAIL" in line and "RuntimeError: kernel exploded" in line for line in lines), lines


def test_gradient_errors_are_checked(monkeypatch):
    # Right value, wrong gradient: FAIL.
    fused, reference = selftest.table()["clip"]

    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 1.01

    monkeypatch.setitem(selftest.table(), "clip",
                        (lambda a, b, backend: fused(Scale.apply(a), b, backend=backend), reference))
    rc, lines = _run(ops=["clip"], devices=["cpu"], backends=["cpu"])
    assert rc == 1 and all(line.split()[8] == "FAIL" for line in lines if line.startswith("clip")), lines


def test_command_line():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the command sets it itself on a machine without a GPU
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-m", "fastgan", "selftest", "--ops", "ntxent", "--device", "cpu"],
                         capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("ntxent")]
    expected = {"cpu", "triton"} if not torch.cuda.is_available() else {"cpu"}
    assert {line.split()[1] for line in rows} == expected and all("PASS" in line for line in rows), res.stdout


def test_sanitizer_driver_runs_every_op():
    # bench/gpu_sanitize.py is what compute-sanitizer runs on a GPU: a dry run of the driver itself on
    # the CPU backend, so the GPU step cannot fail for a reason of its own.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_sanitize.py"), "--device", "cpu",
                          "--backends", "cpu", "--dtypes", "float32"], capture_output=True, text=True, cwd=root,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert sum(line.endswith(" ran") for line in lines[:-1]) == len(selftest.OPS) + 1, res.stdout
    assert lines[-1] == "gpu_sanitize: all ran"
