"""fastgan.integrations against the real projects: torch-mimicry 0.1.16 (InfoMax-GAN and SNGAN, their
own train_steps, float64: every loss and gradient equal), and a module with StudioGAN's utils.losses
surface (tests/studiogan_stub/losses.py); the exact softplus of the InfoNCE against Mimicry's."""
import copy
import importlib.util
import os

import pytest
import torch

import fastgan.functional as FG
import fastgan.integrations as FI
import fastgan.nn as GN

import _peers
from conftest import float64_backends

TOL = dict(rtol=1e-10, atol=1e-12)


def _same_grads(a, b, what):
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert n1 == n2 and (p1.grad is None) == (p2.grad is None), (what, n1)
        if p1.grad is not None:
            assert torch.allclose(p1.grad, p2.grad, **TOL), (what, n1, (p1.grad - p2.grad).abs().max())


def _run_mimicry(d_t, g_t, d_o, g_o, steps=3):
    opts = [torch.optim.Adam(m.parameters(), 2e-4, betas=(0.0, 0.9)) for m in (d_t, g_t, d_o, g_o)]
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        real = (torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, torch.zeros(4, dtype=torch.long))
        logs = []
        for d, gen, od, og in ((d_t, g_t, opts[0], opts[1]), (d_o, g_o, opts[2], opts[3])):
            log = _peers.MetricLog()
            torch.manual_seed(100 + step)
            d.train_step(real, gen, od, log)
            torch.manual_seed(200 + step)
            gen.train_step(real, d, og, log)
            logs.append(log.metrics)
        assert logs[0].keys() == logs[1].keys()
        for k in logs[0]:
            assert abs(logs[0][k] - logs[1][k]) <= 1e-10 * max(1.0, abs(logs[0][k])), (step, k, logs)
        _same_grads(d_t, d_o, f"D, step {step}")
        _same_grads(g_t, g_o, f"G, step {step}")
        for (n1, b1), (n2, b2) in zip(d_t.named_buffers(), d_o.named_buffers()):
            assert torch.allclose(b1, b2, **TOL), (step, n1)


@pytest.mark.parametrize("backend", float64_backends())
def test_mimicry_infomax_gan(float64_default, backend):
    im = _peers.mimicry("nets.infomax_gan.infomax_gan_32")
    torch.manual_seed(0)
    d_t = im.InfoMaxGANDiscriminator32(nrkhs=16, ndf=8)
    g_t = im.InfoMaxGANGenerator32(nz=8, ngf=8, bottom_width=4)
    d_o = FI.mimicry(copy.deepcopy(d_t), backend=backend)
    assert d_o._fastgan_spectral_norm_layers >= 10
    assert isinstance(d_o.infonce_loss, type(FI.functools.partial(print)))  # fastgan's InfoNCE in place
    group = next(h for h in d_o._forward_pre_hooks.values() if isinstance(h, GN.SpectralNormGroup))
    calls = []
    step = group.update_
    group.update_ = lambda: (calls.append(1), step())[1]
    _run_mimicry(d_t, g_t, d_o, copy.deepcopy(g_t))
    # Batched in D's steps too (2 self.forward calls each) and G's (one netD(x)): 3 per step.
    assert len(calls) == 3 * 3


@pytest.mark.parametrize("backend", float64_backends())
def test_mimicry_sngan(float64_default, backend):
    sn = _peers.mimicry("nets.sngan.sngan_32")
    torch.manual_seed(0)
    d_t = sn.SNGANDiscriminator32(ndf=8)
    g_t = sn.SNGANGenerator32(nz=8, ngf=8, bottom_width=4)
    d_o = FI.mimicry(copy.deepcopy(d_t), backend=backend)
    assert d_o._fastgan_spectral_norm_layers >= 5
    _run_mimicry(d_t, g_t, d_o, copy.deepcopy(g_t))


@pytest.mark.parametrize("backend", ["reference"] + float64_backends())
def test_infonce_exact_softplus_against_mimicry_above_20(backend):
    # NEG - pos > 20 for most terms: F.softplus would return its argument there (1e-9 relative off).
    base = _peers.mimicry("nets.infomax_gan.infomax_gan_base")
    g = torch.Generator().manual_seed(0)
    m = torch.eye(4, 8, dtype=torch.float64)[:, :, None]  # orthogonal: image i's shift leaves the others' scores
    l = 0.01 * torch.randn(4, 8, 9, generator=g, dtype=torch.float64)  # negatives' scores ~ 0
    target = -18.0 + 0.5 * torch.rand(4, 1, 9, generator=g, dtype=torch.float64)  # own positives ~ -18
    l = l + target * m / m.square().sum(dim=1, keepdim=True)
    want = base.BaseDiscriminator.infonce_loss(None, l, m)
    # Each term's argument NEG - pos lies in (20, 25): F.softplus would return it unchanged (rel. 1e-11 off).
    assert 20 < float(want) < 25
    got = FG.infonce_local_global(l, m, backend=backend)
    assert abs(float(got) - float(want)) <= 2e-15 * float(want), (float(got), float(want))


def _stub_losses():
    path = os.path.join(os.path.dirname(__file__), "studiogan_stub", "losses.py")
    spec = importlib.util.spec_from_file_location("studiogan_stub_losses", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a fresh module per test: studiogan() patches it in place
    return module


class StudioDis(torch.nn.Module):
    """StudioGAN's ContraGAN / ReACGAN discriminator shape: SN trunk, SN linear embedding, SN class
    embedding as the proxy (utils/ops.py: torch.nn.utils.spectral_norm with eps=1e-6)."""

    def __init__(self, num_classes=4):
        super().__init__()
        sn = lambda m: torch.nn.utils.spectral_norm(m, eps=1e-6)  # noqa: E731
        self.conv = sn(torch.nn.Conv2d(3, 8, 3, padding=1))
        self.linear1 = sn(torch.nn.Linear(8 * 4 * 4, 1))
        self.linear2 = sn(torch.nn.Linear(8 * 4 * 4, 6))
        self.embedding = sn(torch.nn.Embedding(num_classes, 6))

    def forward(self, x, label):
        h = torch.relu(self.conv(x)).flatten(1)
        return {"adv_output": self.linear1(h)[:, 0], "embed": self.linear2(h), "proxy": self.embedding(label)}


@pytest.mark.parametrize("loss_name", ["ConditionalContrastiveLoss", "Data2DataCrossEntropyLoss"])
@pytest.mark.parametrize("backend", float64_backends())
def test_studiogan_losses_and_spectral_norms(loss_name, backend):
    losses = _stub_losses()
    torch.manual_seed(0)
    theirs = StudioDis().double()
    ours = copy.deepcopy(theirs)
    original = getattr(losses, loss_name)
    FI.studiogan(losses, ours, backend=backend)
    patched = getattr(losses, loss_name)
    assert patched is not original and issubclass(patched, getattr(GN, loss_name))
    assert losses._fastgan_originals[loss_name] is original
    kw = dict(num_classes=4, temperature=0.5, master_rank="cuda", DDP=False)
    if loss_name == "Data2DataCrossEntropyLoss":
        kw["m_p"] = 0.98
    crit_t, crit_o = original(**kw), patched(**kw)  # as StudioGAN's WORKER builds them
    opt_t = torch.optim.Adam(theirs.parameters(), 1e-3)
    opt_o = torch.optim.Adam(ours.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        x = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
        y = torch.tensor([0, 1, 1, 2, 3, 3])
        vals = []
        for model, crit, opt in ((theirs, crit_t, opt_t), (ours, crit_o, opt_o)):
            opt.zero_grad()
            real, fake = model(x, y), model(-x, y)  # D(real), D(fake): two SN steps
            loss = losses.d_hinge(real["adv_output"], fake["adv_output"]) + crit(real["embed"], real["proxy"], y)
            loss.backward()
            opt.step()
            vals.append(loss)
        assert torch.allclose(vals[0], vals[1], **TOL), (step, vals)
        _same_grads(theirs, ours, f"step {step}")
    with pytest.raises(ValueError, match="utils.losses"):
        FI.studiogan(torch.nn, ours)
