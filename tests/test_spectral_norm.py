"""fastgan's spectral norm against both PyTorch implementations: identical u, v, weights and outputs
over training and eval steps, state dicts in both directions, the GAN double forward, autocast,
torch.compile, deepcopy, ConvTranspose (dim 1), Embedding, and conversion of an existing model."""
import copy

import pytest
import torch

import fastgan.functional as FG
import fastgan.nn as GN
from fastgan.backend import BackendUnavailableError
from fastgan.reference import spectral_norm as ref

TORCH_FLAVOURS = {
    "hook": lambda m, **kw: torch.nn.utils.spectral_norm(m, **kw),
    "parametrization": lambda m, **kw: torch.nn.utils.parametrizations.spectral_norm(m, **kw),
}


def make_pair(flavour, factory, seed=0, **kw):
    torch.manual_seed(seed)
    theirs = TORCH_FLAVOURS[flavour](factory(), **kw)
    torch.manual_seed(seed)
    ours = GN.spectral_norm(factory(), flavour=flavour, **kw)
    return theirs, ours


def uv(module, flavour):
    if flavour == "hook":
        return module.weight_u, module.weight_v
    p = module.parametrizations.weight[0]
    return p._u, p._v


def summand_magnitude(layer, x):
    """|W| |x| + |b|: the layer applied to absolute values, the scale of float32 rounding in its output.
    W / sigma is read in eval mode: a parametrized layer in train mode would run a power-iteration step
    (moving u and v) on every read of .weight; eval mode gives the same W / sigma from the stored u, v."""
    F = torch.nn.functional
    training = layer.training
    layer.eval()
    w = layer.weight.abs()
    layer.train(training)
    b = None if getattr(layer, "bias", None) is None else layer.bias.abs()
    if isinstance(layer, torch.nn.Embedding):
        return F.embedding(x, w)
    if isinstance(layer, torch.nn.Linear):
        return F.linear(x.abs(), w, b)
    if isinstance(layer, torch.nn.ConvTranspose2d):
        return F.conv_transpose2d(x.abs(), w, b, layer.stride, layer.padding, layer.output_padding, layer.groups,
                                  layer.dilation)
    return F.conv2d(x.abs(), w, b, layer.stride, layer.padding, layer.dilation, layer.groups)


def assert_within_rounding(yt, yo, theirs, x):
    """PyTorch's and fastgan's outputs of one SN layer agree within float32 rounding of the sums that
    produce them: |yt - yo| <= 8 eps (|W| |x| + |b|) elementwise, a relative 1e-6 taken against the
    summands' magnitude rather than the output's. The two power iterations sum in different orders
    (and BLAS and the -march=native build pick different kernels on AVX-512 and AVX2 CPUs), so sigma
    and W / sigma differ in their last bits, and an output that cancels to near zero
    keeps the rounding of its summands, not of its own value. Measured: at most 2.3 eps (AMD EPYC,
    AVX-512); a wrong sigma, u or v moves outputs by orders of magnitude more."""
    with torch.no_grad():
        terms = summand_magnitude(theirs, x)
    err = (yt - yo).abs()
    assert bool((err <= 8 * torch.finfo(torch.float32).eps * terms).all()), (
        f"max |yt - yo| / (|W| |x| + |b|) = {(err / terms).max().item():.3g}")


def train_steps(theirs, ours, flavour, x_fn, steps=5, lr=0.1):
    opt_t = torch.optim.SGD(theirs.parameters(), lr=lr)
    opt_o = torch.optim.SGD(ours.parameters(), lr=lr)
    for step in range(steps):
        x = x_fn(step)
        yt, yo = theirs(x), ours(x)
        assert_within_rounding(yt, yo, theirs, x)
        for a, b in zip(uv(theirs, flavour), uv(ours, flavour)):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
        opt_t.zero_grad()
        opt_o.zero_grad()
        yt.square().mean().backward()
        yo.square().mean().backward()
        opt_t.step()
        opt_o.step()
        for (nt, pt), (no, po) in zip(theirs.named_parameters(), ours.named_parameters()):
            assert nt == no
            assert torch.allclose(pt, po, rtol=1e-6, atol=1e-7), nt


LAYERS = {
    "linear": (lambda: torch.nn.Linear(7, 5), lambda s: torch.randn(4, 7, generator=torch.Generator().manual_seed(s))),
    "conv": (lambda: torch.nn.Conv2d(3, 6, 3, padding=1),
             lambda s: torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(s))),
    "convT": (lambda: torch.nn.ConvTranspose2d(4, 3, 3, stride=2),
              lambda s: torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(s))),
    "embedding": (lambda: torch.nn.Embedding(10, 6), lambda s: torch.randint(0, 10, (5,), generator=torch.Generator().manual_seed(s))),
}


@pytest.mark.parametrize("flavour", list(TORCH_FLAVOURS))
@pytest.mark.parametrize("layer", list(LAYERS))
def test_matches_pytorch_over_train_and_eval_steps(flavour, layer):
    factory, x_fn = LAYERS[layer]
    theirs, ours = make_pair(flavour, factory)
    assert list(theirs.state_dict()) == list(ours.state_dict())
    for a, b in zip(uv(theirs, flavour), uv(ours, flavour)):
        assert torch.equal(a, b)  # same random draws at registration (and the same 15 warm-ups)
    if layer != "embedding":  # embeddings train in test_embedding_training (integer inputs, no square loss)
        train_steps(theirs, ours, flavour, x_fn)
    theirs.eval()
    ours.eval()
    for step in range(3):
        x = x_fn(100 + step)
        assert_within_rounding(theirs(x), ours(x), theirs, x)
    for a, b in zip(uv(theirs, flavour), uv(ours, flavour)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    theirs.train()
    ours.train()
    x = x_fn(200)
    assert_within_rounding(theirs(x), ours(x), theirs, x)


@pytest.mark.parametrize("flavour", list(TORCH_FLAVOURS))
def test_embedding_training(flavour):
    theirs, ours = make_pair(flavour, LAYERS["embedding"][0])
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.5)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.5)
    for step in range(4):
        idx = LAYERS["embedding"][1](step)
        yt, yo = theirs(idx), ours(idx)
        assert torch.allclose(yt, yo, rtol=1e-6, atol=1e-7)
        opt_t.zero_grad()
        opt_o.zero_grad()
        yt.sum().backward()
        yo.sum().backward()
        opt_t.step()
        opt_o.step()


@pytest.mark.parametrize("flavour", list(TORCH_FLAVOURS))
def test_state_dict_both_ways(flavour):
    factory, x_fn = LAYERS["conv"]
    theirs, _ = make_pair(flavour, factory, seed=1)
    theirs(x_fn(0))  # one training step moves u, v away from their initial values
    torch.manual_seed(2)
    ours = GN.spectral_norm(factory(), flavour=flavour)
    ours.load_state_dict(theirs.state_dict())
    train_steps(theirs, ours, flavour, x_fn, steps=3)
    # ... and back: PyTorch's module loads fastgan's state dict.
    torch.manual_seed(3)
    again = TORCH_FLAVOURS[flavour](factory())
    again.load_state_dict(ours.state_dict())
    x = x_fn(9)
    assert torch.allclose(again(x), ours(x), rtol=1e-6, atol=1e-7)


class Disc(torch.nn.Module):
    def __init__(self, sn):
        super().__init__()
        self.c1 = sn(torch.nn.Conv2d(3, 8, 3, padding=1))
        self.c2 = sn(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.fc = sn(torch.nn.Linear(8, 1))

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c2(h))
        return self.fc(h.sum(dim=(2, 3)))


@pytest.mark.parametrize("flavour", list(TORCH_FLAVOURS))
def test_gan_double_forward_one_backward(flavour):
    torch.manual_seed(0)
    theirs = Disc(lambda m: TORCH_FLAVOURS[flavour](m))
    torch.manual_seed(0)
    ours = Disc(lambda m: GN.spectral_norm(m, flavour=flavour))
    g = torch.Generator().manual_seed(5)
    real, fake = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    losses = []
    for d in (theirs, ours):
        loss = torch.relu(1 - d(real)).mean() + torch.relu(1 + d(fake)).mean()
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-6)
    for (n, pt), (_, po) in zip(theirs.named_parameters(), ours.named_parameters()):
        assert torch.allclose(pt.grad, po.grad, rtol=1e-5, atol=1e-7), n


def test_convert_spectral_norm_keeps_state_and_behaviour():
    torch.manual_seed(0)
    model = Disc(torch.nn.utils.spectral_norm)
    reference_model = copy.deepcopy(model)
    GN.convert_spectral_norm(model)
    assert model._fastgan_spectral_norm_layers == 3
    assert all(isinstance(h, GN.SpectralNormHook) for m in model.children() for h in m._forward_pre_hooks.values())
    # The model-level hook updates all "hook"-flavour layers together (multi-tensor op).
    assert [type(h) for h in model._forward_pre_hooks.values()] == [GN.SpectralNormGroup]
    assert list(model.state_dict()) == list(reference_model.state_dict())
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8, generator=g)
        assert torch.allclose(model(x), reference_model(x), rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    pmodel = Disc(torch.nn.utils.parametrizations.spectral_norm)
    pref = copy.deepcopy(pmodel)
    GN.convert_spectral_norm(pmodel)
    assert pmodel._fastgan_spectral_norm_layers == 3
    x = torch.randn(2, 3, 8, 8, generator=g)
    assert torch.allclose(pmodel(x), pref(x), rtol=1e-6, atol=1e-7)
    assert list(pmodel.state_dict()) == list(pref.state_dict())


def test_deepcopy_and_train_eval_switch():
    m = GN.SNConv2d(3, 4, 3, eps=1e-6)
    c = copy.deepcopy(m)
    x = torch.randn(1, 3, 6, 6)
    assert torch.allclose(m(x), c(x))
    m.eval()
    u0 = m.weight_u.clone()
    m(x)
    assert torch.equal(m.weight_u, u0)  # eval: no iteration
    m.train()
    m(x)
    assert not torch.equal(m.weight_u, u0)


@pytest.mark.parametrize("flavour", list(TORCH_FLAVOURS))
def test_autocast_matches_pytorch(flavour):
    theirs, ours = make_pair(flavour, lambda: torch.nn.Linear(16, 8))
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yt, yo = theirs(x), ours(x)
    assert yt.dtype == yo.dtype
    assert torch.allclose(yt.float(), yo.float(), rtol=1e-2, atol=1e-2)


def test_compile_fullgraph_sn_discriminator():
    torch.manual_seed(0)
    model = Disc(lambda m: GN.spectral_norm(m))
    twin = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):
        assert torch.allclose(compiled(x), twin(x), rtol=1e-5, atol=1e-6)
    assert torch.allclose(model.c1.weight_u, twin.c1.weight_u, rtol=1e-6)


@pytest.mark.parametrize("order", ref.ORDERS)
def test_reference_power_iteration_converges_to_top_singular_value(order):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(9, 5, generator=g, dtype=torch.float64)
    u = torch.nn.functional.normalize(torch.randn(9, generator=g, dtype=torch.float64), dim=0)
    v = torch.nn.functional.normalize(torch.randn(5, generator=g, dtype=torch.float64), dim=0)
    ref.power_iteration_(w, u, v, 200, 1e-12, order)
    assert ref.sigma(w, u, v).item() == pytest.approx(torch.linalg.matrix_norm(w, 2).item(), rel=1e-10)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (65, 4609)])
def test_spectral_normalize_gradcheck_and_shapes(shape):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    u = torch.nn.functional.normalize(torch.randn(shape[0], generator=g, dtype=torch.float64), dim=0)
    v = torch.nn.functional.normalize(torch.randn(shape[1], generator=g, dtype=torch.float64), dim=0)
    out = FG.spectral_normalize(w, u, v, 1, 1e-12)
    assert out.shape == w.shape
    if shape != (65, 4609):
        # Eval mode (u, v fixed): the gradient is G / sigma - (<G, W> / sigma^2) u v^T.
        wr = w.clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda x: FG.spectral_normalize(x, u, v, 1, 1e-12, training=False), (wr,))
        G = torch.randn(*shape, generator=g, dtype=torch.float64)
        wr.grad = None
        FG.spectral_normalize(wr, u, v, 1, 1e-12, training=False).backward(G)
        s = ref.sigma(w, u, v)
        assert torch.allclose(wr.grad, G / s - (G * w).sum() / s**2 * torch.outer(u, v))


def test_bad_input():
    w = torch.randn(4, 3)
    u, v = torch.randn(4), torch.randn(3)
    with pytest.raises(ValueError, match="u must have 4 entries"):
        FG.spectral_normalize(w, torch.randn(5), v)
    with pytest.raises(ValueError, match="v must have 3 entries"):
        FG.spectral_normalize(w, u, torch.randn(2))
    with pytest.raises(TypeError, match="u and v must have one dtype"):
        FG.spectral_normalize(w, u.double(), v)
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        FG.spectral_normalize(w, u, v, eps=0.0)
    with pytest.raises(ValueError, match="order must be one of"):
        FG.spectral_normalize(w, u, v, order="power")
    with pytest.raises(ValueError, match="flavour must be one of"):
        GN.spectral_norm(torch.nn.Linear(2, 2), flavour="x")
    with pytest.raises(BackendUnavailableError, match="'cuda' backend runs on CUDA tensors"):
        FG.spectral_normalize(w, u, v, backend="cuda")
    # The Triton kernels exist (in the interpreter on a CPU-only machine): same result as the reference.
    u2, v2 = u.clone(), v.clone()
    assert torch.allclose(FG.spectral_normalize(w, u, v, backend="triton"),
                          FG.spectral_normalize(w, u2, v2, backend="reference"), rtol=1e-5, atol=1e-6)
    assert torch.allclose(u, u2, rtol=1e-5, atol=1e-6) and torch.allclose(v, v2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="backend must be one of"):
        GN.spectral_norm(torch.nn.Linear(2, 2), backend="gpu")
    with pytest.raises(RuntimeError, match="Cannot register two spectral_norm hooks"):
        GN.spectral_norm(GN.SNLinear(2, 2))
