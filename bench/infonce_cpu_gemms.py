"""The BLAS products of the CPU local x global InfoNCE kernel (csrc/cpu/infonce_lse.cpp), one
operand layout against another, at one size.

    python bench/infonce_cpu_gemms.py                       # (N, HW, R) = (64, 64, 1024), one thread
    python bench/infonce_cpu_gemms.py --size 128x64x1024 --threads 2 --reps 30

Each line: the N per-image products of one kind (forward scores Z_j = M L_j, backward
grad_l[j] = M^T D_j, backward grad_m += D_j L_j^T) in one layout, as ATen calls them; CPU time of
the process (less sensitive to other processes than wall time on a shared machine), median and
min over the repetitions, interleaved, and the rate in GFLOP/s. The kernel uses the fastest layout
of each kind: M^T copied contiguous for grad_l, grad_m accumulated transposed (P^T += L_j D_j^T).
"""
import argparse
import statistics
import time

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="64x64x1024", help="NxHWxR")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    n, hw, r = map(int, args.size.split("x"))
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    l = torch.randn(n, r, hw, generator=g)
    m = torch.randn(n, r, generator=g)
    d = torch.randn(n, n, hw, generator=g)
    mt = m.t().contiguous()
    z, gl = torch.empty(n, hw), torch.empty(r, hw)
    p_, pt = torch.zeros(n, r), torch.zeros(r, n)

    def each(f):
        return lambda: [f(j) for j in range(n)]

    paths = {
        "forward  Z_j = M L_j": each(lambda j: torch.mm(m, l[j], out=z)),
        "grad_l   M^T (view) D_j": each(lambda j: torch.mm(m.t(), d[j], out=gl)),
        "grad_l   M^T (contiguous) D_j [kernel]": each(lambda j: torch.mm(mt, d[j], out=gl)),
        "grad_m   P += D_j L_j^T": each(lambda j: p_.addmm_(d[j], l[j].t())),
        "grad_m   P^T += L_j D_j^T [kernel]": each(lambda j: pt.addmm_(l[j], d[j].t())),
    }
    times = {k: [] for k in paths}
    for f in paths.values():
        f()
    for _ in range(args.reps):
        for k, f in paths.items():
            t0 = time.process_time()
            f()
            times[k].append(time.process_time() - t0)
    flops = 2.0 * n * n * hw * r
    print(f"(N, HW, R) = ({n}, {hw}, {r}), {args.threads} thread(s), {args.reps} reps, CPU time of the process")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:40s} {med * 1e3:8.2f} ms (min {min(v) * 1e3:7.2f})  {flops / med / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
