"""Timing and memory measurement, CPU and CUDA.

Times: forward, backward and forward+backward of each repetition; medians with p20/p80. The paths
of one case are timed interleaved (time_paths: one repetition of each path per round, the order
rotating), so a burst of load on a shared machine hits every path alike instead of one path's whole
series. Inputs rotate over a few fresh copies so no repetition reuses the previous one's cache-hot
tensors. CUDA timings use events after warm-up. Peak memory is the extra memory a forward+backward needs beyond
its inputs: on CUDA torch.cuda.max_memory_allocated; on the CPU the high-water mark of the running
sum of each op's self allocations minus frees, in start order, recorded by torch.profiler
(profile_memory=True): an op's temporaries freed inside it are not seen, so this is a lower bound.
"""
import contextlib
import os
import re
import statistics
import sys
import tempfile
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


class _Series:
    """One path's repetitions inside time_paths."""

    def __init__(self, fn, tensors, labels, rotate):
        self.fn, self.pool = fn, [_fresh(tensors, labels) for _ in range(max(rotate, 1))]
        self.fwd: List[float] = []
        self.bwd: List[float] = []
        self.spent = 0.0
        self.error = None

    def once(self, device: str, record: bool = True) -> None:
        xs = self.pool[len(self.fwd) % len(self.pool)]
        for t in xs:
            if isinstance(t, torch.Tensor) and t.grad is not None:
                t.grad = None
        w0 = time.perf_counter()
        if device.startswith("cuda"):
            e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            e0.record()
            out = self.fn(*xs)
            e1.record()
            if out.requires_grad:
                out.backward()
            e2.record()
            torch.cuda.synchronize()
            f, b = e0.elapsed_time(e1), e1.elapsed_time(e2)
        else:
            t0 = time.perf_counter()
            out = self.fn(*xs)
            t1 = time.perf_counter()
            if out.requires_grad:
                out.backward()
            t2 = time.perf_counter()
            f, b = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        self.spent += time.perf_counter() - w0
        if record:
            self.fwd.append(f)
            self.bwd.append(b)


def time_paths(fns: Dict[str, Callable], tensors, labels, device: str, min_reps: int = 10, max_reps: int = 300,
               budget_s: float = 0.5, rotate: int = 3, warmup: int = 2) -> Dict[str, dict]:
    """Time several paths of one case interleaved: {name: time_path-like result} or {name: {"error": exc}}.

    Each round runs one repetition of every path still going, starting at a different path each
    round. A path goes on until it has min_reps and has spent budget_s, or has max_reps; the slowest
    paths thus get min_reps (at least 3 when one repetition exceeds the budget) and the fast ones up
    to max_reps, enough for a stable p20/p80. Why max_reps is 300 (it was 60): on a shared host the
    speed drifts over tenths of a second, and at 64 x 512 (0.3-0.6 ms a step) 60 rounds spanned
    about 0.1 s, so a run's medians caught one phase of the host and the ratios between paths moved
    by +-15% from run to run. 300 rounds span about half a second there; paths of similar speed all
    reach the cap, so they get the same rounds, interleaved from first to last."""
    series = {name: _Series(fn, tensors, labels, rotate) for name, fn in fns.items()}
    floor = {}
    for s in series.values():  # warm-up: compilation, caches, allocator
        try:
            for _ in range(max(warmup, 1)):
                s.spent = 0.0
                s.once(device, record=False)
        except Exception as exc:  # reported per path, not fatal
            s.error = exc
        # The last warm-up repetition says how long one takes; the first ones include torch.compile's
        # compilation (seconds), which must count neither as a repetition's time nor against the
        # budget (it once left every compiled path with 3 repetitions from the first rounds only).
        floor[id(s)] = min_reps if s.spent < budget_s else min(min_reps, 3)
        s.spent = 0.0
    live = [s for s in series.values() if s.error is None]

    def going(s):
        return s.error is None and len(s.fwd) < max_reps and (len(s.fwd) < floor[id(s)] or s.spent < budget_s)

    rnd = 0
    while True:
        todo = [s for s in live if going(s)]
        if not todo:
            break
        k = rnd % len(todo)
        for s in todo[k:] + todo[:k]:
            try:
                s.once(device)
            except Exception as exc:
                s.error = exc
        rnd += 1
    out = {}
    for name, s in series.items():
        if s.error is not None:
            out[name] = {"error": s.error}
        else:
            out[name] = {"forward": _quantiles(s.fwd), "backward": _quantiles(s.bwd),
                         "total": _quantiles([a + b for a, b in zip(s.fwd, s.bwd)]), "reps": len(s.fwd)}
    return out


# What the profiler's library (Kineto) writes straight to the process's stderr on every start and
# stop: about a hundred lines through a benchmark's progress bar. Dropped; anything else is kept.
# c10's allocator also warns there, once per block it saw freed but not allocated inside the profile.
_PROFILER_NOISE = re.compile(r"^(USDT|STAGE|INFO|WARNING):\d{4}-\d\d-\d\d .*(ActivityProfiler|Profiler|kineto)"
                             r"|^\[W\d{4} [\d:.]+ \d+ CPUAllocator\.cpp:\d+\] Memory block of unknown size", re.I)


@contextlib.contextmanager
def _quiet_profiler():
    """Redirect file descriptor 2 while the profiler runs, then re-emit all but its own log lines."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (captured): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if not _PROFILER_NOISE.match(line):
                    sys.stderr.write(line + "\n")


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

    with _quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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
