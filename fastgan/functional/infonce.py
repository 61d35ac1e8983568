"""InfoMax-GAN's InfoNCE over local x global features, docs/semantics.md section 6.

The negative term NEG_i does not depend on the local position k, so the fused path needs one
log-sum-exp per image. Single process: the dedicated op fastgan::infonce_lse (fastgan/ops/infonce_lse.py)
returns pos (N, HW) and NEG (N,) reading l in place with its strides (a channels-last map is not
copied); memory O(N * HW) beside the inputs and gradients, against Mimicry's (N, HW, 1 + N*HW)
candidate tensor, plus on the CPU the (N, N, HW) scores kept for the backward where they fit the score
budget (fastgan.ops.contrastive_lse.set_score_budget; the backward then skips their recompute). Distributed (process_group given): contrastive_lse
with a = m (N, R), b = the local features as N*HW rows of size R, label_b[j*HW + k] = j, predicate
"different image", and (Mimicry mode) the constant self block HW * e^-10 folded in as one extra logit
log(HW) - 10 per row; positives by a batched dot product in plain autograd.
"""
import math

import torch

from .. import _checks as C
from ..backend import resolve_backend
from .contrastive import _columns, _finish
from ..ops.contrastive_lse import contrastive_lse
from ..ops.infonce_lse import infonce_lse
from ..reference import infonce as ref
from ..reference.contrastive import PRED_DIFF, _reduce as reduce, compute_dtype, normalize_rows

__all__ = ["infonce_local_global"]


def _check_local_global(l, m):
    C.check_tensor(l, "l", ndim=(3, 4))
    C.check_tensor(m, "m", ndim=(2, 3))
    C.check_same_device(l=l, m=m)
    if m.dim() == 3 and m.shape[2] != 1:
        raise ValueError(f"m of shape (N, R, 1) expected (one global vector per image), got {tuple(m.shape)}")
    if l.shape[0] != m.shape[0]:
        raise ValueError(f"l and m must have the same batch size, got {l.shape[0]} and {m.shape[0]}")
    if l.shape[1] != m.shape[1]:
        raise ValueError(f"l and m must have the same feature size R (dim 1), got {l.shape[1]} and {m.shape[1]}")
    C.check_nonempty(l, "l")
    l, m = C.promote(*ref.as_local_global(l, m))  # mixed precision: one kernel, one dtype
    if l.shape[2] == 0:
        raise ValueError(f"l has no local positions (HW = 0), shape {tuple(l.shape)}")
    return l, m


@C.autocast_off
def infonce_local_global(
    l: torch.Tensor,
    m: torch.Tensor,
    *,
    mode: str = "mimicry",
    temperature: float = 1.0,
    normalize: bool = False,
    eps: float = 1e-12,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    gradient: str = "exact",
) -> torch.Tensor:
    """loss = mean_{i,k} softplus(NEG_i - pos_ik) (exact: log(1 + e^x) for every x) with
    pos_ik = m_i . l_i[:, k] and
    NEG_i = log(sum_{j!=i, k'} exp(m_i . l_j[:, k']) [+ HW e^-10 in mode="mimicry"]).

    l: local features (N, R, HW) (Mimicry) or (N, R, H, W); m: global features (N, R, 1) or (N, R).
    mode: "mimicry" (default; image i's own block as the constant logit -10, as Mimicry) or "exact"
    (own block removed). temperature divides the scores (not the -10 constant); normalize
    L2-normalizes both sides over R. reduction="none" returns the (N, HW) terms.
    process_group: take the negatives from the global batch of a torch.distributed group (each rank
    its own images against every rank's local features); `gradient` "exact" or "studiogan" as in
    fastgan.distributed. l and m may differ in dtype (promoted; computed in float32, or float64)."""
    l, m = _check_local_global(l, m)
    if mode not in ref.MODES:
        raise ValueError(f"mode must be one of {ref.MODES}, got {mode!r}")
    t = C.check_positive_finite(temperature, "temperature")
    eps = C.check_positive_finite(eps, "eps")
    C.check_reduction(reduction)
    be = resolve_backend(backend, l.device)
    if be == "reference" and process_group is None:
        return ref.infonce_local_global(l, m, mode, t, normalize, eps, reduction)
    if process_group is None:
        self_logit = ref.MIMICRY_SELF_LOGIT if mode == "mimicry" else None
        pos, neg = infonce_lse(l, m, 1.0 / t, self_logit, normalize, eps, be)
        return reduce(ref.softplus(neg[:, None] - pos), reduction)
    n, r, hw = l.shape
    ct = compute_dtype(l.dtype)
    # (N*HW, R) rows; a copy only when the map is not already position-major (channels-last).
    local_rows, _, layout, group = _columns(l.transpose(1, 2).reshape(n * hw, r), None, process_group, gradient)
    offset = layout.offset // hw if layout else 0
    image = torch.arange(offset, offset + n, device=l.device)
    col_image = torch.arange(local_rows.shape[0] // hw, device=l.device).repeat_interleave(hw)
    extra = None
    if mode == "mimicry":
        extra = torch.full((n,), ref.MIMICRY_SELF_LOGIT + math.log(hw), dtype=ct, device=l.device)
    neg, _ = contrastive_lse(m, local_rows, image, col_image, extra, 1.0 / t, 0.0, False,
                             normalize, eps, False, 0, [PRED_DIFF], be)
    lc, mc = l.to(ct), m.to(ct)
    if normalize:
        lc = normalize_rows(lc.transpose(1, 2), eps).transpose(1, 2)
        mc = normalize_rows(mc, eps)
    pos = torch.einsum("nr,nrk->nk", mc, lc) / t
    per = ref.softplus(neg[:, :1] - pos)
    if layout is not None:
        if reduction == "none":
            return per
        return _finish(per.reshape(-1), reduction, layout, group, gradient)  # mean over all N_global * HW
    return reduce(per, reduction)
