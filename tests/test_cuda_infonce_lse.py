"""CUDA kernels of fastgan::infonce_lse / infonce_lse_backward (csrc/cuda/infonce_lse.cu) against the
contract, fastgan.reference.infonce.infonce_lse, in float64 on the GPU: values, and gradients of the
backward op against autograd of the reference. Sizes at and around the kernels' tile edges (32 rows,
64 columns = (image, position) pairs, 32/64-wide R slices), odd sizes, N = 1, R = 1, HW = 1; strided
inputs (a permuted channels-last feature map, a transposed m) read without a copy; every dtype.
Needs a GPU: skipped only when CUDA is absent (hardware, not a missing build: a GPU machine without
the compiled kernels fails here)."""
import math
import zlib

import pytest
import torch

from fastgan.reference.infonce import infonce_lse as ref_infonce_lse

from conftest import GRAD_FLOOR, TOL, rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernels need a GPU")

DEV = "cuda"
# (N, R, HW): tile edges (N = 32/33 rows, N*HW = 64/65 columns, R = 32/33/64/65), odd sizes, ones.
SIZES = [
    (1, 1, 1),
    (1, 5, 7),
    (2, 1, 1),
    (3, 1, 5),
    (5, 17, 9),
    (4, 33, 16),
    (7, 65, 49),
    (32, 32, 2),
    (33, 64, 3),
    (13, 70, 5),
    (64, 128, 64),
]
CONFIGS = [  # (scale, self_logit, normalize, eps)
    (1.0, -10.0, False, 1e-12),  # Mimicry's defaults
    (1.0, None, False, 1e-12),  # exact: the own block removed
    (10.0, -10.0, True, 1e-8),  # cosine scores at temperature 0.1
    (3.0, None, True, 1e-8),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(n, r, hw, dtype, g, channels_last=False, transposed_m=False, zero=False):
    """l (N, R, HW) and m (N, R) on the GPU. Unnormalized features are scaled by 1 / sqrt(R) so that
    scores stay O(1) like a trained discriminator's."""
    s = 1.0 / math.sqrt(r)
    if channels_last:  # (N, R, H, W) map in channels-last memory, flattened over H, W: a strided view
        h = next(d for d in range(int(math.isqrt(hw)), 0, -1) if hw % d == 0)
        x = (torch.randn(n, r, h, hw // h, generator=g, dtype=torch.float64) * s).to(DEV, dtype)
        l = x.contiguous(memory_format=torch.channels_last).flatten(2)
        assert l.shape == (n, r, hw) and (l.is_contiguous() is False or r == 1 or hw == 1)
    else:
        l = (torch.randn(n, r, hw, generator=g, dtype=torch.float64) * s).to(DEV, dtype)
    if transposed_m:
        m = (torch.randn(r, n, generator=g, dtype=torch.float64) * s).to(DEV, dtype).t()
    else:
        m = (torch.randn(n, r, generator=g, dtype=torch.float64) * s).to(DEV, dtype)
    if zero and n > 1:  # zero vectors: the kink of max(||x||, eps) (normalized configs)
        m = m.clone()
        m[n - 1] = 0
        if hw > 1:
            l = l.clone()
            l[0, :, hw - 1] = 0
    return l, m


def _check(l, m, cfg, g, tol):
    scale, self_logit, normalize, eps = cfg
    pos, neg = torch.ops.fastgan.infonce_lse(l, m, scale, self_logit, normalize, eps)
    l64 = l.detach().double().requires_grad_(True)
    m64 = m.detach().double().requires_grad_(True)
    rpos, rneg = ref_infonce_lse(l64, m64, scale, self_logit, normalize, eps)
    n, _, hw = l.shape
    assert pos.dtype == torch.float32 and neg.dtype == torch.float32
    assert pos.shape == (n, hw) and neg.shape == (n,)
    assert pos.device == l.device and neg.device == l.device
    assert rel_err(pos, rpos) < tol
    assert rel_err(neg, rneg) < tol

    gp = torch.randn(n, hw, generator=g, dtype=torch.float64)
    gn = torch.randn(n, generator=g, dtype=torch.float64)
    finite = torch.isfinite(rneg.detach()).cpu()
    if not finite.all():
        # Empty negative set (N = 1, exact): neg = -inf has no gradient; autograd of logsumexp over
        # only -inf gives NaN even for a zero incoming gradient, so the reference uses pos alone.
        gn = torch.where(finite, gn, torch.zeros_like(gn))
        loss = (rpos * gp.to(DEV)).sum()
    else:
        loss = (rpos * gp.to(DEV)).sum() + (rneg * gn.to(DEV)).sum()
    loss.backward()
    grad_l, grad_m = torch.ops.fastgan.infonce_lse_backward(
        gp.to(DEV, torch.float32), gn.to(DEV, torch.float32), l, m, neg, scale, self_logit, normalize, eps
    )
    assert grad_l.shape == l.shape and grad_m.shape == m.shape
    assert grad_l.dtype == l.dtype and grad_m.dtype == m.dtype
    assert grad_l.is_contiguous() and grad_m.is_contiguous()
    assert torch.isfinite(grad_l).all() and torch.isfinite(grad_m).all()
    assert rel_err(grad_l, l64.grad, GRAD_FLOOR) < tol
    assert rel_err(grad_m, m64.grad, GRAD_FLOOR) < tol
    return pos, neg, grad_l, grad_m


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"s{c[0]}-self{c[1]}-norm{int(c[2])}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_values_and_gradients(size, cfg, dtype):
    g = torch.Generator().manual_seed(zlib.crc32(repr((size, cfg, dtype)).encode()))
    l, m = _inputs(*size, dtype, g, zero=cfg[2] and dtype != torch.float16)
    _check(l, m, cfg, g, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [(3, 5, 9), (6, 40, 16), (33, 65, 12)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[2]], ids=["mimicry", "cosine"])
def test_strided_inputs_without_copy(dtype, size, cfg):
    """A channels-last map flattened over H, W (R is the fastest dimension) and a transposed m."""
    g = torch.Generator().manual_seed(7)
    l, m = _inputs(*size, dtype, g, channels_last=True, transposed_m=True)
    assert l.stride(1) == 1 and m.stride(0) == 1
    _check(l, m, cfg, g, TOL[dtype])
    # A non-zero storage offset and a stride of 2 along HW.
    big = torch.randn(size[0], size[1], 2 * size[2] + 1, generator=g, dtype=torch.float64).to(DEV, dtype)
    _check(big[:, :, 1::2], m, cfg, g, TOL[dtype])


def test_exact_single_image_is_empty():
    """N = 1 without the self block: no negatives, neg = -inf, gradients come from pos alone."""
    g = torch.Generator().manual_seed(3)
    l, m = _inputs(1, 8, 5, torch.float32, g)
    pos, neg, grad_l, grad_m = _check(l, m, (1.0, None, False, 1e-12), g, TOL[torch.float32])
    assert neg.item() == float("-inf")


def test_zero_incoming_gradient_gives_zero_not_nan():
    """grad_neg = 0 must give exactly zero contributions even where exp overflows (0 * inf)."""
    g = torch.Generator().manual_seed(4)
    l, m = _inputs(4, 16, 8, torch.float32, g)
    neg = torch.full((4,), -1e30, device=DEV)  # exp(S - neg) = inf for every score
    gp = torch.zeros(4, 8, device=DEV)
    gn = torch.zeros(4, device=DEV)
    grad_l, grad_m = torch.ops.fastgan.infonce_lse_backward(gp, gn, l, m, neg, 1.0, None, False, 1e-12)
    assert torch.equal(grad_l, torch.zeros_like(grad_l)) and torch.equal(grad_m, torch.zeros_like(grad_m))


def test_small_temperature_half_does_not_overflow():
    """scale = 100 on normalized float16 features: scores up to 100, exp far beyond float16."""
    g = torch.Generator().manual_seed(5)
    l, m = _inputs(16, 64, 16, torch.float16, g)
    _check(l, m, (100.0, -10.0, True, 1e-8), g, 5e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_deterministic(dtype):
    g = torch.Generator().manual_seed(6)
    l, m = _inputs(70, 96, 36, dtype, g)
    args = (2.0, -10.0, True, 1e-8)
    pos1, neg1 = torch.ops.fastgan.infonce_lse(l, m, *args)
    pos2, neg2 = torch.ops.fastgan.infonce_lse(l, m, *args)
    assert torch.equal(pos1, pos2) and torch.equal(neg1, neg2)
    gp = torch.randn(pos1.shape, generator=g).to(DEV)
    gn = torch.randn(neg1.shape, generator=g).to(DEV)
    a = torch.ops.fastgan.infonce_lse_backward(gp, gn, l, m, neg1, *args)
    b = torch.ops.fastgan.infonce_lse_backward(gp, gn, l, m, neg1, *args)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_graph_capture_replays_the_eager_bits(dtype):
    """Forward + backward (4 kernel launches, sizes-only grids, no host syncs) capture in one CUDA
    graph; a replay on new inputs copied into the captured tensors gives the eager results' bits."""
    g = torch.Generator().manual_seed(9)
    args = (2.0, -10.0, True, 1e-8)
    l, m = _inputs(70, 96, 36, dtype, g)
    gp = torch.randn(70, 36, generator=g).to(DEV)
    gn = torch.randn(70, generator=g).to(DEV)

    def step():
        pos, neg = torch.ops.fastgan.infonce_lse(l, m, *args)
        return (pos, neg) + tuple(torch.ops.fastgan.infonce_lse_backward(gp, gn, l, m, neg, *args))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, as torch.cuda.graphs asks
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    l2, m2 = _inputs(70, 96, 36, dtype, g)
    l.copy_(l2)
    m.copy_(m2)
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(outs, step()):
        assert torch.equal(got, want)


def test_nonfinite_inputs_propagate():
    """A NaN feature makes the values non-finite (NaN), never an exception."""
    g = torch.Generator().manual_seed(8)
    l, m = _inputs(5, 8, 4, torch.float32, g)
    l = l.clone()
    l[2, 3, 1] = float("nan")
    pos, neg = torch.ops.fastgan.infonce_lse(l, m, 1.0, -10.0, False, 1e-12)
    rpos, rneg = ref_infonce_lse(l.double(), m.double(), 1.0, -10.0, False, 1e-12)
    assert torch.equal(torch.isnan(pos), torch.isnan(rpos)) and torch.equal(torch.isnan(neg), torch.isnan(rneg))


def test_bad_arguments_raise():
    l = torch.randn(3, 4, 5, device=DEV)
    m = torch.randn(3, 4, device=DEV)
    with pytest.raises(RuntimeError, match="m must have shape"):
        torch.ops.fastgan.infonce_lse(l, m[:2], 1.0, None, False, 1e-12)
    with pytest.raises(RuntimeError, match="l must have shape"):
        torch.ops.fastgan.infonce_lse(l[0], m, 1.0, None, False, 1e-12)
    pos, neg = torch.ops.fastgan.infonce_lse(l, m, 1.0, None, False, 1e-12)
    with pytest.raises(RuntimeError, match="grad_pos must have shape"):
        torch.ops.fastgan.infonce_lse_backward(pos[:, :2], neg, l, m, neg, 1.0, None, False, 1e-12)
    with pytest.raises(RuntimeError, match="float64"):
        torch.ops.fastgan.infonce_lse(l.double(), m.double(), 1.0, None, False, 1e-12)
