"""python -m fastgan selftest: every available backend against the pure-PyTorch reference, here.

Run it first on a new machine (a GPU especially): small odd cases of every op, forward and backward,
on every backend that can run on this machine's devices (the C++ CPU kernels; the CUDA kernels and
Triton on a GPU; Triton in its interpreter on a CPU-only machine), each compared with the float64
reference of the same inputs. One line per op, backend and dtype:

    op  backend  device  dtype  value <max rel. error>  grad <max rel. error over the inputs>  PASS|FAIL

Errors are relative to the float64 reference (norm of the difference over the norm of the reference);
the tolerances are those of the test suite (float64 1e-10, float32 2e-5, float16 1e-2, bfloat16 2e-2).
An exception counts as a FAIL and its message is printed. The exit code is 1 if anything failed, so
`python -m fastgan selftest && train.py` is safe.
"""
import argparse
import math
import os
import subprocess
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch

TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(op: str, dtype: torch.dtype, device: str, seed: int = 0):
    """(float inputs, other arguments): small odd sizes, several labels, one singleton class."""
    g = _g(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    n, d = 7, 19
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3], device=device)
    if op in ("2c", "d2d"):
        return [rnd(n, d), rnd(n, d)], [labels]
    if op == "supcon":
        return [rnd(n, d)], [labels]
    if op == "clip":
        return [rnd(n, d), rnd(n, d)], []
    if op == "ntxent":
        return [rnd(2 * 4, d)], []  # two stacked views of 4 samples
    if op == "infonce":
        b, r, hw = 3, 13, 5
        return [rnd(b, r, hw) / math.sqrt(r), rnd(b, r, 1)], []
    if op == "spectral_norm":
        # A conv weight (5 out, 3 x 3 x 3 in) with u, v; u, v are updated in place (one step).
        w = rnd(5, 3, 3, 3)
        u = torch.nn.functional.normalize(rnd(5).double(), dim=0).to(dtype if dtype == torch.float64 else torch.float32)
        v = torch.nn.functional.normalize(rnd(27).double(), dim=0).to(u.dtype)
        return [w], [u, v]
    return [rnd(n, d)], []  # cosine_similarity_matrix


def _ops() -> Dict[str, Tuple[Callable, Callable]]:
    """op -> (fastgan function of (*inputs, *others, backend), reference function of the same)."""
    import fastgan.functional as FG
    from fastgan import reference as R
    from fastgan.reference import spectral_norm as RS

    def cosine(a, backend):
        out = FG.cosine_similarity_matrix(a, backend=backend)
        return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)).sum()

    def cosine_ref(a):
        out = R.cosine_similarity_matrix(a)
        return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)).sum()

    def sn(w, u, v, backend):
        out = FG.spectral_normalize(w, u, v, 1, 1e-12, backend=backend)
        return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)).sum()

    def sn_ref(w, u, v):
        out = RS.spectral_normalize(w, u, v, 1, 1e-12)
        return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)).sum()

    return {
        "cosine_similarity_matrix": (cosine, cosine_ref),
        "2c": (lambda e, p, y, backend: FG.conditional_contrastive_loss(e, p, y, 0.5, backend=backend),
               lambda e, p, y: R.conditional_contrastive_loss(e, p, y, 0.5)),
        "d2d": (lambda e, p, y, backend: FG.data2data_cross_entropy_loss(e, p, y, 0.5, 0.98, backend=backend),
                lambda e, p, y: R.data2data_cross_entropy_loss(e, p, y, 0.5, 0.98)),
        "ntxent": (lambda z, backend: FG.nt_xent_loss(z, 0.5, backend=backend), lambda z: R.nt_xent_loss(z, 0.5)),
        "supcon": (lambda f, y, backend: FG.supcon_loss(f, y, 0.1, backend=backend),
                   lambda f, y: R.supcon_loss(f, y, 0.1)),
        "clip": (lambda a, b, backend: FG.symmetric_infonce_loss(a, b, 0.1, backend=backend),
                 lambda a, b: R.symmetric_infonce_loss(a, b, 0.1)),
        "infonce": (lambda l, m, backend: FG.infonce_local_global(l, m, backend=backend),
                    lambda l, m: R.infonce_local_global(l, m)),
        "spectral_norm": (sn, sn_ref),
    }


OPS = ("cosine_similarity_matrix", "2c", "d2d", "ntxent", "supcon", "clip", "infonce", "spectral_norm")
_TABLE: Dict[str, Tuple[Callable, Callable]] = {}  # filled on first use (tests may replace entries)


def table() -> Dict[str, Tuple[Callable, Callable]]:
    if not _TABLE:
        _TABLE.update(_ops())
    return _TABLE


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (absolute when ref is zero); inf on a shape mismatch or a
    non-finite entry where the reference is finite (or the reverse)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.shape != ref.shape or not torch.equal(torch.isfinite(out), torch.isfinite(ref)):
        return math.inf
    fin = torch.isfinite(ref)
    diff = float((out[fin] - ref[fin]).norm())
    denom = float(ref[fin].norm())
    return diff / denom if denom > 0 else diff


def check(op: str, backend: str, device: str, dtype: torch.dtype) -> dict:
    """One line's worth: value and gradient errors of `backend` against the float64 reference."""
    fused, reference = table()[op]
    xs, others = _inputs(op, dtype, device)
    xs = [x.requires_grad_() for x in xs]
    ref_xs = [x.detach().double().cpu().requires_grad_() for x in xs]
    ref_others = [o.detach().cpu().double() if o.is_floating_point() else o.cpu() for o in others]
    row = {"op": op, "backend": backend, "device": device, "dtype": str(dtype).replace("torch.", "")}
    t0 = time.perf_counter()
    try:
        # The spectral-norm state (u, v) is updated in place: the reference gets its own copy.
        value = fused(*xs, *[o.clone() for o in others], backend=backend)
        grads = torch.autograd.grad(value, xs)
        ref_value = reference(*ref_xs, *ref_others)
        ref_grads = torch.autograd.grad(ref_value, ref_xs)
        row["value_err"] = rel_err(value, ref_value)
        row["grad_err"] = max(rel_err(a, b) for a, b in zip(grads, ref_grads))
        row["ok"] = row["value_err"] <= TOL[dtype] and row["grad_err"] <= TOL[dtype]
    except Exception as exc:  # a crash is a failure, reported with its message
        row["ok"] = False
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    row["seconds"] = time.perf_counter() - t0
    return row


def plan(devices: Optional[List[str]] = None, backends: Optional[List[str]] = None) -> List[Tuple[str, str, torch.dtype]]:
    """(backend, device, dtype) combinations that can run here. float64 where the backend has
    float64 kernels (the C++ CPU kernels and the Triton interpreter); half precision on the GPU
    (the interpreter computes wrong bfloat16 values: it is left out there)."""
    from .backend import triton_interpreted, unavailable_reason

    devices = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    out = []
    for device in devices:
        for backend in ("cpu", "cuda", "triton"):
            if backends and backend not in backends:
                continue
            if unavailable_reason(backend, torch.device(device)) is not None:
                continue
            if device == "cuda":
                dtypes = [torch.float32, torch.float16, torch.bfloat16]
            else:
                dtypes = [torch.float32, torch.float64]
                if backend == "triton" and not triton_interpreted():
                    continue
            out += [(backend, device, dt) for dt in dtypes]
    return out


def unavailable(devices: Optional[List[str]] = None) -> List[str]:
    from .backend import unavailable_reason

    devices = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    lines = []
    for device in devices:
        for backend in ("cpu", "cuda", "triton"):
            reason = unavailable_reason(backend, torch.device(device))
            if reason is not None and not (device == "cpu" and backend == "cuda"):
                lines.append(f"  {backend} on {device}: not tested ({reason})")
    return lines


def format_row(r: dict) -> str:
    head = f"{r['op']:<26}{r['backend']:<8}{r['device']:<6}{r['dtype']:<10}"
    if "error" in r:
        return head + f"FAIL  {r['error']}"
    return head + f"value {r['value_err']:.1e}  grad {r['grad_err']:.1e}  {'PASS' if r['ok'] else 'FAIL'}" \
                  f"  ({r['seconds']:.2f} s)"


def run(ops=None, devices=None, backends=None, out=sys.stdout) -> int:
    combos = plan(devices, backends)
    if not combos:
        print("selftest: no fused backend can run here", file=out)
        return 1
    failed = 0
    for backend, device, dtype in combos:
        for op in ops or OPS:
            with warnings.catch_warnings():
                # The Triton interpreter's numpy warns on the masked lanes (log(0) of padding).
                warnings.simplefilter("ignore", RuntimeWarning)
                row = check(op, backend, device, dtype)
            failed += not row["ok"]
            print(format_row(row), file=out, flush=True)
    for line in unavailable(devices):
        print(line, file=out)
    total = len(combos) * len(ops or OPS)
    print(f"selftest: {total - failed}/{total} PASS" + (f", {failed} FAIL" if failed else ""), file=out)
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastgan selftest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", nargs="+", choices=OPS)
    p.add_argument("--device", nargs="+", choices=("cpu", "cuda"), help="default: every device here")
    p.add_argument("--backends", nargs="+", choices=("cpu", "cuda", "triton"))
    args = p.parse_args(argv)
    if (not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") is None
            and os.environ.get("_FASTGAN_SELFTEST_CHILD") is None):
        # No GPU: Triton can only run in its interpreter, which must be chosen before triton is
        # imported (torch.compile imports it with fastgan). Run again in a fresh interpreter.
        env = dict(os.environ, TRITON_INTERPRET="1", _FASTGAN_SELFTEST_CHILD="1")
        argv = sys.argv[1:] if argv is None else ["selftest"] + list(argv)
        if argv[:1] != ["selftest"]:
            argv = ["selftest"] + argv
        return subprocess.call([sys.executable, "-m", "fastgan"] + argv, env=env)
    return run(args.ops, args.device, args.backends)
