"""Property-based tests (hypothesis): every loss and the contrastive_lse primitive on random shapes,
label patterns, scales, temperatures and strides, each fused backend against the reference."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastgan.functional as FG
from fastgan import reference as R
from fastgan.ops.contrastive_lse import contrastive_lse

from conftest import backend_device, kernel_backends, rel_err

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True)
EXAMPLES = {"cpu": 150, "triton": 10, "cuda": 100}


@st.composite
def cases(draw):
    n = draw(st.integers(1, 40))
    m = draw(st.integers(1, 40))
    d = draw(st.integers(1, 20))
    seed = draw(st.integers(0, 2**31 - 1))
    classes = draw(st.integers(1, 6))
    preds = draw(st.lists(st.integers(0, 2), min_size=1, max_size=3))
    scale = draw(st.floats(0.05, 60.0))
    bias = draw(st.floats(-2.0, 2.0))
    relu = draw(st.booleans())
    normalize = draw(st.booleans())
    exclude_self = draw(st.booleans())
    offset = draw(st.integers(-3, 3))
    extra = draw(st.booleans())
    transposed = draw(st.booleans())
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return n, m, d, seed, classes, preds, scale, bias, relu, normalize, exclude_self, offset, extra, transposed, dtype


def run_case(backend, case):
    n, m, d, seed, classes, preds, scale, bias, relu, normalize, exclude_self, offset, extra, transposed, dtype = case
    if backend == "cuda" and dtype == torch.float64:
        dtype = torch.float32
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(m, d, generator=g, dtype=torch.float64)
    if transposed:  # non-contiguous rows
        a = a.T.contiguous().T
    la, lb = torch.randint(0, classes, (n,), generator=g), torch.randint(0, classes, (m,), generator=g)
    e = torch.randn(n, generator=g, dtype=torch.float64) if extra else None
    params = (scale, bias, relu, normalize, 1e-8, exclude_self, offset, preds)
    ref_lse, ref_max = R.contrastive_lse(a, b, la, lb, e, *params)
    dev = backend_device(backend)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    lse, rowmax = contrastive_lse(a.to(dev, dtype), b.to(dev, dtype), la.to(dev), lb.to(dev),
                                  e.to(dev, ct) if e is not None else None, *params, backend=backend)
    tol = 1e-10 if dtype == torch.float64 else 5e-5
    assert rel_err(lse, ref_lse) < tol
    assert rel_err(rowmax, ref_max) < tol


@pytest.mark.parametrize("backend", kernel_backends())
def test_contrastive_lse_properties(backend):
    @settings(max_examples=EXAMPLES[backend], **SETTINGS)
    @given(cases())
    def check(case):
        run_case(backend, case)

    check()


LOSSES = {
    "2c": (lambda x, p, y, t, b: FG.conditional_contrastive_loss(x, p, y, t, backend=b),
           lambda x, p, y, t: R.conditional_contrastive_loss(x, p, y, t)),
    "d2d": (lambda x, p, y, t, b: FG.data2data_cross_entropy_loss(x, p, y, t, 0.9, backend=b),
            lambda x, p, y, t: R.data2data_cross_entropy_loss(x, p, y, t, 0.9)),
    "supcon": (lambda x, p, y, t, b: FG.supcon_loss(x, y, t, backend=b), lambda x, p, y, t: R.supcon_loss(x, y, t)),
    "clip": (lambda x, p, y, t, b: FG.symmetric_infonce_loss(x, p, t, backend=b),
             lambda x, p, y, t: R.symmetric_infonce_loss(x, p, t)),
    "ntxent": (lambda x, p, y, t, b: FG.nt_xent_loss(torch.cat([x, p]), t, backend=b),
               lambda x, p, y, t: R.nt_xent_loss(torch.cat([x, p]), t)),
}


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_properties(backend, name):
    fused, ref = LOSSES[name]

    @settings(max_examples=max(3, EXAMPLES[backend] // 4), **SETTINGS)
    @given(n=st.integers(1, 30), d=st.integers(1, 16), classes=st.integers(1, 5), t=st.floats(0.02, 5.0),
           seed=st.integers(0, 2**31 - 1))
    def check(n, d, classes, t, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        p = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = torch.randint(0, classes, (n,), generator=g)
        dev = backend_device(backend)
        dt = torch.float32 if backend == "cuda" else torch.float64
        got = fused(x.to(dev, dt), p.to(dev, dt), y.to(dev), t, backend)
        want = ref(x, p, y, t)
        assert rel_err(got, want) < (1e-9 if dt == torch.float64 else 5e-5)

    check()
