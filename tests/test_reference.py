"""The reference paths (the specification) against independent float64 evaluations of docs/semantics.md's
formulas: explicit loops over the batch, the public implementations' unshifted expressions where
they do not overflow, and small cases worked out by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastgan import reference as R
from fastgan.reference.contrastive import PRED_ALL, PRED_DIFF, PRED_SAME


def cos(x, y, eps=1e-8):
    return float(x @ y) / (max(float(x.norm()), eps) * max(float(y.norm()), eps))


def loop_2c(e, p, y, t):
    n = e.shape[0]
    out = []
    for i in range(n):
        ep = math.exp(cos(e[i], p[i]) / t)
        num = ep + sum(math.exp(cos(e[i], e[j]) / t) for j in range(n) if j != i and y[j] == y[i])
        den = ep + sum(math.exp(cos(e[i], e[j]) / t) for j in range(n) if j != i)
        out.append(-math.log(num / den))
    return torch.tensor(out, dtype=torch.float64)


def test_2c_hand_case():
    # Two samples of one class: e1 = (1, 0), e2 = (0, 1), proxies equal to the embeddings, t = 1.
    # s_12 = 0, p_i = 1: L_i = -log((e + 1) / (e + 1)) = 0.
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    assert R.conditional_contrastive_loss(e, e, y, 1.0).item() == pytest.approx(0.0, abs=1e-15)
    # Different classes: L_i = -log(e / (e + 1)) = log(1 + 1/e).
    y = torch.tensor([0, 1])
    assert R.conditional_contrastive_loss(e, e, y, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-14)


@pytest.mark.parametrize("n,t", [(1, 1.0), (2, 0.5), (9, 1.0), (16, 0.1)])
def test_2c_matches_loop(n, t):
    g = torch.Generator().manual_seed(n)
    e = torch.randn(n, 5, generator=g, dtype=torch.float64)
    p = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    got = R.conditional_contrastive_loss(e, p, y, t, reduction="none")
    assert torch.allclose(got, loop_2c(e, p, y, t), rtol=1e-12, atol=1e-12)


def test_2c_stable_where_the_public_form_overflows():
    # At t = 0.005, exp(1/t) = exp(200) overflows float32 (and exp(400) float64 style sums get huge);
    # the max-shifted reference stays finite and equals the float64 loop where that is finite.
    g = torch.Generator().manual_seed(1)
    e = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (12,), generator=g)
    out32 = R.conditional_contrastive_loss(e.float(), e.float(), y, 0.005, reduction="none")
    assert torch.isfinite(out32).all()
    assert torch.allclose(out32.double(), loop_2c(e, e, y, 0.005), rtol=1e-4, atol=1e-4)


def loop_d2d(e, p, y, t, m_p, frozen_m=None):
    n = e.shape[0]
    out = []
    for i in range(n):
        a = {j: (cos(e[i], e[j]) + m_p - 1) / t for j in range(n) if j != i}
        m_i = frozen_m[i] if frozen_m is not None else (max(a.values()) if a else 0.0)
        q = max((m_p - cos(e[i], p[i])) / t, 0.0)
        s = sum(math.exp(max(a[j], 0.0) - m_i) for j in a if y[j] != y[i])
        out.append(q + math.log(math.exp(-q) + s))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("n,t,m_p", [(1, 0.5, 0.98), (2, 0.5, 0.98), (11, 0.5, 0.98), (11, 0.1, 0.5)])
def test_d2d_matches_public_expression(n, t, m_p):
    g = torch.Generator().manual_seed(n)
    e = torch.randn(n, 6, generator=g, dtype=torch.float64)
    p = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    got = R.data2data_cross_entropy_loss(e, p, y, t, m_p, reduction="none")
    assert torch.allclose(got, loop_d2d(e, p, y, t, m_p), rtol=1e-12, atol=1e-12)


def test_d2d_shift_is_not_cancelled():
    # M_i is not applied to exp(-q_i): the loss changes if the off-class similarities all shift, even
    # when the set of different-class terms is fixed. A symmetric (shift-invariant) softmax would not.
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    got = R.data2data_cross_entropy_loss(e, e, y, 0.5, 0.98, reduction="none")
    assert torch.allclose(got, loop_d2d(e, e, y, 0.5, 0.98), rtol=1e-13)


def test_d2d_gradient_treats_the_shift_as_constant():
    # Central differences of the public expression with every M_i frozen at its value at the point.
    g = torch.Generator().manual_seed(12)
    e = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 2])
    t, m_p = 0.5, 0.9
    R.data2data_cross_entropy_loss(e, p, y, t, m_p).backward()
    e0 = e.detach()
    frozen = [max((cos(e0[i], e0[j]) + m_p - 1) / t for j in range(5) if j != i) for i in range(5)]
    num = torch.zeros_like(e0)
    h = 1e-6
    for idx in range(e0.numel()):
        ep, em = e0.clone().view(-1), e0.clone().view(-1)
        ep[idx] += h
        em[idx] -= h
        fp = loop_d2d(ep.view(5, 3), p, y, t, m_p, frozen).mean()
        fm = loop_d2d(em.view(5, 3), p, y, t, m_p, frozen).mean()
        num.view(-1)[idx] = (fp - fm) / (2 * h)
    assert torch.allclose(e.grad, num, rtol=1e-6, atol=1e-8)


def test_nt_xent_matches_loop():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(10, 7, generator=g, dtype=torch.float64)
    t = 0.3
    n2 = 10
    want = []
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        den = sum(math.exp(cos(z[i], z[k]) / t) for k in range(n2) if k != i)
        want.append(-math.log(math.exp(cos(z[i], z[pos]) / t) / den))
    assert torch.allclose(R.nt_xent_loss(z, t, reduction="none"), torch.tensor(want, dtype=torch.float64), rtol=1e-12)


def test_supcon_matches_loop():
    g = torch.Generator().manual_seed(4)
    f = torch.randn(9, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 0])  # class 2 has a single member: left out of the mean
    t = 0.2
    per = []
    for i in range(9):
        P = [p for p in range(9) if p != i and y[p] == y[i]]
        if not P:
            continue
        lse = math.log(sum(math.exp(cos(f[i], f[a]) / t) for a in range(9) if a != i))
        per.append(-sum(cos(f[i], f[p]) / t - lse for p in P) / len(P))
    assert R.supcon_loss(f, y, t).item() == pytest.approx(sum(per) / len(per), rel=1e-12)
    assert R.supcon_loss(f, y, t, reduction="none")[5].item() == 0.0


def test_symmetric_infonce_matches_cross_entropy():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(8, 6, generator=g, dtype=torch.float64)
    b = torch.randn(8, 6, generator=g, dtype=torch.float64)
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.1
    target = torch.arange(8)
    want = F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
    assert R.symmetric_infonce_loss(a, b, 0.1).item() == pytest.approx(want.item(), rel=1e-12)


def test_cosine_similarity_matrix_matches_torch():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(7, 5, generator=g, dtype=torch.float64)
    b = torch.randn(4, 5, generator=g, dtype=torch.float64)
    a[2] = 0
    want = F.cosine_similarity(a[:, None, :], b[None, :, :], dim=2, eps=1e-8) * 2.5
    got = R.cosine_similarity_matrix(a, b, 2.5, 1e-8)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    assert torch.equal(got[2], torch.zeros(4, dtype=torch.float64))


def mimicry_formula(l, m):
    """Mimicry's infonce_loss restated in float64 (the materialized (N, HW, 1 + N*HW) candidates)."""
    n, r, hw = l.shape
    u_p = torch.einsum("nrk,nr->nk", l, m[:, :, 0])  # (N, HW)
    u_n = torch.einsum("ir,jrk->ijk", m[:, :, 0], l)  # (N, N, HW)
    eye = torch.eye(n, dtype=torch.bool)[:, :, None]
    u_n = torch.where(eye, torch.full_like(u_n, -10.0), u_n).reshape(n, n * hw)
    cand = torch.cat([u_p[:, :, None], u_n[:, None, :].expand(n, hw, n * hw)], dim=2)
    return -F.log_softmax(cand, dim=2)[:, :, 0].mean()


@pytest.mark.parametrize("n,r,hw", [(1, 3, 5), (2, 4, 1), (5, 3, 4)])
def test_infonce_mimicry_mode_matches_mimicry(n, r, hw):
    g = torch.Generator().manual_seed(n * 100 + hw)
    l = torch.randn(n, r, hw, generator=g, dtype=torch.float64)
    m = torch.randn(n, r, 1, generator=g, dtype=torch.float64)
    assert R.infonce_local_global(l, m).item() == pytest.approx(mimicry_formula(l, m).item(), rel=1e-12)


def test_infonce_mimicry_constant_block_matters():
    # Scores near -10: the HW * e^-10 self block is a large part of the denominator, so the two modes
    # differ, and the Mimicry mode matches Mimicry's formula.
    n, r, hw = 3, 2, 4
    g = torch.Generator().manual_seed(9)
    l = torch.randn(n, r, hw, generator=g, dtype=torch.float64) * 0.1
    m = torch.full((n, r, 1), -1.0, dtype=torch.float64)
    l = l + 5.0  # m . l ~ -10
    mim = R.infonce_local_global(l, m, mode="mimicry")
    exact = R.infonce_local_global(l, m, mode="exact")
    assert mim.item() == pytest.approx(mimicry_formula(l, m).item(), rel=1e-12)
    assert abs(mim.item() - exact.item()) > 1e-2


def test_infonce_exact_mode_loop():
    n, r, hw = 3, 2, 2
    g = torch.Generator().manual_seed(10)
    l = torch.randn(n, r, hw, generator=g, dtype=torch.float64)
    m = torch.randn(n, r, generator=g, dtype=torch.float64)
    tot = 0.0
    for i in range(n):
        neg = math.log(sum(math.exp(float(m[i] @ l[j, :, k])) for j in range(n) if j != i for k in range(hw)))
        for k in range(hw):
            tot += math.log1p(math.exp(neg - float(m[i] @ l[i, :, k])))
    assert R.infonce_local_global(l, m, mode="exact").item() == pytest.approx(tot / (n * hw), rel=1e-12)
    # (N, R, H, W) with (N, R) is the same computation as (N, R, HW) with (N, R, 1).
    l4 = l.reshape(n, r, 1, hw)
    assert R.infonce_local_global(l4, m[:, :, None], mode="exact").item() == pytest.approx(tot / (n * hw), rel=1e-12)


def test_contrastive_lse_reference_definition():
    # lse over predicates with an extra logit, self exclusion with offset, relu and the rowmax.
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    la, lb = torch.tensor([0, 1]), torch.tensor([0, 0, 1])
    extra = torch.tensor([0.5, -1.0], dtype=torch.float64)
    lse, rowmax = R.contrastive_lse(a, b, la, lb, extra, 2.0, -0.5, True, True, 1e-8, True, 1,
                                    [PRED_ALL, PRED_SAME, PRED_DIFF])
    s = torch.tensor([[1 / math.sqrt(2), 0.0, 1.0], [1 / math.sqrt(2), 1.0, 0.0]], dtype=torch.float64)
    z = 2.0 * s - 0.5
    # row 0 excludes column 1, row 1 excludes column 2
    fz = z.clamp_min(0)
    want_all = [math.log(math.exp(0.5) + math.exp(fz[0, 0]) + math.exp(fz[0, 2])),
                math.log(math.exp(-1.0) + math.exp(fz[1, 0]) + math.exp(fz[1, 1]))]
    want_same = [math.log(math.exp(0.5) + math.exp(fz[0, 0])), math.log(math.exp(-1.0))]
    want_diff = [math.log(math.exp(0.5) + math.exp(fz[0, 2])),
                 math.log(math.exp(-1.0) + math.exp(fz[1, 0]) + math.exp(fz[1, 1]))]
    assert torch.allclose(lse, torch.tensor([want_all, want_same, want_diff], dtype=torch.float64).T, rtol=1e-14)
    assert torch.allclose(rowmax, torch.tensor([max(z[0, 0], z[0, 2]), max(z[1, 0], z[1, 1])], dtype=torch.float64))


@pytest.mark.parametrize("fn", ["2c", "ntxent", "supcon", "clip", "infonce"])
def test_reference_gradcheck(fn):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    f = {
        "2c": lambda x, p: R.conditional_contrastive_loss(x, p, y, 0.5),
        "ntxent": lambda x, p: R.nt_xent_loss(x + p, 0.5),
        "supcon": lambda x, p: R.supcon_loss(x * p, y, 0.3),
        "clip": lambda x, p: R.symmetric_infonce_loss(x, p, 0.2),
        "infonce": lambda x, p: R.infonce_local_global(x.reshape(3, 2, 4), p[:3, :2]),
    }[fn]
    assert torch.autograd.gradcheck(f, (x, p))
