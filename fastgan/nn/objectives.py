"""GAN objectives as modules, and the projection discriminator head.

One naming scheme: each objective with distinct discriminator and generator forms is ONE module
`<Name>Loss` with two methods, `.d(...)` (the discriminator's / critic's loss, same arguments as
`fastgan.functional.<name>_d_loss`) and `.g(...)` (the generator's, as `<name>_g_loss`); calling the
module, forward(...), is `.d(...)`. Objectives with a single form (MultiHingeLoss,
CycleConsistencyLoss, IdentityLoss, WordRegionLoss) only have forward. Hyper-parameters (lam,
slope, gamma, lambdas, gamma1..3) are constructor arguments, validated there.
The projection head computes linear(h) + <embed(y), h> (Miyato & Koyama 2018).
"""
import torch

from .. import _checks as C
from .. import functional as F
from .spectral_norm import SNEmbedding, SNLinear

__all__ = ["VanillaLoss", "LeastSquaresLoss", "HingeLoss", "WassersteinLoss", "LossSensitiveLoss",
           "DualContrastiveLoss", "MultiHingeLoss", "ACGANLoss", "CycleConsistencyLoss", "IdentityLoss",
           "WordRegionLoss", "ProjectionHead"]


class _Adversarial(torch.nn.Module):
    _d = staticmethod(lambda real_logits, fake_logits: None)
    _g = staticmethod(lambda fake_logits: None)

    def d(self, real_logits, fake_logits):
        return type(self)._d(real_logits, fake_logits)

    def g(self, fake_logits):
        return type(self)._g(fake_logits)

    def forward(self, real_logits, fake_logits):
        return self.d(real_logits, fake_logits)


class VanillaLoss(_Adversarial):
    """Non-saturating (logistic) GAN loss."""
    _d, _g = staticmethod(F.vanilla_d_loss), staticmethod(F.vanilla_g_loss)


class LeastSquaresLoss(_Adversarial):
    """LSGAN."""
    _d, _g = staticmethod(F.least_squares_d_loss), staticmethod(F.least_squares_g_loss)


class HingeLoss(_Adversarial):
    """Hinge loss (SNGAN, BigGAN, StudioGAN's default)."""
    _d, _g = staticmethod(F.hinge_d_loss), staticmethod(F.hinge_g_loss)


class WassersteinLoss(_Adversarial):
    """WGAN critic and generator losses."""
    _d, _g = staticmethod(F.wasserstein_d_loss), staticmethod(F.wasserstein_g_loss)


class LossSensitiveLoss(torch.nn.Module):
    """LS-GAN (slope 0) / GLS-GAN: d(real_scores, fake_scores, real, fake), g(fake_scores)."""

    def __init__(self, lam: float = 2e-4, slope: float = 0.0, gamma: float = 0.0):
        super().__init__()
        self.lam = C.check_positive_finite(lam, "lam")
        self.slope, self.gamma = C.check_finite(slope, "slope"), C.check_finite(gamma, "gamma")

    def d(self, real_scores, fake_scores, real, fake):
        return F.loss_sensitive_d_loss(real_scores, fake_scores, real, fake, self.lam, self.slope, self.gamma)

    def g(self, fake_scores):
        return F.loss_sensitive_g_loss(fake_scores)

    forward = d


class DualContrastiveLoss(torch.nn.Module):
    """Dual contrastive loss: d(real_logits, fake_logits) and g(real_logits, fake_logits)."""

    def d(self, real_logits, fake_logits):
        return F.dual_contrastive_d_loss(real_logits, fake_logits)

    def g(self, real_logits, fake_logits):
        return F.dual_contrastive_g_loss(real_logits, fake_logits)

    forward = d


class MultiHingeLoss(torch.nn.Module):
    """Crammer-Singer multi-class hinge over class logits."""

    def forward(self, logits, labels):
        return F.multi_hinge_loss(logits, labels)


class ACGANLoss(torch.nn.Module):
    """ACGAN auxiliary classifier: d(real_class_logits, real_labels, fake_class_logits, fake_labels)
    = CE(real) + CE(fake); g(fake_class_logits, fake_labels) = CE(fake)."""

    def d(self, real_class_logits, real_labels, fake_class_logits, fake_labels):
        return F.acgan_d_loss(real_class_logits, real_labels, fake_class_logits, fake_labels)

    def g(self, fake_class_logits, fake_labels):
        return F.acgan_g_loss(fake_class_logits, fake_labels)

    forward = d


class CycleConsistencyLoss(torch.nn.Module):
    """CycleGAN cycle loss: forward(rec_a, real_a, rec_b, real_b)."""

    def __init__(self, lambda_a: float = 10.0, lambda_b: float = 10.0):
        super().__init__()
        self.lambda_a = C.check_positive_finite(lambda_a, "lambda_a")
        self.lambda_b = C.check_positive_finite(lambda_b, "lambda_b")

    def forward(self, rec_a, real_a, rec_b, real_b):
        return F.cycle_consistency_loss(rec_a, real_a, rec_b, real_b, self.lambda_a, self.lambda_b)


class IdentityLoss(torch.nn.Module):
    """CycleGAN identity loss: forward(idt_a, real_b, idt_b, real_a) with idt_a = G_A(b), idt_b = G_B(a)."""

    def __init__(self, lambda_a: float = 10.0, lambda_b: float = 10.0, lambda_identity: float = 0.5):
        super().__init__()
        self.lambda_a = C.check_positive_finite(lambda_a, "lambda_a")
        self.lambda_b = C.check_positive_finite(lambda_b, "lambda_b")
        self.lambda_identity = C.check_positive_finite(lambda_identity, "lambda_identity")

    def forward(self, idt_a, real_b, idt_b, real_a):
        return F.identity_loss(idt_a, real_b, idt_b, real_a, self.lambda_a, self.lambda_b, self.lambda_identity)


class WordRegionLoss(torch.nn.Module):
    """XMC-GAN's word-region contrastive loss: forward(words, regions, word_mask=None)."""

    def __init__(self, gamma1: float = 5.0, gamma2: float = 5.0, gamma3: float = 50.0):
        super().__init__()
        self.gamma1 = C.check_positive_finite(gamma1, "gamma1")
        self.gamma2 = C.check_positive_finite(gamma2, "gamma2")
        self.gamma3 = C.check_positive_finite(gamma3, "gamma3")

    def forward(self, words, regions, word_mask=None):
        return F.word_region_loss(words, regions, word_mask, self.gamma1, self.gamma2, self.gamma3)


class ProjectionHead(torch.nn.Module):
    """Projection discriminator output: linear(h) + <embed(y), h>, spectrally normalized by default
    (eps as StudioGAN's 1e-6)."""

    def __init__(self, in_features: int, num_classes: int, spectral_norm: bool = True, eps: float = 1e-6, *,
                 backend: str = "auto"):
        super().__init__()
        for value, name in ((in_features, "in_features"), (num_classes, "num_classes")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if spectral_norm:
            self.linear = SNLinear(in_features, 1, eps=eps, backend=backend)
            self.embed = SNEmbedding(num_classes, in_features, eps=eps, backend=backend)
        else:
            self.linear = torch.nn.Linear(in_features, 1)
            self.embed = torch.nn.Embedding(num_classes, in_features)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        C.check_tensor(h, "h")
        if h.dim() != 2 or h.shape[1] != self.embed.embedding_dim:
            raise ValueError(f"h must be (N, {self.embed.embedding_dim}), got shape {tuple(h.shape)}")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor of class labels, got {type(y).__name__}")
        if y.shape != (h.shape[0],):
            raise ValueError(f"y must have shape ({h.shape[0]},), got {tuple(y.shape)}")
        return self.linear(h)[:, 0] + (self.embed(y) * h).sum(dim=1)
