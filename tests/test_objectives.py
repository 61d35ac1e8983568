"""GAN objectives against independent float64 evaluations of docs/semantics.md section 8 (explicit loops over
the batch), float64 gradcheck, and errors for mismatched shapes."""
import math

import pytest
import torch

import fastgan.functional as FG
import fastgan.nn as GN


def sp(x):
    return math.log1p(math.exp(x)) if x < 30 else x


def lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


g = torch.Generator().manual_seed(0)
R = torch.randn(7, generator=g, dtype=torch.float64)
Fk = torch.randn(5, generator=g, dtype=torch.float64)
r, f = R.tolist(), Fk.tolist()


@pytest.mark.parametrize("name,d_ref,g_ref", [
    ("vanilla", sum(sp(-x) for x in r) / 7 + sum(sp(x) for x in f) / 5, sum(sp(-x) for x in f) / 5),
    ("least_squares", sum(0.5 * (x - 1) ** 2 for x in r) / 7 + sum(0.5 * x * x for x in f) / 5,
     sum(0.5 * (x - 1) ** 2 for x in f) / 5),
    ("hinge", sum(max(0, 1 - x) for x in r) / 7 + sum(max(0, 1 + x) for x in f) / 5, -sum(f) / 5),
    ("wasserstein", sum(f) / 5 - sum(r) / 7, -sum(f) / 5),
])
def test_adversarial(name, d_ref, g_ref):
    d = getattr(FG, f"{name}_d_loss")(R, Fk)
    gl = getattr(FG, f"{name}_g_loss")(Fk)
    assert d.item() == pytest.approx(d_ref, rel=1e-12)
    assert gl.item() == pytest.approx(g_ref, rel=1e-12)
    x, y = R.clone().requires_grad_(), Fk.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: getattr(FG, f"{name}_d_loss")(a, b), (x, y))
    mod = {"vanilla": GN.VanillaLoss, "least_squares": GN.LeastSquaresLoss, "hinge": GN.HingeLoss,
           "wasserstein": GN.WassersteinLoss}[name]()
    assert mod(R, Fk).item() == pytest.approx(d_ref, rel=1e-12) and mod.g(Fk).item() == pytest.approx(g_ref, rel=1e-12)


def test_logistic_is_vanilla():
    assert FG.logistic_d_loss(R, Fk).item() == FG.vanilla_d_loss(R, Fk).item()


def test_dual_contrastive_d_and_g():
    d_ref = sum(-x + lse([x] + f) for x in r) / 7 + sum(y + lse([-y] + [-x for x in r]) for y in f) / 5
    g_ref = sum(-y + lse([y] + r) for y in f) / 5 + sum(x + lse([-x] + [-y for y in f]) for x in r) / 7
    assert FG.dual_contrastive_d_loss(R, Fk).item() == pytest.approx(d_ref, rel=1e-12)
    assert FG.dual_contrastive_g_loss(R, Fk).item() == pytest.approx(g_ref, rel=1e-12)
    assert abs(d_ref - g_ref) > 1e-3  # G is not given the D objective
    x, y = R.clone().requires_grad_(), Fk.clone().requires_grad_()
    assert torch.autograd.gradcheck(FG.dual_contrastive_g_loss, (x, y))


@pytest.mark.parametrize("slope,gamma", [(0.0, 0.0), (0.2, 0.0), (1.0, 0.5)])
def test_loss_sensitive(slope, gamma):
    real = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    fake = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    lr, lf = R[:4], Fk[:4]
    want = 0.0
    for i in range(4):
        delta = 2e-4 * float((real[i] - fake[i]).abs().sum())
        v = delta + float(lr[i]) - float(lf[i])
        want += (v if v > 0 else slope * v) / 4
    want += gamma * float(lr.mean())
    got = FG.loss_sensitive_d_loss(lr, lf, real, fake, slope=slope, gamma=gamma)
    assert got.item() == pytest.approx(want, rel=1e-12)
    assert FG.loss_sensitive_g_loss(lf).item() == pytest.approx(float(lf.mean()))
    # the margin is constant in backward: the image gradient does not flow through it
    fr, lrg = fake.clone().requires_grad_(), lr.clone().requires_grad_()
    FG.loss_sensitive_d_loss(lrg, lf, real, fr, slope=slope).backward()
    assert fr.grad is None and lrg.grad is not None
    with pytest.raises(ValueError, match="paired by batch index"):
        FG.loss_sensitive_d_loss(lr, lf, real, fake[:3])


def test_multi_hinge_and_acgan():
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2, 0])
    want = sum(max(0.0, 1 + max(float(logits[i, c]) for c in range(4) if c != y[i]) - float(logits[i, y[i]]))
               for i in range(6)) / 6
    assert FG.multi_hinge_loss(logits, y).item() == pytest.approx(want, rel=1e-12)
    ce = lambda lg, yy: sum(-float(torch.log_softmax(lg[i], 0)[yy[i]]) for i in range(len(yy))) / len(yy)  # noqa: E731
    assert FG.acgan_d_loss(logits, y, logits.flip(0), y).item() == pytest.approx(ce(logits, y) + ce(logits.flip(0), y), rel=1e-12)
    assert FG.acgan_g_loss(logits, y).item() == pytest.approx(ce(logits, y), rel=1e-12)
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: FG.multi_hinge_loss(a, y), (x,))
    with pytest.raises(ValueError, match="logits_labels|labels values must lie"):
        FG.multi_hinge_loss(logits, y + 4)


def test_cycle_and_identity():
    a, b = torch.randn(2, 3, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    ra, rb = a + 0.1, b - 0.3
    assert FG.cycle_consistency_loss(ra, a, rb, b).item() == pytest.approx(10 * 0.1 + 10 * 0.3, rel=1e-12)
    assert FG.identity_loss(rb, b, ra, a).item() == pytest.approx(0.5 * (10 * 0.3 + 10 * 0.1), rel=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        FG.cycle_consistency_loss(ra[:1], a, rb, b)


def test_word_region_loss_matches_loops():
    B, T, Rg, D = 3, 4, 5, 6
    words = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    regions = torch.randn(B, Rg, D, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    g1, g2, g3 = 5.0, 5.0, 50.0

    def cosv(x, y):
        return float(x @ y) / (float(x.norm()) * float(y.norm()))

    S = torch.zeros(B, B, dtype=torch.float64)
    for s in range(B):
        for b in range(B):
            terms = []
            for t in range(T):
                if not mask[s, t]:
                    continue
                att = torch.softmax(torch.tensor([g1 * cosv(words[s, t], regions[b, k]) for k in range(Rg)]), 0)
                ctx = sum(att[k] * regions[b, k] for k in range(Rg))
                terms.append(g2 * cosv(words[s, t], ctx))
            S[s, b] = lse(terms) / g2
    got = FG.word_region_scores(words, regions, mask, g1, g2)
    assert torch.allclose(got, S, rtol=1e-10)
    tgt = torch.arange(B)
    want = torch.nn.functional.cross_entropy(g3 * S, tgt) + torch.nn.functional.cross_entropy(g3 * S.T, tgt)
    # gamma3 = 50 scales the scores (allclose at 1e-10 above) before the softmax: 1e-8 on the loss
    assert FG.word_region_loss(words, regions, mask).item() == pytest.approx(want.item(), rel=1e-8)
    w, rr = words.clone().requires_grad_(), regions.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, c: FG.word_region_loss(a, c, mask, gamma3=2.0), (w, rr))
    with pytest.raises(ValueError, match="word_mask must have shape"):
        FG.word_region_scores(words, regions, mask[:, :2])


def test_projection_head():
    head = GN.ProjectionHead(6, 3, spectral_norm=False).double()
    h = torch.randn(4, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    want = head.linear(h)[:, 0] + torch.stack([head.embed.weight[y[i]] @ h[i] for i in range(4)])
    assert torch.allclose(head(h, y), want)
    sn = GN.ProjectionHead(6, 3)
    assert sn(h.float(), y).shape == (4,)
    with pytest.raises(ValueError, match="y must have shape"):
        head(h, y[:2])


def test_bad_logits_type():
    with pytest.raises(TypeError, match="real_logits must be a torch.Tensor"):
        FG.hinge_d_loss([1.0], Fk)


def test_minimax_g_loss():
    assert FG.minimax_g_loss(Fk).item() == pytest.approx(sum(math.log(1 - 1 / (1 + math.exp(-y))) for y in f) / 5,
                                                        rel=1e-12)


def test_dual_contrastive_is_linear_in_memory():
    # An N x M intermediate would need 4 * 2e5^2 bytes = 160 GB here; the O(N + M) form runs at once.
    n = 200_000
    a = torch.randn(n, generator=g)
    b = torch.randn(n, generator=g)
    d = FG.dual_contrastive_d_loss(a, b)
    assert torch.isfinite(d)
    # Large-logit stability: LSE never overflows where exp would.
    big = FG.dual_contrastive_d_loss(R * 1e3, Fk * 1e3)
    assert torch.isfinite(big)


def test_more_gradchecks():
    real = torch.randn(4, 3, generator=g, dtype=torch.float64)
    fake = torch.randn(4, 3, generator=g, dtype=torch.float64)
    lr, lf = R[:4].clone().requires_grad_(), Fk[:4].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: FG.loss_sensitive_d_loss(a, b, real, fake, slope=0.3, gamma=0.1),
                                    (lr, lf))
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    logits2 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 3, 3, 2])
    assert torch.autograd.gradcheck(lambda a, b: FG.acgan_d_loss(a, y, b, y.flip(0)), (logits, logits2))
    ra = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 3, generator=g, dtype=torch.float64)
    rb = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, q: FG.cycle_consistency_loss(p, a, q, a, 3.0, 2.0), (ra, rb))
    assert torch.autograd.gradcheck(lambda p, q: FG.identity_loss(p, a, q, a), (ra, rb))
    head = GN.ProjectionHead(5, 3, spectral_norm=False).double()
    h = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: head(x, torch.tensor([2, 0, 1, 2])), (h,))


def test_modules_match_functions():
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 3, 3, 2])
    ac = GN.ACGANLoss()
    assert ac(logits, y, logits * 2, y).item() == FG.acgan_d_loss(logits, y, logits * 2, y).item()
    assert ac.g(logits, y).item() == FG.acgan_g_loss(logits, y).item()
    a, b = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    assert GN.CycleConsistencyLoss(1.0, 2.0)(b, a, a, b).item() == pytest.approx(3 * float((a - b).abs().mean()))
    assert GN.IdentityLoss(1.0, 1.0, 1.0)(b, a, a, b).item() == pytest.approx(2 * float((a - b).abs().mean()))
    words, regions = torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    assert GN.WordRegionLoss(4.0, 3.0, 2.0)(words, regions).item() == pytest.approx(
        FG.word_region_loss(words, regions, None, 4.0, 3.0, 2.0).item())
    ls = GN.LossSensitiveLoss(slope=0.5)
    x, xf = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    assert ls.d(R[:4], Fk[:4], x, xf).item() == FG.loss_sensitive_d_loss(R[:4], Fk[:4], x, xf, slope=0.5).item()
    dc = GN.DualContrastiveLoss()
    assert dc.g(R, Fk).item() == FG.dual_contrastive_g_loss(R, Fk).item() and dc(R, Fk).item() == dc.d(R, Fk).item()
    with pytest.raises(ValueError, match="gamma3 must be a positive finite"):
        GN.WordRegionLoss(gamma3=-1.0)
    with pytest.raises(ValueError, match="lambda_a must be a positive finite"):
        GN.CycleConsistencyLoss(lambda_a=float("nan"))


@pytest.mark.parametrize("call,match", [
    (lambda: FG.hinge_d_loss(R[:0], Fk), "real_logits is empty"),
    (lambda: FG.loss_sensitive_d_loss(R[:3], Fk[:4], torch.zeros(4, 2), torch.zeros(4, 2)),
     "real_scores must hold one score per sample"),
    (lambda: FG.acgan_d_loss(torch.zeros(3, 2), torch.tensor([0, 1]), torch.zeros(3, 2), torch.tensor([0, 1, 1])),
     "real_labels must have shape"),
    (lambda: FG.acgan_g_loss(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 1.0])), "fake_labels must hold integer"),
    (lambda: FG.multi_hinge_loss(torch.zeros(3), torch.tensor([0, 1, 1])), "logits must be 2-D"),
    (lambda: FG.identity_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 2)),
     "idt_b and real_a must have the same shape"),
    (lambda: FG.word_region_loss(torch.zeros(2, 3, 4), torch.zeros(3, 5, 4)), "same batch size"),
    (lambda: FG.word_region_loss(torch.zeros(2, 3, 4), torch.zeros(2, 5, 3)), "same feature size"),
    (lambda: FG.word_region_loss(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4), torch.tensor([[1, 0, 0], [0, 0, 0]])),
     "sentence with no words"),
    (lambda: FG.word_region_loss(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4), torch.ones(2, 3)), "word_mask must be bool"),
    (lambda: FG.word_region_loss(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4), gamma1=0.0), "gamma1 must be a positive"),
    (lambda: GN.ProjectionHead(6, 3, spectral_norm=False)(torch.zeros(2, 5), torch.tensor([0, 1])), r"h must be \(N, 6\)"),
])
def test_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("fn", [FG.hinge_d_loss, FG.dual_contrastive_d_loss, FG.dual_contrastive_g_loss])
def test_compile_fullgraph(fn):
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(R, Fk), fn(R, Fk), rtol=1e-12)
