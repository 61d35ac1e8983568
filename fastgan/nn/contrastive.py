"""Drop-in loss modules for the contrastive family. The 2C and D2D-CE modules take StudioGAN's
constructor and call signatures (`ConditionalContrastiveLoss(num_classes, temperature, master_rank,
DDP)`, `forward(embed, proxy, label)`), so swapping them in is a one-line change."""
from typing import Optional

import torch

from .. import functional as F

__all__ = [
    "ConditionalContrastiveLoss",
    "Data2DataCrossEntropyLoss",
    "NTXentLoss",
    "SupConLoss",
    "SymmetricInfoNCELoss",
]


class _StudioGANLoss(torch.nn.Module):
    def __init__(self, num_classes, DDP, gradient, eps, reduction, check_labels, backend):
        super().__init__()
        self.num_classes, self.eps, self.reduction = int(num_classes), eps, reduction
        self.check_labels, self.backend = check_labels, backend
        # DDP=True: the global batch of the default process group, every rank its own rows against
        # the gathered columns; gradient "studiogan" reproduces StudioGAN's GatherLayer by default.
        self.process_group, self.gradient = (True if DDP else None), gradient

    def _kw(self):
        return dict(eps=self.eps, reduction=self.reduction, num_classes=self.num_classes if self.check_labels else None,
                    backend=self.backend, process_group=self.process_group, gradient=self.gradient)


class ConditionalContrastiveLoss(_StudioGANLoss):
    """ContraGAN's 2C loss (StudioGAN `ConditionalContrastiveLoss`). `master_rank` is accepted for
    signature compatibility; the loss runs on the inputs' device. DDP=True takes the loss over the
    global batch (fastgan.distributed) with StudioGAN's gradient semantics unless `gradient="exact"`."""

    def __init__(self, num_classes: int, temperature: float = 1.0, master_rank=None, DDP: bool = False, *,
                 gradient: str = "studiogan", eps: float = 1e-8, reduction: str = "mean", check_labels: bool = True,
                 backend: str = "auto"):
        super().__init__(num_classes, DDP, gradient, eps, reduction, check_labels, backend)
        self.temperature = temperature

    def forward(self, embed: torch.Tensor, proxy: torch.Tensor, label: torch.Tensor, **_) -> torch.Tensor:
        return F.conditional_contrastive_loss(embed, proxy, label, self.temperature, **self._kw())

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, temperature={self.temperature}, backend={self.backend!r}"


class Data2DataCrossEntropyLoss(_StudioGANLoss):
    """ReACGAN's D2D-CE (StudioGAN `Data2DataCrossEntropyLoss(num_classes, temperature, m_p, master_rank, DDP)`);
    DDP as ConditionalContrastiveLoss."""

    def __init__(self, num_classes: int, temperature: float = 0.5, m_p: float = 0.98, master_rank=None,
                 DDP: bool = False, *, gradient: str = "studiogan", eps: float = 1e-8, reduction: str = "mean",
                 check_labels: bool = True, backend: str = "auto"):
        super().__init__(num_classes, DDP, gradient, eps, reduction, check_labels, backend)
        self.temperature, self.m_p = temperature, m_p

    def forward(self, embed: torch.Tensor, proxy: torch.Tensor, label: torch.Tensor, **_) -> torch.Tensor:
        return F.data2data_cross_entropy_loss(embed, proxy, label, self.temperature, self.m_p, **self._kw())

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, temperature={self.temperature}, m_p={self.m_p}, backend={self.backend!r}"


class NTXentLoss(torch.nn.Module):
    """SimCLR's NT-Xent (fastgan.functional.nt_xent_loss). forward(z) with z = cat([view1, view2]) of
    shape (2N, D); forward(z1, z2); or pytorch-metric-learning's forward(embeddings, labels): rows with
    one label are views of one sample, any order, any number of views (one term per ordered positive
    pair, mean over the pairs). The temperature defaults to SimCLR's 0.5; PML's default is 0.07, so
    pass NTXentLoss(0.07) to replace PML's NTXentLoss() unchanged."""

    def __init__(self, temperature: float = 0.5, *, eps: float = 1e-8, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        self.temperature, self.eps, self.reduction, self.backend = temperature, eps, reduction, backend

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if labels is not None and not isinstance(labels, torch.Tensor):
            raise TypeError(f"NTXentLoss: the second argument must be integer labels (N,) or the second view (N, D) "
                            f"as a tensor, got {type(labels).__name__}")
        return F.nt_xent_loss(z, labels, temperature=self.temperature, eps=self.eps, reduction=self.reduction,
                              backend=self.backend)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, backend={self.backend!r}"


class SupConLoss(torch.nn.Module):
    """Supervised contrastive loss (L_out). forward(features (N, D), labels (N,))."""

    def __init__(self, temperature: float = 0.1, *, eps: float = 1e-8, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        self.temperature, self.eps, self.reduction, self.backend = temperature, eps, reduction, backend

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.supcon_loss(features, labels, self.temperature, eps=self.eps, reduction=self.reduction,
                             backend=self.backend)


class SymmetricInfoNCELoss(torch.nn.Module):
    """CLIP-style symmetric InfoNCE (XMC-GAN sentence-image and image-image contrast, t = 0.1)."""

    def __init__(self, temperature: float = 0.1, *, eps: float = 1e-12, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        self.temperature, self.eps, self.reduction, self.backend = temperature, eps, reduction, backend

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.symmetric_infonce_loss(a, b, self.temperature, eps=self.eps, reduction=self.reduction,
                                        backend=self.backend)
