"""Reference (specification) path for InfoMax-GAN's InfoNCE over local x global features.

SPEC.md section 6. Scores are dot products between each image's global feature m_i and every local
feature l_j[:, k] of the batch. For image i at position k:
    pos_ik = m_i . l_i[:, k]
    NEG_i  = log( sum_{j != i, k'} exp(m_i . l_j[:, k']) + [mimicry] HW * exp(-10) )
    loss   = mean_{i,k} softplus(NEG_i - pos_ik)
mode="mimicry" keeps image i's own block as the constant logit -10 (Mimicry's shift); mode="exact"
removes it. Optional extras (off by default, not in Mimicry): scores divided by `temperature`
(the -10 constant is a logit and is not divided), and L2 normalization of both sides (eps).
"""
import math

import torch

from .contrastive import _reduce as reduce, compute_dtype, normalize_rows, softplus

MIMICRY_SELF_LOGIT = -10.0
MODES = ("mimicry", "exact")


def as_local_global(l: torch.Tensor, m: torch.Tensor):
    """Accept Mimicry's (N, R, HW) with (N, R, 1), or (N, R, H, W) with (N, R); return views of
    shape (N, R, HW) and (N, R)."""
    if l.dim() == 4:
        l = l.flatten(2)
    if m.dim() == 3:
        m = m.squeeze(2)
    return l, m


def infonce_local_global(
    l: torch.Tensor,
    m: torch.Tensor,
    mode: str = "mimicry",
    temperature: float = 1.0,
    normalize: bool = False,
    eps: float = 1e-12,
    reduction: str = "mean",
) -> torch.Tensor:
    """reduction='none' returns the (N, HW) matrix of softplus(NEG_i - pos_ik)."""
    l, m = as_local_global(l, m)
    ct = compute_dtype(l.dtype, m.dtype)
    l, m = l.to(ct), m.to(ct)
    n, _, hw = l.shape
    if normalize:
        l = normalize_rows(l.transpose(1, 2), eps).transpose(1, 2)
        m = normalize_rows(m, eps)
    scores = torch.einsum("ir,jrk->ijk", m, l) / temperature  # (N, N, HW)
    pos = scores[torch.arange(n), torch.arange(n)]  # (N, HW)
    others = ~torch.eye(n, dtype=torch.bool, device=l.device)
    neg_scores = scores.masked_fill(~others[:, :, None], float("-inf")).reshape(n, n * hw)
    if mode == "mimicry":
        const = torch.full((n, 1), MIMICRY_SELF_LOGIT + math.log(hw), dtype=ct, device=l.device)
        neg_scores = torch.cat([neg_scores, const], dim=1)
    neg = torch.logsumexp(neg_scores, dim=1)  # (N,)
    per = softplus(neg[:, None] - pos)
    return reduce(per, reduction)


def infonce_lse(l: torch.Tensor, m: torch.Tensor, scale: float, self_logit, normalize: bool, eps: float):
    """The contract of the fused op fastgan::infonce_lse (pure PyTorch, materializes (N, N, HW)).

    l (N, R, HW) and m (N, R), any strides. With x^ = x / max(||x||, eps) over R when `normalize`
    (else x) and S[i, j, k] = scale * <m^_i, l^_j[:, k]>:
        pos[i, k] = S[i, i, k]                                                        (N, HW)
        neg[i]    = log( sum_{j != i, k} exp(S[i, j, k]) [+ HW * exp(self_logit)] )   (N,)
    self_logit=None removes image i's own block (exact); Mimicry's mode is self_logit=-10 (a logit,
    not multiplied by scale). neg is -inf when the sum is empty (N = 1, exact). Both in float64 for
    float64 inputs, float32 otherwise. Differentiable in l and m by autograd."""
    ct = compute_dtype(l.dtype, m.dtype)
    l, m = l.to(ct), m.to(ct)
    n, _, hw = l.shape
    if normalize:
        l = normalize_rows(l.transpose(1, 2), eps).transpose(1, 2)
        m = normalize_rows(m, eps)
    scores = torch.einsum("ir,jrk->ijk", m, l) * scale  # (N, N, HW)
    pos = scores[torch.arange(n), torch.arange(n)]
    own = torch.eye(n, dtype=torch.bool, device=l.device)[:, :, None]
    neg_scores = scores.masked_fill(own, float("-inf")).reshape(n, n * hw)
    if self_logit is not None:
        const = torch.full((n, 1), float(self_logit) + math.log(hw), dtype=ct, device=l.device)
        neg_scores = torch.cat([neg_scores, const], dim=1)
    return pos, torch.logsumexp(neg_scores, dim=1)
