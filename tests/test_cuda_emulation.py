"""The CUDA kernels of csrc/cuda/*.cu executed on the CPU, unchanged, under AddressSanitizer and UBSan.

csrc/emu/ is a small SIMT emulator (fibers per CUDA thread, barriers, warp operations, emulated
__half / __nv_bfloat16 and WMMA; see csrc/emu/simt.h and docs/cuda_emulation.md). tests/emu/build.sh
compiles the kernels with it into one sanitized shared library (cached under build/emu/ by a hash of
its sources). The tests of this file run in two processes:

- the outer pytest process (this one, normally) builds the library and runs this same file again in
  a subprocess with libasan preloaded and FASTGAN_EMU_INNER=1: one outer test per group of inner
  tests, whose output it shows when it fails;
- the inner process (FASTGAN_EMU_INNER=1) runs the real tests: ctypes calls into the library with
  tensors' data_ptr, doing what the torch glue (csrc/cuda/*_cuda.cpp) does around each launcher,
  and compares with fastgan/reference in float64.

Any ASan or UBSan report aborts the inner process, which fails the outer test with the report.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
INNER = os.environ.get("FASTGAN_EMU_INNER") == "1"
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _sources():
    files = sorted((ROOT / "csrc" / "cuda").glob("*.cu")) + sorted((ROOT / "csrc" / "cuda").glob("*.h"))
    files += sorted((ROOT / "csrc" / "emu").rglob("*.h")) + sorted((ROOT / "tests" / "emu").glob("*"))
    return [f for f in files if f.is_file()]


def build_library() -> Path:
    """The sanitized library, rebuilt only when a source (or the compiler) changed."""
    h = hashlib.sha256()
    cxx = os.environ.get("CXX", "g++")
    h.update(subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.encode())
    for f in _sources():
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    out = ROOT / "build" / "emu" / h.hexdigest()[:16] / "libfastgan_emu.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["bash", str(ROOT / "tests" / "emu" / "build.sh"), str(out)], capture_output=True, text=True)
        assert r.returncode == 0, "building the emulated kernels failed:\n" + r.stdout + r.stderr
        for old in out.parent.parent.iterdir():  # builds of older sources: only the newest is kept
            if old != out.parent and (old / "libfastgan_emu.so").exists():
                shutil.rmtree(old, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# Outer process: build, then run the inner tests under the sanitizers.
# ---------------------------------------------------------------------------------------------

INNER_GROUPS = ["emulator", "contrastive", "infonce", "spectral", "launches"]

if not INNER:
    from concurrent.futures import ThreadPoolExecutor

    def _run_group(library, group):
        libasan = subprocess.run(
            [os.environ.get("CXX", "g++"), "-print-file-name=libasan.so"], capture_output=True, text=True
        ).stdout.strip()
        env = dict(os.environ)
        env.update(
            FASTGAN_EMU_INNER="1",
            FASTGAN_EMU_LIB=str(library),
            LD_PRELOAD=libasan,
            # Python itself leaks by design; every other ASan check stays on. UBSan was built with
            # -fno-sanitize-recover: the first report aborts.
            ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0",
            UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
            FASTGAN_EMU_TIMEOUT_S="120",
        )
        # --capture=sys: pytest captures Python's streams only, so a sanitizer report (written to
        # file descriptor 2 just before the abort) reaches this process instead of dying with the
        # inner pytest's capture file.
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "--noconftest", "-p", "no:cacheprovider", "--capture=sys",
               str(Path(__file__)), "-k", f"inner_{group}"]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)

    @pytest.fixture(scope="module")
    def group_runs():
        """Every group's inner run, two at a time (CI has two cores), started on first use."""
        library = build_library()
        pool = ThreadPoolExecutor(max_workers=int(os.environ.get("FASTGAN_EMU_JOBS", "2")))
        futures = {g: pool.submit(_run_group, library, g) for g in INNER_GROUPS}
        yield futures
        pool.shutdown(wait=True)

    @pytest.mark.parametrize("group", INNER_GROUPS)
    def test_emulated_kernels_under_sanitizers(group_runs, group):
        r = group_runs[group].result()
        assert r.returncode == 0, f"emulated {group} tests failed (rc {r.returncode}):\n{r.stdout[-15000:]}\n{r.stderr[-15000:]}"
        assert " passed" in r.stdout and "no tests ran" not in r.stdout, r.stdout


# ---------------------------------------------------------------------------------------------
# Inner process: the tests proper.
# ---------------------------------------------------------------------------------------------

if INNER:
    import fastgan.reference.contrastive as RC

    P, I64, F, I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    LIB = ctypes.CDLL(os.environ["FASTGAN_EMU_LIB"])
    LIB.emu_contrastive_lse_forward.argtypes = [P] * 7 + [I64] * 5 + [F, F, I, I, I64, I, P, I, I, I, P, P]
    LIB.emu_contrastive_lse_backward.argtypes = [P] * 7 + [I64] * 5 + [F, F, I, I, I64, I, P, I, I, I, P, P, P, P]
    LIB.emu_contrastive_lse_plan.argtypes = [I64, I64, I64, I, I, P]
    LIB.emu_cosine_similarity_matrix_forward.argtypes = [P] * 4 + [I64] * 5 + [F, I, P]
    LIB.emu_launch_count.restype = I64
    LIB.emu_launch_record.argtypes = [I64, ctypes.c_char_p, I, P]
    LIB.emu_last_message.restype = ctypes.c_char_p
    for name in ("emu_float_to_half", "emu_half_to_float", "emu_float_to_bfloat16", "emu_bfloat16_to_float"):
        getattr(LIB, name).argtypes = [P, P, I64]

    def ptr(t):
        return None if t is None else t.data_ptr()

    def check(err, what):
        assert err == 0, f"{what}: cudaError {err}: {LIB.emu_last_message().decode()}"

    def launches():
        """[(name, grid, block)] of the launches since the last clear."""
        out = []
        buf = ctypes.create_string_buffer(256)
        dims = (ctypes.c_uint * 6)()
        for i in range(LIB.emu_launch_count()):
            assert LIB.emu_launch_record(i, buf, 256, dims) == 0
            out.append((buf.value.decode(), tuple(dims[:3]), tuple(dims[3:])))
        return out

    def inv_norms(x, normalize, eps):
        """inverse_norms of csrc/cpu/common.h on the float32 copy, as the glue computes them."""
        x = x.float()
        if not normalize:
            return torch.ones(x.shape[0])
        return x.norm(dim=1).clamp_min(eps).reciprocal().contiguous()

    def normalization_backward(x, inv, u, normalize, eps):
        """The glue's normalization_backward (csrc/cpu/common.h), in float64."""
        if not normalize:
            return u
        xhat = x * inv.unsqueeze(1)
        proj = (xhat * u).sum(1, keepdim=True)
        active = (x.norm(dim=1, keepdim=True) > eps).to(x.dtype)
        return u - xhat * (proj * active)

    def tol(dtype):
        # The kernels compute in float32 from the exact input values, so every dtype is compared
        # with float64 of the same (rounded) inputs at float32 accuracy; only outputs written in a
        # 16-bit dtype (the cosine matrix) carry that dtype's rounding.
        return dict(rtol=2e-5, atol=2e-5)

    # -----------------------------------------------------------------------------------------
    # The emulator itself.
    # -----------------------------------------------------------------------------------------

    def test_inner_emulator_half_conversions_round_to_nearest_even():
        # Every binary16 and bfloat16 value, the midpoints between neighbours (ties: to even), and
        # values just off the midpoints, against torch's conversions (round to nearest even).
        bits = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16)
        for dtype, f2h, h2f in ((torch.float16, LIB.emu_float_to_half, LIB.emu_half_to_float),
                                (torch.bfloat16, LIB.emu_float_to_bfloat16, LIB.emu_bfloat16_to_float)):
            vals = bits.view(dtype)
            back = torch.empty(1 << 16)
            h2f(ptr(bits), ptr(back), 1 << 16)
            torch.testing.assert_close(back, vals.float(), rtol=0, atol=0, equal_nan=True)
            f = vals.float()
            f = f[torch.isfinite(f)]
            f, _ = torch.sort(f.unique())
            mid = (f[:-1].double() + f[1:].double()) / 2
            probe = torch.cat([f, mid.float(), torch.nextafter(mid.float(), torch.tensor(0.0)),
                               torch.nextafter(mid.float(), torch.tensor(float("inf"))),
                               torch.tensor([float("inf"), -float("inf"), 1e30, -1e30, 65519.0, 65520.0, 2.0 ** -25,
                                             2.0 ** -25 * 1.0001, 3 * 2.0 ** -26, 1e-40, 0.0, -0.0])])
            out = torch.empty(probe.numel(), dtype=torch.int16)
            f2h(ptr(probe), ptr(out), probe.numel())
            expect = probe.to(dtype).view(torch.int16)
            bad = (out != expect).nonzero().flatten()
            assert bad.numel() == 0, f"{dtype}: {probe[bad[:5]].tolist()} -> {out[bad[:5]].tolist()}, want {expect[bad[:5]].tolist()}"
            nan = torch.tensor([float("nan")])
            f2h(ptr(nan), ptr(out), 1)
            assert out[0].item() == 0x7FFF

    def test_inner_emulator_warp_operations():
        out = torch.zeros(64 * 8, dtype=torch.int32)
        check(LIB.emu_warp_ops(ctypes.c_void_p(out.data_ptr())), "warp_ops_kernel")
        out = out.view(64, 8)
        t = torch.arange(64)
        lane, base = t % 32, t - t % 32
        assert out[:, 0].tolist() == (base + 3).tolist()
        assert out[:, 1].tolist() == (base + (lane ^ 5)).tolist()
        assert out[:, 2].tolist() == torch.where(lane + 4 < 32, t + 4, t).tolist()
        assert out[:, 3].tolist() == torch.where(lane >= 4, t - 4, t).tolist()
        assert out[:, 4].tolist() == (t ^ 1).tolist()  # width 8: xor 1 stays in the segment
        ballot = sum(1 << k for k in range(32) if k % 3 == 0)
        assert out[:, 5].tolist() == [ballot - (1 << 32) if ballot >= 1 << 31 else ballot] * 64
        assert out[:, 6].tolist() == [0] * 32 + [1] * 32  # t == 40 is in warp 1
        assert out[:, 7].tolist() == [0] * 64

    @pytest.mark.parametrize("kernel,needle", [
        ("emu_partial_sync", "__syncthreads at line"),
        ("emu_split_sync", "different __syncthreads"),
        ("emu_divergent_shuffle", "__shfl_xor_sync at line"),
    ])
    def test_inner_emulator_deadlock_is_a_launch_failure_with_a_message(kernel, needle):
        out = torch.zeros(64)
        err = getattr(LIB, kernel)(ctypes.c_void_p(out.data_ptr()))
        msg = LIB.emu_last_message().decode()
        assert err != 0, f"{kernel} should fail to launch"
        assert needle in msg and "_kernel" in msg, msg
        if kernel == "emu_partial_sync":
            assert "reached by 32 of 64 threads; 32 threads returned" in msg and "partial_sync_kernel" in msg, msg

    def test_inner_emulator_thread_order_exposes_a_race():
        # race_kernel reads its neighbour's shared value without a barrier: its result depends on the
        # order in which the emulator runs the threads; the kernels' tests run in both orders.
        outs = []
        for order in ("forward", "reverse"):
            os.environ["FASTGAN_EMU_ORDER"] = order
            out = torch.zeros(64)
            check(LIB.emu_race(ctypes.c_void_p(out.data_ptr())), "race_kernel")
            outs.append(out)
        os.environ.pop("FASTGAN_EMU_ORDER")
        assert not torch.equal(outs[0], outs[1])

    # -----------------------------------------------------------------------------------------
    # contrastive_lse, its backward, cosine_similarity_matrix.
    # -----------------------------------------------------------------------------------------

    PRED_SETS = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    SHAPES = [(1, 1, 1), (2, 2, 17), (33, 33, 129), (65, 65, 17), (65, 33, 1), (2, 65, 129), (33, 65, 17)]

    def contrastive_cases():
        """A covering set: every dtype meets every shape, every predicate set, and both values of
        each flag (labels random / all equal / all distinct, extra, relu, exclude_self, normalize,
        zero vectors), each flag value with every dtype; the full product would take hours here."""
        cases = []
        k = 0
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for si, shape in enumerate(SHAPES):
                for rep in range(2):
                    preds = PRED_SETS[(si * 2 + rep + 3 * DTYPE_CODE[dtype]) % len(PRED_SETS)]
                    cases.append(dict(
                        dtype=dtype, shape=shape, preds=preds,
                        labels=("random", "equal", "distinct")[(k // 2) % 3],
                        extra=bool(k % 2), relu=bool((k // 3) % 2), exclude_self=bool((k // 5) % 2 == 0),
                        normalize=bool((k // 7) % 2 == 0), zeros=bool((k // 4) % 2),
                        order="reverse" if k % 5 == 4 else "forward", seed=k,
                        # The plan of a 132-SM GPU (2 or 3 splits wherever N or M spans 2 or 3 tiles),
                        # one split over several tiles, or 2 splits of 3 tiles (an uneven cut).
                        splits=(0, 1, 2)[k % 3]))
                    k += 1
        # float16 with normalize and a zero vector whose gradient terms are live: its inverse norm
        # (1 / eps) makes its dS~ column 1e8 times the others, which a per-tile 16-bit scaling
        # flushes to zero; the kernel scales per output row and moves inv_b onto the operand.
        cases.append(dict(dtype=torch.float16, shape=(33, 33, 17), preds=(0, 1), labels="random", extra=False,
                          relu=False, exclude_self=True, normalize=True, zeros=True, order="forward", seed=k,
                          splits=0))
        return cases

    def case_id(c):
        n, m, d = c["shape"]
        return (f"{str(c['dtype'])[6:]}-{n}x{m}x{d}-p{''.join(map(str, c['preds']))}-{c['labels']}"
                f"{'-extra' if c['extra'] else ''}{'-relu' if c['relu'] else ''}{'-excl' if c['exclude_self'] else ''}"
                f"{'-norm' if c['normalize'] else ''}{'-zeros' if c['zeros'] else ''}-{c['order']}"
                f"-s{c['splits'] or 'auto'}")

    def make_inputs(c):
        n, m, d = c["shape"]
        g = torch.Generator().manual_seed(c["seed"])
        a = torch.randn(n, d, generator=g).to(c["dtype"])
        b = torch.randn(m, d, generator=g).to(c["dtype"])
        if c["zeros"]:
            a[0] = 0
            b[m - 1] = 0
        kind = c["labels"]
        if kind == "equal":
            la, lb = torch.zeros(n, dtype=torch.int64), torch.zeros(m, dtype=torch.int64)
        elif kind == "distinct":
            la, lb = torch.arange(n), torch.arange(m)  # row i's only positive is column i
        else:
            la, lb = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (m,), generator=g)
        extra = torch.randn(n, generator=g) if c["extra"] else None
        return a, b, la, lb, extra

    SCALE, BIAS, EPS = 3.0, 0.25, 1e-8
    NUM_SMS = 132  # H100's SM count: the plan the tests see unless a case forces the split count

    def lse_plan(n, m, d, force_splits=0, num_sms=NUM_SMS):
        """(column splits, row splits) of contrastive_lse_plan (csrc/cuda/contrastive_lse.cu)."""
        out = (ctypes.c_int64 * 2)()
        LIB.emu_contrastive_lse_plan(n, m, d, num_sms, force_splits, out)
        return out[0], out[1]

    def expected_splits(n, m, force_splits=0, num_sms=NUM_SMS):
        """The plan written out independently: splits of the 32-wide tiles that bring the grid to
        2 CTAs per SM, at most one tile per split and 64 splits, cut evenly."""
        cdiv = lambda a, b: (a + b - 1) // b  # noqa: E731

        def splits(blocks, tiles):
            if tiles <= 1 or blocks == 0:
                return 1
            want = min(force_splits or cdiv(2 * num_sms, blocks), tiles, 64)
            return cdiv(tiles, cdiv(tiles, want))
        return splits(cdiv(n, 32), cdiv(m, 32)), splits(cdiv(m, 32), cdiv(n, 32))

    def contrastive_launches(n, m, d, force_splits=0):
        """The 2 forward and 3 backward launches of contrastive_lse at any size."""
        cs, rs = expected_splits(n, m, force_splits)
        assert lse_plan(n, m, d, force_splits) == (cs, rs)
        rb, cb = (n + 31) // 32, (m + 31) // 32
        work = (n * d if cs > 1 else 0) + (m * d if rs > 1 else 0)
        forward = [("contrastive_lse.cu:forward_kernel", (rb, cs, 1), (128, 1, 1)),
                   ("contrastive_lse.cu:forward_merge_kernel", ((n + 127) // 128, 1, 1), (128, 1, 1))]
        backward = [("contrastive_lse.cu:backward_rows_kernel", (rb, cs, 1), (128, 1, 1)),
                    ("contrastive_lse.cu:backward_cols_kernel", (cb, rs, 1), (128, 1, 1)),
                    ("contrastive_lse.cu:backward_finish_kernel", (max(1, min((work + 255) // 256, 65535 * 16)), 1, 1),
                     (256, 1, 1))]
        return forward, backward

    def run_forward(c, a, b, la, lb, extra):
        n, m, d = c["shape"]
        labels = any(p != 0 for p in c["preds"])
        inv_a, inv_b = inv_norms(a, c["normalize"], EPS), inv_norms(b, c["normalize"], EPS)
        preds = (ctypes.c_int * 3)(*c["preds"], *([0] * (3 - len(c["preds"]))))
        lse = torch.full((n, len(c["preds"])), float("nan"))
        rowmax = torch.full((n,), float("nan"))
        args = (ptr(a), ptr(b), ptr(inv_a), ptr(inv_b), ptr(la) if labels else None, ptr(lb) if labels else None,
                ptr(extra), n, m, d, d, d, SCALE, BIAS, int(c["relu"]), int(c["exclude_self"]), 0,
                len(c["preds"]), preds, DTYPE_CODE[c["dtype"]], NUM_SMS, c["splits"])
        check(LIB.emu_contrastive_lse_forward(*args, ptr(lse), ptr(rowmax)), "contrastive_lse_forward")
        return args, inv_a, inv_b, lse, rowmax

    def reference_dz(c, a64, b64, la, lb, extra, lse, w):
        """dS~ of the backward's contract (csrc/cuda/contrastive_lse.h) in float64, from the
        kernel's own lse (as autograd would feed it)."""
        n, m, _ = c["shape"]
        ones_a, ones_b = torch.ones(n, dtype=torch.float64), torch.ones(m, dtype=torch.float64)
        inv_a = 1 / a64.norm(dim=1).clamp_min(EPS) if c["normalize"] else ones_a
        inv_b = 1 / b64.norm(dim=1).clamp_min(EPS) if c["normalize"] else ones_b
        z = SCALE * (a64 * inv_a[:, None]) @ (b64 * inv_b[:, None]).T + BIAS
        adm = torch.ones(n, m, dtype=torch.bool)
        if c["exclude_self"]:
            r = torch.arange(min(n, m))
            adm[r, r] = False
        f = z.clamp_min(0) if c["relu"] else z
        fprime = (z > 0).double() if c["relu"] else torch.ones_like(z)
        ds = torch.zeros_like(z)
        same = la.view(-1, 1) == lb.view(1, -1)
        for k, p in enumerate(c["preds"]):
            mask = adm if p == 0 else adm & (same if p == 1 else ~same)
            l = lse[:, k].double().view(-1, 1)
            term = w[:, k].double().view(-1, 1) * torch.exp(f - l)
            ds += torch.where(mask & torch.isfinite(l), term, torch.zeros_like(term))
        ds = ds * fprime * adm
        return SCALE * ds * inv_a[:, None] * inv_b[None, :]

    LIB.emu_set_allow_tf32.argtypes = [I]

    def contrastive_check(c, allow_tf32=False):
        """Runs the emulated forward and backward of case c and compares them with the float64
        reference; returns the kernels' (lse, rowmax, U, V) and the reference's (lse, rowmax).
        allow_tf32 (float32 only): LseParams::allow_tf32, compared at TF32 accuracy (about 1e-3)."""
        os.environ["FASTGAN_EMU_ORDER"] = c["order"]
        n, m, d = c["shape"]
        a, b, la, lb, extra = make_inputs(c)
        LIB.emu_set_allow_tf32(int(allow_tf32))
        try:
            return _contrastive_check(c, allow_tf32, n, m, d, a, b, la, lb, extra)
        finally:
            LIB.emu_set_allow_tf32(0)

    def _contrastive_check(c, allow_tf32, n, m, d, a, b, la, lb, extra):
        LIB.emu_clear_launches()
        args, inv_a, inv_b, lse, rowmax = run_forward(c, a, b, la, lb, extra)
        labels = any(p != 0 for p in c["preds"])
        a64, b64 = a.double(), b.double()
        ref_lse, ref_rowmax = RC.contrastive_lse(
            a64, b64, la if labels else None, lb if labels else None, None if extra is None else extra.double(),
            scale=SCALE, bias=BIAS, relu=c["relu"], normalize=c["normalize"], eps=EPS,
            exclude_self=c["exclude_self"], self_offset=0, predicates=c["preds"])
        for out, ref in ((lse, ref_lse), (rowmax, ref_rowmax)):
            # TF32's error is relative to the size of the scores (scale |a_i| |b_j|), not of each.
            big = ref[torch.isfinite(ref)].abs().max().item() if torch.isfinite(ref).any() else 1.0
            kw = dict(rtol=2e-3 * max(1.0, big), atol=2e-3 * max(1.0, big)) if allow_tf32 else tol(c["dtype"])
            torch.testing.assert_close(out.double(), ref, **kw)
        expect_fwd, expect_bwd = contrastive_launches(n, m, d, c["splits"])
        assert launches() == expect_fwd

        # Backward: U = dS~ B, V = dS~^T A (zero-initialized float32, as the glue allocates them).
        g = torch.Generator().manual_seed(1000 + c["seed"])
        w = torch.randn(n, len(c["preds"]), generator=g)
        u, v = torch.full((n, d), float("nan")), torch.full((m, d), float("nan"))  # every element is written
        LIB.emu_clear_launches()
        check(LIB.emu_contrastive_lse_backward(*args, ptr(lse), ptr(w), ptr(u), ptr(v)), "contrastive_lse_backward")
        assert launches() == expect_bwd
        ds = reference_dz(c, a64, b64, la, lb, extra, lse, w)
        scale_u = 1 + ds.abs().sum(1, keepdim=True) * b64.abs().max()
        scale_v = 1 + ds.abs().sum(0).view(-1, 1) * a64.abs().max()
        # Per element, relative to the sum of |terms| it adds (never above the row-wide scale_u,
        # which a zero vector's 1 / eps inverse norm inflates): a 16-bit rounding of dS~ fails this.
        elem_u, elem_v = 1 + ds.abs() @ b64.abs(), 1 + ds.abs().T @ a64.abs()
        kw = dict(rtol=2e-3, atol=2e-3) if allow_tf32 else tol(c["dtype"])
        torch.testing.assert_close(u.double() / elem_u, (ds @ b64) / elem_u, **kw)
        torch.testing.assert_close(v.double() / elem_v, (ds.T @ a64) / elem_v, **kw)

        # Where every lse is finite, the glue's gradients equal autograd of the reference.
        if torch.isfinite(lse).all():
            ar, br = a64.clone().requires_grad_(), b64.clone().requires_grad_()
            ref, _ = RC.contrastive_lse(
                ar, br, la if labels else None, lb if labels else None, None if extra is None else extra.double(),
                scale=SCALE, bias=BIAS, relu=c["relu"], normalize=c["normalize"], eps=EPS,
                exclude_self=c["exclude_self"], self_offset=0, predicates=c["preds"])
            ga, gb = torch.autograd.grad((ref * w.double()).sum(), (ar, br))
            ia64, ib64 = inv_a.double(), inv_b.double()
            got_a = normalization_backward(a64, ia64, u.double(), c["normalize"], EPS)
            got_b = normalization_backward(b64, ib64, v.double(), c["normalize"], EPS)
            gtol = 2e-3 * SCALE if allow_tf32 else 1e-4  # TF32: z off by about 1e-3 scale, inside exp
            torch.testing.assert_close(got_a / scale_u, ga / scale_u, rtol=gtol, atol=gtol)
            torch.testing.assert_close(got_b / scale_v, gb / scale_v, rtol=gtol, atol=gtol)
        return (lse, rowmax, u, v), (ref_lse, ref_rowmax)

    @pytest.mark.parametrize("c", contrastive_cases(), ids=case_id)
    def test_inner_contrastive_lse_forward_backward(c):
        contrastive_check(c)

    # float32 under each torch.get_float32_matmul_precision(): odd sizes over several tiles and
    # splits, normalized or not, labels, extra, relu, exclude_self.
    CONTRASTIVE_TF32_CASES = [c for c in contrastive_cases() if c["dtype"] == torch.float32
                              and c["shape"][0] > 32 and c["shape"][2] > 16][:2]

    @pytest.mark.parametrize("c", CONTRASTIVE_TF32_CASES, ids=case_id)
    def test_inner_contrastive_float32_follows_allow_tf32(c):
        # "highest" (allow_tf32 = 0): the IEEE SIMT path, rel err well under 1e-5 in the forward.
        ieee = contrastive_check(c, allow_tf32=False)
        for out, ref in zip(ieee[0], ieee[1]):
            fin = torch.isfinite(ref)
            assert ((out.double() - ref)[fin].abs().max() / ref[fin].abs().max()).item() < 1e-5
        # "high" / "medium": TF32 tensor cores, within about 1e-3 (checked inside) ...
        tf32 = contrastive_check(c, allow_tf32=True)
        for name, x, y in zip(("lse", "rowmax", "U", "V"), ieee[0], tf32[0]):
            # ... and really another path: every output differs from the IEEE one.
            fin = torch.isfinite(x)
            rel = ((x.double() - y.double())[fin].abs().max() / x.double()[fin].abs().max().clamp_min(1e-30)).item()
            assert 1e-6 < rel < 5e-3, (name, rel)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("shape", [(1, 1, 1), (33, 2, 17), (65, 33, 129), (2, 65, 1)])
    def test_inner_contrastive_cosine_similarity_matrix(dtype, shape):
        n, m, d = shape
        g = torch.Generator().manual_seed(n * 1000 + m + d)
        a = torch.randn(n, d, generator=g).to(dtype)
        b = torch.randn(m, d, generator=g).to(dtype)
        a[n // 2] = 0  # a zero vector: its row of the matrix is 0
        inv_a, inv_b = inv_norms(a, True, EPS), inv_norms(b, True, EPS)
        out = torch.full((n, m), float("nan")).to(dtype)
        LIB.emu_clear_launches()
        check(LIB.emu_cosine_similarity_matrix_forward(ptr(a), ptr(b), ptr(inv_a), ptr(inv_b), n, m, d, d, d, 2.5,
                                                       DTYPE_CODE[dtype], ptr(out)), "cosine_similarity_matrix")
        assert launches() == [("contrastive_lse.cu:cosine_kernel", ((m + 31) // 32, (n + 31) // 32, 1), (128, 1, 1))]
        ref = RC.cosine_similarity_matrix(a.double(), b.double(), scale=2.5, eps=EPS)
        if dtype == torch.float32:
            torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)
        else:
            # One rounding of a float32 result to the output dtype: within one unit in the last place.
            ulp = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}[dtype]
            err = (out.double() - ref).abs()
            assert (err <= ulp * ref.abs().clamp_min(2.0 ** -14) + 1e-6).all(), err.max()

    LIB.emu_inverse_norms.argtypes = [P, I64, I64, P, I64, I64, I64, I, F, I, P, P]
    LIB.emu_normalization_backward.argtypes = [P, I64, I64, P, P, P, P, I64, I64, P, P, P, I64, I, F, I]

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("shape", [(37, 5, 100), (1, 0, 33), (3, 2, 1), (64, 64, 512), (33, 31, 31)])
    @pytest.mark.parametrize("normalize", [True, False])
    def test_inner_contrastive_normalization_kernels(dtype, shape, normalize):
        # The glue's inverse norms and normalization backward (one launch each, both sides, rows of a
        # then b; one warp per row) against float64 of the same rounded inputs: zero rows (the eps
        # clamp and the inactive projection), D = 1, D under, at and over a warp's 32 lanes, m = 0.
        n, m, d = shape
        g = torch.Generator().manual_seed(n * 1000 + m * 10 + d)
        a = torch.randn(n, d, generator=g).to(dtype)
        b = torch.randn(m, d, generator=g).to(dtype)
        a[n // 2] = 0
        if m:
            b[-1] = 1e-9  # under eps: clamped, inactive
        u = torch.randn(n, d, generator=g)
        v = torch.randn(m, d, generator=g)
        inv_a, inv_b = torch.full((n,), float("nan")), torch.full((m,), float("nan"))
        LIB.emu_clear_launches()
        check(LIB.emu_inverse_norms(ptr(a), n, d, ptr(b), m, d, d, DTYPE_CODE[dtype], EPS, int(normalize), ptr(inv_a),
                                    ptr(inv_b)), "inverse_norms")
        assert launches() == [("contrastive_lse.cu:inverse_norms_kernel", ((n + m + 3) // 4, 1, 1), (128, 1, 1))]
        for x, inv in ((a, inv_a), (b, inv_b)):
            want = 1.0 / x.double().norm(dim=1).clamp_min(EPS) if normalize else torch.ones(x.shape[0]).double()
            torch.testing.assert_close(inv.double(), want, rtol=2e-6, atol=0)
        grad_a = torch.full((n, d), float("nan")).to(dtype)
        grad_b = torch.full((m, d), float("nan")).to(dtype)
        LIB.emu_clear_launches()
        check(LIB.emu_normalization_backward(ptr(a), n, d, ptr(inv_a), ptr(u), ptr(grad_a), ptr(b), m, d, ptr(inv_b),
                                             ptr(v), ptr(grad_b), d, DTYPE_CODE[dtype], EPS, int(normalize)),
              "normalization_backward")
        assert launches() == [("contrastive_lse.cu:normalization_backward_kernel", ((n + m + 3) // 4, 1, 1),
                               (128, 1, 1))]
        for x, inv, up, out in ((a, inv_a, u, grad_a), (b, inv_b, v, grad_b)):
            want = normalization_backward(x.double(), inv.double(), up.double(), normalize, EPS)
            if dtype == torch.float32:
                torch.testing.assert_close(out.double(), want, rtol=2e-5, atol=2e-5)
            else:
                # One rounding of a float32 result to the output dtype: within one unit in the last place.
                ulp = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}[dtype]
                err = (out.double() - want).abs()
                assert (err <= ulp * want.abs() + 2e-5).all(), err.max()

    LIB.emu_extra_logit_backward.argtypes = [P, P, P, I64, I, P]

    @pytest.mark.parametrize("n, k", [(37, 1), (5, 3), (1, 2), (0, 1), (300_000, 1)])
    def test_inner_contrastive_extra_logit_backward_kernel(n, k):
        # The extra logit's gradient (2C's positive logit inside the log-sum-exp): one launch, one
        # thread per row (N = 300000: 1172 blocks, the last one partial), an infinite lse term skipped.
        g = torch.Generator().manual_seed(n + k)
        extra = torch.randn(n, generator=g)
        lse = extra.unsqueeze(1) + torch.rand(n, k, generator=g) * 3  # lse >= extra, as in a real call
        if n > 3:
            lse[3, 0] = float("-inf")  # an empty set: its term must be left out, not NaN
        w = torch.randn(n, k, generator=g)
        out = torch.full((n,), float("nan"))
        LIB.emu_clear_launches()
        check(LIB.emu_extra_logit_backward(ptr(extra), ptr(lse), ptr(w), n, k, ptr(out)), "extra_logit_backward")
        assert launches() == ([("contrastive_lse.cu:extra_logit_backward_kernel",
                                (min((n + 255) // 256, 65535 * 16), 1, 1), (256, 1, 1))] if n else [])
        p = (extra.double().unsqueeze(1) - lse.double()).exp()
        p = torch.where(torch.isfinite(lse), p, torch.zeros_like(p))
        torch.testing.assert_close(out.double(), (w.double() * p).sum(1), rtol=2e-6, atol=1e-6)

    LIB.emu_pair_cosine_forward.argtypes = [P, P, I64, I64, I64, I, F, F, P]
    LIB.emu_pair_cosine_backward.argtypes = [P, P, P, I64, I64, I64, I, F, F, P, P]

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("shape", [(37, 100), (1, 1), (5, 31), (64, 512), (33, 33), (0, 8)])
    @pytest.mark.parametrize("shifted", [False, True])
    def test_inner_contrastive_pair_cosine_kernels(dtype, shape, shifted):
        # fastgan::pair_cosine on CUDA (csrc/cuda/loss_terms.cu: the positive logit; one warp per row,
        # one launch each way)
        # against float64 of the same rounded inputs: a zero row and a row under eps on each side
        # (the clamp, no projection term), D = 1 (x^ = +-1), D under, at and over 32 lanes, N = 0;
        # row i against y's row (i + shift) mod N, shift 0 or NT-Xent's N/2 (odd N included); the
        # shifted cases with 2C's scale 1/t (t = 0.3) too.
        n, d = shape
        shift, scale = (n // 2, 1 / 0.3) if shifted else (0, 1.0)
        g = torch.Generator().manual_seed(n * 100 + d)
        x = torch.randn(n, d, generator=g).to(dtype)
        y = torch.randn(n, d, generator=g).to(dtype)
        if n > 2 and dtype != torch.float16:  # their gradients are ~1/eps: beyond half precision's range
            x[1], y[2] = 0, 1e-9
        grad = torch.randn(n, generator=g)
        out = torch.full((n,), float("nan"))
        LIB.emu_clear_launches()
        check(LIB.emu_pair_cosine_forward(ptr(x), ptr(y), n, d, shift, DTYPE_CODE[dtype], EPS, scale, ptr(out)),
              "pair_cosine")
        assert launches() == ([("loss_terms.cu:pair_cosine_kernel", ((n + 3) // 4, 1, 1), (128, 1, 1))]
                              if n else [])
        x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
        yr = y64.roll(-shift, dims=0)
        want = scale * (x64 * yr).sum(1) / (x64.norm(dim=1).clamp_min(EPS) * yr.norm(dim=1).clamp_min(EPS))
        torch.testing.assert_close(out.double(), want.detach(), rtol=2e-6, atol=2e-7)
        gx = torch.full((n, d), float("nan")).to(dtype)
        gy = torch.full((n, d), float("nan")).to(dtype)
        LIB.emu_clear_launches()
        check(LIB.emu_pair_cosine_backward(ptr(grad), ptr(x), ptr(y), n, d, shift, DTYPE_CODE[dtype], EPS, scale,
                                           ptr(gx), ptr(gy)), "pair_cosine_backward")
        assert launches() == ([("loss_terms.cu:pair_cosine_backward_kernel", ((n + 3) // 4, 1, 1),
                                (128, 1, 1))] if n else [])
        if n == 0:
            return
        want_x, want_y = torch.autograd.grad(want, (x64, y64), grad.double())
        for got, w in ((gx, want_x), (gy, want_y)):
            scale = w.abs().max().clamp_min(1.0)  # the zero row's gradient is ~1/eps (|y| / eps)
            if dtype == torch.float32:
                torch.testing.assert_close(got.double(), w, rtol=2e-5, atol=2e-5 * scale.item())
            else:  # one rounding of a float32 result to the output dtype
                ulp = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}[dtype]
                err = (got.double() - w).abs()
                assert (err <= ulp * w.abs() + 2e-5 * scale).all(), err.max()

    def test_inner_contrastive_pair_cosine_rejects_unwrapped_shift():
        # The launchers take the shift already reduced mod N (the glue's wrap_shift): one outside
        # [0, N) is an error before any launch, never a row read past the end.
        x = torch.randn(5, 8)
        out, gx, gy = torch.empty(5), torch.empty(5, 8), torch.empty(5, 8)
        for shift in (5, -1, 12):
            LIB.emu_clear_launches()
            assert LIB.emu_pair_cosine_forward(ptr(x), ptr(x), 5, 8, shift, DTYPE_CODE[torch.float32], EPS, 1.0,
                                               ptr(out)) != 0
            assert LIB.emu_pair_cosine_backward(ptr(out), ptr(x), ptr(x), 5, 8, shift, DTYPE_CODE[torch.float32], EPS,
                                                1.0, ptr(gx), ptr(gy)) != 0
            assert launches() == []

    LIB.emu_lse_combine_forward.argtypes = [P, I64, I64, I64, I64, P, I64, P, I64, P, ctypes.c_double,
                                            ctypes.c_double, ctypes.c_double, P]
    LIB.emu_lse_combine_backward.argtypes = [I64, I64, P, ctypes.c_double, ctypes.c_double, ctypes.c_double, P, P,
                                             P, P]

    @pytest.mark.parametrize("n, k, ys", [(37, 2, 0), (5, 1, 1), (1, 1, 2), (0, 2, 0), (3000, 3, 2), (257, 1, 2)])
    def test_inner_contrastive_lse_combine_kernels(n, k, ys):
        # fastgan::lse_combine on CUDA (csrc/cuda/loss_terms.cu): a loss's combination and mean in ONE
        # CTA (a fixed order: bitwise the same every run), its backward one launch; x a strided view
        # (an (N, K) slice of a wider LSE), y1 an (N, 1) column, N = 0 (the sum of nothing is 0).
        g = torch.Generator().manual_seed(n * 10 + k + ys)
        wide = torch.randn(n, k + 2, generator=g)
        x = wide[:, 1:k + 1]  # row stride k + 2
        y1 = torch.randn(n, 1, generator=g) if ys >= 1 else None
        y2 = torch.randn(n, generator=g) if ys >= 2 else None
        coefs = (ctypes.c_double * 3)(*[1.0, -1.0, 0.5][:k])
        c1, c2, scale = 1.0, -2.0, 1.0 / max(n, 1)
        out = torch.full((), float("nan"))
        LIB.emu_clear_launches()
        check(LIB.emu_lse_combine_forward(ptr(x), n, k, x.stride(0), x.stride(1), ptr(y1), 1, ptr(y2), 1, coefs, c1,
                                          c2, scale, ptr(out)), "lse_combine")
        assert launches() == [("loss_terms.cu:lse_combine_kernel", (1, 1, 1), (256, 1, 1))]
        want = x.double() @ torch.tensor(list(coefs)[:k], dtype=torch.float64)
        if y1 is not None:
            want = want + c1 * y1.double()[:, 0]
        if y2 is not None:
            want = want + c2 * y2.double()
        torch.testing.assert_close(out.double(), want.sum() * scale, rtol=1e-5, atol=1e-6)
        again = torch.full((), float("nan"))
        check(LIB.emu_lse_combine_forward(ptr(x), n, k, x.stride(0), x.stride(1), ptr(y1), 1, ptr(y2), 1, coefs, c1,
                                          c2, scale, ptr(again)), "lse_combine")
        assert torch.equal(out, again)
        grad = torch.tensor(0.75)
        gx, gy1, gy2 = (torch.full(s, float("nan")) for s in ((n, k), (n,), (n,)))
        LIB.emu_clear_launches()
        check(LIB.emu_lse_combine_backward(n, k, coefs, c1, c2, scale, ptr(grad), ptr(gx), ptr(gy1), ptr(gy2)),
              "lse_combine_backward")
        assert launches() == ([("loss_terms.cu:lse_combine_backward_kernel", ((n + 255) // 256, 1, 1),
                                (256, 1, 1))] if n else [])
        g0 = 0.75 * scale
        torch.testing.assert_close(gx.double(), (g0 * torch.tensor(list(coefs)[:k], dtype=torch.float64)).expand(n, k),
                                   rtol=1e-6, atol=0)
        torch.testing.assert_close(gy1.double(), torch.full((n,), g0 * c1, dtype=torch.float64), rtol=1e-6, atol=0)
        torch.testing.assert_close(gy2.double(), torch.full((n,), g0 * c2, dtype=torch.float64), rtol=1e-6, atol=0)

    # SupCon's same-class cosine sums (csrc/cuda/contrastive_lse.cu, same_class_*): the masked sweep of
    # the cosine tiles on contrastive_lse's plan, forward and backward.
    LIB.emu_same_class_cosine_sum_forward.argtypes = [P, P, P, I64, I64, I, I, I, P, P]
    LIB.emu_same_class_cosine_sum_backward.argtypes = [P, P, P, I64, I64, I, I, I, P, P]

    def same_class_launches(n, d, force_splits=0):
        """Forward (sweep, merge) and backward (product, finish) of the same-class sums: contrastive_lse's
        row grid and column splits (a plan with M = N)."""
        cs, _ = expected_splits(n, n, force_splits)
        rb = (n + 31) // 32
        work = n * d if cs > 1 else 0
        forward = [("contrastive_lse.cu:same_class_sum_kernel", (rb, cs, 1), (128, 1, 1)),
                   ("contrastive_lse.cu:same_class_merge_kernel", ((n + 127) // 128, 1, 1), (128, 1, 1))]
        backward = [("contrastive_lse.cu:same_class_backward_kernel", (rb, cs, 1), (128, 1, 1)),
                    ("contrastive_lse.cu:backward_finish_kernel", (max(1, min((work + 255) // 256, 65535 * 16)), 1, 1),
                     (256, 1, 1))]
        return forward, backward

    SAME_CLASS_LABELS = {"mixed": lambda n, g: torch.randint(0, 3, (n,), generator=g),
                         "one_class": lambda n, g: torch.full((n,), 7, dtype=torch.int64),
                         "distinct": lambda n, g: torch.randperm(n, generator=g) * 5 - 9,
                         "wide": lambda n, g: torch.randint(-2 ** 62, 2 ** 62, (n,), generator=g) // (2 ** 61)}

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("shape, labeling, splits", [((70, 45), "mixed", 0), ((33, 17), "one_class", 2),
                                                         ((1, 8), "one_class", 0), ((65, 33), "distinct", 0),
                                                         ((97, 64), "wide", 3), ((40, 1), "mixed", 1)])
    def test_inner_contrastive_same_class_cosine_sum_kernels(dtype, shape, labeling, splits):
        # Against the N x N float64 mask of the same rounded inputs: odd sizes over several tiles, one
        # split over several tiles, uneven splits, N = 1 (no positive), a zero row (its cosines are 0),
        # labels anywhere in int64's range (nothing is indexed by label value).
        n, d = shape
        g = torch.Generator().manual_seed(n * 1000 + d)
        x = torch.randn(n, d, generator=g).to(dtype)
        if n > 3:
            x[2] = 0
        labels = SAME_CLASS_LABELS[labeling](n, g)
        inv = inv_norms(x, True, EPS)
        pos, n_pos = torch.full((n,), float("nan")), torch.full((n,), -1, dtype=torch.int64)
        args = (ptr(x), ptr(inv), ptr(labels), n, d, DTYPE_CODE[dtype], NUM_SMS, splits)
        LIB.emu_clear_launches()
        check(LIB.emu_same_class_cosine_sum_forward(*args, ptr(pos), ptr(n_pos)), "same_class_cosine_sum_forward")
        fwd, bwd = same_class_launches(n, d, splits)
        assert launches() == fwd
        x64 = x.double()
        xh = x64 * inv.double()[:, None]
        mask = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool)
        cos = xh @ xh.T
        assert torch.equal(n_pos, mask.sum(1))
        scale = 1 + (cos.abs() * mask).sum(1)  # each sum relative to the magnitude of its terms
        torch.testing.assert_close(pos.double() / scale, (cos * mask).sum(1) / scale, **tol(dtype))
        again = torch.full((n,), float("nan"))
        check(LIB.emu_same_class_cosine_sum_forward(*args, ptr(again), ptr(n_pos)), "same_class_cosine_sum_forward")
        assert torch.equal(pos, again)  # a fixed order: the same bits every run

        grad = torch.randn(n, generator=g)
        u = torch.full((n, d), float("nan"))
        LIB.emu_clear_launches()
        check(LIB.emu_same_class_cosine_sum_backward(*args, ptr(grad), ptr(u)), "same_class_cosine_sum_backward")
        assert launches() == bwd
        w = mask * (grad.double()[:, None] + grad.double()[None, :]) * inv.double()[:, None] * inv.double()[None, :]
        elem = 1 + w.abs() @ x64.abs()
        torch.testing.assert_close(u.double() / elem, (w @ x64) / elem, **tol(dtype))
        # Through the glue's normalization backward: autograd of the dense float64 sums.
        xr = x64.clone().requires_grad_()
        xn = xr / xr.norm(dim=1, keepdim=True).clamp_min(EPS)
        (want,) = torch.autograd.grad(((xn @ xn.T) * mask).sum(1) @ grad.double(), xr)
        got = normalization_backward(x64, inv.double(), u.double(), True, EPS)
        gscale = 1 + elem.max(dim=1, keepdim=True).values
        torch.testing.assert_close(got / gscale, want / gscale, rtol=1e-4, atol=1e-4)

    # The D2D-CE and SupCon epilogues (csrc/cuda/loss_terms.cu): one CTA forward, one launch backward.
    LIB.emu_d2d_epilogue_forward.argtypes = [P, I64, P, P, I64, F, F, F, P]
    LIB.emu_d2d_epilogue_backward.argtypes = [P, I64, P, P, I64, F, F, F, P, P, P]
    LIB.emu_supcon_epilogue_forward.argtypes = [P, I64, P, P, I64, F, I, P, P]
    LIB.emu_supcon_epilogue_backward.argtypes = [P, I64, P, P, I64, F, P, P, P, P]

    @pytest.mark.parametrize("n", [37, 1, 3000, 0])
    def test_inner_contrastive_d2d_epilogue_kernels(n):
        # lse a strided (N, 1) column; a row without other-class columns (lse = -inf: its term is 0),
        # one with no j != i (rowmax = -inf: the shift is 0), the relu inactive (cos > m_p) and active.
        g = torch.Generator().manual_seed(n + 5)
        wide = torch.randn(n, 3, generator=g) * 3
        lse = wide[:, 1:2]
        rowmax = torch.randn(n, generator=g) * 2
        cos = torch.rand(n, generator=g) * 2 - 1
        if n > 7:
            lse[3, 0], rowmax[5], cos[6] = float("-inf"), float("-inf"), 0.995
        m_p, t, scale = 0.98, 0.5, 1.0 / max(n, 1)
        out = torch.full((), float("nan"))
        LIB.emu_clear_launches()
        check(LIB.emu_d2d_epilogue_forward(ptr(lse), lse.stride(0), ptr(rowmax), ptr(cos), n, m_p, t, scale, ptr(out)),
              "d2d_epilogue")
        assert launches() == [("loss_terms.cu:d2d_epilogue_kernel", (1, 1, 1), (256, 1, 1))]
        l64 = lse.double().clone().requires_grad_()
        c64 = cos.double().clone().requires_grad_()
        r64 = rowmax.double()
        m = torch.where(torch.isfinite(r64), r64, torch.zeros_like(r64))
        q = torch.relu((m_p - c64) / t)
        want = (q + torch.logaddexp(-q, l64[:, 0] - m)).sum() * scale
        torch.testing.assert_close(out.double(), want.detach(), rtol=2e-6, atol=1e-6)
        again = torch.full((), float("nan"))
        check(LIB.emu_d2d_epilogue_forward(ptr(lse), lse.stride(0), ptr(rowmax), ptr(cos), n, m_p, t, scale,
                                           ptr(again)), "d2d_epilogue")
        assert torch.equal(out, again)
        grad = torch.tensor(1.5)
        glse, gcos = torch.full((n, 1), float("nan")), torch.full((n,), float("nan"))
        LIB.emu_clear_launches()
        check(LIB.emu_d2d_epilogue_backward(ptr(lse), lse.stride(0), ptr(rowmax), ptr(cos), n, m_p, t, scale,
                                            ptr(grad), ptr(glse), ptr(gcos)), "d2d_epilogue_backward")
        assert launches() == ([("loss_terms.cu:d2d_epilogue_backward_kernel", ((n + 255) // 256, 1, 1),
                                (256, 1, 1))] if n else [])
        if n:
            wl, wc = torch.autograd.grad(1.5 * want, (l64, c64))
            torch.testing.assert_close(glse.double(), wl, rtol=2e-6, atol=1e-7)
            torch.testing.assert_close(gcos.double(), wc, rtol=2e-6, atol=1e-7)

    @pytest.mark.parametrize("n, mean, positives", [(37, True, "some"), (37, False, "some"), (1, True, "none"),
                                                    (3000, True, "all"), (300, False, "none")])
    def test_inner_contrastive_supcon_epilogue_kernels(n, mean, positives):
        # The mean over the anchors with a positive, counted on the device (none: the denominator is
        # 1 and the loss 0); lse a strided (N, 1) column.
        g = torch.Generator().manual_seed(n + int(mean))
        wide = torch.randn(n, 2, generator=g) * 3
        lse = wide[:, :1]
        pos = torch.randn(n, generator=g) * 4
        n_pos = {"some": torch.randint(0, 4, (n,), generator=g), "none": torch.zeros(n, dtype=torch.int64),
                 "all": torch.randint(1, 40, (n,), generator=g)}[positives]
        t = 0.3
        out, den = torch.full((), float("nan")), torch.full((), float("nan"))
        LIB.emu_clear_launches()
        check(LIB.emu_supcon_epilogue_forward(ptr(lse), lse.stride(0), ptr(pos), ptr(n_pos), n, t, int(mean), ptr(out),
                                              ptr(den)), "supcon_epilogue")
        assert launches() == [("loss_terms.cu:supcon_epilogue_kernel", (1, 1, 1), (256, 1, 1))]
        l64 = lse.double().clone().requires_grad_()
        p64 = pos.double().clone().requires_grad_()
        has = n_pos > 0
        per = torch.where(has, l64[:, 0] - p64 / (t * n_pos.clamp_min(1).double()), torch.zeros(n).double())
        want_den = float(max(int(has.sum()), 1)) if mean else 1.0
        assert den.item() == want_den
        want = per.sum() / want_den
        torch.testing.assert_close(out.double(), want.detach(), rtol=2e-6, atol=1e-6)
        grad = torch.tensor(-0.7)
        glse, gpos = torch.full((n, 1), float("nan")), torch.full((n,), float("nan"))
        LIB.emu_clear_launches()
        check(LIB.emu_supcon_epilogue_backward(ptr(lse), lse.stride(0), ptr(pos), ptr(n_pos), n, t, ptr(grad), ptr(den),
                                               ptr(glse), ptr(gpos)), "supcon_epilogue_backward")
        assert launches() == [("loss_terms.cu:supcon_epilogue_backward_kernel", ((n + 255) // 256, 1, 1), (256, 1, 1))]
        wl, wp = torch.autograd.grad(-0.7 * want, (l64, p64))
        torch.testing.assert_close(glse.double(), wl, rtol=2e-6, atol=1e-8)
        torch.testing.assert_close(gpos.double(), wp, rtol=2e-6, atol=1e-8)

    def test_inner_contrastive_cosine_similarity_matrix_follows_allow_tf32():
        n, m, d = 33, 17, 45
        g = torch.Generator().manual_seed(77)
        a, b = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)
        inv_a, inv_b = inv_norms(a, True, EPS), inv_norms(b, True, EPS)
        ref = RC.cosine_similarity_matrix(a.double(), b.double(), scale=2.5, eps=EPS)
        outs = []
        for allow in (0, 1):
            out = torch.full((n, m), float("nan"))
            LIB.emu_set_allow_tf32(allow)
            try:
                check(LIB.emu_cosine_similarity_matrix_forward(ptr(a), ptr(b), ptr(inv_a), ptr(inv_b), n, m, d, d, d,
                                                               2.5, DTYPE_CODE[torch.float32], ptr(out)), "cosine")
            finally:
                LIB.emu_set_allow_tf32(0)
            outs.append(out.double())
        assert ((outs[0] - ref).abs().max() / ref.abs().max()).item() < 1e-5  # "highest": IEEE
        rel = ((outs[1] - ref).abs().max() / ref.abs().max()).item()  # "high": TF32, another result
        assert 1e-6 < rel < 2e-3 and not torch.equal(outs[0], outs[1]), rel

    # -----------------------------------------------------------------------------------------
    # infonce_lse and its backward.
    # -----------------------------------------------------------------------------------------

    import math

    import fastgan.reference.infonce as RI

    LIB.emu_infonce_lse_forward.argtypes = [P, P, I64, I64, I64, P, P, F, I, F, I, F, I, I64, I, P, P]
    LIB.emu_infonce_lse_backward.argtypes = [P, P, I64, I64, I64, P, P, F, I, F, I, F, I, I64, I, P, P, P, P, P]

    def infonce_plan(n, hw, target=0):
        """make_plan of csrc/cuda/infonce_lse.cu: (tiles, row_blocks, splits, tiles per split);
        target: InfonceParams::target_ctas (0: the default, 264 CTAs)."""
        cdiv = lambda a, b: (a + b - 1) // b  # noqa: E731
        tiles, row_blocks = cdiv(n * hw, 64), cdiv(n, 32)
        if tiles == 0 or row_blocks == 0:
            return tiles, row_blocks, 0, 1
        want = min(cdiv(target or 264, row_blocks), tiles)
        tps = cdiv(tiles, want)
        return tiles, row_blocks, cdiv(tiles, tps), tps

    def infonce_launches(n, r, hw, target=0):
        """The 4 launches of one forward + backward: [(name, grid, block)] of each."""
        tiles, row_blocks, splits, _ = infonce_plan(n, hw, target)
        grid_1d = lambda count: (min((count + 255) // 256, 65535 * 16), 1, 1)  # noqa: E731
        fwd = [("infonce_lse.cu:forward_kernel", (row_blocks, splits, 1), (128, 1, 1)),
               ("infonce_lse.cu:forward_combine_kernel", ((n + 127) // 128, 1, 1), (128, 1, 1))]
        bwd = [("infonce_lse.cu:backward_kernel", (row_blocks * splits + tiles, 1, 1), (128, 1, 1)),
               ("infonce_lse.cu:grad_m_finish_kernel", grid_1d(n * r), (256, 1, 1))]
        return fwd, bwd

    # target_ctas per shape index and dtype on the shapes of several column tiles: 1 (one split of
    # every tile), 4 (two splits of two tiles at N = 65 and 33), 0 (the default: a tile per split).
    INFONCE_TARGETS = {2: (0, 4, 1), 3: (4, 1, 4), 5: (1, 4, 1), 6: (1, 0, 0)}

    def infonce_cases():
        """Covering set: each dtype with every N in {1, 2, 33, 65}, every R in {1, 17, 129}, each
        layout of l (contiguous, channels-last) and m (contiguous, transposed storage), self_logit
        None and -10, normalize on and off, zero vectors, zero grad_neg rows; the column split forced
        (target_ctas 1 or 4) so that splits of several tiles, and one split of all tiles, run at
        these small N (the default plan gives one tile per split there)."""
        cases, k = [], 0
        shapes = [(1, 17, 3), (2, 1, 5), (33, 129, 2), (65, 17, 3), (2, 129, 1), (33, 1, 4), (65, 129, 1)]
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for si, (n, r, hw) in enumerate(shapes):
                cases.append(dict(dtype=dtype, n=n, r=r, hw=hw, channels_last=bool((si + k) % 2),
                                  m_transposed=bool((k // 2) % 2), self_logit=None if k % 3 else -10.0,
                                  normalize=(k % 4) != 3, zeros=bool((k // 3) % 2), order="reverse" if k % 5 == 2 else "forward",
                                  target=INFONCE_TARGETS.get(si, (0, 0, 0))[DTYPE_CODE[dtype]], seed=500 + k))
                k += 1
        return cases

    def infonce_id(c):
        return (f"{str(c['dtype'])[6:]}-{c['n']}x{c['r']}x{c['hw']}{'-cl' if c['channels_last'] else ''}"
                f"{'-mT' if c['m_transposed'] else ''}{'-self' if c['self_logit'] is not None else ''}"
                f"{'-norm' if c['normalize'] else ''}{'-zeros' if c['zeros'] else ''}-t{c['target']}-{c['order']}")

    def test_inner_infonce_cases_cover_the_split_paths():
        # Each dtype meets: several splits of one tile each, several splits of several tiles (first
        # tile stores, later tiles add), one split of every tile, and grad_l over several row blocks.
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            plans = [(infonce_plan(c["n"], c["hw"], c["target"]), c["n"]) for c in infonce_cases() if c["dtype"] == dtype]
            kinds = {(splits > 1, tps > 1) for (_, _, splits, tps), _ in plans}
            assert {(True, False), (True, True), (False, True)} <= kinds, (dtype, kinds)
            assert any(n > 32 for _, n in plans)

    def infonce_check(c, allow_tf32=False):
        """Runs the emulated forward and backward of case c and compares them with the float64
        reference; returns the kernels' (pos, neg, grad_l, grad_m) and the reference's (pos, neg).
        allow_tf32 (float32 only): InfonceParams::allow_tf32, compared at TF32 accuracy (operands
        rounded to 10 mantissa bits in the products: about 1e-3 relative)."""
        os.environ["FASTGAN_EMU_ORDER"] = c["order"]
        n, r, hw, dtype = c["n"], c["r"], c["hw"], c["dtype"]
        g = torch.Generator().manual_seed(c["seed"])
        l = torch.randn(n, r, hw, generator=g).to(dtype)
        m = torch.randn(n, r, generator=g).to(dtype)
        if c["zeros"]:
            l[n - 1, :, 0] = 0
            m[0] = 0
        if c["channels_last"]:  # (N, HW, R) storage viewed as (N, R, HW): stride 1 along R
            l = l.transpose(1, 2).contiguous().transpose(1, 2)
        if c["m_transposed"]:
            m = m.t().contiguous().t()
        scale, eps = 2.0, 1e-8
        sl = c["self_logit"]
        self_term = float(sl + math.log(hw)) if sl is not None else 0.0
        ls, ms = (ctypes.c_int64 * 3)(*l.stride()), (ctypes.c_int64 * 2)(*m.stride())
        common = (ptr(l), ptr(m), n, r, hw, ls, ms, scale, int(sl is not None), self_term, int(c["normalize"]), eps,
                  DTYPE_CODE[dtype], c["target"], int(allow_tf32))
        pos, neg = torch.full((n, hw), float("nan")), torch.full((n,), float("nan"))
        LIB.emu_clear_launches()
        check(LIB.emu_infonce_lse_forward(*common, ptr(pos), ptr(neg)), "infonce_lse_forward")
        fwd, bwd = infonce_launches(n, r, hw, c["target"])
        assert launches() == fwd

        lr, mr = l.double().requires_grad_(), m.double().requires_grad_()
        ref_pos, ref_neg = RI.infonce_lse(lr, mr, scale, sl, c["normalize"], eps)
        for out, ref in ((pos, ref_pos.detach()), (neg, ref_neg.detach())):
            # TF32's error is relative to the size of the scores (scale |m_i| |l_c|), not of each
            # score: a small S is a sum of large products. So relative to the largest here.
            tol = 2e-3 * max(1.0, ref[torch.isfinite(ref)].abs().max().item()) if allow_tf32 else 2e-5
            torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)

        gp = torch.randn(n, hw, generator=g)
        gn = torch.randn(n, generator=g)
        gn[n // 2] = 0  # a row whose negatives get exactly zero gradient
        grad_l = torch.full((n, r, hw), float("nan")).to(dtype)
        grad_m = torch.full((n, r), float("nan")).to(dtype)
        LIB.emu_clear_launches()
        check(LIB.emu_infonce_lse_backward(*common, ptr(gp), ptr(gn), ptr(neg), ptr(grad_l), ptr(grad_m)),
              "infonce_lse_backward")
        assert launches() == bwd
        # Where neg is -inf (N = 1 without self logit) the reference's gradient of neg is 0 * NaN.
        weight = torch.where(torch.isfinite(ref_neg.detach()), gn.double(), torch.zeros(n, dtype=torch.float64))
        loss = (gp.double() * ref_pos).sum() + (weight * torch.nan_to_num(ref_neg, neginf=0.0)).sum()
        gl, gm = torch.autograd.grad(loss, (lr, mr))
        if allow_tf32:
            kw = dict(rtol=2e-3, atol=2e-3)
        elif dtype == torch.float32:
            kw = dict(rtol=1e-4, atol=1e-4)
        else:  # written in the 16-bit dtype: one rounding of the float32 result
            kw = dict(rtol={torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}[dtype], atol=1e-4)
        # Compared with the reference rounded to the output dtype (a zero vector's gradient, about
        # 1 / eps, is inf in float16 on both sides), relative to the largest term the kernel adds:
        # with normalization, grad = b (g^ - x^ <x^, g^>) for the gradient g^ of the normalized
        # vector, whose two terms cancel exactly at R = 1 (float32 leaves a residue of their size).
        # Per vector (a column l_j[:, k], a row m_i), so a zero vector's 1 / eps scale stays its own.
        sl_ = 1 + gl.abs().amax(dim=1, keepdim=True)
        sm_ = 1 + gm.abs().amax(dim=1, keepdim=True)
        if c["normalize"]:
            lh = RI.normalize_rows(l.double().transpose(1, 2), eps).transpose(1, 2).detach().requires_grad_()
            mh = RI.normalize_rows(m.double(), eps).detach().requires_grad_()
            hp, hn = RI.infonce_lse(lh, mh, scale, sl, False, eps)
            ghl, ghm = torch.autograd.grad((gp.double() * hp).sum() + (weight * torch.nan_to_num(hn, neginf=0.0)).sum(),
                                           (lh, mh))
            bl = 1 / l.double().norm(dim=1, keepdim=True).clamp_min(eps)
            am = 1 / m.double().norm(dim=1, keepdim=True).clamp_min(eps)
            sl_ = sl_ + (ghl.abs() * bl).amax(dim=1, keepdim=True)
            sm_ = sm_ + (ghm.abs() * am).amax(dim=1, keepdim=True)
        torch.testing.assert_close(grad_l.double() / sl_, gl.to(dtype).double() / sl_, **kw)
        torch.testing.assert_close(grad_m.double() / sm_, gm.to(dtype).double() / sm_, **kw)
        return (pos, neg, grad_l, grad_m), (ref_pos.detach(), ref_neg.detach())

    @pytest.mark.parametrize("c", infonce_cases(), ids=infonce_id)
    def test_inner_infonce_lse_forward_backward(c):
        infonce_check(c)

    # float32 under each torch.get_float32_matmul_precision(): odd sizes, several row blocks and
    # split tiles (33 rows, 97 columns of R = 19 channels, 2 tiles per split), normalized or not.
    INFONCE_TF32_CASES = [
        dict(dtype=torch.float32, n=33, r=19, hw=3, channels_last=True, m_transposed=False, self_logit=None,
             normalize=True, zeros=True, order="forward", target=1, seed=900),
        dict(dtype=torch.float32, n=3, r=45, hw=5, channels_last=False, m_transposed=True, self_logit=-10.0,
             normalize=False, zeros=False, order="reverse", target=0, seed=901),
    ]

    @pytest.mark.parametrize("c", INFONCE_TF32_CASES, ids=infonce_id)
    def test_inner_infonce_float32_follows_allow_tf32(c):
        # "highest" (allow_tf32 = 0): the IEEE SIMT path, rel err well under 1e-5 in the forward.
        ieee = infonce_check(c, allow_tf32=False)
        for out, ref in zip(ieee[0], ieee[1]):
            assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5
        # "high" / "medium": TF32 tensor cores, within about 1e-3 of float64 (checked inside) ...
        tf32 = infonce_check(c, allow_tf32=True)
        for name, a, b in zip(("pos", "neg", "grad_l", "grad_m"), ieee[0], tf32[0]):
            # ... and really another path: each output differs from the IEEE one, by more than
            # float32 rounding could explain but within TF32's about 1e-3.
            rel = ((a.double() - b.double()).abs().max() / a.double().abs().max().clamp_min(1e-30)).item()
            assert 1e-6 < rel < 5e-3, (name, rel)

    # -----------------------------------------------------------------------------------------
    # Spectral norm: multi-tensor power iteration, apply, apply backward.
    # -----------------------------------------------------------------------------------------

    import fastgan.reference.spectral_norm as RS

    LIB.emu_spectral_norm_power_iteration.argtypes = [I64, P, P, I64, F, I]
    LIB.emu_spectral_norm_apply.argtypes = [P, I64, I64, I64, I64, I, P, P]
    LIB.emu_spectral_norm_apply_backward.argtypes = [P, P, I64, I64, P, I, P, I64, I, P, I64, I, P, P]
    ULP = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}

    def sn_layers(dtype, seed):
        """Shapes 1x1 .. 65x129, a transposed (column-major) W, a strided u, a zero matrix, u and v in
        another dtype than W."""
        g = torch.Generator().manual_seed(seed)
        specs = [((1, 1), False), ((17, 33), False), ((65, 129), True), ((33, 2), False), ((2, 65), True), ((17, 17), False)]
        layers = []
        for k, ((rows, cols), transposed) in enumerate(specs):
            w = torch.randn(cols, rows, generator=g).to(dtype).t() if transposed else torch.randn(rows, cols, generator=g).to(dtype)
            if k == 5:
                w = torch.zeros(rows, cols, dtype=dtype)
            vdtype = torch.float32 if k == 3 else dtype
            u = torch.randn(rows * (2 if k == 1 else 1), generator=g).to(vdtype)[:: 2 if k == 1 else 1]
            v = torch.randn(cols, generator=g).to(vdtype)
            layers.append((w, F_normalize(u), F_normalize(v)))
        return layers

    def F_normalize(x):
        y = torch.nn.functional.normalize(x.float(), dim=0).to(x.dtype)
        x.copy_(y)
        return x

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("n_iter,order", [(0, "hook"), (1, "hook"), (3, "parametrization"), (2, "hook")])
    def test_inner_spectral_norm_power_iteration(dtype, n_iter, order):
        os.environ["FASTGAN_EMU_ORDER"] = "reverse" if n_iter == 2 else "forward"
        layers = sn_layers(dtype, 7 + n_iter)
        refs = [(w.double(), u.double().clone(), v.double().clone()) for w, u, v in layers]
        sigmas = [torch.full((), float("nan")) for _ in layers]
        ptrs = (ctypes.c_void_p * (4 * len(layers)))()
        ints = (ctypes.c_int64 * (9 * len(layers)))()
        for i, ((w, u, v), s) in enumerate(zip(layers, sigmas)):
            ptrs[4 * i: 4 * i + 4] = [w.data_ptr(), u.data_ptr(), v.data_ptr(), s.data_ptr()]
            ints[9 * i: 9 * i + 9] = [w.shape[0], w.shape[1], w.stride(0), w.stride(1), u.stride(0), v.stride(0),
                                      DTYPE_CODE[w.dtype], DTYPE_CODE[u.dtype], DTYPE_CODE[v.dtype]]
        LIB.emu_clear_launches()
        eps = 1e-12
        check(LIB.emu_spectral_norm_power_iteration(len(layers), ptrs, ints, n_iter, eps, int(order == "hook")),
              "spectral_norm_power_iteration")
        # One load, then per step a column pass and a row pass (matvec + norm each) over every layer
        # at once; n = 0 is one row pass (sigma = <u, W v>).
        col_tiles = sum(max(1, (w.shape[1] + 31) // 32) for w, _, _ in layers)
        row_tiles = sum(max(1, (w.shape[0] + 31) // 32) for w, _, _ in layers)
        cols = [("spectral_norm.cu:matvec_kernel", (col_tiles, 1, 1), (256, 1, 1)),
                ("spectral_norm.cu:norm_kernel", (col_tiles, 1, 1), (256, 1, 1))]
        rows = [("spectral_norm.cu:matvec_kernel", (row_tiles, 1, 1), (256, 1, 1)),
                ("spectral_norm.cu:norm_kernel", (row_tiles, 1, 1), (256, 1, 1))]
        step = cols + rows if order == "hook" else rows + cols
        expect = [("spectral_norm.cu:load_kernel", (col_tiles + row_tiles, 1, 1), (32, 1, 1))]
        expect += step * n_iter if n_iter > 0 else rows
        assert launches() == expect
        for (w, u, v), (w64, u64, v64), s in zip(layers, refs, sigmas):
            RS.power_iteration_(w64, u64, v64, n_iter, eps, order)
            ref_sigma = RS.sigma(w64, u64, v64)
            tol_uv = 4 * ULP[u.dtype] + 1e-5
            torch.testing.assert_close(u.double(), u64, rtol=0, atol=tol_uv)
            torch.testing.assert_close(v.double(), v64, rtol=0, atol=tol_uv)
            wn = w64.norm().item()
            assert abs(s.item() - ref_sigma.item()) <= 1e-5 * (1 + wn), (s.item(), ref_sigma.item())

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("shape,transposed", [((1, 1), False), ((17, 129), True), ((65, 33), False)])
    def test_inner_spectral_norm_apply_and_backward(dtype, shape, transposed):
        rows, cols = shape
        g = torch.Generator().manual_seed(rows * 7 + cols)
        w = torch.randn(cols, rows, generator=g).to(dtype).t() if transposed else torch.randn(rows, cols, generator=g).to(dtype)
        grad = torch.randn(rows, cols, generator=g).to(dtype)
        u = torch.nn.functional.normalize(torch.randn(rows, generator=g), dim=0).to(dtype)
        v = torch.nn.functional.normalize(torch.randn(cols, generator=g), dim=0).to(dtype)
        sigma = torch.tensor([1.7])
        out = torch.full((rows, cols), float("nan")).to(dtype)
        LIB.emu_clear_launches()
        check(LIB.emu_spectral_norm_apply(ptr(w), rows, cols, w.stride(0), w.stride(1), DTYPE_CODE[dtype], ptr(sigma),
                                          ptr(out)), "spectral_norm_apply")
        assert [x[0] for x in launches()] == ["spectral_norm.cu:apply_kernel"]
        ref = (w.double() / 1.7)
        torch.testing.assert_close(out.double(), ref.to(dtype).double(), rtol=ULP[dtype], atol=1e-7)

        st = (ctypes.c_int64 * 4)(grad.stride(0), grad.stride(1), w.stride(0), w.stride(1))
        out.fill_(float("nan"))
        LIB.emu_clear_launches()
        check(LIB.emu_spectral_norm_apply_backward(ptr(grad), ptr(w), rows, cols, st, DTYPE_CODE[dtype], ptr(u),
                                                   u.stride(0), DTYPE_CODE[dtype], ptr(v), v.stride(0),
                                                   DTYPE_CODE[dtype], ptr(sigma), ptr(out)),
              "spectral_norm_apply_backward")
        assert [x[0] for x in launches()] == ["spectral_norm.cu:dot_partials_kernel", "spectral_norm.cu:apply_backward_kernel"]
        # Reference: autograd of W / sigma(W) with sigma = u^T W v (u, v constants), at sigma = 1.7.
        w64 = w.double().requires_grad_()
        s64 = RS.sigma(w64, u.double(), v.double())
        y = w64 / s64
        # Evaluate the formula at the given sigma: G / s - (<G, W> / s^2) u v^T.
        g64, u64, v64 = grad.double(), u.double(), v.double()
        ref_b = g64 / 1.7 - ((g64 * w.double()).sum() / 1.7 ** 2) * torch.outer(u64, v64)
        # Cross-check the formula against autograd where sigma(W) is the value used.
        (gw,) = torch.autograd.grad((y * g64).sum(), w64)
        s_val = s64.item()
        formula_at_s = g64 / s_val - ((g64 * w.double()).sum() / s_val ** 2) * torch.outer(u64, v64)
        torch.testing.assert_close(gw, formula_at_s)
        scale = 1 + ref_b.abs().amax()
        torch.testing.assert_close(out.double() / scale, ref_b.to(dtype).double() / scale, rtol=ULP[dtype], atol=2 * ULP[dtype])

    LIB.emu_spectral_norm_apply_group.argtypes = [I64, P, P, I, I]

    def sn_group(dtype, count, seed):
        """count layers of one W dtype, shapes cycling over small odd ones, every third W transposed,
        u / v of every fourth layer in float32."""
        g = torch.Generator().manual_seed(seed)
        shapes = [(3, 5), (17, 9), (1, 33), (40, 40), (6, 1)]
        layers = []
        for k in range(count):
            rows, cols = shapes[k % len(shapes)]
            w = torch.randn(cols, rows, generator=g).to(dtype).t() if k % 3 == 2 else torch.randn(rows, cols, generator=g).to(dtype)
            grad = torch.randn(rows, cols, generator=g).to(dtype)
            vdtype = torch.float32 if k % 4 == 3 else dtype
            u = torch.nn.functional.normalize(torch.randn(rows, generator=g), dim=0).to(vdtype)
            v = torch.nn.functional.normalize(torch.randn(cols, generator=g), dim=0).to(vdtype)
            sigma = torch.tensor([1.0 + 0.25 * k])
            layers.append((w, grad, u, v, sigma))
        return layers

    def run_group(layers, dtype, backward):
        n = len(layers)
        outs = [torch.full(w.shape, float("nan")).to(dtype) for w, *_ in layers]
        ptrs = (ctypes.c_void_p * (6 * n))()
        ints = (ctypes.c_int64 * (10 * n))()
        for i, ((w, grad, u, v, sigma), out) in enumerate(zip(layers, outs)):
            ptrs[6 * i: 6 * i + 6] = [ptr(w), ptr(grad), ptr(u), ptr(v), ptr(sigma), ptr(out)]
            ints[10 * i: 10 * i + 10] = [w.shape[0], w.shape[1], w.stride(0), w.stride(1), grad.stride(0),
                                         grad.stride(1), u.stride(0), v.stride(0), DTYPE_CODE[u.dtype],
                                         DTYPE_CODE[v.dtype]]
        LIB.emu_clear_launches()
        check(LIB.emu_spectral_norm_apply_group(n, ptrs, ints, DTYPE_CODE[dtype], int(backward)),
              "spectral_norm_apply_group")
        return outs, launches()

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_inner_spectral_norm_apply_group(dtype):
        """The multi-tensor apply and its backward: one launch (backward two) for 3 and for 12 layers,
        every layer's bits those of the per-layer launcher (a batch of one), close to float64."""
        for count in (3, 12):
            layers = sn_group(dtype, count, count)
            outs, fwd = run_group(layers, dtype, False)
            grads, bwd = run_group(layers, dtype, True)
            tiles = sum(-(-w.numel() // 1024) for w, *_ in layers)
            parts = sum(max(1, -(-w.numel() // 2048)) for w, *_ in layers)
            assert fwd == [("spectral_norm.cu:apply_kernel", (tiles, 1, 1), (256, 1, 1))]
            assert bwd == [("spectral_norm.cu:dot_partials_kernel", (parts, 1, 1), (256, 1, 1)),
                           ("spectral_norm.cu:apply_backward_kernel", (tiles, 1, 1), (256, 1, 1))]
            for (w, grad, u, v, sigma), out, gw in zip(layers, outs, grads):
                rows, cols = w.shape
                one = torch.full(w.shape, float("nan")).to(dtype)
                check(LIB.emu_spectral_norm_apply(ptr(w), rows, cols, w.stride(0), w.stride(1), DTYPE_CODE[dtype],
                                                  ptr(sigma), ptr(one)), "spectral_norm_apply")
                assert torch.equal(out, one)
                st = (ctypes.c_int64 * 4)(grad.stride(0), grad.stride(1), w.stride(0), w.stride(1))
                check(LIB.emu_spectral_norm_apply_backward(ptr(grad), ptr(w), rows, cols, st, DTYPE_CODE[dtype],
                                                           ptr(u), u.stride(0), DTYPE_CODE[u.dtype], ptr(v),
                                                           v.stride(0), DTYPE_CODE[v.dtype], ptr(sigma), ptr(one)),
                      "spectral_norm_apply_backward")
                assert torch.equal(gw, one)
                s = sigma.item()
                torch.testing.assert_close(out.double(), (w.double() / s).to(dtype).double(), rtol=ULP[dtype], atol=1e-7)
                g64, u64, v64 = grad.double(), u.double(), v.double()
                ref_b = g64 / s - ((g64 * w.double()).sum() / s ** 2) * torch.outer(u64, v64)
                scale = 1 + ref_b.abs().amax()
                torch.testing.assert_close(gw.double() / scale, ref_b.to(dtype).double() / scale, rtol=ULP[dtype],
                                           atol=2 * ULP[dtype])

    # -----------------------------------------------------------------------------------------
    # Launch counts and grids at GAN batch sizes (issue 14 changes these; this pins the CURRENT
    # design). Dry run: the launchers run on the host as usual, the emulator records each launch
    # and skips its execution.
    # -----------------------------------------------------------------------------------------

    LIB.emu_set_dry_run.argtypes = [I]

    def dry_launches(fn):
        LIB.emu_set_dry_run(1)
        LIB.emu_clear_launches()
        try:
            fn()
        finally:
            LIB.emu_set_dry_run(0)
        return launches()

    @pytest.mark.parametrize("n", [64, 256, 4096])
    def test_inner_launches_contrastive_at_gan_batch_sizes(n):
        d = 512
        a, b = torch.empty(n, d), torch.empty(n, d)
        inv = torch.ones(n)
        la = torch.zeros(n, dtype=torch.int64)
        preds = (ctypes.c_int * 3)(0, 1, 0)
        lse, rowmax, u, v = torch.empty(n, 2), torch.empty(n), torch.empty(n, d), torch.empty(n, d)
        args = (ptr(a), ptr(b), ptr(inv), ptr(inv), ptr(la), ptr(la), None, n, n, d, d, d, 1.0, 0.0, 0, 1, 0, 2,
                preds, 2, NUM_SMS, 0)

        def loss():  # the 2C loss: one forward and one backward of contrastive_lse
            check(LIB.emu_contrastive_lse_forward(*args, ptr(lse), ptr(rowmax)), "forward")
            check(LIB.emu_contrastive_lse_backward(*args, ptr(lse), ptr(lse), ptr(u), ptr(v)), "backward")

        rec = dry_launches(loss)
        fwd, bwd = contrastive_launches(n, n, d)
        assert rec == fwd + bwd
        # 5 launches at every N (2 forward, 3 backward). The column (row) splits fill 2 CTAs per SM
        # of a 132-SM GPU where the 32 x 32 tiles allow it: every tile its own CTA at N = 64 (4) and
        # N = 256 (64), 3 splits x 128 row blocks = 384 CTAs at N = 4096.
        assert len(rec) == 5
        assert lse_plan(n, n, d) == {64: (2, 2), 256: (8, 8), 4096: (3, 3)}[n]
        ctas = [g[0] * g[1] * g[2] for _, g, _ in rec[:1] + rec[2:4]]
        tiles = ((n + 31) // 32) ** 2
        assert all(x == min(tiles, 384) for x in ctas), ctas
        assert n < 4096 or min(ctas) >= 132
        out = torch.empty(n, n)
        rec = dry_launches(lambda: check(LIB.emu_cosine_similarity_matrix_forward(
            ptr(a), ptr(b), ptr(inv), ptr(inv), n, n, d, d, d, 1.0, 0, ptr(out)), "cosine"))
        assert rec == [("contrastive_lse.cu:cosine_kernel", (n // 32, n // 32, 1), (128, 1, 1))]

    @pytest.mark.parametrize("n", [64, 256, 4096])
    def test_inner_launches_supcon_terms_at_gan_batch_sizes(n):
        # SupCon's positive term and epilogue on CUDA: 2 + 2 launches of the sweep (the glue adds the
        # inverse norms each way) and 1 + 1 of the epilogue at every N, the sweep's grid filling the
        # chip as contrastive_lse's does (the same plan).
        d = 512
        x, inv, labels = torch.empty(n, d, dtype=torch.bfloat16), torch.ones(n), torch.zeros(n, dtype=torch.int64)
        pos, n_pos, u, lse = torch.empty(n), torch.empty(n, dtype=torch.int64), torch.empty(n, d), torch.empty(n, 1)
        out, den, grad = torch.empty(()), torch.empty(()), torch.ones(())
        args = (ptr(x), ptr(inv), ptr(labels), n, d, 2, NUM_SMS, 0)

        def loss():
            check(LIB.emu_same_class_cosine_sum_forward(*args, ptr(pos), ptr(n_pos)), "forward")
            check(LIB.emu_supcon_epilogue_forward(ptr(lse), 1, ptr(pos), ptr(n_pos), n, 0.1, 1, ptr(out), ptr(den)),
                  "epilogue")
            check(LIB.emu_supcon_epilogue_backward(ptr(lse), 1, ptr(pos), ptr(n_pos), n, 0.1, ptr(grad), ptr(den),
                                                   ptr(lse), ptr(pos)), "epilogue backward")
            check(LIB.emu_same_class_cosine_sum_backward(*args, ptr(pos), ptr(u)), "backward")

        rec = dry_launches(loss)
        fwd, bwd = same_class_launches(n, d)
        assert [r[0] for r in rec] == [fwd[0][0], fwd[1][0], "loss_terms.cu:supcon_epilogue_kernel",
                                       "loss_terms.cu:supcon_epilogue_backward_kernel", bwd[0][0], bwd[1][0]]
        assert rec[:2] == fwd and rec[4:] == bwd
        tiles = ((n + 31) // 32) ** 2
        assert all(g[0] * g[1] * g[2] == min(tiles, 384) for _, g, _ in (rec[0], rec[4]))

    def test_inner_launches_contrastive_plan_follows_the_sm_count():
        # The split count is a function of N, M and the SM count only: a 16-SM device gets fewer
        # splits, a forced count is capped by the tile count, N != M splits each side on its own.
        assert lse_plan(4096, 4096, 64, num_sms=16) == (1, 1)
        assert lse_plan(256, 256, 64, num_sms=16) == (4, 4)
        assert lse_plan(65, 65, 1, force_splits=5) == (3, 3)
        assert lse_plan(64, 2048, 64) == (64, 2)
        for n, m, f, sms in [(1, 1, 0, 132), (33, 97, 2, 132), (1000, 300, 0, 132), (300, 1000, 0, 8), (65, 2, 0, 132)]:
            assert lse_plan(n, m, 16, f, sms) == expected_splits(n, m, f, sms)

    @pytest.mark.parametrize("n,hw", [(64, 64), (256, 64), (4096, 64), (64, 256)])
    def test_inner_launches_infonce_at_gan_batch_sizes(n, hw):
        r = 64
        l, m = torch.empty(n, r, hw, dtype=torch.bfloat16), torch.empty(n, r, dtype=torch.bfloat16)
        ls, ms = (ctypes.c_int64 * 3)(*l.stride()), (ctypes.c_int64 * 2)(*m.stride())
        pos, neg, gp = torch.empty(n, hw), torch.empty(n), torch.empty(n, hw)
        common = (ptr(l), ptr(m), n, r, hw, ls, ms, 1.0, 1, 0.0, 1, 1e-8, 2, 0, 0)

        def loss():
            check(LIB.emu_infonce_lse_forward(*common, ptr(pos), ptr(neg)), "forward")
            check(LIB.emu_infonce_lse_backward(*common, ptr(gp), ptr(neg), ptr(neg), ptr(l), ptr(m)), "backward")

        rec = dry_launches(loss)
        fwd, bwd = infonce_launches(n, r, hw)
        # 4 launches at every N: the norms are computed inside the score tiles, grad_m and grad_l
        # CTAs share one grid, grad_l needs no finishing kernel.
        assert rec == fwd + bwd and len(rec) == 4
        tiles, row_blocks, splits, tps = infonce_plan(n, hw)
        assert (row_blocks, splits, tps) == {(64, 64): (2, 64, 1), (256, 64): (8, 32, 8), (4096, 64): (128, 3, 1366),
                                             (64, 256): (2, 128, 2)}[n, hw]
        ctas = [x[1][0] * x[1][1] * x[1][2] for x in rec]
        # The chip (132 SMs) is filled wherever there are 132 score tiles: at N = 64, HW = 64 the
        # forward has 2 x 64 = 128 tiles in all, each its own CTA; the backward adds one CTA per
        # column tile.
        assert ctas[0] >= min(132, row_blocks * tiles) and ctas[2] >= 132
        assert ctas[0] == {(64, 64): 128, (256, 64): 256, (4096, 64): 384, (64, 256): 256}[n, hw]
        assert ctas[2] == {(64, 64): 192, (256, 64): 512, (4096, 64): 4480, (64, 256): 512}[n, hw]

    @pytest.mark.parametrize("num_layers", [1, 12])
    def test_inner_launches_spectral_norm_constant_in_layers(num_layers):
        ws = [torch.empty(64 * (k + 1), 3 * 3 * 64) for k in range(num_layers)]
        us, vs = [torch.empty(w.shape[0]) for w in ws], [torch.empty(w.shape[1]) for w in ws]
        sig = [torch.empty(()) for _ in ws]
        ptrs = (ctypes.c_void_p * (4 * num_layers))()
        ints = (ctypes.c_int64 * (9 * num_layers))()
        for i in range(num_layers):
            ptrs[4 * i: 4 * i + 4] = [ws[i].data_ptr(), us[i].data_ptr(), vs[i].data_ptr(), sig[i].data_ptr()]
            ints[9 * i: 9 * i + 9] = [ws[i].shape[0], ws[i].shape[1], ws[i].shape[1], 1, 1, 1, 0, 0, 0]
        rec = dry_launches(lambda: check(LIB.emu_spectral_norm_power_iteration(num_layers, ptrs, ints, 1, 1e-12, 1),
                                         "power iteration"))
        assert len(rec) == 5  # one load + 4 per step, whatever the number of layers
