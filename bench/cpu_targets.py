"""The CPU performance targets of issues 3 and 4, measured side by side in one run.

    python bench/cpu_targets.py            # all
    python bench/cpu_targets.py --no-studiogan   # skip the 30 s StudioGAN-style case

Each (path, size) runs in its own process so that its peak resident memory (ru_maxrss, minus the
process's resident size before the first step) is its own; times are medians of repeated
forward+backward steps after a warm-up. Paths: the fused CPU kernel, the careful eager reference
(normalize, one matmul, masked logsumexp), and the public implementations' style (StudioGAN's
broadcast N x N x D cosine and host-built masks; Mimicry's N x HW x (1 + N HW) candidates).
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = [
    ("2c", (1024, 768), ["fastgan_cpu", "reference_eager", "studiogan_style"]),
    ("2c", (4096, 128), ["fastgan_cpu", "reference_eager"]),
    ("infonce", (64, 64, 1024), ["fastgan_cpu", "reference_eager", "mimicry_style"]),
    ("infonce", (128, 64, 1024), ["fastgan_cpu", "reference_eager", "mimicry_style"]),
]


def child(op, size, path, reps):
    import torch

    from fastgan.benchmark import cases as C
    from fastgan.benchmark.timing import _fresh

    case = C.Case(op, tuple(size), "cpu", torch.float32)
    fn = C.paths(case)[path]
    tensors, labels = C.make_inputs(case)

    def step():
        fn(*_fresh(tensors, labels)).backward()

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"ms": statistics.median(times) * 1e3, "extra_peak_mb": (peak - base) / 1024}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--no-studiogan", action="store_true")
    p.add_argument("--child", nargs=4)
    a = p.parse_args()
    if a.child:
        op, size, path, reps = a.child
        return child(op, [int(x) for x in size.split("x")], path, int(reps))
    for op, size, paths in CASES:
        res = {}
        for path in paths:
            if path == "studiogan_style" and a.no_studiogan:
                continue
            reps = "2" if path.endswith("_style") else "10"
            out = subprocess.run([sys.executable, __file__, "--child", op, "x".join(map(str, size)), path, reps],
                                 capture_output=True, text=True)
            res[path] = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        fused = res["fastgan_cpu"]
        print(f"{op} {size}:")
        for path, r in res.items():
            if r is None:
                print(f"  {path:<18} failed")
                continue
            print(f"  {path:<18} {r['ms']:10.1f} ms  extra peak RSS {r['extra_peak_mb']:8.0f} MB   "
                  f"fused is {r['ms'] / fused['ms']:.2f}x faster, {r['extra_peak_mb'] / max(fused['extra_peak_mb'], 1):.1f}x less memory")


if __name__ == "__main__":
    main()
