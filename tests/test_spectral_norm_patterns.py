"""Grouped spectral norm (convert_spectral_norm, group=True) under every call pattern real training
code uses: each layer's u, v must step exactly once per training-mode call of that layer, as
torch.nn.utils.spectral_norm, and every gradient must match. Mimicry's InfoMax-GAN discriminator
with its own train_step (D(real), D(fake), then D.project_features, whose layers the forward skips),
and a small model driven through direct submodule calls, skipped layers, repeated calls, no_grad
calls and eval/train switches."""
import copy

import pytest
import torch
import torch.nn.functional as F

import fastgan.nn as GN

import _peers
from conftest import float64_backends

TOL = dict(rtol=1e-10, atol=1e-12)  # float64: the fused and PyTorch's power iterations agree to rounding


def _buffers_equal(a, b, what):
    for (n1, b1), (n2, b2) in zip(a.named_buffers(), b.named_buffers()):
        assert n1 == n2 and torch.allclose(b1, b2, **TOL), (what, n1, (b1 - b2).abs().max())


def _grads_equal(a, b, what):
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert n1 == n2
        assert (p1.grad is None) == (p2.grad is None), (what, n1, "gradient missing on one side")
        if p1.grad is not None:
            assert torch.allclose(p1.grad, p2.grad, **TOL), (what, n1, (p1.grad - p2.grad).abs().max())


def _mimicry_pair(backend):
    im = _peers.mimicry("nets.infomax_gan.infomax_gan_32")
    torch.manual_seed(0)
    d_theirs = im.InfoMaxGANDiscriminator32(nrkhs=16, ndf=8)
    g_theirs = im.InfoMaxGANGenerator32(nz=8, ngf=8, bottom_width=4)
    d_ours = GN.convert_spectral_norm(copy.deepcopy(d_theirs), backend=backend, group=True)
    assert d_ours._fastgan_spectral_norm_layers >= 10  # trunk + six projection layers
    assert any(isinstance(h, GN.SpectralNormGroup) for h in d_ours._forward_pre_hooks.values())
    return d_theirs, g_theirs, d_ours, copy.deepcopy(g_theirs)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_mimicry_infomax_train_steps_equal_pytorch_spectral_norm(float64_default, backend):
    d_t, g_t, d_o, g_o = _mimicry_pair(backend)
    opts = {}
    for name, m in (("d_t", d_t), ("g_t", g_t), ("d_o", d_o), ("g_o", g_o)):
        opts[name] = torch.optim.Adam(m.parameters(), 2e-4, betas=(0.0, 0.9))
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        real = (torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, torch.zeros(4, dtype=torch.long))
        logs = []
        for d, gen, od, og in ((d_t, g_t, opts["d_t"], opts["g_t"]), (d_o, g_o, opts["d_o"], opts["g_o"])):
            log = _peers.MetricLog()
            torch.manual_seed(100 + step)
            d.train_step(real, gen, od, log)  # forward(real), forward(fake), project_features, backward, step
            torch.manual_seed(200 + step)
            gen.train_step(real, d, og, log)  # D(fake), D.project_features, backward, G step
            logs.append(log.metrics)
        for k in logs[0]:
            assert abs(logs[0][k] - logs[1][k]) <= 1e-10 * max(1.0, abs(logs[0][k])), (step, k, logs)
        _grads_equal(d_t, d_o, f"D grads, step {step}")  # the grads of G's step (D is not zeroed by it)
        _grads_equal(g_t, g_o, f"G grads, step {step}")
        _buffers_equal(d_t, d_o, f"D u, v, step {step}")
        for (n1, p1), (n2, p2) in zip(d_t.named_parameters(), d_o.named_parameters()):
            assert torch.allclose(p1, p2, **TOL), (step, n1)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_mimicry_discriminator_called_as_users_do(float64_default, backend):
    # Mimicry's D.train_step calls self.forward(...) (no module hooks), G's calls netD(...); users
    # call D(real), D(fake), then D.project_features, and sometimes D(x) under no_grad first.
    d_t, _, d_o, _ = _mimicry_pair(backend)
    g = torch.Generator().manual_seed(2)
    for step in range(3):
        real, fake, probe = (torch.rand(4, 3, 32, 32, generator=g) * 2 - 1 for _ in range(3))
        losses = []
        for d in (d_t, d_o):
            d.zero_grad()
            with torch.no_grad():
                d(probe)  # training mode: every layer the forward runs steps once
            out_r, local_r, global_r = d(real)
            out_f, _, _ = d(fake)
            local_r, global_r = d.project_features(local_feat=local_r, global_feat=global_r)
            loss = d.compute_gan_loss(output_real=out_r, output_fake=out_f) + d.compute_infomax_loss(
                local_feat=local_r, global_feat=global_r, scale=0.2)
            loss.backward()
            losses.append(loss)
        assert torch.allclose(losses[0], losses[1], **TOL), (step, losses)
        _grads_equal(d_t, d_o, f"step {step}")
        _buffers_equal(d_t, d_o, f"u, v, step {step}")


class Net(torch.nn.Module):
    """A trunk the forward runs, a head it runs twice, a branch it skips, a block called directly."""

    def __init__(self, sn):
        super().__init__()
        self.c1 = sn(torch.nn.Conv2d(3, 6, 3, padding=1))
        self.fc = sn(torch.nn.Linear(6 * 4 * 4, 8))
        self.head = sn(torch.nn.Linear(8, 8))
        self.skipped = sn(torch.nn.Linear(8, 8))
        self.proj = torch.nn.Sequential(sn(torch.nn.Linear(8, 5)), torch.nn.ReLU(), sn(torch.nn.Linear(5, 5)))
        self.emb = sn(torch.nn.Embedding(3, 8))

    def forward(self, x, y, use_skipped=False):
        h = F.leaky_relu(self.c1(x), 0.1)
        h = F.leaky_relu(self.fc(h.flatten(1)), 0.1)
        h = self.head(F.relu(self.head(h)))  # called twice in one forward: two steps
        if use_skipped:
            h = h + self.skipped(h)
        return (h * self.emb(y)).sum(dim=1), h


def _pattern(model, x, y, step):
    """One 'training step' mixing every call pattern; returns the outputs summed into a loss."""
    out, h = model(x, y)
    out2, _ = model(0.5 * x, y, use_skipped=(step % 2 == 1))  # repeated call, sometimes the skipped branch
    feats = model.proj(h)  # a submodule called directly (Mimicry's project_features)
    with torch.no_grad():
        model(x, y)  # a training-mode call without autograd: u, v still step, as PyTorch
        model.proj(h)
    model.eval()
    out_eval, _ = model(x, y)  # eval: stored u, v, no step
    model.train()
    model.proj[0].eval()  # one layer in eval inside a training model
    feats2 = model.proj(h)
    model.proj[0].train()
    return out.sum() + out2.square().sum() + feats.sum() + out_eval.sum() + feats2.square().sum()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_every_call_pattern_equals_pytorch(backend):
    torch.manual_seed(0)
    theirs = Net(lambda m: torch.nn.utils.spectral_norm(m)).double()
    ours = GN.convert_spectral_norm(copy.deepcopy(theirs), backend=backend, group=True)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.1)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        x = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (3,), generator=g)
        losses = [_pattern(m, x, y, step) for m in (theirs, ours)]
        assert torch.allclose(losses[0], losses[1], **TOL), (step, losses)
        _buffers_equal(theirs, ours, f"u, v after the forwards of step {step}")
        for opt, loss in zip((opt_t, opt_o), losses):
            opt.zero_grad()
            loss.backward()
        _grads_equal(theirs, ours, f"step {step}")
        opt_t.step()
        opt_o.step()
    # A layer called on its own after an optimizer step (its pending step is stale) steps from the new weight.
    h = torch.randn(2, 8, dtype=torch.float64, generator=g)
    assert torch.allclose(theirs.skipped(h), ours.skipped(h), **TOL)
    _buffers_equal(theirs, ours, "after the direct call")


def test_compiled_grouped_model_equals_pytorch_under_call_patterns():
    torch.manual_seed(0)
    theirs = Net(lambda m: torch.nn.utils.spectral_norm(m))
    ours = GN.convert_spectral_norm(copy.deepcopy(theirs), backend="cpu", group=True)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x, y = torch.randn(3, 3, 4, 4), torch.tensor([0, 2, 1])
    for use_skipped in (False, True, False):
        a, _ = theirs(x, y, use_skipped)
        b, _ = compiled(x, y, use_skipped)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        ours.proj(torch.ones(1, 8))
        theirs.proj(torch.ones(1, 8))
        for (n1, b1), (n2, b2) in zip(theirs.named_buffers(), ours.named_buffers()):
            assert torch.allclose(b1, b2, rtol=1e-5, atol=1e-6), n1


def _uv(model):
    return {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("backend", float64_backends() + ["reference"])  # float64: Triton only in its interpreter
def test_steps_committed_ahead_are_rolled_back_for_layers_the_forward_skips(backend):
    # The group writes every stepped layer's new u, v into the buffers at the model's call (one
    # multi-tensor copy); when the forward ends, those of the layers it did not call must hold
    # their old values again, bit for bit, also when the forward raises; the called ones PyTorch's.
    torch.manual_seed(0)
    theirs = Net(lambda m: torch.nn.utils.spectral_norm(m)).double()
    ours = GN.convert_spectral_norm(copy.deepcopy(theirs), backend=backend, group=True)
    x, y = torch.randn(3, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 2, 1])
    before = _uv(ours)
    theirs(x, y)
    ours(x, y)
    after = _uv(ours)
    skipped = [n for n in after if n.startswith(("skipped.", "proj."))]
    assert len(skipped) == 6
    for n in skipped:
        assert torch.equal(after[n], before[n]), n  # untouched: exactly the old bits
    _buffers_equal(theirs, ours, "after one forward")
    assert all(not torch.equal(after[n], before[n]) for n in after if n.endswith("_u") and n not in skipped)

    class Boom(Exception):
        pass

    def boom(module, inputs):
        raise Boom

    handle = ours.fc.register_forward_pre_hook(boom)  # after c1 has taken its step, before the rest
    with pytest.raises(Boom):
        ours(x, y)
    handle.remove()
    with pytest.raises(Boom):
        theirs.fc.register_forward_pre_hook(boom)
        theirs(x, y)
    theirs.fc._forward_pre_hooks.popitem()
    _buffers_equal(theirs, ours, "after a forward that raised")
    # The skipped layers' deferred steps are still committed by their own call (one copy each).
    h = torch.randn(2, 8, dtype=torch.float64)
    assert torch.allclose(theirs.proj(h), ours.proj(h), **TOL)
    _buffers_equal(theirs, ours, "after the direct call")


def test_state_dict_between_forwards_is_pytorchs():
    # Outside a model forward no buffer holds a step its layer has not taken: a checkpoint written
    # between two forwards (or a DDP buffer broadcast at the next one) sees PyTorch's u, v.
    torch.manual_seed(0)
    theirs = Net(lambda m: torch.nn.utils.spectral_norm(m)).double()
    ours = GN.convert_spectral_norm(copy.deepcopy(theirs), backend="cpu", group=True)
    x, y = torch.randn(3, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 2, 1])
    for step in range(2):
        theirs(x, y, use_skipped=bool(step))
        ours(x, y, use_skipped=bool(step))
        sd_t, sd_o = theirs.state_dict(), ours.state_dict()
        assert sd_t.keys() == sd_o.keys()
        for k in sd_t:
            assert torch.allclose(sd_t[k], sd_o[k], **TOL), (step, k)


def test_nested_groups_step_each_layer_once():
    # A submodule converted on its own inside a converted model: inside the model's forward the
    # submodule's group finds its layers already stepped ahead by the model's and leaves them.
    torch.manual_seed(0)

    def make(sn):
        block = torch.nn.Sequential(sn(torch.nn.Linear(6, 6)), torch.nn.ReLU(), sn(torch.nn.Linear(6, 6)))
        return torch.nn.Sequential(sn(torch.nn.Linear(4, 6)), block, sn(torch.nn.Linear(6, 3)))

    theirs = make(lambda m: torch.nn.utils.spectral_norm(m)).double()
    ours = GN.convert_spectral_norm(copy.deepcopy(theirs), backend="cpu", group=True)
    GN.convert_spectral_norm(ours[1], backend="cpu", group=True)
    x = torch.randn(5, 4, dtype=torch.float64)
    for _ in range(2):
        a, b = theirs(x), ours(x)
        assert torch.allclose(a, b, **TOL)
        _buffers_equal(theirs, ours, "nested groups")
        h = torch.randn(2, 6, dtype=torch.float64)
        assert torch.allclose(theirs[1](h), ours[1](h), **TOL)  # the inner group on its own
        _buffers_equal(theirs, ours, "the inner model called directly")


def test_group_pickled_without_its_step_state_still_steps():
    # A whole model saved with torch.save by an earlier fastgan: its group object lacks the state
    # settle_ and the rollback buffers keep; the first forward must still step like PyTorch.
    torch.manual_seed(0)
    theirs = Net(lambda m: torch.nn.utils.spectral_norm(m)).double()
    ours = GN.convert_spectral_norm(copy.deepcopy(theirs), backend="cpu", group=True)
    group = next(h for h in ours._forward_pre_hooks.values() if isinstance(h, GN.SpectralNormGroup))
    del group.__dict__["_stepped"]
    x, y = torch.randn(3, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 2, 1])
    assert torch.allclose(theirs(x, y)[0], ours(x, y)[0], **TOL)
    _buffers_equal(theirs, ours, "after the first forward")
