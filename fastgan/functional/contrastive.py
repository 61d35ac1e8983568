"""Similarity and contrastive losses: cosine similarity matrix, 2C, D2D-CE, NT-Xent, SupCon and the
symmetric (CLIP-style) InfoNCE. docs/semantics.md sections 1 to 5.

Each loss is "fused log-sum-exp kernel + positive term in plain autograd": the N x N part runs in
the contrastive_lse kernel (never materialized), the O(N D) positive terms are ordinary PyTorch; on
the Triton backend the positive logits and the final combination with the mean are Triton ops too
(fastgan/ops/loss_terms.py: one launch each way), so a loss step is a short fixed chain of launches.
On the "cpu" backend without a process group 2C, D2D-CE, NT-Xent (stacked) and SupCon are instead one
op each way (fastgan::contrastive_loss, the same kernels from C++): at small N the composition's
per-op overhead is most of the time.
Mixed precision (docs/semantics.md "Mixed precision"), one policy for every loss: inputs may have different
float dtypes (under torch.autocast a projection is bfloat16/float16 while an nn.Embedding proxy stays
float32); two inputs of one kernel are promoted as PyTorch would (torch.promote_types), everything is
computed in float32 (float64 if any input is float64) and the loss is returned in that dtype. Each loss
runs with autocast disabled (reference.contrastive.compute_dtype, _checks.autocast_off), as PyTorch's
own losses do.
"""
import math
from typing import Optional

import torch

from .. import _checks as C
from .. import distributed as D
from ..backend import resolve_backend
from ..ops.contrastive_loss import contrastive_loss
from ..ops.contrastive_lse import contrastive_lse, contrastive_lse_both, pair_cosine
from ..ops.cosine_similarity_matrix import cosine_similarity_matrix as _cosine_similarity_matrix
from ..ops import loss_terms as T
from ..reference import contrastive as ref
from ..reference.contrastive import PRED_ALL, PRED_DIFF, PRED_SAME, compute_dtype, normalize_rows

__all__ = [
    "cosine_similarity_matrix",
    "conditional_contrastive_loss",
    "data2data_cross_entropy_loss",
    "nt_xent_loss",
    "supcon_loss",
    "symmetric_infonce_loss",
]


def _features(x, name: str, n: Optional[int] = None) -> torch.Tensor:
    C.check_tensor(x, name, ndim=2)
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} rows but the batch has {n}: batch sizes must match")
    return x


def _same_features(first: str, x: torch.Tensor, second: str, y: torch.Tensor) -> None:
    """Same feature size and device; dtypes may differ (mixed precision: promoted by the caller)."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{first} and {second} must have the same feature size, got {x.shape[1]} and {y.shape[1]}")
    C.check_same_device(**{first: x, second: y})


def _pair_cosine(x: torch.Tensor, y: torch.Tensor, eps: float, backend: Optional[str] = None, t: float = 1.0,
                 shift: int = 0) -> torch.Tensor:
    """cos(x_i, y_{(i + shift) mod N}) / t (the positive logits), each norm clamped at eps, as
    normalize_rows(x) . normalize_rows(y), but as (x_i . y_i) / (max(||x_i||, eps) max(||y_i||, eps)):
    its backward makes about three passes over N x D instead of ten (2.1 ms against 4.9 ms forward +
    backward at N=1024, D=768 on 2 cores). Computed in float32 (float64 if either side is float64)
    whatever the two dtypes. On the "cpu", "cuda" and "triton" backends one fused kernel each way with
    the scale 1/t and the shift inside it (fastgan::pair_cosine, fastgan::pair_cosine_triton: two ops
    instead of about twenty with autograd, most of a small batch's cost; no division and no rolled
    copy of y); CUDA float64 keeps the ATen form."""
    if backend == "triton":
        return T.pair_cosine(x, y, eps, 1.0 / t, shift)
    if (backend == "cpu" and x.device.type == "cpu") or (backend == "cuda" and torch.float64 not in (x.dtype, y.dtype)):
        return pair_cosine(x, y, eps, 1.0 / t, shift)  # the CUDA kernel: one launch each way (float64 stays ATen)
    if shift:
        y = y.roll(-shift, dims=0)
    ct = compute_dtype(x.dtype, y.dtype)
    x, y = x.to(ct), y.to(ct)
    cos = (x * y).sum(dim=1) / (x.norm(dim=1).clamp_min(eps) * y.norm(dim=1).clamp_min(eps))
    return cos / t if t != 1.0 else cos


def _fused_mean(layout, reduction, backend):
    """The loss's reduction as one launch each way (lse_combine) instead of ATen selects,
    subtractions and a mean with their autograd: the single-process Triton and CUDA paths, mean or sum."""
    return backend in ("triton", "cuda") and layout is None and reduction in ("mean", "sum")


def _whole_loss_op(backend: str, x: torch.Tensor, process_group) -> bool:
    """Whether a loss runs as one fused op each way (fastgan::contrastive_loss): the "cpu" backend
    without a process group. At small N most of the composition's time is per-op overhead."""
    return backend == "cpu" and process_group is None and x.device.type == "cpu"


def _columns(x, labels, process_group, gradient):
    """The column set: this rank's tensors, or the gathered global batch (see fastgan.distributed)."""
    if process_group is None:
        return x, labels, None, None
    group = D.check_group(process_group, gradient)
    cols, layout = D.gather(x, group)
    return cols, (D.gather(labels, group, layout)[0] if labels is not None else None), layout, group


def _finish(per, reduction, layout, group, gradient, count=None):
    """Reduce the per-row losses: locally, or to the global-batch value on every rank. `count` is
    the number of rows the mean divides by (default: all rows)."""
    if layout is None:
        if reduction == "mean" and count is not None:
            return per.sum() / count.clamp_min(1)
        return ref._reduce(per, reduction)
    if reduction == "none":
        return per  # this rank's rows
    if reduction == "sum":
        return D.global_mean(per.sum(), 1, group, gradient, layout.world)
    if count is None:
        denominator = layout.total
    else:
        denominator = count.detach().clone().to(per.dtype)
        torch.distributed.all_reduce(denominator, group=group)
        denominator = denominator.clamp_min(1)
    return D.global_mean(per.sum(), denominator, group, gradient, layout.world)


DISTRIBUTED_DOC = """
    process_group: None (this rank's batch only), or a torch.distributed process group (True for the
    default group): the loss is taken over the global batch, each rank computing its own rows against
    the gathered columns; `gradient` is "exact" or "studiogan" (see fastgan.distributed). With
    reduction="none" the local rows' terms are returned."""


@C.autocast_off
def cosine_similarity_matrix(
    a: torch.Tensor, b: Optional[torch.Tensor] = None, *, scale: float = 1.0, eps: float = 1e-8, backend: str = "auto"
) -> torch.Tensor:
    """S = scale * nrm(a) @ nrm(b)^T with nrm(x) = x / max(||x||, eps); b defaults to a.
    Normalization, product and scale are one kernel; zero rows give zero rows, never NaN."""
    _features(a, "a")
    if b is None:
        b = a
    _features(b, "b")
    _same_features("a", a, "b", b)
    scale = C.check_finite(scale, "scale")
    eps = C.check_positive_finite(eps, "eps")
    a, b = C.promote(a, b)  # one kernel: one dtype (bfloat16 with float32 -> float32, as a @ b would)
    return _cosine_similarity_matrix(a, b, scale, eps, resolve_backend(backend, a.device))


def _check_embed_proxy_label(embed, proxy, label, num_classes=None):
    """Checked (embed, label). A float64 proxy makes the loss float64: embed then enters the kernel
    in float64 too (a half or float32 embed with a float32 proxy stays as it is: the kernel
    computes in float32 from any dtype)."""
    _features(embed, "embed")
    C.check_nonempty(embed, "embed")
    _features(proxy, "proxy", embed.shape[0])
    _same_features("embed", embed, "proxy", proxy)
    label = C.check_labels(label, "label", embed.shape[0], embed.device, num_classes)
    return embed.to(compute_dtype(embed.dtype, proxy.dtype)) if proxy.dtype == torch.float64 else embed, label


@C.autocast_off
def conditional_contrastive_loss(
    embed: torch.Tensor,
    proxy: torch.Tensor,
    label: torch.Tensor,
    temperature: float = 1.0,
    *,
    eps: float = 1e-8,
    reduction: str = "mean",
    num_classes: Optional[int] = None,
    backend: str = "auto",
    process_group=None,
    gradient: str = "exact",
) -> torch.Tensor:
    """ContraGAN's conditional contrastive (2C) loss, docs/semantics.md section 2:
        L_i = -log( (e^{p_i/t} + sum_{j!=i, y_j=y_i} e^{s_ij/t}) / (e^{p_i/t} + sum_{j!=i} e^{s_ij/t}) )
    with s_ij = cos(embed_i, embed_j), p_i = cos(embed_i, proxy_i). Stable at any temperature.
    embed and proxy may differ in dtype (autocast: a half projection, a float32 nn.Embedding proxy):
    computed in float32 (float64 if either is), the loss returned in that dtype.
    `num_classes`, if given, checks that labels lie in [0, num_classes) (CPU tensors; CUDA tensors
    only in debug mode, fastgan.set_debug, since there the check costs a host sync)."""
    embed, label = _check_embed_proxy_label(embed, proxy, label, num_classes)
    t = C.check_positive_finite(temperature, "temperature")
    eps = C.check_positive_finite(eps, "eps")
    C.check_reduction(reduction)
    be = resolve_backend(backend, embed.device)
    if be == "reference" and process_group is None:
        return ref.conditional_contrastive_loss(embed, proxy, label, t, eps, reduction)
    if _whole_loss_op(be, embed, process_group):
        return contrastive_loss(embed, proxy, label, "2c", t, 0.0, eps, reduction)
    cols, col_label, layout, group = _columns(embed, label, process_group, gradient)
    extra = _pair_cosine(embed, proxy, eps, be, t)
    lse, _ = contrastive_lse(embed, cols, label, col_label, extra, 1.0 / t, 0.0, False, True, eps, True,
                             layout.offset if layout else 0, [PRED_ALL, PRED_SAME], be)
    if _fused_mean(layout, reduction, be):
        return T.lse_combine(lse, [1.0, -1.0], scale=1.0 / lse.shape[0] if reduction == "mean" else 1.0, backend=be)
    return _finish(lse[:, 0] - lse[:, 1], reduction, layout, group, gradient)


@C.autocast_off
def data2data_cross_entropy_loss(
    embed: torch.Tensor,
    proxy: torch.Tensor,
    label: torch.Tensor,
    temperature: float = 0.5,
    m_p: float = 0.98,
    *,
    eps: float = 1e-8,
    reduction: str = "mean",
    num_classes: Optional[int] = None,
    backend: str = "auto",
    process_group=None,
    gradient: str = "exact",
) -> torch.Tensor:
    """ReACGAN's data-to-data cross-entropy (D2D-CE), docs/semantics.md section 3, the public expression with its
    quirks: a_ij = (s_ij + m_p - 1)/t, M_i = max_{j!=i} a_ij (both classes, before the relu, constant
    in backward), q_i = relu((m_p - p_i)/t),
        L_i = q_i + log( e^{-q_i} + sum_{j!=i, y_j!=y_i} e^{relu(a_ij) - M_i} ).
    Evaluated stably as q_i + logaddexp(-q_i, LSE_diff(relu(a_i.)) - M_i)."""
    embed, label = _check_embed_proxy_label(embed, proxy, label, num_classes)
    t = C.check_positive_finite(temperature, "temperature")
    m_p = C.check_finite(m_p, "m_p")
    eps = C.check_positive_finite(eps, "eps")
    C.check_reduction(reduction)
    be = resolve_backend(backend, embed.device)
    if be == "reference" and process_group is None:
        return ref.data2data_cross_entropy_loss(embed, proxy, label, t, m_p, eps, reduction)
    if _whole_loss_op(be, embed, process_group):
        return contrastive_loss(embed, proxy, label, "d2d", t, m_p, eps, reduction)
    cols, col_label, layout, group = _columns(embed, label, process_group, gradient)
    lse, rowmax = contrastive_lse(embed, cols, label, col_label, None, 1.0 / t, (m_p - 1.0) / t, True, True, eps,
                                  True, layout.offset if layout else 0, [PRED_DIFF], be)
    if _fused_mean(layout, reduction, be):
        return T.d2d_epilogue(lse, rowmax, _pair_cosine(embed, proxy, eps, be), m_p, t,
                              1.0 / lse.shape[0] if reduction == "mean" else 1.0, backend=be)
    # N = 1 has no j != i: M_i is taken as 0 (the set is empty and the term vanishes anyway).
    m_i = torch.where(torch.isfinite(rowmax), rowmax, torch.zeros_like(rowmax))
    q = torch.relu((m_p - _pair_cosine(embed, proxy, eps, be)) / t)
    return _finish(q + torch.logaddexp(-q, lse[:, 0] - m_i), reduction, layout, group, gradient)


_UNSET = object()  # temperature's default, told apart from a temperature passed twice


def _nt_xent_args(z, labels, temperature):
    """Sort out nt_xent_loss's second argument: labels (PML's `loss(embeddings, labels)`), the second
    view (`loss(z1, z2)`), or, as before labels existed, the temperature (`loss(z, 0.5)`)."""
    _features(z, "z")
    C.check_nonempty(z, "z")
    as_temperature = False
    if labels is None:
        pass
    elif not isinstance(labels, torch.Tensor):
        if isinstance(labels, bool) or not isinstance(labels, (int, float)):
            raise TypeError(f"labels must be a torch.Tensor of integer labels (N,) or the second view (N, D), got "
                            f"{type(labels).__name__}")
        as_temperature = True
    elif labels.is_floating_point() and labels.dim() < 2 and labels.numel() == 1:
        as_temperature = True
    if as_temperature:
        if temperature is not _UNSET:
            raise TypeError(f"nt_xent_loss got the temperature twice: {labels!r} as its second argument and "
                            f"temperature={temperature!r}; the second argument is labels (N,) or the second view "
                            "(N, D)")
        return z, None, labels  # nt_xent_loss(z, 0.5): the positional temperature of the stacked form
    if labels is None:
        pass
    elif labels.is_floating_point():
        if labels.dim() != 2:
            raise ValueError(f"the second argument of nt_xent_loss must be integer labels (N,) or the second view "
                             f"(N, D) as a float tensor, got a float tensor of shape {tuple(labels.shape)}")
        z2 = labels
        _features(z2, "z2", z.shape[0])
        _same_features("z", z, "z2", z2)
        return torch.cat(C.promote(z, z2), dim=0), None, 0.5 if temperature is _UNSET else temperature
    t = 0.5 if temperature is _UNSET else temperature
    if labels is None:
        return z, None, t
    return z, C.check_labels(labels, "labels", z.shape[0], z.device), t


@C.autocast_off
def nt_xent_loss(
    z: torch.Tensor, labels=None, temperature: float = _UNSET, *, eps: float = 1e-8, reduction: str = "mean",
    backend: str = "auto", process_group=None, gradient: str = "exact",
) -> torch.Tensor:
    """SimCLR's NT-Xent, docs/semantics.md section 4, in three call forms (temperature 0.5 by default):
      nt_xent_loss(z)           z (2N, D) = cat([view1, view2]): row i's positive is (i + N) mod 2N and
                                L_i = LSE_{k!=i}(s_ik/t) - s_i,pos/t, mean over the 2N rows;
      nt_xent_loss(z1, z2)      the same with the two views apart;
      nt_xent_loss(z, labels)   pytorch-metric-learning's NTXentLoss()(embeddings, labels): rows with one
                                label are views of one sample, in any order, any number of views. One
                                term per ordered positive pair (a, p):
                                softplus(LSE_{n: y_n!=y_a}(s_an/t) - s_ap/t), the other positives of a
                                left out of the denominator; mean over the pairs, 0 for a batch
                                without pairs; reduction="none" gives the pair terms in row-major
                                order (anchor, then positive index). With two views per label it
                                equals the stacked form. The negatives' LSE is the fused kernel (no
                                N x N matrix); the pair logits are O(pairs * D) plain autograd (O(N D)
                                with two views), and counting the pairs is one host sync on CUDA.
    For compatibility a number as the second argument is the temperature (nt_xent_loss(z, 0.5)).
    Distributed (stacked form only), each rank holds its own (2n, D) two-view batch: positives stay on
    the rank, the negatives are every other row of the global batch."""
    z, labels, temperature = _nt_xent_args(z, labels, temperature)
    t = C.check_positive_finite(temperature, "temperature")
    eps = C.check_positive_finite(eps, "eps")
    C.check_reduction(reduction)
    be = resolve_backend(backend, z.device)
    if labels is not None:
        if process_group is not None:
            raise ValueError("nt_xent_loss with labels does not support process_group yet: use the stacked "
                             "two-view form (z of shape (2N, D)) for a distributed loss")
        return _nt_xent_labels(z, labels, t, eps, reduction, be)
    if z.shape[0] % 2:
        raise ValueError(f"z must stack two views of the batch, (2N, D), got an odd number of rows {z.shape[0]}; "
                         "pass labels (N,) for any other arrangement of views")
    if be == "reference" and process_group is None:
        return ref.nt_xent_loss(z, t, eps, reduction)
    if _whole_loss_op(be, z, process_group):
        return contrastive_loss(z, None, None, "ntxent", t, 0.0, eps, reduction)
    cols, _, layout, group = _columns(z, None, process_group, gradient)
    fused = _fused_mean(layout, reduction, be)
    # Row i's positive: (i + N) mod 2N. Its 1/t rides on the combination's coefficient when fused
    # (no division and no division backward: 2 launches fewer on CUDA).
    pos = _pair_cosine(z, z, eps, be, 1.0 if fused else t, shift=z.shape[0] // 2)
    lse, _ = contrastive_lse(z, cols, None, None, None, 1.0 / t, 0.0, False, True, eps, True,
                             layout.offset if layout else 0, [PRED_ALL], be)
    if fused:
        return T.lse_combine(lse, [1.0], pos, -1.0 / t, scale=1.0 / lse.shape[0] if reduction == "mean" else 1.0,
                             backend=be)
    return _finish(lse[:, 0] - pos, reduction, layout, group, gradient)


def _positive_pairs(labels: torch.Tensor):
    """Every ordered pair (a, p), a != p, labels[a] == labels[p], in row-major order (as the nonzero of
    the N x N same-label mask, without building it): O(N log N + pairs). The pair count is read back
    (one host sync on CUDA): the pair tensors' size depends on it."""
    n = labels.shape[0]
    sorted_labels, perm = labels.sort(stable=True)
    first = torch.searchsorted(sorted_labels, labels)  # where each row's class starts, sorted order
    n_pos = torch.searchsorted(sorted_labels, labels, right=True) - first - 1
    total = int(n_pos.sum())
    rows = torch.arange(n, device=labels.device)
    a_idx = torch.repeat_interleave(rows, n_pos, output_size=total)
    k = torch.arange(total, device=labels.device) - (torch.cumsum(n_pos, 0) - n_pos)[a_idx]
    rank = torch.empty_like(perm).scatter_(0, perm, rows) - first  # a's own place within its class
    k = k + (k >= rank[a_idx]).to(k.dtype)  # skip a itself
    return a_idx, perm[first[a_idx] + k]


def _nt_xent_labels(z, labels, t, eps, reduction, be):
    if be == "reference":
        return ref.nt_xent_loss_labels(z, labels, t, eps, reduction)
    # NEG_a over the other labels; a row whose label covers the batch has none (-inf: its terms are 0).
    neg, _ = contrastive_lse(z, z, labels, labels, None, 1.0 / t, 0.0, False, True, eps, True, 0, [PRED_DIFF], be)
    if torch.compiler.is_compiling():
        # The pair count is data-dependent (no fixed-shape graph), so a traced graph takes the pair
        # logits from the N x N similarity matrix (the fused op) under the same-label mask instead.
        if reduction == "none":
            raise ValueError("nt_xent_loss with labels and reduction='none' cannot be traced by torch.compile: the "
                             "number of pair terms depends on the labels; use 'mean' or 'sum' there")
        s = _cosine_similarity_matrix(z, z, 1.0 / t, eps, be).to(neg.dtype)
        n = z.shape[0]
        pos_mask = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool, device=z.device)
        terms = torch.where(pos_mask, ref.softplus(neg[:, :1] - s), torch.zeros_like(s))
        total = terms.sum()
        return total / pos_mask.sum().clamp_min(1).to(total.dtype) if reduction == "mean" else total
    a_idx, p_idx = _positive_pairs(labels)
    pos = _pair_cosine(z[a_idx], z[p_idx], eps, be, t)
    per = ref.softplus(neg[a_idx, 0] - pos)
    if reduction == "mean":
        return per.sum() / max(per.shape[0], 1)
    return ref._reduce(per, reduction)


def _same_class_sums(x: torch.Tensor, labels: torch.Tensor, query: torch.Tensor):
    """For each query label q: (sum of x_j over j with labels_j == q, class size), in O(N D) without an
    N x N mask and without a host sync: classes are keyed by their first index in sorted order."""
    sorted_labels, _ = labels.sort()
    first = torch.searchsorted(sorted_labels, labels)
    sums = torch.zeros_like(x).index_add(0, first, x)
    q_first = torch.searchsorted(sorted_labels, query)
    count = torch.searchsorted(sorted_labels, query, right=True) - q_first
    return sums[q_first.clamp_max(max(labels.shape[0] - 1, 0))], count


@C.autocast_off
def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    *,
    eps: float = 1e-8,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    gradient: str = "exact",
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the L_out form), docs/semantics.md section 4:
    L_i = LSE_{a!=i}(s_ia/t) - mean_{p in P(i)} s_ip/t, P(i) = {p != i : y_p = y_i}; anchors with an
    empty P(i) are left out of the mean (0 under reduction='none').
    A batch of one class (no negatives) gets this formula's value, LSE over the positives minus their
    mean (> 0 unless all similarities are equal), as Khosla et al.'s reference implementation: it is the
    loss as defined, with its gradient (pulling the positives' similarities together).
    pytorch-metric-learning's SupConLoss returns 0 there instead (it skips batches without a negative
    pair); for its numbers, skip such batches yourself."""
    _features(features, "features")
    C.check_nonempty(features, "features")
    labels = C.check_labels(labels, "labels", features.shape[0], features.device)
    t = C.check_positive_finite(temperature, "temperature")
    eps = C.check_positive_finite(eps, "eps")
    C.check_reduction(reduction)
    be = resolve_backend(backend, features.device)
    if be == "reference" and process_group is None:
        return ref.supcon_loss(features, labels, t, eps, reduction)
    if _whole_loss_op(be, features, process_group):
        return contrastive_loss(features, None, labels, "supcon", t, 0.0, eps, reduction)
    if be in ("triton", "cuda") and process_group is None:
        # The positive sums as a masked sweep of the cosine tiles and the epilogue with the mean, a few
        # launches each way each (fastgan/ops/loss_terms.py), no sort, no host sync.
        pos, n_pos = T.same_class_cosine_sum(features, labels, eps, backend=be)
        lse, _ = contrastive_lse(features, features, None, None, None, 1.0 / t, 0.0, False, True, eps, True, 0,
                                 [PRED_ALL], be)
        if reduction != "none":
            return T.supcon_epilogue(lse, pos, n_pos, t, reduction == "mean", backend=be)
        return torch.where(n_pos > 0, lse[:, 0] - pos / (t * n_pos.clamp_min(1).to(pos.dtype)), torch.zeros_like(pos))
    cols, col_labels, layout, group = _columns(features, labels, process_group, gradient)
    ct = compute_dtype(features.dtype)
    fn = normalize_rows(features.to(ct), eps)
    class_sum, count = _same_class_sums(normalize_rows(cols.to(ct), eps), col_labels, labels)
    n_pos = count - 1  # the anchor itself is in its class
    mean_pos = (fn * (class_sum - fn)).sum(dim=1) / (t * n_pos.clamp_min(1).to(fn.dtype))  # not float32
    lse, _ = contrastive_lse(features, cols, None, None, None, 1.0 / t, 0.0, False, True, eps, True,
                             layout.offset if layout else 0, [PRED_ALL], be)
    has_pos = n_pos > 0
    per = torch.where(has_pos, lse[:, 0] - mean_pos, torch.zeros_like(mean_pos))
    return _finish(per, reduction, layout, group, gradient, count=has_pos.sum())


@C.autocast_off
def symmetric_infonce_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float = 0.1,
    *,
    eps: float = 1e-12,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    gradient: str = "exact",
) -> torch.Tensor:
    """CLIP-style symmetric InfoNCE, docs/semantics.md section 5: CE(logits, arange) + CE(logits^T, arange), the two
    means summed, logits = nrm(a) nrm(b)^T / t with nrm(x) = x * rsqrt(max(sum x^2, eps)) (XMC-GAN).
    Rows and columns come from one call of the fused kernel (two with a process group); the diagonal
    is plain autograd. On the "cpu" backend without a process group the whole loss is one op each way."""
    _features(a, "a")
    C.check_nonempty(a, "a")
    _features(b, "b", a.shape[0])
    _same_features("a", a, "b", b)
    t = C.check_positive_finite(temperature, "temperature")
    eps = C.check_positive_finite(eps, "eps")
    C.check_reduction(reduction)
    be = resolve_backend(backend, a.device)
    if be == "reference" and process_group is None:
        return ref.symmetric_infonce_loss(a, b, t, eps, reduction)
    a, b = C.promote(a, b)  # each kernel call reads both
    norm_eps = math.sqrt(eps)  # rsqrt(max(|x|^2, eps)) == 1 / max(|x|, sqrt(eps))
    if _whole_loss_op(be, a, process_group):
        return contrastive_loss(a, b, None, "clip", t, 0.0, norm_eps, reduction)
    b_all, _, layout, group = _columns(b, None, process_group, gradient)
    a_all = D.gather(a, group, layout)[0] if layout else a
    if _fused_mean(layout, reduction, be):
        # The two directions' (N, 1) LSEs straight into one combine: no selects, no ATen arithmetic, and
        # the diagonal's 1/t in its coefficient (no division each way).
        diag = _pair_cosine(a, b, norm_eps, be)
        rows, _ = contrastive_lse(a, b, None, None, None, 1.0 / t, 0.0, False, True, norm_eps, False, 0, [PRED_ALL], be)
        cols, _ = contrastive_lse(b, a, None, None, None, 1.0 / t, 0.0, False, True, norm_eps, False, 0, [PRED_ALL], be)
        return T.lse_combine(rows, [1.0], cols, 1.0, diag, -2.0 / t,
                             scale=1.0 / a.shape[0] if reduction == "mean" else 1.0, backend=be)
    diag = _pair_cosine(a, b, norm_eps, be, t)
    if layout is None:
        # Both directions from one kernel call (on the CPU one sweep of the scores each way).
        rows, cols = contrastive_lse_both(a, b, 1.0 / t, True, norm_eps, be)
        return _finish((rows - diag) + (cols - diag), reduction, layout, group, gradient)
    rows, _ = contrastive_lse(a, b_all, None, None, None, 1.0 / t, 0.0, False, True, norm_eps, False, 0, [PRED_ALL], be)
    cols, _ = contrastive_lse(b, a_all, None, None, None, 1.0 / t, 0.0, False, True, norm_eps, False, 0, [PRED_ALL], be)
    return _finish((rows[:, 0] - diag) + (cols[:, 0] - diag), reduction, layout, group, gradient)
