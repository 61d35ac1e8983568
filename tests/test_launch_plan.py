"""Launch plans of the Triton losses on a GPU, recorded without one, and the split-and-merge path
executed by the interpreter.

Recording: every Triton launch is intercepted (the kernel objects' run replaced by a recorder: the
grid and the constexprs, nothing executes) while the real wrappers plan for an H100/H200 (sm_90,
132 SMs: configs.force_arch) at N = 64, 256, 4096. Checked per loss forward + backward: the same
number of launches at every N, the grids that fill 132 SMs wherever the tiles allow it (and the
most programs the tiles allow elsewhere), the merge of the partial states present, no host sync in
the wrappers (Tensor.item / tolist / cpu / int / float / bool raise), and the ATen ops the wrappers
issue besides (counted with a dispatch mode) constant too. bench/triton_aot.py compiles the same
launches for real targets (tests/test_triton_aot.py).

Execution: with configs.force_split the interpreter runs split > 1 at tiny sizes, against the float64
reference and bit-for-bit against itself."""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastgan.benchmark.perf_model import ATEN_FREE
from fastgan.ops._registry import triton_module
from fastgan.reference import contrastive as ref
from fastgan.reference import infonce as iref

from conftest import GRAD_FLOOR, TOL, rel_err

CL = triton_module("contrastive_lse")
IL = triton_module("infonce_lse")
CS = triton_module("cosine_similarity_matrix")
CONFIGS = triton_module("configs")
SMS = CONFIGS.H100_SMS
SIZES = (64, 256, 4096)


def _kernels():
    out = {}
    for mod in (CL, IL, CS):
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and hasattr(obj, "run"):
                out[f"{mod.__name__.rsplit('.', 1)[1]}.{name}"] = obj
    return out


# ATen ops that launch nothing on a GPU (allocation, views, metadata): the loss-level count's set.
_FREE = ATEN_FREE


class _AtenCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name not in _FREE:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def _no_sync(monkeypatch):
    def fail(*_, **__):
        raise AssertionError("host sync in a Triton wrapper")

    for name in ("item", "tolist", "cpu", "__int__", "__float__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, fail)


@contextlib.contextmanager
def _recording(monkeypatch):
    launches = []
    for name, k in _kernels().items():
        def run(*args, grid, warmup=False, _name=name, **kwargs):
            launches.append((_name, tuple(grid), kwargs))

        monkeypatch.setattr(k, "run", run)
    with monkeypatch.context() as mp:
        _no_sync(mp)
        count = _AtenCount()
        with CONFIGS.force_arch(90), count:
            yield launches, count.ops


def _programs(grid):
    p = 1
    for g in grid:
        p *= g
    return p


def _loss_2c(n, d=16):
    a = torch.empty(n, d)
    lab = torch.zeros(n, dtype=torch.long)
    extra = torch.empty(n)
    args = (10.0, 0.0, False, True, 1e-8, True, 0, [0, 1])

    def run():
        lse, _ = CL.contrastive_lse_forward(a, a, lab, lab, extra, *args)
        CL.contrastive_lse_backward(torch.empty_like(lse), a, a, lab, lab, extra, lse, *args)
    return run


def _loss_infonce(n, r=16, hw=4):
    l, m = torch.empty(n, r, hw), torch.empty(n, r)

    def run():
        pos, neg = IL.infonce_lse_forward(l, m, 1.0, 0.0, True, 1e-8)
        IL.infonce_lse_backward(torch.empty_like(pos), torch.empty_like(neg), l, m, neg, 1.0, 0.0, True, 1e-8)
    return run


def _loss_cosine(n, d=16):
    a, b = torch.empty(n, d), torch.empty(n, d)

    def run():
        s = CS.cosine_similarity_matrix_forward(a, b, 1.0, 1e-8)
        CS.cosine_similarity_matrix_backward(torch.empty_like(s), a, b, 1.0, 1e-8)
    return run


# Triton launches per forward + backward (README "Launches per loss"), the same at every N.
LAUNCHES = {"contrastive_lse": 8, "infonce_lse": 10, "cosine_similarity_matrix": 9}
# ATen ops the wrappers issue besides, float32 (allocations and views excluded): the losses none;
# cosine_similarity_matrix's backward builds its unit-norm operands and a ones vector.
ATEN = {"contrastive_lse": 0, "infonce_lse": 0, "cosine_similarity_matrix": 3}


@pytest.mark.parametrize("op,make", [("contrastive_lse", _loss_2c), ("infonce_lse", _loss_infonce),
                                     ("cosine_similarity_matrix", _loss_cosine)])
def test_launches_constant_no_sync(op, make, monkeypatch):
    plans = {}
    for n in SIZES:
        run = make(n)
        with _recording(monkeypatch) as (launches, aten):
            run()
        plans[n] = ([k for k, _, _ in launches], list(aten))
    names = {n: p[0] for n, p in plans.items()}
    assert all(v == names[SIZES[0]] for v in names.values()), names
    assert len(names[SIZES[0]]) == LAUNCHES[op], names[SIZES[0]]
    aten = {n: p[1] for n, p in plans.items()}
    assert all(v == aten[SIZES[0]] for v in aten.values()), aten
    assert len(aten[SIZES[0]]) == ATEN[op], aten[SIZES[0]]


def _tiles(n, block):
    return -(-n // block)


def test_contrastive_grids_fill_the_chip(monkeypatch):
    for n in SIZES:
        with _recording(monkeypatch) as (launches, _):
            _loss_2c(n, d=512)()
        by = {k.split(".")[1]: (g, kw) for k, g, kw in launches}
        g, kw = by["_forward_kernel"]
        rb, ct = _tiles(n, kw["BLOCK_N"]), _tiles(n, kw["BLOCK_M"])
        # One program per SM wherever the tiles allow it, else one program per score tile.
        assert _programs(g) >= min(SMS, rb * ct), (n, g)
        assert g[1] > 1 or rb >= SMS or ct == 1
        mg, _ = by["_forward_merge_kernel"]  # the merge of the partial states always follows
        assert [k.split(".")[1] for k, _, _ in launches].index("_forward_merge_kernel") == 2
        for kern, blk in (("_backward_rows_kernel", "BLOCK_M"), ("_backward_cols_kernel", "BLOCK_N")):
            g, kw = by[kern]
            nd = _tiles(512, kw["BLOCK_DU"])
            full = _tiles(n, kw["BLOCK_N"]) * _tiles(n, kw["BLOCK_M"]) * nd
            assert g[1] == nd and _programs(g) >= min(SMS, full), (kern, n, g)
        assert "_grad_merge_kernel" in by
        if n == 4096:
            assert _programs(by["_forward_kernel"][0]) >= SMS


def test_infonce_grids_fill_the_chip(monkeypatch):
    for n in SIZES:
        with _recording(monkeypatch) as (launches, _):
            _loss_infonce(n, r=256, hw=1)()
        by = {k.split(".")[1]: (g, kw) for k, g, kw in launches}
        g, kw = by["_forward_kernel"]
        full = _tiles(n, kw["BLOCK_M"]) * _tiles(n, kw["BLOCK_K"])
        assert _programs(g) >= min(SMS, full), (n, g)
        for kern in ("_backward_m_kernel", "_backward_l_kernel"):
            g, kw = by[kern]
            full = _tiles(n, kw["BLOCK_M"]) * _tiles(n, kw["BLOCK_K"]) * _tiles(256, kw["BLOCK_RU"])
            assert _programs(g) >= min(SMS, full), (kern, n, g)
        assert {"_forward_merge_kernel", "_grad_m_merge_kernel", "_grad_l_merge_kernel"} <= set(by)


def test_split_plan_is_a_pure_function_of_shapes():
    x = torch.empty(1)
    with CONFIGS.force_arch(90):
        assert CONFIGS.split_plan(1, 64, x) == (64, 1)
        assert CONFIGS.split_plan(64, 64, x) == (3, 22)
        assert CONFIGS.split_plan(200, 64, x) == (1, 64)
        assert CONFIGS.split_plan(4, 5, x) == (5, 1)
    assert CONFIGS.split_plan(1, 64, x) == (1, 64)  # the interpreter: no SMs to fill
    with CONFIGS.force_split(3):
        assert CONFIGS.split_plan(1, 7, x) == (3, 3) and CONFIGS.split_plan(1, 2, x) == (2, 1)


# ------------------------------------------------------------------ split > 1 in the interpreter
def _splits_seen(monkeypatch, module, name, seen):
    k = getattr(module, name)
    original = k.run

    def run(*args, grid, **kwargs):
        seen.append((name, tuple(grid)))
        return original(*args, grid=grid, **kwargs)

    monkeypatch.setattr(k, "run", run)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_contrastive_split_executes_exactly(dtype, gen, monkeypatch):
    seen = []
    for name in ("_forward_kernel", "_backward_rows_kernel", "_backward_cols_kernel"):
        _splits_seen(monkeypatch, CL, name, seen)
    n, m, d = 40, 70, 20  # 32 x 32 interpreter tiles: 3 column tiles, 2 row tiles
    a = torch.randn(n, d, generator=gen, dtype=torch.float64)
    b = torch.randn(m, d, generator=gen, dtype=torch.float64)
    a[3] = 0
    la, lb = torch.randint(0, 3, (n,), generator=gen), torch.randint(0, 3, (m,), generator=gen)
    e = torch.randn(n, generator=gen, dtype=torch.float64)
    params = (4.0, 0.1, False, True, 1e-8, True, 1, [0, 1, 2])
    w = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    outs = []
    for _ in range(2):
        with CONFIGS.force_split(3):
            lse, rowmax = CL.contrastive_lse_forward(a.to(dtype), b.to(dtype), la, lb, e.to(dtype), *params)
            ga, gb, ge = CL.contrastive_lse_backward(w.to(lse), a.to(dtype), b.to(dtype), la, lb, e.to(dtype), lse,
                                                     *params)
        outs.append((lse, rowmax, ga, gb, ge))
    assert ("_forward_kernel", (2, 3)) in seen
    assert ("_backward_rows_kernel", (2, 1, 3)) in seen and ("_backward_cols_kernel", (3, 1, 2)) in seen
    for x, y in zip(*outs):  # the fixed merge order: the same bits
        assert torch.equal(x, y)
    leaves = [t.clone().requires_grad_(True) for t in (a, b, e)]
    rlse, rrowmax = ref.contrastive_lse(leaves[0], leaves[1], la, lb, leaves[2], *params)
    tol = TOL[dtype]
    assert rel_err(outs[0][0], rlse) < tol and rel_err(outs[0][1], rrowmax) < tol
    (rlse.where(torch.isfinite(rlse), torch.zeros_like(rlse)) * w).sum().backward()
    for got, leaf in zip(outs[0][2:], leaves):
        assert rel_err(got, leaf.grad, GRAD_FLOOR) < tol


def test_infonce_split_executes_exactly(gen, monkeypatch):
    seen = []
    for name in ("_forward_kernel", "_backward_m_kernel", "_backward_l_kernel"):
        _splits_seen(monkeypatch, IL, name, seen)
    n, r, hw = 33, 20, 5  # 32-image tiles: 2 image tiles; 64-column tiles: 3 column tiles
    l = torch.randn(n, r, hw, generator=gen, dtype=torch.float64)
    m = torch.randn(n, r, generator=gen, dtype=torch.float64)
    l[2, :, 1] = 0
    gp = torch.randn(n, hw, generator=gen, dtype=torch.float64)
    gn = torch.randn(n, generator=gen, dtype=torch.float64)
    outs = []
    for _ in range(2):
        with CONFIGS.force_split(3):
            pos, neg = IL.infonce_lse_forward(l, m, 2.0, 0.5, True, 1e-8)
            gl, gm = IL.infonce_lse_backward(gp, gn, l, m, neg, 2.0, 0.5, True, 1e-8)
        outs.append((pos, neg, gl, gm))
    assert ("_forward_kernel", (2, 3)) in seen
    assert ("_backward_m_kernel", (2, 1, 3)) in seen and ("_backward_l_kernel", (3, 1, 2)) in seen
    for x, y in zip(*outs):
        assert torch.equal(x, y)
    l64, m64 = l.clone().requires_grad_(True), m.clone().requires_grad_(True)
    rpos, rneg = iref.infonce_lse(l64, m64, 2.0, 0.5, True, 1e-8)
    ((rpos * gp).sum() + (rneg * gn).sum()).backward()
    tol = TOL[torch.float64]
    assert rel_err(outs[0][0], rpos) < tol and rel_err(outs[0][1], rneg) < tol
    assert rel_err(outs[0][2], l64.grad, GRAD_FLOOR) < tol and rel_err(outs[0][3], m64.grad, GRAD_FLOOR) < tol
