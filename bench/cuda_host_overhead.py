"""Host time of one CUDA-backend loss step, measured without a GPU.

At GAN batch sizes a CUDA loss step is a chain of ~15-30 short launches (README, "Launches"); what the
host spends issuing them (Python, dispatcher, autograd nodes) decides whether the GPU waits on the host.
This measures that host work on the CPU: the CUDA backend's composition (perf_model.cuda_composition_on_cpu:
every branch CUDA tensors take, fastgan's CUDA ops run by their CPU kernels) at a size where those kernels
do next to nothing (N = 8, D = 8 by default), forward + backward, next to the "cpu" backend's whole-loss op,
the eager reference and torch.compile of the reference (compiled once per loss before the rounds) at the
same size. One thread, per-thread CPU time (time.thread_time), interleaved
rounds (one step of each path per round, order rotating), p20 / median / p80 in us.
A GPU host runs the same Python and dispatcher code (plus the driver's launch calls, not counted here).

Usage: python bench/cuda_host_overhead.py [--ops 2c,d2d,ntxent,supcon,clip] [--size 8x8] [--rounds 400]
"""
import argparse
import time

import torch

from fastgan.benchmark import perf_model as P
from fastgan.benchmark.cases import LOSS, Case, make_inputs


def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", default="2c,d2d,ntxent,supcon,clip")
    ap.add_argument("--size", default="8x8")
    ap.add_argument("--rounds", type=int, default=400)
    a = ap.parse_args()
    torch.set_num_threads(1)
    n, d = map(int, a.size.split("x"))
    print(f"host CPU us per loss step (forward + backward), N={n} D={d}, 1 thread, {a.rounds} interleaved rounds: "
          "p20 / median / p80")
    for op in a.ops.split(","):
        tensors, labels = make_inputs(Case(op, (2 * n if op == "ntxent" else n, d), "cpu", torch.float32))
        fused, ref = LOSS[op]

        def cuda_path(*xs):
            with P.cuda_composition_on_cpu():
                return fused(*xs, backend="cuda")

        paths = {"cuda_composition": cuda_path, "cpu_whole_op": lambda *xs: fused(*xs, backend="cpu"),
                 "reference_eager": ref, "reference_compiled": torch.compile(ref, dynamic=False)}
        xs = [t.detach().clone().requires_grad_(True) for t in tensors] + list(labels)
        res = {k: [] for k in paths}
        names = list(paths)
        for r in range(a.rounds + 20):  # the first 20 rounds warm up
            for k in names[r % len(names):] + names[:r % len(names)]:
                for t in xs:
                    t.grad = None
                t0 = time.thread_time()
                paths[k](*xs).backward()
                if r >= 20:
                    res[k].append((time.thread_time() - t0) * 1e6)
        print(f"{op:7s} " + "  ".join(f"{k} {q(v, .2):.0f} / {q(v, .5):.0f} / {q(v, .8):.0f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
