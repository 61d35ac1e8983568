"""Save or recompute: where keeping the N x M scores stops paying, on this machine.

    python bench/score_budget_crossover.py                    # 2C, D=128 and 768, N = 256 .. 4096
    python bench/score_budget_crossover.py --ops 2c,clip --d 768 --n 512,1024,2048

For each size, forward+backward of the fused CPU loss with the score budget at 0 (recompute tile by
tile, extra memory O((N + M) D)) and unlimited (keep the scores: one elementwise pass plus the
gradient products in backward), interleaved, p20/p50/p80 over the repetitions, and the allocator's
extra peak of one step. The default policy (DEFAULT_SCORE_BUDGET and MIN_SAVE_FEATURES of
fastgan.ops.contrastive_lse) marks which side of the crossover each size falls on by default.
"""
import argparse
import statistics
import time

import torch

import fastgan.ops.contrastive_lse as ops
from fastgan.benchmark import cases as C
from fastgan.benchmark.timing import _fresh, peak_memory

POLICIES = {"recompute": 0, "saved": 1 << 50}


def quantiles(xs):
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]  # noqa: E731
    return q(0.2), statistics.median(xs), q(0.8)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ops", default="2c")
    p.add_argument("--d", default="128,768")
    p.add_argument("--n", default="256,512,1024,2048,4096")
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args()
    floor = ops.MIN_SAVE_FEATURES
    ops.MIN_SAVE_FEATURES = 0  # measure both policies at every D
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, default budget "
          f"{ops.DEFAULT_SCORE_BUDGET / 2**20:.0f} MiB")
    print(f"{'op':<6} {'N':>5} {'D':>5} {'scores MB':>9} {'default':>9}   "
          f"{'recompute ms (p20-p80)':>24} {'peak MB':>8}   {'saved ms (p20-p80)':>22} {'peak MB':>8}  saved/recompute")
    for op in a.ops.split(","):
        for d in map(int, a.d.split(",")):
            for n in map(int, a.n.split(",")):
                case = C.Case(op, (n, d), "cpu", torch.float32)
                tensors, labels = C.make_inputs(case)
                fn = C.paths(case)["fastgan_cpu"]
                times = {k: [] for k in POLICIES}
                peaks = {}
                for name, nbytes in POLICIES.items():  # warm-up and memory, one step each
                    ops.set_score_budget(nbytes)
                    fn(*_fresh(tensors, labels)).backward()
                    peaks[name] = peak_memory(fn, tensors, labels, "cpu") / 2**20
                for _ in range(a.reps):  # interleaved: both policies see the same machine load
                    for name, nbytes in POLICIES.items():
                        ops.set_score_budget(nbytes)
                        xs = _fresh(tensors, labels)
                        t0 = time.perf_counter()
                        fn(*xs).backward()
                        times[name].append((time.perf_counter() - t0) * 1e3)
                ops.set_score_budget(ops.DEFAULT_SCORE_BUDGET)
                m = 2 * n if op == "ntxent" else n
                keeps = d >= floor and ops._keeps_scores(n, m, 4, ops.DEFAULT_SCORE_BUDGET)
                r, s = quantiles(times["recompute"]), quantiles(times["saved"])
                print(f"{op:<6} {n:>5} {d:>5} {n * m * 4 / 2**20:>9.1f} {'saved' if keeps else 'recompute':>9}   "
                      f"{r[1]:>9.2f} ({r[0]:.2f}-{r[2]:.2f}) {peaks['recompute']:>8.1f}   "
                      f"{s[1]:>8.2f} ({s[0]:.2f}-{s[2]:.2f}) {peaks['saved']:>8.1f}  {s[1] / r[1]:.2f}")


if __name__ == "__main__":
    main()
