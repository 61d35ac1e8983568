"""The CPU performance targets of issues 3 and 4, measured side by side in one run.

    python bench/cpu_targets.py            # all
    python bench/cpu_targets.py --no-studiogan   # skip the 30 s StudioGAN-style case

Each (path, size) runs in its own process. Two memory figures per path: the allocator's high-water
mark of one forward+backward beyond the inputs (the profiler's allocation events, as in
`python -m fastgan bench`; it includes the gradients of the inputs, which every path must produce)
and the peak resident memory (ru_maxrss minus the process's resident size before the first step,
so also the libraries' lazy initialization and the allocator's caching). Times are medians of
repeated forward+backward steps after a warm-up. Paths: the fused CPU kernel, the careful eager reference
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
    from fastgan.benchmark.timing import _fresh, peak_memory

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
    grads_mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20
    print(json.dumps({"ms": statistics.median(times) * 1e3, "extra_peak_mb": (peak - base) / 1024,
                      "alloc_peak_mb": peak_memory(fn, tensors, labels, "cpu") / 2**20, "grads_mb": grads_mb}))


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
            print(f"  {path:<18} {r['ms']:10.1f} ms  allocated peak {r['alloc_peak_mb']:8.1f} MB "
                  f"(of which input gradients {r['grads_mb']:.1f})  peak RSS +{r['extra_peak_mb']:6.0f} MB   "
                  f"fused: {r['ms'] / fused['ms']:.2f}x faster, {r['alloc_peak_mb'] / fused['alloc_peak_mb']:.1f}x less "
                  f"allocated, {r['extra_peak_mb'] / max(fused['extra_peak_mb'], 1):.1f}x less RSS")


if __name__ == "__main__":
    main()
