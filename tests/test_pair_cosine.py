"""fastgan::pair_cosine (CPU), the losses' positive term: against normalize_rows(x) . normalize_rows(y)
(y's rows shifted by the op's shift, times its scale) in float64, values and both gradients; zero
rows (the clamp), D = 1, non-contiguous, mixed and half dtypes, shifts that wrap and negative ones, x
is y (NT-Xent), scales (2C's 1/t); gradcheck; opcheck."""
import pytest
import torch

from fastgan.ops.contrastive_lse import pair_cosine
from fastgan.reference.contrastive import normalize_rows

from conftest import GRAD_FLOOR, TOL, rel_err


def reference(x, y, eps, shift=0):
    return (normalize_rows(x.double(), eps) * normalize_rows(y.double().roll(-shift, dims=0), eps)).sum(1)


# CUDA (a GPU machine): the CUDA kernel of the op, which has no float64 (the losses keep ATen there).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.float16, torch.float32),
          (torch.bfloat16, torch.bfloat16)]


@pytest.mark.parametrize("n,d", [(1, 1), (2, 3), (64, 512), (257, 129)])
@pytest.mark.parametrize("device,dtypes", [(dev, dt) for dev in DEVICES for dt in DTYPES
                                           if not (dev == "cuda" and torch.float64 in dt)])
@pytest.mark.parametrize("shift,scale", [(0, 1.0), ("half", 1.0), (300, 1 / 0.07), (-5, -0.5)])  # 300, -5 wrap
def test_values_and_gradients(n, d, device, dtypes, shift, scale, gen):
    shift = n // 2 if shift == "half" else shift
    eps = 1e-8
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, d, generator=gen, dtype=torch.float64)
    half = dtypes[0] in (torch.float16, torch.bfloat16)
    if n > 2 and not half:  # a zero row's gradient is ~1/eps = 1e8: beyond half precision's range
        x[1] = 0
        y[2] = 1e-9  # below eps: clamped, the cosine is linear in y there
    x, y = x.to(device, dtypes[0]), y.to(device, dtypes[1])
    if d > 1:
        x = torch.cat([x, x], 1)[:, ::2]  # non-contiguous
    x, y = x.requires_grad_(), y.requires_grad_()
    w = torch.randn(n, generator=gen, dtype=torch.float64).to(device)
    c = pair_cosine(x, y, eps, scale, shift)
    want_dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    assert c.dtype == want_dtype
    gx, gy = torch.autograd.grad((c * w.to(c)).sum(), [x, y])
    assert gx.dtype == dtypes[0] and gy.dtype == dtypes[1]
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    r = scale * reference(x64, y64, eps, shift)
    rx, ry = torch.autograd.grad((r * w).sum(), [x64, y64])
    tol = max(TOL[dtypes[0]], TOL[dtypes[1]])
    assert rel_err(c, r) < tol
    floor = GRAD_FLOOR * abs(scale)  # the gradients scale with `scale`: so does the floor of their norm
    assert rel_err(gx, rx, floor) < 4 * tol and rel_err(gy, ry, floor) < 4 * tol


def test_gradcheck_and_opcheck(gen):
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: pair_cosine(a, b, 1e-8), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: pair_cosine(a, b, 1e-8, 2.5, 4), (x, y))
    assert torch.autograd.gradcheck(lambda a: pair_cosine(a, a, 1e-8, 1.0, 3), (x,))  # NT-Xent: one z, shift N/2
    torch.library.opcheck(torch.ops.fastgan.pair_cosine.default, (x.float(), y.float(), 1e-8))
    torch.library.opcheck(torch.ops.fastgan.pair_cosine.default, (x.float(), y.float(), 1e-8, 3.0, -7))
    torch.library.opcheck(torch.ops.fastgan.pair_cosine.default,
                          (torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, dtype=torch.float16), 1e-8))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_on_each_device(device):
    x, y = torch.randn(5, 7, device=device, requires_grad=True), torch.randn(5, 7, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgan.pair_cosine.default, (x, y, 1e-8))
    torch.library.opcheck(torch.ops.fastgan.pair_cosine.default, (x, y, 1e-8, 0.5, 2))
    torch.library.opcheck(torch.ops.fastgan.pair_cosine.default,
                          (x.detach().bfloat16().requires_grad_(), y, 1e-8))  # mixed dtypes: float32 inside


def test_bad_shapes():
    with pytest.raises(RuntimeError, match="one shape"):
        pair_cosine(torch.randn(3, 2), torch.randn(2, 2), 1e-8)


@pytest.mark.parametrize("n,d,classes", [(1, 3, 1), (2, 1, 1), (65, 129, 4), (200, 17, 200), (130, 7, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_same_class_cosine_sum(n, d, classes, dtype, gen):
    """SupCon's positive term against the N x N mask form in float64: values, counts, gradient."""
    from fastgan.ops.contrastive_lse import same_class_cosine_sum

    eps = 1e-8
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if n > 2 and dtype != torch.bfloat16:
        x[1] = 0
    y = torch.randint(0, classes, (n,), generator=gen) * 7 - 3  # negative and sparse labels
    x = x.to(dtype).requires_grad_()
    w = torch.randn(n, generator=gen, dtype=torch.float64)
    pos, n_pos = same_class_cosine_sum(x, y, eps)
    (g,) = torch.autograd.grad((pos * w.to(pos)).sum(), x)
    x64 = x.detach().double().requires_grad_()
    xh = normalize_rows(x64, eps)
    mask = (y[:, None] == y[None, :]) & ~torch.eye(n, dtype=torch.bool)
    r = ((xh @ xh.T) * mask).sum(1)
    (rg,) = torch.autograd.grad((r * w).sum(), x64)
    assert pos.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and g.dtype == dtype
    assert torch.equal(n_pos, mask.sum(1))
    tol = TOL[dtype] if dtype != torch.float32 else 1e-5
    assert rel_err(pos, r) < tol and rel_err(g, rg, GRAD_FLOOR) < 4 * tol


def test_same_class_cosine_sum_checks(gen):
    from fastgan.ops.contrastive_lse import same_class_cosine_sum

    x = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 0, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda a: same_class_cosine_sum(a, y, 1e-8)[0], (x,))
    torch.library.opcheck(torch.ops.fastgan.same_class_cosine_sum.default, (x.float(), y, 1e-8))
    with pytest.raises(RuntimeError, match="labels"):
        same_class_cosine_sum(x, y.int(), 1e-8)
