"""InfoMax-GAN's InfoNCE over local x global discriminator features, as a module."""
import torch

from .. import functional as F

__all__ = ["InfoNCELocalGlobal"]


class InfoNCELocalGlobal(torch.nn.Module):
    """forward(l, m): Mimicry's `infonce_loss(l, m)` with l (N, R, HW) and m (N, R, 1), or l (N, R, H, W)
    and m (N, R). mode="mimicry" (default, Mimicry's -10 self block) or "exact"."""

    def __init__(self, mode: str = "mimicry", temperature: float = 1.0, normalize: bool = False, *,
                 eps: float = 1e-12, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        self.mode, self.temperature, self.normalize, self.eps = mode, temperature, normalize, eps
        self.reduction, self.backend = reduction, backend

    def forward(self, l: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return F.infonce_local_global(l, m, mode=self.mode, temperature=self.temperature, normalize=self.normalize,
                                      eps=self.eps, reduction=self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, temperature={self.temperature}, normalize={self.normalize}, backend={self.backend!r}"
