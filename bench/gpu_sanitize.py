"""Run every fused op once, forward and backward, on small odd CUDA cases: the workload of
compute-sanitizer (memcheck, racecheck, synccheck) in bench/gpu.sh.

    compute-sanitizer --tool memcheck python bench/gpu_sanitize.py [--backends cuda triton]

Small on purpose (sanitizers slow kernels down by 10-100x): the selftest's cases (N = 7, D = 19, odd
InfoNCE shapes, a 5x27 conv weight) in float32 and bfloat16, plus a 12-layer grouped spectral-norm
call (the multi-tensor kernels, eval and training). Correctness is the selftest's job: this only
runs the kernels and reports what raised. Exit code 1 if anything raised.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastgan import selftest  # noqa: E402
from fastgan.ops import spectral_norm as sn_ops  # noqa: E402


def _grouped_sn(backend: str, device: str) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(1, 1), (7, 1), (1, 7), (33, 40), (65, 257), (3, 130)] * 2  # 12 layers
    ws = [torch.randn(*s, generator=g).to(device) for s in shapes]
    us = [torch.nn.functional.normalize(torch.randn(s[0], generator=g), dim=0).to(device) for s in shapes]
    vs = [torch.nn.functional.normalize(torch.randn(s[1], generator=g), dim=0).to(device) for s in shapes]
    for n in (0, 1, 2):
        sn_ops.power_iteration(ws, us, vs, n, 1e-12, "hook", backend)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backends", nargs="+", default=["cuda", "triton"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--device", default="cuda", help="cpu: a dry run of the driver itself (tests)")
    args = p.parse_args(argv)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    failed = 0
    for backend in args.backends:
        for dt in args.dtypes:
            dtype = getattr(torch, dt)
            for op in selftest.OPS:
                fused, _ = selftest.table()[op]
                try:
                    xs, others = selftest._inputs(op, dtype, args.device)
                    xs = [x.requires_grad_() for x in xs]
                    torch.autograd.grad(fused(*xs, *others, backend=backend), xs)
                    sync()
                    status = "ran"
                except Exception as exc:
                    failed += 1
                    status = f"RAISED {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                print(f"{op:<26}{backend:<8}{dt:<10}{status}", flush=True)
        try:
            _grouped_sn(backend, args.device)
            sync()
            print(f"{'spectral_norm 12 layers':<26}{backend:<8}{'float32':<10}ran", flush=True)
        except Exception as exc:
            failed += 1
            print(f"{'spectral_norm 12 layers':<26}{backend:<8}{'float32':<10}RAISED {type(exc).__name__}: {exc}")
    print(f"gpu_sanitize: {'all ran' if not failed else f'{failed} raised'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
