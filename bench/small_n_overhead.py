"""Small-batch CPU loss overhead: fastgan "cpu" vs torch.compile(reference) vs eager reference,
forward+backward, per-thread CPU time (time.thread_time) with one thread and 2-thread wall time,
interleaved rounds (one rep of each path per round, order rotating), medians and p20/p80.
Usage: python bench/small_n_overhead.py [--ops 2c,d2d,ntxent,supcon] [--sizes 64x512] [--rounds 200]"""
import argparse
import statistics
import time

import torch

from fastgan.benchmark.cases import Case, make_inputs, paths


def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def step(fn, xs):
    for t in xs:
        if t.is_floating_point():
            t.grad = None
    fn(*xs).backward()


def measure(op, size, rounds, threads, clock):
    torch.set_num_threads(threads)
    case = Case(op, size, "cpu", torch.float32)
    tensors, labels = make_inputs(case)
    ps = {k: v for k, v in paths(case).items() if k in ("fastgan_cpu", "reference_compiled", "reference_eager")}
    xs = [t.detach().clone().requires_grad_(True) for t in tensors] + list(labels)
    for fn in ps.values():
        for _ in range(5):
            step(fn, xs)
    names = list(ps)
    res = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            t0 = clock()
            step(ps[k], xs)
            res[k].append((clock() - t0) * 1e6)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", default="2c,d2d,ntxent,supcon")
    ap.add_argument("--sizes", default="64x512")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--modes", type=int, default=2, help="1: one-thread CPU time only")
    a = ap.parse_args()
    for size in a.sizes.split(","):
        n, d = map(int, size.split("x"))
        for op in a.ops.split(","):
            for threads, clock, what in ((1, time.thread_time, "1-thread CPU us"), (2, time.perf_counter, "2-thread wall us"))[:a.modes]:
                res = measure(op, (n, d), a.rounds, threads, clock)
                med = {k: statistics.median(v) for k, v in res.items()}
                f = med["fastgan_cpu"]
                line = "  ".join(f"{k}={med[k]:.0f} [{q(v, .2):.0f},{q(v, .8):.0f}]" for k, v in res.items())
                print(f"{op:7s} {n}x{d} {what}: {line}  compiled/fastgan={med['reference_compiled'] / f:.2f}x "
                      f"eager/fastgan={med['reference_eager'] / f:.2f}x", flush=True)


if __name__ == "__main__":
    main()
