"""A performance model of the fused ops (issue 14.5), checked against the benchmark on a GPU.

For an op at one size, forward + backward:

    predicted = max(FLOPs / R_mma, bytes / BW) + launches * t_launch

  FLOPs, bytes  the op's floor (Case.floor(), docs/semantics.md section 9): the products a fused kernel must do and
                the bytes it must move (inputs read, gradients written; nothing N x N);
  R_mma         the matrix rate of the op's dtype: a GEMM in that dtype measured in the same run
                (bfloat16/float16: tensor cores; float32: TF32 tensor cores when
                torch.get_float32_matmul_precision() allows it, else IEEE FMA);
  BW            a device-to-device copy measured in the same run (bytes read + written per second);
  t_launch      the cost of one more launch in a chain of tiny dependent kernels, measured in the
                same run (1-element in-place adds, timed back to back);
  launches      the path's kernels per forward + backward, counted in the same run (torch.profiler
                on a GPU; the table in docs/gpu_predictions.md for the committed predictions).

Why this form: within one kernel, tensor-core work and memory traffic overlap (a roofline: the
larger of the two bounds the kernel), so they combine by max. Launches do not overlap with that
work at GAN sizes: a small op's kernels depend on each other, each waits for the previous one, and
the GPU idles for the launch latency in between (at N = 64 the whole 2C forward+backward is ~1 us of
tensor-core time against 3-5 us per launch), so launches add. At large N the max term dominates
and the model is the roofline; at small N it is the launch count. The model ignores tile
quantization, partial waves (fewer CTAs than SMs: issue 14.1) and L2 reuse, so a measured time far
above it points at exactly those.
"""
import contextlib
import dataclasses
import os
from typing import Callable, Dict, List, Optional, Sequence

import torch


@dataclasses.dataclass(frozen=True)
class Rates:
    """mma_flops: FLOP/s of the op's dtype; bandwidth: bytes/s; launch_s: seconds per launch."""
    mma_flops: float
    bandwidth: float
    launch_s: float


# H200 datasheet-level rates used for the committed predictions (docs/gpu_predictions.md): dense
# bfloat16 ~790 TFLOP/s as measured by GEMMs (the datasheet's 989 is not reached by cuBLAS), TF32
# about half; HBM3e 3.0-4.3 TB/s measured by copies (4.8 datasheet); 3-5 us per dependent launch.
H200 = {
    "bfloat16": {"low": Rates(790e12, 3.0e12, 5e-6), "high": Rates(790e12, 4.3e12, 3e-6)},
    "float32_tf32": {"low": Rates(395e12, 3.0e12, 5e-6), "high": Rates(395e12, 4.3e12, 3e-6)},
}


def predict(flops: float, nbytes: float, launches: int, rates: Rates) -> float:
    """Predicted seconds: max(FLOPs / R_mma, bytes / BW) + launches * t_launch."""
    if flops < 0 or nbytes < 0 or launches < 0:
        raise ValueError(f"flops, nbytes and launches must be >= 0, got {flops}, {nbytes}, {launches}")
    return max(flops / rates.mma_flops, nbytes / rates.bandwidth) + launches * rates.launch_s


def bound(flops: float, nbytes: float, rates: Rates) -> str:
    """Which term of the max binds: "compute" or "memory"."""
    return "compute" if flops / rates.mma_flops >= nbytes / rates.bandwidth else "memory"


def tensor_core_floor(n: int, d: int, rates: Rates) -> float:
    """The 2C target's floor of issue 14.5: 6 N^2 D / peak (three N x N x D products: the scores,
    dS B and dS^T A), seconds."""
    return 6.0 * n * n * d / rates.mma_flops


def sn_target(weight_bytes: float, launches: int, rates: Rates) -> float:
    """Spectral-norm target of issue 14.5, seconds: within 2x of 2 sum(|W| bytes) / BW plus launches."""
    return 2.0 * (2.0 * weight_bytes / rates.bandwidth + launches * rates.launch_s)


# ---------------------------------------------------------------- measured in the run (GPU only)

def _time_cuda(fn: Callable[[], None], reps: int) -> float:
    """Seconds per call of fn, by CUDA events around `reps` back-to-back calls (after a warm-up)."""
    fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(reps):
        fn()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / 1e3 / reps


def measure_rates(device: str, dtype: torch.dtype) -> Optional[Rates]:
    """The three rates on this GPU, now: a GEMM of `dtype` (8192^3), a 1 GiB copy, and a chain of
    2000 1-element in-place adds (launch-bound). None off a GPU."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mma = 2.0 * n ** 3 / _time_cuda(lambda: a @ b, 10)
    del a, b
    x = torch.empty(2 ** 28, device=device, dtype=torch.float32)  # 1 GiB
    y = torch.empty_like(x)
    bw = 2.0 * x.numel() * 4 / _time_cuda(lambda: y.copy_(x), 10)
    del x, y
    z = torch.zeros(1, device=device)

    def chain():
        for _ in range(2000):
            z.add_(1)

    launch = _time_cuda(chain, 3) / 2000
    return Rates(mma, bw, launch)


def count_launches(fn: Callable, tensors: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> int:
    """GPU kernels of one forward + backward of fn (torch.profiler, CUDA activity), after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    def once():
        xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors] + list(labels)
        out = fn(*xs)
        if out.requires_grad:
            out.backward()

    once()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        once()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower())


# ATen ops that launch nothing on a GPU (allocation, views, metadata): left out of count_launches_cpu.
ATEN_FREE = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "view", "_unsafe_view", "t", "transpose", "permute",
    "expand", "slice", "select", "as_strided", "alias", "detach", "unsqueeze", "squeeze", "lift_fresh",
    "_to_copy_noop", "sym_size", "sym_stride", "is_same_size", "contiguous", "reshape", "promote_types"})


def _dispatch_count(fn: Callable, tensors: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
                    on_fastgan_op: Optional[Callable] = None) -> List[str]:
    """Runs one forward + backward of fn on fresh leaves under a TorchDispatchMode and returns every
    non-view ATen op it dispatched (each taken as one CUDA kernel) in order; a fastgan op goes to
    on_fastgan_op(name, args) instead (its body runs below the mode, unseen)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            if func.namespace == "fastgan":
                if on_fastgan_op is not None:
                    on_fastgan_op(name, args)
            elif name not in ATEN_FREE:
                aten.append(name)
            return func(*args, **(kwargs or {}))

    xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors] + list(labels)
    with Count():
        out = fn(*xs)
        if out.requires_grad:
            out.backward()
    return aten


def count_launches_cpu(fn: Callable, tensors: Sequence[torch.Tensor], labels: Sequence[torch.Tensor] = (),
                       execute: bool = True):
    """GPU launches of one forward + backward of fn, counted on the CPU (the committed predictions):
    every @triton.jit launch of fastgan's Triton modules (run in the interpreter, TRITON_INTERPRET=1,
    each launch wrapped), plus every non-view ATen op of the same call (a TorchDispatchMode) taken as
    one CUDA kernel. Returns (triton kernel names, ATen op names) in launch order. execute=False
    records the Triton launches without running them (any N in no time; the values are garbage,
    the launches are those of a real call: no wrapper reads a device value)."""
    from ..ops._registry import triton_module

    triton_launches = []
    patched = []
    for mod in ("contrastive_lse", "infonce_lse", "cosine_similarity_matrix", "loss_terms", "spectral_norm"):
        m = triton_module(mod)
        for name, k in vars(m).items():
            if name.endswith("_kernel") and hasattr(k, "run") and k not in [p[0] for p in patched]:
                def run(*args, _orig=k.run, _name=f"{mod}.{name}", **kwargs):
                    triton_launches.append(_name)
                    return _orig(*args, **kwargs) if execute else None

                patched.append((k, k.run))
                k.run = run
    try:
        # fastgan's own ops are counted by their Triton launches.
        aten = _dispatch_count(fn, tensors, labels)
    finally:
        for k, orig in patched:
            k.run = orig
    return triton_launches, aten


def _copy_unless(t: Optional[torch.Tensor], dtype: Optional[torch.dtype] = None, contiguous: bool = True):
    """The launch of a glue's t.to(dtype) / .contiguous(): none when it is a no-op."""
    if t is None or ((dtype is None or t.dtype == dtype) and (not contiguous or t.is_contiguous())):
        return []
    return ["copy"]


def cuda_op_launches(name: str, args) -> List[str]:
    """The CUDA launches of one call of a fastgan CUDA op with these arguments: the kernels its glue
    (csrc/cuda/*_cuda.cpp) launches, by the names the emulation records for them
    (tests/test_cuda_emulation.py checks each kernel's launches and grids), and the ATen ops of that
    glue which launch (casts and copies only where they are not no-ops, the zero-filled gradient of an
    absent extra logit, the cosine backward's dS~ and its two cuBLAS products). Mirrors the glue line by line; a change
    there must change this (and the pinned counts of tests/test_loss_terms.py)."""
    f32 = torch.float32
    if name in ("contrastive_lse", "contrastive_lse_backward"):
        grad_lse = lse = None
        if name == "contrastive_lse":
            a, b, la, lb, extra = args[:5]
        else:
            grad_lse, a, b, la, lb, extra, lse = args[:7]
        out = _copy_unless(a) + _copy_unless(b) + ["contrastive_lse.cu:inverse_norms_kernel"]  # prepare()
        if la is not None and lb is not None:
            out += _copy_unless(la) + _copy_unless(lb)
        out += _copy_unless(extra, f32)
        if name == "contrastive_lse":
            return out + ["contrastive_lse.cu:forward_kernel", "contrastive_lse.cu:forward_merge_kernel"]
        out += _copy_unless(grad_lse, f32) + _copy_unless(lse, f32)
        out += ["contrastive_lse.cu:backward_rows_kernel", "contrastive_lse.cu:backward_cols_kernel",
                "contrastive_lse.cu:backward_finish_kernel", "contrastive_lse.cu:normalization_backward_kernel"]
        if extra is None:
            return out + ["zeros"]
        return out + ["contrastive_lse.cu:extra_logit_backward_kernel"] + (["copy"] if extra.dtype != f32 else [])
    if name == "cosine_similarity_matrix":
        a, b = args[:2]
        return _copy_unless(a) + _copy_unless(b) + ["contrastive_lse.cu:inverse_norms_kernel",
                                                    "contrastive_lse.cu:cosine_kernel"]
    if name == "cosine_similarity_matrix_backward":
        grad, a, b = args[:3]
        return (_copy_unless(a) + _copy_unless(b) + ["contrastive_lse.cu:inverse_norms_kernel"]
                + _copy_unless(grad, f32, contiguous=False) + ["mul", "mul", "mul"]
                + _copy_unless(b, f32, contiguous=False) + ["mm"] + _copy_unless(a, f32, contiguous=False) + ["mm"]
                + ["contrastive_lse.cu:normalization_backward_kernel"])
    if name in ("infonce_lse", "infonce_lse_backward"):
        l, m = (args[:2] if name == "infonce_lse" else args[2:4])
        mixed = l.dtype != m.dtype  # one kernel dtype: both computed in float32
        out = (_copy_unless(l, f32, False) + _copy_unless(m, f32, False)) if mixed else []
        if name == "infonce_lse":
            return out + ["infonce_lse.cu:forward_kernel", "infonce_lse.cu:forward_combine_kernel"]
        grad_pos, grad_neg, neg = args[0], args[1], args[4]
        out += _copy_unless(grad_pos, f32) + _copy_unless(grad_neg, f32) + _copy_unless(neg, f32)
        out += ["infonce_lse.cu:backward_kernel", "infonce_lse.cu:grad_m_finish_kernel"]
        kernel_dtype = f32 if mixed else l.dtype
        return out + (["copy"] if l.dtype != kernel_dtype else []) + (["copy"] if m.dtype != kernel_dtype else [])
    if name in ("pair_cosine", "pair_cosine_backward"):
        x, y = (args[:2] if name == "pair_cosine" else args[1:3])
        mixed = x.dtype != y.dtype  # both computed in float32
        out = (_copy_unless(x, f32, False) + _copy_unless(y, f32, False)) if mixed else []
        common = f32 if mixed else x.dtype
        out += _copy_unless(x) + _copy_unless(y)  # .contiguous() (a cast keeps the strides)
        if name == "pair_cosine":
            return out + ["loss_terms.cu:pair_cosine_kernel"]
        out += _copy_unless(args[0], f32) + ["loss_terms.cu:pair_cosine_backward_kernel"]
        return out + (["copy"] if x.dtype != common else []) + (["copy"] if y.dtype != common else [])
    if name == "lse_combine":
        return ["loss_terms.cu:lse_combine_kernel"]
    if name == "lse_combine_backward":
        return _copy_unless(args[0], f32) + ["loss_terms.cu:lse_combine_backward_kernel"]
    if name in ("same_class_cosine_sum", "same_class_cosine_sum_backward"):
        x, labels = (args[:2] if name == "same_class_cosine_sum" else args[1:3])
        out = _copy_unless(x) + _copy_unless(labels) + ["contrastive_lse.cu:inverse_norms_kernel"]  # prepare()
        if name == "same_class_cosine_sum":
            return out + ["contrastive_lse.cu:same_class_sum_kernel", "contrastive_lse.cu:same_class_merge_kernel"]
        return out + _copy_unless(args[0], f32) + ["contrastive_lse.cu:same_class_backward_kernel",
                                                   "contrastive_lse.cu:backward_finish_kernel",
                                                   "contrastive_lse.cu:normalization_backward_kernel"]
    if name == "d2d_epilogue":
        return ["loss_terms.cu:d2d_epilogue_kernel"]
    if name == "d2d_epilogue_backward":
        return _copy_unless(args[0], f32) + ["loss_terms.cu:d2d_epilogue_backward_kernel"]
    if name == "supcon_epilogue":
        return ["loss_terms.cu:supcon_epilogue_kernel"]
    if name == "supcon_epilogue_backward":
        return _copy_unless(args[0], f32) + _copy_unless(args[1], f32) + ["loss_terms.cu:supcon_epilogue_backward_kernel"]
    raise NotImplementedError(f"cuda_op_launches: fastgan::{name} has no CUDA launch count here")


def count_launches_cuda_cpu(fn: Callable, tensors: Sequence[torch.Tensor], labels: Sequence[torch.Tensor] = ()):
    """GPU launches of one forward + backward of fn(*tensors, *labels, backend="cuda") on the CUDA
    backend, counted on the CPU: the loss runs its CUDA composition (backend "cuda" resolved for CPU
    tensors; every branch taken is the one CUDA tensors take, fastgan's CUDA ops computed by their
    CPU kernels, which share their schemas), every non-view ATen op of it counted as one CUDA kernel
    (a TorchDispatchMode, as count_launches_cpu) and every fastgan op call as cuda_op_launches says.
    Returns (fastgan op launches, ATen op names) in launch order. On a GPU, count_launches counts
    the real kernels with the profiler (bench/gpu.sh)."""
    ops = []
    with cuda_composition_on_cpu():
        aten = _dispatch_count(lambda *xs: fn(*xs, backend="cuda"), tensors, labels,
                               lambda name, args: ops.extend(cuda_op_launches(name, args)))
    return ops, aten


@contextlib.contextmanager
def cuda_composition_on_cpu():
    """Inside it, backend="cuda" on CPU tensors runs the CUDA backend's composition: every branch the
    CUDA losses take, fastgan's CUDA ops computed by their CPU kernels (the same schemas). For counting
    its launches (count_launches_cuda_cpu) and checking its values without a GPU (tests/test_loss_terms.py)."""
    from .. import backend as B

    key = ("cuda", "cpu", os.environ.get("FASTGAN_BACKEND", ""))
    saved = B._resolved.get(key)
    B._resolved[key] = "cuda"
    try:
        yield
    finally:
        if saved is None:
            B._resolved.pop(key, None)
        else:
            B._resolved[key] = saved


def predict_row(case, fn, tensors, labels, rates: Rates, measured_ms: Optional[float]) -> Dict[str, float]:
    """The benchmark's hook: the prediction for one path of one case, next to its measured time."""
    flops, nbytes = case.floor()
    try:
        launches = count_launches(fn, tensors, labels)
    except Exception:  # a path the profiler cannot run (rare): no launch term rather than no row
        launches = 0
    pred_ms = predict(flops, nbytes, launches, rates) * 1e3
    out = {"predicted_ms": pred_ms, "launches": launches, "bound": bound(flops, nbytes, rates)}
    if measured_ms:
        out["measured_over_predicted"] = measured_ms / pred_ms
    return out


def rates_dict(rates: Optional[Rates]) -> Dict[str, float]:
    return dataclasses.asdict(rates) if rates else {}



# ---------------------------------------------------------------- the committed predictions

# Launches per forward + backward, counted on the CPU before any GPU run (2026-12-02, this commit's
# kernels): Triton kernels exactly (each @triton.jit launch wrapped, backend="triton" in the
# interpreter), plus every non-view ATen op of the same call (TorchDispatchMode), each taken as one
# CUDA kernel; the eager reference counted the same way. Independent of N at these sizes. A GPU run
# replaces these by torch.profiler counts (count_launches). (fastgan, eager reference)
# Recounted for the split-and-merge Triton kernels (branch triton-fill): +7 Triton launches per
# contrastive_lse / infonce_lse call (10 now, was 3) and +6 for cosine_similarity_matrix (9, was 3),
# while the ATen ops INSIDE the Triton wrappers, which the dispatch-mode count above could not see
# (a custom op's body runs below the mode), went to 0 (were 40 for a 2C call, 24 for InfoNCE, 30 for
# the cosine: norms, normalization backward, grad_extra): the former totals were really 2C 49 + 40,
# InfoNCE 11 + 24, cosine 7 + 30.
# Recounted with count_launches_cpu (the harness above; tests/test_loss_terms.py pins the Triton losses)
# for the Triton loss terms (branch gpu-launches): the positive logit one launch each way
# (pair_cosine_triton) and the combination of the LSEs with the mean one launch each way
# (lse_combine_triton), no zero-filled gradient for rowmax: 2C 56 -> 15 (12 Triton + the backward's seed
# + 2 gradient accumulations), NT-Xent 57 -> 16, CLIP 76 -> 29, D2D-CE 78 -> 15
# (its relu / logaddexp epilogue with the mean: d2d_epilogue_triton, one launch each way). The
# eager references and the untouched paths recounted the same way (infonce 18 / 32 was an older count).
ASSUMED_LAUNCHES = {
    "cosine_similarity_matrix": (11, 42), "2c": (15, 108), "d2d": (15, 121), "ntxent": (16, 59),
    "supcon": (16, 72), "clip": (29, 62), "infonce": (22, 37),
}


def assumed_sn_launches(n_layers: int):
    """Grouped Triton spectral norm of an n-layer model, one training forward + backward of the
    benchmark's step (cases.sn_step: W / sigma handed to the layers' stand-in, dense gradients
    back): 7 Triton launches (4 power iteration, 1 apply, 2 its backward) + 1 multi-tensor copy of
    every u, v (the iteration's copies and the rollback copies) + 1 multi-tensor copy committing
    every new u, v ahead + 3 (a view of the copies, the stand-in's output, the backward's seed) = 12
    whatever n (counted for 12 and 20 layers, tests/test_perf_model.py; on a GPU a multi-tensor copy
    is one launch per 64 tensors, i.e. per 16 layers for the first copy and per 32 for the commit);
    PyTorch's hook flavour 22 per layer + 2 (266 counted for 12). Until 2026-12-03 each layer's call
    committed its own u, v (one small copy each): 11 + n."""
    return 12, 22 * n_layers + 2


def prediction_rows(rates: Dict[str, Rates], dtype: torch.dtype = torch.bfloat16):
    """One row per (op, size) of the GPU preset (SIZES["cuda"]["default"], plus the full preset's
    larger sizes): FLOPs, bytes, launches, predicted fastgan and eager-reference times for the
    low and high rates, and the issue 14.5 target where there is one."""
    from . import cases as C

    default, full = C.SIZES["cuda"]["default"], C.SIZES["cuda"]["full"]
    rows = []
    for op in C.OPS:
        family = "infonce" if op == "infonce" else "spectral_norm" if op == "spectral_norm" else "similarity"
        sizes = list(default[family]) + [s for s in full[family] if s not in default[family]]
        for size in sizes:
            case = C.Case(op, tuple(size) if not isinstance(size, str) else (size,), "cuda", dtype)
            flops, nbytes = case.floor()
            if op == "spectral_norm":
                ours, eager = assumed_sn_launches(case.n)
            else:
                ours, eager = ASSUMED_LAUNCHES[op]
            row = {"op": op, "size": "x".join(map(str, case.size)), "flops": flops, "bytes": nbytes,
                   "launches": ours, "eager_launches": eager}
            for k, r in rates.items():
                row[f"pred_{k}_us"] = predict(flops, nbytes, ours, r) * 1e6
                # The eager reference does at least the fused floor, with its own launches.
                row[f"eager_min_{k}_us"] = predict(flops, nbytes, eager, r) * 1e6
                row[f"bound_{k}"] = bound(flops, nbytes, r)
            row["target"] = _target(op, case, rates)
            rows.append(row)
    return rows


def _target(op, case, rates) -> str:
    if op == "2c" and case.size == (64, 512):
        return ">= 5x eager and >= 2x torch.compile of it"
    if op == "2c" and case.size == (1024, 768):
        return ">= torch.compile of the reference"
    if op == "2c" and case.size == (65536, 1024):
        lo, hi = (2 * tensor_core_floor(*case.size, r) * 1e6 for r in (rates["low"], rates["high"]))
        return f"<= 2 x 6N^2D/peak = {lo:.0f} us (memory O(N D))"
    if op == "infonce" and case.size == (64, 64, 1024):
        return ">= 10x Mimicry-style, 1/100 of its memory"
    if op == "spectral_norm" and case.n == 12:
        from . import cases as C

        el = torch.tensor([], dtype=case.dtype).element_size()
        wbytes = sum(C._sn_shape(layer)[0] * C._sn_shape(layer)[1] for layer in C.SN_MODELS[case.size[0]]) * el
        ours, _ = assumed_sn_launches(case.n)
        lo, hi = (sn_target(wbytes, ours, r) * 1e6 for r in (rates["low"], rates["high"]))
        return f"<= 2 x (2 sum|W| / BW + launches) = {hi:.0f}-{lo:.0f} us"
    return ""


def markdown_table(rows) -> str:
    """The table of docs/gpu_predictions.md (regenerated by `python -m fastgan.benchmark.perf_model`)."""
    head = ("| op | size | GFLOP | MB | bound | launches (ours / eager) | predicted us (4.3 TB/s, 3 us - "
            "3.0 TB/s, 5 us) | eager reference >= us | speed-up >= | target (issue 14.5) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        sp_hi = r["eager_min_high_us"] / r["pred_high_us"]
        sp_lo = r["eager_min_low_us"] / r["pred_low_us"]
        lines.append(
            f"| {r['op']} | {r['size']} | {r['flops'] / 1e9:.3g} | {r['bytes'] / 1e6:.3g} | {r['bound_high']} | "
            f"{r['launches']} / {r['eager_launches']} | {r['pred_high_us']:.0f} - {r['pred_low_us']:.0f} | "
            f"{r['eager_min_high_us']:.0f} - {r['eager_min_low_us']:.0f} | {min(sp_hi, sp_lo):.2f} - "
            f"{max(sp_hi, sp_lo):.2f}x | {r['target']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table(prediction_rows(H200["bfloat16"])))
