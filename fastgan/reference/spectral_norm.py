"""Reference (specification) of spectral normalization's power iteration, docs/semantics.md section 7.

Two PyTorch orders, both with nrm(x) = x / max(||x||, eps) (F.normalize):
  "hook"            torch.nn.utils.spectral_norm:                 v = nrm(W^T u), then u = nrm(W v)
  "parametrization" torch.nn.utils.parametrizations.spectral_norm: u = nrm(W v), then v = nrm(W^T u)
sigma = u^T W v with the final u, v (constants for autograd), and the layer uses W / sigma.
"""
import torch
import torch.nn.functional as F

ORDERS = ("hook", "parametrization")


def weight_to_matrix(weight: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """W as a matrix: `dim` first (1 for ConvTranspose), the rest flattened."""
    if dim != 0:
        weight = weight.permute(dim, *[d for d in range(weight.dim()) if d != dim])
    return weight.reshape(weight.shape[0], -1)


@torch.no_grad()
def power_iteration_(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int,
                     eps: float, order: str = "hook") -> None:
    """Update u and v in place (as PyTorch does, so replicas and buffers see the update)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    for _ in range(n_power_iterations):
        if order == "hook":
            F.normalize(torch.mv(weight_mat.t(), u), dim=0, eps=eps, out=v)
            F.normalize(torch.mv(weight_mat, v), dim=0, eps=eps, out=u)
        else:
            F.normalize(torch.mv(weight_mat, v), dim=0, eps=eps, out=u)
            F.normalize(torch.mv(weight_mat.t(), u), dim=0, eps=eps, out=v)


def sigma(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """u^T W v: differentiable in W; u, v are constants."""
    return torch.dot(u, torch.mv(weight_mat, v))


def spectral_normalize(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int, eps: float,
                       order: str = "hook", dim: int = 0, training: bool = True) -> torch.Tensor:
    """W / sigma after n power iterations (training) or with the stored u, v (eval). u and v are
    updated in place in training mode, then cloned, so two forwards can share one backward."""
    weight_mat = weight_to_matrix(weight, dim)
    if training and n_power_iterations > 0:
        power_iteration_(weight_mat.detach(), u, v, n_power_iterations, eps, order)
        u = u.clone(memory_format=torch.contiguous_format)
        v = v.clone(memory_format=torch.contiguous_format)
    return weight / sigma(weight_mat, u, v)
