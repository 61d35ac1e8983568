"""GAN objectives as modules, and the projection discriminator head.

Each adversarial objective is one module with two methods, `d(real_logits, fake_logits)` and
`g(fake_logits)` (or `g(real_logits, fake_logits)` where the G form needs both), plus forward(...)
= d(...). The projection head computes linear(h) + <embed(y), h> (Miyato & Koyama 2018).
"""
import torch

from .. import functional as F
from .spectral_norm import SNEmbedding, SNLinear

__all__ = ["VanillaLoss", "LeastSquaresLoss", "HingeLoss", "WassersteinLoss", "LossSensitiveLoss",
           "DualContrastiveLoss", "MultiHingeLoss", "ProjectionHead"]


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
        self.lam, self.slope, self.gamma = lam, slope, gamma

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


class ProjectionHead(torch.nn.Module):
    """Projection discriminator output: linear(h) + <embed(y), h>, spectrally normalized by default
    (eps as StudioGAN's 1e-6)."""

    def __init__(self, in_features: int, num_classes: int, spectral_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        if spectral_norm:
            self.linear = SNLinear(in_features, 1, eps=eps)
            self.embed = SNEmbedding(num_classes, in_features, eps=eps)
        else:
            self.linear = torch.nn.Linear(in_features, 1)
            self.embed = torch.nn.Embedding(num_classes, in_features)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if h.dim() != 2:
            raise ValueError(f"h must be (N, features), got shape {tuple(h.shape)}")
        if y.shape != (h.shape[0],):
            raise ValueError(f"y must have shape ({h.shape[0]},), got {tuple(y.shape)}")
        return self.linear(h)[:, 0] + (self.embed(y) * h).sum(dim=1)
