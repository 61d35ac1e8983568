"""The CPU InfoNCE path under the score budget (fastgan::infonce_lse_budget): where the (N, N, HW)
scores fit, the forward keeps them and the backward skips the recompute product. Both sides of the
rule against the float64 reference (both modes, normalize, channels-last and strided l, half, N = 1,
zero vectors), the rule itself, bitwise determinism, a second backward (the kept scores are only
read), opcheck of both ops, torch.compile, bad arguments."""
import math

import pytest
import torch

import fastgan.functional as FG
import fastgan.ops.contrastive_lse as CL
from fastgan.ops._registry import ensure_cxx
from fastgan.ops.infonce_lse import _keeps_scores, _score_budget_for, infonce_lse
from fastgan.reference import infonce as R

from conftest import GRAD_FLOOR, TOL, rel_err
from test_infonce_lse import MODES, check, cotangents, make

KEEP, RECOMPUTE = 1 << 40, 0
# Every N, HW and R of test_infonce_lse's values, not the cross product.
SHAPES = [(1, 5, 3), (2, 64, 1), (7, 1, 130), (7, 64, 130), (64, 5, 3)]


@pytest.fixture
def budget():
    """set_score_budget with the feature-size floor lifted (the test features are small); restored after."""
    ensure_cxx()
    old, floor = CL.get_score_budget(), CL.MIN_SAVE_FEATURES
    CL.MIN_SAVE_FEATURES = 0
    yield CL.set_score_budget
    CL.set_score_budget(old)
    CL.MIN_SAVE_FEATURES = floor


def kept(l, m, **kw):
    args = dict(scale=1.0, self_logit=-10.0, normalize=False, eps=1e-12)
    args.update(kw)
    return torch.ops.fastgan.infonce_lse_budget(l, m, args["scale"], args["self_logit"], args["normalize"],
                                                args["eps"], _score_budget_for(l))[2]


# The recompute side (budget 0) is what tests/test_infonce_lse.py runs through (R < 256 there).
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_against_reference(dtype, budget, gen):
    budget(KEEP)
    for i, (n, hw, r) in enumerate(SHAPES):
        l, m = make(n, hw, r, gen, layout="channels_last" if i % 2 else "contiguous")
        l, m = l.to(dtype), m.to(dtype)
        assert kept(l, m).shape == (n, n, hw)
        for mode in MODES:
            for normalize in (False, True):
                if normalize and r == 1 and dtype == torch.float32:
                    continue  # the vanishing gradient's rounding residue, as in test_infonce_lse
                floor = GRAD_FLOOR if normalize and r == 1 else 0.0
                tol = TOL[dtype]
                check("cpu", l, m, 1 / 0.1, MODES[mode], normalize, 1e-12, gen, tol,
                      tol if dtype == torch.float64 else 1e-4, floor)


def test_corner_cases(budget, gen):
    budget(KEEP)
    # Strided l and m, half inputs, zero vectors (normalization divides by eps).
    l, m = make(7, 64, 130, gen, layout="strided")
    check("cpu", l.float(), m.float(), 3.0, None, True, 1e-12, gen, TOL[torch.float32], 1e-4)
    l, m = make(7, 5, 130, gen, layout="channels_last")
    check("cpu", l.half(), m.half(), 1.0, -10.0, True, 1e-12, gen, TOL[torch.float16], TOL[torch.float16])
    l, m = make(7, 5, 9, gen, zero=True)
    for normalize in (False, True):
        check("cpu", l, m, 2.0, None, normalize, 1e-3, gen, TOL[torch.float64], TOL[torch.float64])
    # N = 1, exact: an empty sum, neg = -inf, finite gradients (the positives' only).
    l, m = make(1, 4, 3, gen)
    l, m = l.float().requires_grad_(), m.float().requires_grad_()
    pos, neg = infonce_lse(l, m, 1.0, None, False, 1e-12, "cpu")
    assert neg.item() == float("-inf")
    gl, gm = torch.autograd.grad((pos, neg), (l, m), (torch.ones_like(pos), torch.ones_like(neg)))
    torch.testing.assert_close(gl, m.detach()[:, :, None].expand(1, 3, 4))
    torch.testing.assert_close(gm, l.detach().sum(2))


def test_the_rule(budget, gen):
    # Kept exactly when N^2 HW scores of the compute dtype fit the budget, and (by default) R >= 256.
    l, m = make(4, 3, 5, gen)
    lf, mf = l.float(), m.float()
    need = 4 * 4 * 3 * 4
    for b, want in [(need, True), (need - 1, False), (0, False)]:
        budget(b)
        assert (kept(lf, mf).numel() > 0) == want == _keeps_scores(4, 3, 4, b)
    budget(need)
    assert kept(l, m).numel() == 0  # float64: twice the bytes
    budget(2 * need)
    assert kept(l, m).shape == (4, 4, 3)
    CL.MIN_SAVE_FEATURES = 256
    assert kept(lf, mf).numel() == 0
    l, m = make(2, 3, 256, gen)
    assert kept(l, m).shape == (2, 2, 3)


@pytest.mark.parametrize("policy", [KEEP, RECOMPUTE])
def test_deterministic_and_second_backward(policy, budget, gen):
    # Same bits run after run; a second backward of one graph gives the first's gradients (the kept
    # scores are read, never overwritten); both policies agree to float32 rounding.
    budget(policy)
    l, m = make(9, 16, 40, gen, layout="channels_last")
    l, m = l.float().requires_grad_(), m.float()[:, :, None].requires_grad_()
    runs = []
    for _ in range(2):
        loss = FG.infonce_local_global(l, m, normalize=True, temperature=0.2, backend="cpu")
        g1 = torch.autograd.grad(loss, (l, m), retain_graph=True)
        g2 = torch.autograd.grad(loss, (l, m))
        for a, b in zip(g1, g2):
            assert torch.equal(a, b)
        runs.append((loss.detach(),) + g1)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    budget(KEEP - policy)
    loss = FG.infonce_local_global(l, m, normalize=True, temperature=0.2, backend="cpu")
    other = (loss.detach(),) + torch.autograd.grad(loss, (l, m))
    for a, b in zip(runs[0], other):
        assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("policy,layout,dtype", [(KEEP, "channels_last", torch.float64),
                                                 (RECOMPUTE, "contiguous", torch.float32)])
def test_opcheck(policy, layout, dtype, budget, gen):
    l, m = make(5, 6, 7, gen, layout=layout)
    l, m = l.to(dtype).requires_grad_(), m.to(dtype).requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.infonce_lse_budget.default, (l, m, 1.5, -10.0, True, 1e-12, policy))
    pos, neg, scores = torch.ops.fastgan.infonce_lse_budget(l.detach(), m.detach(), 1.5, None, True, 1e-12, policy)
    assert scores.shape == ((5, 5, 6) if policy else (0,))
    gp, gn = cotangents(5, 6, gen, pos.dtype)
    torch.library.opcheck(torch.ops.fastgan.infonce_lse_budget_backward.default,
                          (gp, gn, l.detach(), m.detach(), neg, scores, 1.5, None, True, 1e-12))


def test_compile_fullgraph_keeps_scores(budget, gen):
    budget(KEEP)
    l, m = make(6, 5, 9, gen, layout="channels_last")
    l, m = l.float(), m.float()[:, :, None]
    fn = lambda a, b: FG.infonce_local_global(a, b, backend="cpu", normalize=True)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    outs = []
    for f in (fn, compiled):
        a, b = l.clone().requires_grad_(), m.clone().requires_grad_()
        out = f(a, b)
        out.backward()
        outs.append((out.detach(), a.grad, b.grad))
    for x, y in zip(*outs):
        torch.testing.assert_close(x, y)
    assert rel_err(outs[1][0], R.infonce_local_global(l.double(), m.double(), normalize=True)) < TOL[torch.float32]


@pytest.mark.parametrize("call,match", [
    (lambda l, m, s: torch.ops.fastgan.infonce_lse_budget(l, m, 1.0, None, False, 1e-12, -1), "score_budget"),
    (lambda l, m, s: torch.ops.fastgan.infonce_lse_budget_backward(torch.zeros(3, 4), torch.zeros(3), l, m,
                                                                   torch.zeros(3), s[:2], 1.0, None, False, 1e-12),
     "scores must be"),
    (lambda l, m, s: torch.ops.fastgan.infonce_lse_budget_backward(torch.zeros(3, 4), torch.zeros(3), l, m,
                                                                   torch.zeros(3), s.double(), 1.0, None, False, 1e-12),
     "scores must have dtype"),
])
def test_bad_arguments_raise(call, match):
    ensure_cxx()
    l, m = torch.randn(3, 5, 4), torch.randn(3, 5)
    s = torch.ops.fastgan.infonce_lse_budget(l, m, 1.0, None, False, 1e-12, KEEP)[2]
    with pytest.raises(RuntimeError, match=match):
        call(l, m, s)
