"""NT-Xent and SupCon as pytorch-metric-learning (PML) computes them, on every backend, values and
gradients in float64: PML's NTXentLoss()(embeddings, labels) with any number of views in any order,
fastgan's stacked and two-argument forms, the boundary errors, SupCon's one-class batch."""
import pytest
import torch

import fastgan.functional as FG
import fastgan.nn as GN
import fastgan.reference as R

import _peers
from conftest import kernel_backends

pml = _peers.pml_losses()
BACKENDS = ["reference"] + [b for b in kernel_backends() if b != "cuda"]


def _grad(loss, x):
    return torch.autograd.grad(loss, x, allow_unused=True)[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("views,n", [(2, 7), (3, 5), (4, 2), (1, 6), (2, 1)])
def test_labels_form_equals_pml(backend, views, n):
    g = torch.Generator().manual_seed(views * 10 + n)
    labels = torch.arange(n).repeat(views)[torch.randperm(n * views, generator=g)]
    e = torch.randn(n * views, 6, generator=g, dtype=torch.float64, requires_grad=True)
    want = pml.NTXentLoss(temperature=0.2)(e, labels)
    gw = _grad(want, e)
    got = FG.nt_xent_loss(e, labels, 0.2, backend=backend)
    assert got.dtype == torch.float64
    assert abs(float(got) - float(want)) <= 1e-12 * max(1.0, abs(float(want))), (float(got), float(want))
    gg = _grad(got, e)
    if gw is None:  # no positive pair (one view): PML's loss is a constant 0
        assert float(got) == 0.0 and (gg is None or float(gg.abs().max()) == 0.0)
    else:
        assert torch.allclose(gg, gw, rtol=1e-10, atol=1e-13), (gg - gw).abs().max()
    mod = GN.NTXentLoss(0.2, backend=backend)(e, labels)
    assert torch.equal(mod.detach(), got.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_uneven_classes_and_a_label_covering_the_batch(backend):
    # Classes of sizes 1, 2 and 4, and a batch of one label (no negatives: every term is -log 1 = 0).
    e = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    labels = torch.tensor([5, 9, 9, 0, 0, 0, 0])
    want = pml.NTXentLoss(temperature=0.5)(e, labels)
    got = FG.nt_xent_loss(e, labels, backend=backend)
    assert abs(float(got) - float(want)) <= 1e-12 * abs(float(want))
    assert torch.allclose(_grad(got, e), _grad(want, e), rtol=1e-10, atol=1e-13)
    one = FG.nt_xent_loss(e, torch.zeros(7, dtype=torch.long), backend=backend)
    assert float(one) == 0.0 == float(pml.NTXentLoss()(e, torch.zeros(7, dtype=torch.long)))
    per = FG.nt_xent_loss(e, labels, reduction="none", backend=backend)
    assert per.shape == (2 + 12,)  # ordered positive pairs: 2 * 1 + 4 * 3
    ref = R.nt_xent_loss_labels(e, labels, 0.5, reduction="none")
    assert torch.allclose(per, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stacked_two_argument_and_labels_forms_agree(backend):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    z = torch.cat([z1, z2])
    stacked = FG.nt_xent_loss(z, 0.3, backend=backend)  # the positional temperature still works
    assert torch.allclose(FG.nt_xent_loss(z1, z2, 0.3, backend=backend), stacked, rtol=1e-12)
    assert torch.allclose(FG.nt_xent_loss(z, torch.arange(6).repeat(2), 0.3, backend=backend), stacked, rtol=1e-12)
    assert torch.allclose(GN.NTXentLoss(0.3, backend=backend)(z1, z2), stacked, rtol=1e-12)
    assert torch.allclose(pml.NTXentLoss(0.3)(z, torch.arange(6).repeat(2)), stacked, rtol=1e-12)


def test_errors_name_the_argument():
    z = torch.randn(8, 4)
    with pytest.raises(ValueError, match="labels must have shape \\(8,\\)"):
        GN.NTXentLoss()(z, torch.arange(3))
    with pytest.raises(TypeError, match="temperature twice"):
        FG.nt_xent_loss(z, 0.5, temperature=0.1)
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        FG.nt_xent_loss(z, [0, 1])
    with pytest.raises(TypeError, match="NTXentLoss: the second argument"):
        GN.NTXentLoss()(z, 0.5)
    with pytest.raises(ValueError, match="z2 has 3 rows"):
        FG.nt_xent_loss(z, torch.randn(3, 4))
    with pytest.raises(ValueError, match="z2 must be 2-D|second view"):
        FG.nt_xent_loss(z, torch.randn(8))
    with pytest.raises(TypeError, match="labels must hold integer class labels"):
        FG.nt_xent_loss(z, torch.ones(8, dtype=torch.bool))
    with pytest.raises(ValueError, match="pass labels"):
        FG.nt_xent_loss(torch.randn(5, 4))
    with pytest.raises(ValueError, match="process_group"):
        FG.nt_xent_loss(z, torch.arange(8), process_group=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_supcon_one_class_batch_is_the_formula_not_pml_zero(backend):
    # Documented choice (supcon_loss docstring): LSE over the positives minus their mean, not PML's 0.
    f = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = torch.zeros(6, dtype=torch.long)
    got = FG.supcon_loss(f, y, 0.1, backend=backend)
    s = torch.nn.functional.normalize(f, dim=1) @ torch.nn.functional.normalize(f, dim=1).T / 0.1
    off = ~torch.eye(6, dtype=torch.bool)
    want = (torch.logsumexp(s.masked_fill(~off, float("-inf")), dim=1) - (s * off).sum(1) / 5).mean()
    assert abs(float(got) - float(want)) <= 1e-12 * float(want) and float(want) > 0
    assert float(pml.SupConLoss(temperature=0.1)(f, y)) == 0.0  # PML skips a batch without negatives
    # With negatives present the two agree.
    y2 = torch.tensor([0, 0, 1, 1, 2, 2])
    assert abs(float(FG.supcon_loss(f, y2, 0.1, backend=backend)) - float(pml.SupConLoss(0.1)(f, y2))) < 1e-10
