"""Timing and memory measurement, CPU and CUDA.

Times: forward, backward and forward+backward of each repetition; medians with p20/p80. Inputs
rotate over a few fresh copies so no repetition reuses the previous one's cache-hot tensors. CUDA
timings use events after warm-up. Peak memory is the extra memory a forward+backward needs beyond
its inputs: on CUDA torch.cuda.max_memory_allocated; on the CPU the high-water mark of the running
sum of each op's self allocations minus frees, in start order, recorded by torch.profiler
(profile_memory=True): an op's temporaries freed inside it are not seen, so this is a lower bound.
"""
import statistics
import time
from typing import Callable, Dict, List, Sequence

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _quantiles(xs: List[float]) -> Dict[str, float]:
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]  # noqa: E731
    return {"median": statistics.median(xs), "p20": q(0.2), "p80": q(0.8)}


def _fresh(tensors: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]):
    return [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors] + list(labels)


def time_path(fn: Callable, tensors, labels, device: str, min_reps: int = 5, max_reps: int = 30,
              budget_s: float = 1.0, rotate: int = 3) -> Dict[str, Dict[str, float]]:
    """{"forward"|"backward"|"total": {"median", "p20", "p80"}} in milliseconds."""
    pool = [_fresh(tensors, labels) for _ in range(rotate)]
    # warm-up (compilation, caches, allocator)
    for xs in pool[:2]:
        out = fn(*xs)
        if out.requires_grad:
            out.backward()
    _sync(device)
    fwd, bwd = [], []
    start = time.perf_counter()
    cuda = device.startswith("cuda")
    while len(fwd) < max_reps and (len(fwd) < min_reps or time.perf_counter() - start < budget_s):
        xs = _fresh(tensors, labels) if rotate <= 1 else pool[len(fwd) % rotate]
        for t in xs:
            if isinstance(t, torch.Tensor) and t.grad is not None:
                t.grad = None
        if cuda:
            e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            e0.record()
            out = fn(*xs)
            e1.record()
            if out.requires_grad:
                out.backward()
            e2.record()
            torch.cuda.synchronize()
            fwd.append(e0.elapsed_time(e1))
            bwd.append(e1.elapsed_time(e2))
        else:
            t0 = time.perf_counter()
            out = fn(*xs)
            t1 = time.perf_counter()
            if out.requires_grad:
                out.backward()
            t2 = time.perf_counter()
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
    return {"forward": _quantiles(fwd), "backward": _quantiles(bwd),
            "total": _quantiles([a + b for a, b in zip(fwd, bwd)]), "reps": len(fwd)}


def peak_memory(fn: Callable, tensors, labels, device: str) -> int:
    """Extra bytes allocated at the peak of one forward+backward (inputs excluded)."""
    xs = _fresh(tensors, labels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn(*xs)
        if out.requires_grad:
            out.backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(*xs)
        if out.requires_grad:
            out.backward()
        del out
    # Each op's self allocations minus frees, in the order the ops started; "[memory]" events carry
    # the frees that happen outside any op. The running sum's maximum is the extra peak.
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    running = peak = 0
    for e in events:
        running += e.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


def relative_error(value: torch.Tensor, ref64: torch.Tensor) -> float:
    value, ref64 = value.detach().double().cpu(), ref64.detach().double().cpu()
    denom = ref64.norm().item()
    diff = (value - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def device_peaks(device: str, dtype: torch.dtype) -> Dict[str, float]:
    """Measured matrix throughput (FLOP/s) and memory bandwidth (B/s) on this GPU, in this run."""
    if not device.startswith("cuda"):
        return {}
    n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        a @ b
    e1.record()
    torch.cuda.synchronize()
    flops = 10 * 2 * n**3 / (e0.elapsed_time(e1) / 1e3)
    x = torch.empty(512 * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    e0.record()
    for _ in range(10):
        y.copy_(x)
    e1.record()
    torch.cuda.synchronize()
    bandwidth = 10 * 2 * x.numel() * 4 / (e0.elapsed_time(e1) / 1e3)
    return {"matmul_flops": flops, "bandwidth_bytes": bandwidth}
