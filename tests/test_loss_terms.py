"""The Triton loss terms (fastgan/ops/loss_terms.py): pair cosine with a row shift and the LSE
combine, against float64, opcheck'd, traced by torch.compile; and the launches of a whole loss step
on the Triton path pinned (perf_model.count_launches_cpu: Triton launches + non-view ATen ops), the
same at every N (docs/gpu_predictions.md, README "Launches per loss")."""
import pytest
import torch

from fastgan.benchmark import cases as C
from fastgan.benchmark import perf_model as P
from fastgan.ops import loss_terms as T

from fastgan import reference as R
from fastgan.functional import supcon_loss

from conftest import TOL, gradcheck, rel_err


@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                    (torch.float64, torch.float32)])
def test_pair_cosine_against_float64(shift, dtypes, gen):
    n, d = 37, 70  # two D slices, three row blocks (the last partial)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if dtypes[0] != torch.float16:  # a zero row's gradient is ~1/eps: beyond half precision
        x[2] = 0
    y[5] = 0
    xs, ys = x.to(dtypes[0]).requires_grad_(), y.to(dtypes[1]).requires_grad_()
    out = T.pair_cosine(xs, ys, 1e-8, 2.5, shift)
    x64, y64 = xs.detach().double().requires_grad_(), ys.detach().double().requires_grad_()
    yr = y64.roll(-shift, dims=0)
    want = (x64 * yr).sum(1) / (x64.norm(dim=1).clamp_min(1e-8) * yr.norm(dim=1).clamp_min(1e-8)) * 2.5
    assert out.dtype == torch.promote_types(torch.promote_types(dtypes[0], dtypes[1]), torch.float32)
    tol = TOL[torch.float16] if torch.float16 in dtypes else TOL[torch.float32]
    assert rel_err(out, want) < tol
    w = torch.randn(n, generator=gen, dtype=torch.float64)
    gx, gy = torch.autograd.grad((out * w.to(out)).sum(), (xs, ys))
    wx, wy = torch.autograd.grad((want * w).sum(), (x64, y64))
    assert gx.dtype == dtypes[0] and gy.dtype == dtypes[1]
    assert rel_err(gx, wx) < 5 * tol and rel_err(gy, wy) < 5 * tol


def test_combine_against_float64(gen):
    n = 300  # two blocks of the single program
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    y1 = torch.randn(n, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    y2 = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    out = T.lse_combine(x, [1.0, -1.0], y1, 1.0, y2, -2.0, scale=1.0 / n)
    want = (x[:, 0] - x[:, 1] + y1[:, 0] - 2.0 * y2).mean()
    assert rel_err(out, want) < 1e-12
    got = torch.autograd.grad(3.0 * out, (x, y1, y2))
    ref = torch.autograd.grad(3.0 * want, (x, y1, y2))
    for a, b in zip(got, ref):
        assert a.shape == b.shape and rel_err(a, b) < 1e-12


def _same_class_dense(x, labels, eps):
    """(pos, n_pos) of the same-class cosine sums from the N x N mask, float64 autograd."""
    xn = R.contrastive.normalize_rows(x, eps)
    mask = (labels[:, None] == labels[None, :]) & ~torch.eye(x.shape[0], dtype=torch.bool)
    return ((xn @ xn.T) * mask).sum(dim=1), mask.sum(dim=1)


# Labels: several classes (one of them a singleton), one class, all distinct. N: one row block, odd
# with a partial block, three blocks (the interpreter's 32-row tiles), one row.
LABELINGS = {"mixed": lambda n: (torch.arange(n) * 7) % 5 + (torch.arange(n) == n - 1) * 9,
             "one_class": lambda n: torch.zeros(n, dtype=torch.int64),
             "distinct": lambda n: torch.arange(n).flip(0) * 3 - 4}


@pytest.mark.parametrize("labeling", list(LABELINGS))
@pytest.mark.parametrize("n", [1, 37, 70])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_same_class_cosine_sum_against_float64(labeling, n, dtype, gen):
    d = 70  # two D slices, two D blocks in the backward
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if n > 3 and dtype != torch.float16:  # a zero row's gradient is ~1/eps: beyond half precision
        x[2] = 0
    labels = LABELINGS[labeling](n)
    xs = x.to(dtype).requires_grad_()
    pos, n_pos = T.same_class_cosine_sum(xs, labels, 1e-8)
    x64 = xs.detach().double().requires_grad_()
    want, want_n = _same_class_dense(x64, labels, 1e-8)
    assert pos.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert n_pos.dtype == torch.int64 and torch.equal(n_pos, want_n)
    tol = TOL[dtype]
    assert rel_err(pos, want) < tol
    w = torch.randn(n, generator=gen, dtype=torch.float64)
    (gx,) = torch.autograd.grad((pos * w.to(pos)).sum(), xs)
    (wx,) = torch.autograd.grad((want * w).sum(), x64)
    assert gx.dtype == dtype
    assert rel_err(gx, wx) < 5 * tol


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("labeling", list(LABELINGS))
@pytest.mark.parametrize("n", [1, 37])
def test_supcon_triton_against_reference(reduction, labeling, n, gen):
    # The whole Triton path (sweep, contrastive_lse, epilogue) in float64, zero row included.
    x = torch.randn(n, 19, generator=gen, dtype=torch.float64)
    if n > 3:
        x[2] = 0
    labels = LABELINGS[labeling](n)
    xs, x64 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = supcon_loss(xs, labels, 0.3, reduction=reduction, backend="triton")
    want = R.supcon_loss(x64, labels, 0.3, 1e-8, reduction)
    assert out.shape == want.shape and rel_err(out, want) < 1e-12
    w = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    (gx,) = torch.autograd.grad((out * w).sum(), xs)
    (wx,) = torch.autograd.grad((want * w).sum(), x64)
    assert rel_err(gx, wx) < 1e-12


@pytest.mark.parametrize("backend", ["triton", "cuda"])  # "cuda": the C++ ops' CPU forms
def test_supcon_terms_gradcheck(backend, gen):
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    assert gradcheck(lambda x: T.same_class_cosine_sum(x, labels, 1e-8, backend=backend)[0], (x,), backend)
    lse = torch.randn(7, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    n_pos = torch.tensor([2, 1, 2, 0, 1, 2, 0])
    for mean in (True, False):
        assert gradcheck(lambda lse, pos: T.supcon_epilogue(lse, pos, n_pos, 0.3, mean, backend=backend), (lse, pos),
                         backend)
    rowmax = torch.randn(7, generator=gen, dtype=torch.float64)
    cos = (torch.rand(7, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert gradcheck(lambda lse, cos: T.d2d_epilogue(lse, rowmax, cos, 0.5, 0.3, 1.0 / 7, backend=backend),
                     (lse, cos), backend)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("mean", [True, False])
@pytest.mark.parametrize("n_pos", [[2, 1, 2, 0, 1, 2, 0, 5, 0, 3, 1], [0] * 11])
def test_supcon_epilogue_against_float64(backend, mean, n_pos, gen):
    # sum_i [n_i > 0] (lse_i - pos_i / (t n_i)) over max(#anchors with n_i > 0, 1) or 1; anchors
    # without a positive give no term and no gradient (a batch of singletons: loss 0).
    n_pos = torch.tensor(n_pos)
    lse = torch.randn(11, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(11, generator=gen, dtype=torch.float64, requires_grad=True)
    out = T.supcon_epilogue(lse, pos, n_pos, 0.3, mean, backend=backend)
    has = n_pos > 0
    per = torch.where(has, lse[:, 0] - pos / (0.3 * n_pos.clamp_min(1).double()), torch.zeros(()).double())
    want = per.sum() / (has.sum().clamp_min(1) if mean else 1)
    assert out.shape == () and out.dtype == torch.float64
    assert (rel_err(out, want) if has.any() else out.abs()) < 1e-12
    got = torch.autograd.grad(out * 1.7, (lse, pos))
    ref = torch.autograd.grad(want * 1.7, (lse, pos))
    for a, b, leaf in zip(got, ref, (lse, pos)):
        assert a.shape == leaf.shape and (rel_err(a, b) if has.any() else a.abs().max()) < 1e-12


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("n", [1, 37, 300])
def test_cxx_supcon_d2d_ops_float32(device, n, gen):
    # The CUDA backend's D2D-CE and SupCon ops at float32 (the dtype the CUDA losses give them), on the
    # device's kernels (CUDA: csrc/cuda/loss_terms.cu and the same-class sweep of contrastive_lse.cu),
    # against float64 formulas: values and gradients, a zero row and an odd N included.
    x = torch.randn(n, 45, generator=gen, dtype=torch.float64)
    if n > 3:
        x[2] = 0
    labels = LABELINGS["mixed"](n).to(device)
    xs = x.float().to(device).requires_grad_()
    pos, n_pos = T.same_class_cosine_sum(xs, labels, 1e-8, backend="cuda")
    x64 = xs.detach().double().cpu().requires_grad_()
    want, want_n = _same_class_dense(x64, labels.cpu(), 1e-8)
    assert torch.equal(n_pos.cpu(), want_n) and rel_err(pos.cpu(), want) < 1e-5
    w = torch.randn(n, generator=gen, dtype=torch.float64)
    (gx,) = torch.autograd.grad((pos * w.float().to(device)).sum(), xs)
    (wx,) = torch.autograd.grad((want * w).sum(), x64)
    assert rel_err(gx.cpu(), wx) < 1e-4
    lse64 = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    pos64 = torch.randn(n, generator=gen, dtype=torch.float64)
    rowmax64 = torch.randn(n, generator=gen, dtype=torch.float64)
    rowmax64[0] = float("-inf")
    leaves64 = [t.clone().requires_grad_() for t in (lse64, pos64)]
    leaves = [t.float().to(device).requires_grad_() for t in (lse64, pos64)]
    has = want_n > 0
    ref = torch.where(has, leaves64[0][:, 0] - leaves64[1] / (0.3 * want_n.clamp_min(1).double()), torch.zeros(()).double())
    for mean in (True, False):
        out = T.supcon_epilogue(*leaves, n_pos, 0.3, mean, backend="cuda")
        want = ref.sum() / (has.sum().clamp_min(1) if mean else 1)
        assert out.dtype == torch.float32 and abs(out.item() - want.item()) <= 1e-5 * (1 + abs(want.item()))
        for a, b in zip(torch.autograd.grad(out, leaves), torch.autograd.grad(want, leaves64, retain_graph=True)):
            assert (a.cpu().double() - b).abs().max() < 1e-6
    cos64 = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    cos = cos64.detach().float().to(device).requires_grad_()
    out = T.d2d_epilogue(leaves[0], rowmax64.float().to(device), cos, 0.5, 0.3, 1.0 / n, backend="cuda")
    m = torch.where(torch.isfinite(rowmax64), rowmax64, torch.zeros_like(rowmax64))
    q = torch.relu((0.5 - cos64) / 0.3)
    want = (q + torch.logaddexp(-q, leaves64[0][:, 0] - m)).mean()
    assert abs(out.item() - want.item()) <= 1e-5 * (1 + abs(want.item()))
    for a, b in zip(torch.autograd.grad(out, (leaves[0], cos)), torch.autograd.grad(want, (leaves64[0], cos64))):
        assert rel_err(a.cpu().double(), b) < 1e-5


def test_cxx_epilogue_ops_opcheck_and_bad_arguments(gen):
    # fastgan::d2d_epilogue / supcon_epilogue / same_class_cosine_sum (the CUDA backend's ops; their CPU
    # forms here): schemas, fakes and autograd registrations consistent; bad shapes named.
    lse = torch.randn(9, 1, generator=gen, requires_grad=True)
    rowmax = torch.randn(9, generator=gen)
    rowmax[0] = float("-inf")
    cos = torch.randn(9, generator=gen, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgan.d2d_epilogue.default, (lse, rowmax, cos, 0.98, 0.5, 0.1))
    n_pos = torch.tensor([3, 1, 3, 0, 1, 3, 1, 1, 3])
    for mean in (True, False):
        torch.library.opcheck(torch.ops.fastgan.supcon_epilogue.default, (lse, cos, n_pos, 0.5, mean))
    feats = torch.randn(9, 20, generator=gen, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgan.same_class_cosine_sum.default,
                          (feats, torch.tensor([0, 1, 0, 2, 1, 0, 3, 3, 0]), 1e-8))
    with pytest.raises(RuntimeError, match=r"lse must have shape \(N, 1\)"):
        torch.ops.fastgan.d2d_epilogue(lse.detach()[:, 0], rowmax, cos, 0.98, 0.5, 0.1)
    with pytest.raises(RuntimeError, match=r"shape \(N,\) with N = 9"):
        torch.ops.fastgan.supcon_epilogue(lse, cos[:8], n_pos, 0.5, True)


def test_opcheck(gen):
    x = torch.randn(9, 20, generator=gen)
    y = torch.randn(9, 20, generator=gen, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastgan.pair_cosine_triton.default, (x, y, 1e-8, 0.5, 4))
    lse = torch.randn(9, 2, generator=gen, requires_grad=True)
    pos = torch.randn(9, generator=gen, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgan.lse_combine_triton.default, (lse, pos, None, [1.0, -1.0], -1.0, 0.0, 0.1))
    rowmax = torch.randn(9, generator=gen)
    rowmax[0] = float("-inf")  # no j != i: the shift is taken as 0
    lse1 = lse[:, :1].detach().contiguous().requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.d2d_epilogue_triton.default, (lse1, rowmax, pos, 0.98, 0.5, 0.1))
    feats = torch.randn(9, 20, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 3, 0])
    torch.library.opcheck(torch.ops.fastgan.same_class_cosine_sum_triton.default, (feats, labels, 1e-8))
    n_pos = torch.tensor([3, 1, 3, 0, 1, 3, 1, 1, 3])
    for mean in (True, False):
        torch.library.opcheck(torch.ops.fastgan.supcon_epilogue_triton.default, (lse1, pos, n_pos, 0.5, mean))


@pytest.mark.parametrize("backend", ["triton", "cuda"])  # "cuda": fastgan::d2d_epilogue's CPU form
def test_d2d_epilogue_against_float64(backend, gen):
    n = 300
    lse = torch.randn(n, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    rowmax = torch.randn(n, generator=gen, dtype=torch.float64)
    rowmax[3] = float("-inf")
    cos = torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
    cos[5] = 0.99  # q = 0: relu inactive
    cos.requires_grad_()
    with torch.no_grad():
        lse[7] = float("-inf")  # no other-class column: the row's term is 0
    out = T.d2d_epilogue(lse, rowmax, cos, 0.98, 0.5, 1.0 / n, backend=backend)
    m = torch.where(torch.isfinite(rowmax), rowmax, torch.zeros_like(rowmax))
    q = torch.relu((0.98 - cos) / 0.5)
    want = (q + torch.logaddexp(-q, lse[:, 0] - m)).mean()
    assert rel_err(out, want) < 1e-12
    for a, b in zip(torch.autograd.grad(out, (lse, cos)), torch.autograd.grad(want, (lse, cos))):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("op", ["2c", "d2d", "ntxent", "clip", "supcon"])
def test_compile_fullgraph_triton(op):
    xs, ys = C.make_inputs(C.Case(op, (12, 8), "cpu", torch.float32))
    fused, reference = C.LOSS[op]
    torch._dynamo.reset()
    f = torch.compile(lambda *a: fused(*a, backend="triton"), fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in xs]
    out = f(*leaves, *ys)
    out.backward()
    ref_leaves = [t.double().requires_grad_() for t in xs]
    want = reference(*ref_leaves, *ys)
    want.backward()
    assert rel_err(out, want) < TOL[torch.float32]
    for a, b in zip(leaves, ref_leaves):
        assert rel_err(a.grad, b.grad) < 5 * TOL[torch.float32]


# (Triton launches, ATen ops) of one forward + backward on the Triton path, the same at every N (the
# ATen ops: the backward's seed ones_like and autograd's accumulation adds where one tensor feeds
# several inputs). docs/gpu_predictions.md and perf_model.ASSUMED_LAUNCHES use these counts.
PINNED = {"2c": (12, 3), "ntxent": (12, 4), "clip": (24, 5), "d2d": (12, 3), "supcon": (13, 3)}


@pytest.mark.parametrize("op", list(PINNED))
def test_loss_launches_pinned(op):
    seen = {}
    for n in (64, 256, 4096):
        case = C.Case(op, (n, 32), "cpu", torch.float32)
        xs, ys = C.make_inputs(case)
        fused, _ = C.LOSS[op]
        triton_launches, aten = P.count_launches_cpu(lambda *a: fused(*a, backend="triton"), xs, ys, execute=False)
        seen[n] = (len(triton_launches), len(aten))
    assert all(v == PINNED[op] for v in seen.values()), (op, seen)
    assert P.ASSUMED_LAUNCHES[op][0] == sum(PINNED[op])


# (CUDA kernel launches of fastgan's ops, ATen ops around them) of one forward + backward on the CUDA
# backend, float32, counted on the CPU (perf_model.count_launches_cuda_cpu: the CUDA composition with
# fastgan's ops by perf_model.cuda_op_launches, which mirrors csrc/cuda/*_cuda.cpp), the same at every
# N. README "Launches per loss" states these totals.
PINNED_CUDA = {"cosine_similarity_matrix": (9, 4), "2c": (13, 3), "ntxent": (13, 4), "clip": (22, 5),
               "d2d": (13, 3), "supcon": (18, 3), "infonce": (4, 12)}


@pytest.mark.parametrize("op", list(PINNED_CUDA))
@pytest.mark.parametrize("n", [1, 37])
def test_cuda_composition_against_float64(op, n):
    # The CUDA backend's composition of each loss (its branches, the positive logits, the folded 1/t,
    # the D2D-CE and SupCon epilogues, fastgan's ops by their CPU kernels) in float32 against the
    # reference in float64: value and gradients. On a GPU the same composition runs the CUDA kernels
    # (tests/test_functional.py's cuda cases).
    size = (n, 5, 7) if op == "infonce" else (2 * n if op == "ntxent" else n, 19)  # NT-Xent: two views
    case = C.Case(op, size, "cpu", torch.float32)
    xs, ys = C.make_inputs(case, seed=n)
    fused, ref = C.LOSS[op]
    xs = [x.detach().requires_grad_() for x in xs]
    x64 = [x.detach().double().requires_grad_() for x in xs]
    with P.cuda_composition_on_cpu():
        out = fused(*xs, *ys, backend="cuda")
    want = ref(*x64, *ys)
    assert out.dtype == torch.float32 and abs(out.item() - want.item()) <= 1e-5 * (1 + abs(want.item()))
    for g, w in zip(torch.autograd.grad(out, xs), torch.autograd.grad(want, x64)):
        assert (g.double() - w).norm() <= 1e-5 * (1 + w.norm())


@pytest.mark.parametrize("op", list(PINNED_CUDA))
def test_cuda_loss_launches_pinned(op):
    seen = {}
    for n in (64, 256, 4096):
        size = (n, 16, 8) if op == "infonce" else (n, 16)
        case = C.Case(op, size, "cpu", torch.float32)
        xs, ys = C.make_inputs(case)
        fused, _ = C.LOSS[op]
        kernels, aten = P.count_launches_cuda_cpu(fused, xs, ys)
        seen[n] = (len(kernels), len(aten))
    assert all(v == PINNED_CUDA[op] for v in seen.values()), (op, seen)


# ATen ops that make the host wait for the device on CUDA (a value read back, or an output whose size
# depends on the data): one of them in a loss step breaks CUDA-graph capture (issue 14.1).
HOST_SYNC_OPS = frozenset({"_local_scalar_dense", "item", "nonzero", "nonzero_static", "masked_select", "unique",
                           "_unique", "_unique2", "unique_dim", "unique_consecutive", "bincount", "histc",
                           "repeat_interleave", "equal", "is_nonzero", "_assert_async", "allclose"})


@pytest.mark.parametrize("op", list(PINNED_CUDA))
def test_cuda_composition_has_no_host_sync(op):
    # Every ATen op of the CUDA backend's loss step, the Python layer's checks included (recorded as
    # for the launch counts, on the CPU), and none reads a device value back; tests/test_cuda_losses.py
    # captures the same steps in a CUDA graph on a GPU.
    size = (64, 16, 8) if op == "infonce" else (64, 16)
    xs, ys = C.make_inputs(C.Case(op, size, "cpu", torch.float32))
    fused, _ = C.LOSS[op]
    _, aten = P.count_launches_cuda_cpu(fused, xs, ys)
    assert not HOST_SYNC_OPS & set(aten), (op, aten)


def test_host_sync_check_sees_a_read_back():
    # The check above can fail: a composition that reads a value back (as a `loss.item()` or an
    # `if (labels < 0).any():` would) is caught.
    xs, ys = C.make_inputs(C.Case("2c", (8, 16), "cpu", torch.float32))
    fused, _ = C.LOSS["2c"]

    def with_read_back(e, p, y, backend):
        if bool((y < 0).any()):
            raise AssertionError("no negative labels here")
        return fused(e, p, y, backend=backend)

    _, aten = P.count_launches_cuda_cpu(with_read_back, xs, ys)
    assert HOST_SYNC_OPS & set(aten)


def test_cuda_glue_has_no_host_sync_calls():
    # The CUDA glue (csrc/cuda/*_cuda.cpp) and kernels size their workspaces from shapes and read
    # scalars on the device: no value copied back, no stream or device synchronization.
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "cuda"
    sync = re.compile(r"\.item\s*<|\.item\s*\(|\.cpu\s*\(|at::kCPU|\bkCPU\b|Synchronize\s*\(|cudaMemcpy\s*\(|"
                      r"\.tolist\s*\(|_local_scalar_dense|\bnonzero\s*\(")
    files = sorted(root.glob("*.cpp")) + sorted(root.glob("*.cu")) + sorted(root.glob("*.h"))
    assert len(files) >= 10
    hits = [f"{f.name}:{i + 1}: {line.strip()}" for f in files
            for i, line in enumerate(f.read_text().splitlines()) if sync.search(line)]
    assert not hits, hits
    assert sync.search("auto v = t.item<float>();") and sync.search("cudaStreamSynchronize(s);")


@pytest.mark.parametrize("temperature", [0.07, 0.3, 2.0])
def test_cuda_2c_launches_do_not_depend_on_temperature(temperature):
    # The pinned counts use 2C at t = 1 (fastgan/benchmark/cases.py); at any other t its extra logit's
    # 1/t rides in pair_cosine's scale, not in an ATen division each way. (The other losses' pinned
    # temperatures are not 1 already.)
    import fastgan.functional as FG

    xs, ys = C.make_inputs(C.Case("2c", (64, 16), "cpu", torch.float32))
    kernels, aten = P.count_launches_cuda_cpu(
        lambda e, p, y, backend: FG.conditional_contrastive_loss(e, p, y, temperature, backend=backend), xs, ys)
    assert (len(kernels), len(aten)) == PINNED_CUDA["2c"], aten


def test_cuda_launch_names_are_the_kernels():
    # Every kernel cuda_op_launches names is a __global__ function of its .cu file (a renamed or
    # removed kernel must change the count), and an op it does not know is an error, not a zero.
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "cuda"
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    calls = [("contrastive_lse", (a, b, None, None, torch.randn(4))),
             ("contrastive_lse_backward", (torch.randn(4, 1), a, b, None, None, torch.randn(4), torch.randn(4, 1))),
             ("cosine_similarity_matrix", (a, b)), ("cosine_similarity_matrix_backward", (torch.randn(4, 4), a, b)),
             ("pair_cosine", (a, b)), ("pair_cosine_backward", (torch.randn(4), a, b)),
             ("lse_combine", (torch.randn(4, 2),)), ("lse_combine_backward", (torch.tensor(1.0), torch.randn(4, 2))),
             ("infonce_lse", (torch.randn(2, 4, 3), torch.randn(2, 4))),
             ("infonce_lse_backward", (torch.randn(2, 3), torch.randn(2), torch.randn(2, 4, 3), torch.randn(2, 4),
                                       torch.randn(2))),
             ("same_class_cosine_sum", (a, torch.arange(4))),
             ("same_class_cosine_sum_backward", (torch.randn(4), a, torch.arange(4))),
             ("d2d_epilogue", (torch.randn(4, 1), torch.randn(4), torch.randn(4))),
             ("d2d_epilogue_backward", (torch.tensor(1.0), torch.randn(4, 1), torch.randn(4), torch.randn(4))),
             ("supcon_epilogue", (torch.randn(4, 1), torch.randn(4), torch.arange(4))),
             ("supcon_epilogue_backward", (torch.tensor(1.0), torch.tensor(2.0), torch.randn(4, 1), torch.randn(4),
                                           torch.arange(4)))]
    for name, args in calls:
        for launch in P.cuda_op_launches(name, args):
            if ":" in launch:
                src, kernel = launch.split(":")
                text = (root / src).read_text()
                assert re.search(r"__global__ void[^;{}]*?\b" + kernel + r"\(", text), launch
    # Mixed dtypes: one cast in, one cast back for the 16-bit side.
    assert P.cuda_op_launches("pair_cosine_backward", (torch.randn(4), a.half(), b)).count("copy") == 2
    with pytest.raises(NotImplementedError, match="spectral_norm_apply"):
        P.cuda_op_launches("spectral_norm_apply", (a,))


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("k, ys", [(2, 0), (1, 1), (1, 2), (3, 2)])
def test_lse_combine_op(device, k, ys, gen):
    # fastgan::lse_combine (the CUDA losses' combination and mean; CPU kernel in ATen): the value,
    # every gradient (those of absent y1, y2 shaped (N,)), opcheck and gradcheck where float64 runs.
    n = 37
    dt = torch.float64 if device == "cpu" else torch.float32
    x = torch.randn(n, k + 1, generator=gen, dtype=dt)[:, :k].to(device).requires_grad_()  # strided
    y1 = torch.randn(n, 1, generator=gen, dtype=dt).to(device).requires_grad_() if ys >= 1 else None
    y2 = torch.randn(n, generator=gen, dtype=dt).to(device).requires_grad_() if ys >= 2 else None
    coefs, c1, c2, scale = [1.0, -1.0, 0.25][:k], 1.0, -2.0, 1.0 / n
    out = torch.ops.fastgan.lse_combine(x, y1, y2, coefs, c1, c2, scale)
    want = x.double() @ torch.tensor(coefs, dtype=torch.float64, device=device)
    if y1 is not None:
        want = want + c1 * y1.double()[:, 0]
    if y2 is not None:
        want = want + c2 * y2.double()
    want = want.sum() * scale
    assert out.shape == () and rel_err(out, want) < TOL[dt]
    leaves = [t for t in (x, y1, y2) if t is not None]
    got = torch.autograd.grad(out * 3.0, leaves)
    ref_grads = torch.autograd.grad(want * 3.0, leaves)
    for a, b, leaf in zip(got, ref_grads, leaves):
        assert a.shape == leaf.shape and rel_err(a, b) < TOL[dt]
    gx, g1, g2 = torch.ops.fastgan.lse_combine_backward(torch.tensor(1.0, device=device, dtype=dt), x, None, None,
                                                        coefs, c1, c2, scale)
    assert g1.shape == (n,) and g2.shape == (n,) and torch.allclose(g1, torch.full_like(g1, c1 * scale))
    torch.library.opcheck(torch.ops.fastgan.lse_combine.default, (x, y1, y2, coefs, c1, c2, scale))
    if dt == torch.float64:
        assert torch.autograd.gradcheck(lambda *t: torch.ops.fastgan.lse_combine(
            t[0], t[1] if ys >= 1 else None, t[2] if ys >= 2 else None, coefs, c1, c2, scale),
            tuple(leaves) + (None,) * (3 - len(leaves)))


def test_lse_combine_rejects_bad_arguments():
    x = torch.randn(5, 2)
    with pytest.raises(RuntimeError, match="coefs must have K = 2"):
        torch.ops.fastgan.lse_combine(x, None, None, [1.0], 0.0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match=r"y1 and y2 must have shape \(N,\)"):
        torch.ops.fastgan.lse_combine(x, torch.randn(4), None, [1.0, 1.0], 1.0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="K = 1..3"):
        torch.ops.fastgan.lse_combine(torch.randn(5, 4), None, None, [1.0] * 4, 0.0, 0.0, 1.0)
