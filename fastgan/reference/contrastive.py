"""Reference (specification) paths for the similarity and contrastive-loss family.

SPEC.md sections 1 to 5. Short, obviously correct PyTorch: every test and benchmark compares the
fused kernels against these functions. They materialize the N x M similarity matrix; the kernels
never do. All log-sum-exps are max-shifted (torch.logsumexp), so nothing overflows at small
temperatures. Half-precision inputs are computed in float32, float64 stays float64.
"""
from typing import Optional, Sequence

import torch

# Predicates of contrastive_lse: which columns j enter row i's log-sum-exp.
PRED_ALL = 0  # every admissible column
PRED_SAME = 1  # label_b[j] == label_a[i]
PRED_DIFF = 2  # label_b[j] != label_a[i]
PREDICATES = {"all": PRED_ALL, "same": PRED_SAME, "diff": PRED_DIFF}


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The mixed-precision policy of every op and loss: float64 if any input is float64, else
    float32 (half inputs, and half mixed with float32 as autocast produces them, in float32)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def normalize_rows(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / max(||x||_2, eps), per row: the convention of F.cosine_similarity and F.normalize."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def cosine_similarity_matrix(
    a: torch.Tensor, b: Optional[torch.Tensor] = None, scale: float = 1.0, eps: float = 1e-8
) -> torch.Tensor:
    """S = scale * nrm(a) @ nrm(b)^T, returned in a's dtype. b defaults to a."""
    b = a if b is None else b
    ct = compute_dtype(a.dtype, b.dtype)
    s = normalize_rows(a.to(ct), eps) @ normalize_rows(b.to(ct), eps).T
    return (scale * s).to(torch.promote_types(a.dtype, b.dtype))


def contrastive_lse(
    a: torch.Tensor,
    b: torch.Tensor,
    label_a: Optional[torch.Tensor] = None,
    label_b: Optional[torch.Tensor] = None,
    extra: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    bias: float = 0.0,
    relu: bool = False,
    normalize: bool = True,
    eps: float = 1e-8,
    exclude_self: bool = False,
    self_offset: int = 0,
    predicates: Sequence[int] = (PRED_ALL,),
):
    """The fused primitive's contract, written out with the full matrix.

    z_ij = scale * <a_i, b_j> + bias, where a and b are row-normalized (eps) if `normalize`.
    Column j is admissible for row i unless `exclude_self` and j == i + self_offset.
    For each predicate k (PRED_ALL / PRED_SAME / PRED_DIFF on the labels):
        lse[i, k] = log( exp(extra_i) [if extra given]
                         + sum_{j admissible, pred_k(i, j)} exp(f(z_ij)) ),   f = relu if `relu`
    (-inf for an empty set without extra), and
        rowmax[i] = max_{j admissible} z_ij  (before the relu; -inf if none).
    Returns (lse of shape (N, K), rowmax of shape (N,)), both float32 (float64 for float64 input).
    rowmax is a constant for autograd.
    """
    ct = compute_dtype(a.dtype, b.dtype)
    a32, b32 = a.to(ct), b.to(ct)
    if normalize:
        a32, b32 = normalize_rows(a32, eps), normalize_rows(b32, eps)
    z = scale * (a32 @ b32.T) + bias
    n, m = z.shape
    admissible = torch.ones(n, m, dtype=torch.bool, device=z.device)
    if exclude_self:
        rows = torch.arange(n, device=z.device)
        cols = rows + self_offset
        ok = (cols >= 0) & (cols < m)
        admissible[rows[ok], cols[ok]] = False
    neg_inf = torch.tensor(float("-inf"), dtype=ct, device=z.device)
    rowmax = torch.where(admissible, z, neg_inf).amax(dim=1) if m > 0 else torch.full((n,), float("-inf"), dtype=ct)
    fz = torch.relu(z) if relu else z
    out = []
    for p in predicates:
        if p == PRED_ALL:
            mask = admissible
        else:
            same = label_a.view(-1, 1) == label_b.view(1, -1)
            mask = admissible & (same if p == PRED_SAME else ~same)
        logits = torch.where(mask, fz, neg_inf)
        if extra is not None:
            logits = torch.cat([extra.to(ct).view(-1, 1), logits], dim=1)
        out.append(torch.logsumexp(logits, dim=1) if logits.shape[1] > 0 else neg_inf.expand(n))
    return torch.stack(out, dim=1), rowmax.detach()


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x), exact for every x: F.softplus returns x itself above its threshold of 20
    (a relative error of e^-x / x there, 1.5e-9 at x = 20 in float64), Mimicry's cross-entropy does not."""
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def _pair_cosine(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """cos(x_i, y_i) per row with the max(||.||, eps) convention."""
    return (normalize_rows(x, eps) * normalize_rows(y, eps)).sum(dim=1)


def conditional_contrastive_loss(
    embed: torch.Tensor,
    proxy: torch.Tensor,
    label: torch.Tensor,
    temperature: float = 1.0,
    eps: float = 1e-8,
    reduction: str = "mean",
) -> torch.Tensor:
    """ContraGAN's 2C loss (SPEC.md 2): L_i = LSE_all_i - LSE_pos_i, the diagonal excluded and the
    proxy logit p_i / t in both sets."""
    ct = compute_dtype(embed.dtype, proxy.dtype)
    e, p = embed.to(ct), proxy.to(ct)
    s = cosine_similarity_matrix(e, e, 1.0 / temperature, eps)
    n = e.shape[0]
    off_diag = ~torch.eye(n, dtype=torch.bool, device=e.device)
    same = (label.view(-1, 1) == label.view(1, -1)) & off_diag
    proxy_logit = (_pair_cosine(e, p, eps) / temperature).view(-1, 1)
    neg_inf = torch.tensor(float("-inf"), dtype=ct, device=e.device)
    lse_all = torch.logsumexp(torch.cat([proxy_logit, torch.where(off_diag, s, neg_inf)], 1), dim=1)
    lse_pos = torch.logsumexp(torch.cat([proxy_logit, torch.where(same, s, neg_inf)], 1), dim=1)
    return _reduce(lse_all - lse_pos, reduction)


def data2data_cross_entropy_loss(
    embed: torch.Tensor,
    proxy: torch.Tensor,
    label: torch.Tensor,
    temperature: float = 0.5,
    m_p: float = 0.98,
    eps: float = 1e-8,
    reduction: str = "mean",
) -> torch.Tensor:
    """ReACGAN's D2D-CE (SPEC.md 3), the public expression with its non-cancelling shift M_i:
        L_i = q_i + log(exp(-q_i) + sum_{j != i, y_j != y_i} exp(relu(a_ij) - M_i)),
    evaluated stably as q_i + logaddexp(-q_i, LSE_diff(relu(a_i.)) - M_i)."""
    ct = compute_dtype(embed.dtype, proxy.dtype)
    e, p = embed.to(ct), proxy.to(ct)
    n = e.shape[0]
    a = (cosine_similarity_matrix(e, e, 1.0, eps) + m_p - 1.0) / temperature
    off_diag = ~torch.eye(n, dtype=torch.bool, device=e.device)
    neg_inf = torch.tensor(float("-inf"), dtype=ct, device=e.device)
    m_i = torch.where(off_diag, a, neg_inf).amax(dim=1).detach() if n > 1 else torch.zeros(n, dtype=ct)
    diff = (label.view(-1, 1) != label.view(1, -1)) & off_diag
    lse_diff = torch.logsumexp(torch.where(diff, torch.relu(a), neg_inf), dim=1)
    q = torch.relu((m_p - _pair_cosine(e, p, eps)) / temperature)
    return _reduce(q + torch.logaddexp(-q, lse_diff - m_i), reduction)


def nt_xent_loss(z: torch.Tensor, temperature: float = 0.5, eps: float = 1e-8, reduction: str = "mean") -> torch.Tensor:
    """SimCLR's NT-Xent (SPEC.md 4). z is (2N, D): rows [0, N) are view 1, rows [N, 2N) view 2, and
    row i's positive is its other view, (i + N) mod 2N."""
    ct = compute_dtype(z.dtype)
    zz = z.to(ct)
    n2 = zz.shape[0]
    s = cosine_similarity_matrix(zz, zz, 1.0 / temperature, eps)
    idx = torch.arange(n2, device=z.device)
    pos = s[idx, (idx + n2 // 2) % n2]
    s = s.masked_fill(torch.eye(n2, dtype=torch.bool, device=z.device), float("-inf"))
    return _reduce(torch.logsumexp(s, dim=1) - pos, reduction)


def nt_xent_loss_labels(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.5, eps: float = 1e-8,
                        reduction: str = "mean") -> torch.Tensor:
    """NT-Xent as pytorch-metric-learning defines it (SPEC.md 4): rows sharing a label are views of
    one sample (any order, any number of views). One term per ordered positive pair (a, p), a != p:
        -log(e^{s_ap} / (e^{s_ap} + sum_{n: y_n != y_a} e^{s_an})) = softplus(NEG_a - s_ap),
    s = cos / t, NEG_a = LSE_{n: y_n != y_a} s_an (the other positives of a are not in it). The pairs
    in row-major order (anchor, then positive index); mean over all pairs, 0 without any pair."""
    ct = compute_dtype(z.dtype)
    zz = z.to(ct)
    n = zz.shape[0]
    s = cosine_similarity_matrix(zz, zz, 1.0 / temperature, eps)
    same = labels.view(-1, 1) == labels.view(1, -1)
    pos = same & ~torch.eye(n, dtype=torch.bool, device=z.device)
    neg_inf = torch.tensor(float("-inf"), dtype=ct, device=z.device)
    has_neg = (~same).any(dim=1)
    # A row without negatives: NEG = -inf and its terms are softplus(-inf) = 0. Its logsumexp runs
    # over zeros instead: the backward of a logsumexp over an empty set is NaN, even times 0.
    logits = torch.where(~same, s, neg_inf).masked_fill(~has_neg[:, None], 0.0)
    neg = torch.where(has_neg, torch.logsumexp(logits, dim=1), neg_inf)
    a_idx, p_idx = pos.nonzero(as_tuple=True)
    per = softplus(neg[a_idx] - s[a_idx, p_idx])
    if reduction == "mean":
        return per.sum() / max(per.numel(), 1)
    return _reduce(per, reduction)


def supcon_loss(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, eps: float = 1e-8, reduction: str = "mean"
) -> torch.Tensor:
    """SupCon, the L_out form (SPEC.md 4): L_i = -(1/|P(i)|) sum_{p in P(i)} (s_ip - LSE_{a != i} s_ia),
    P(i) = {p != i : y_p == y_i}. Anchors with empty P(i) are left out of the mean (and are 0 in
    reduction='none')."""
    ct = compute_dtype(features.dtype)
    f = features.to(ct)
    n = f.shape[0]
    s = cosine_similarity_matrix(f, f, 1.0 / temperature, eps)
    off_diag = ~torch.eye(n, dtype=torch.bool, device=f.device)
    pos = (labels.view(-1, 1) == labels.view(1, -1)) & off_diag
    lse = torch.logsumexp(s.masked_fill(~off_diag, float("-inf")), dim=1)
    n_pos = pos.sum(dim=1)
    has_pos = n_pos > 0
    mean_pos = (s * pos).sum(dim=1) / n_pos.clamp_min(1)
    per = torch.where(has_pos, lse - mean_pos, torch.zeros_like(lse))
    if reduction == "mean":
        return per.sum() / has_pos.sum().clamp_min(1)
    return _reduce(per, reduction)


def symmetric_infonce_loss(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1, eps: float = 1e-12, reduction: str = "mean"
) -> torch.Tensor:
    """CLIP-style symmetric InfoNCE (SPEC.md 5): CE(logits, arange) + CE(logits^T, arange), the two
    means summed. Rows normalized as x * rsqrt(max(sum x^2, eps)) (XMC-GAN), i.e. eps on the squared
    norm. reduction='none' returns the per-pair sum of the two cross-entropies."""
    ct = compute_dtype(a.dtype, b.dtype)
    aa, bb = a.to(ct), b.to(ct)
    an = aa * torch.rsqrt((aa * aa).sum(dim=1, keepdim=True).clamp_min(eps))
    bn = bb * torch.rsqrt((bb * bb).sum(dim=1, keepdim=True).clamp_min(eps))
    logits = an @ bn.T / temperature
    diag = logits.diagonal()
    per = (torch.logsumexp(logits, dim=1) - diag) + (torch.logsumexp(logits, dim=0) - diag)
    return _reduce(per, reduction)
