"""contrastive_loss: 2C, D2D-CE, NT-Xent (stacked two views), SupCon and CLIP as one CPU op each way.

Registered op: torch.ops.fastgan.contrastive_loss / _backward, C++ schema (csrc/fastgan.cpp), CPU
kernels (csrc/cpu/contrastive_loss.cpp), C++ autograd (csrc/ops/contrastive_autograd.cpp); fakes here.
At N = 64 a loss is per-call overhead, not arithmetic: the composition of fastgan::pair_cosine,
fastgan::contrastive_lse_budget and about ten ATen ops (each an autograd node) costs more than the
N x N kernel. The op runs the same kernels and writes out the combination and its gradient.
The public functions (fastgan/functional/contrastive.py) call it on the "cpu" backend without a
process group; the other backends and the distributed path keep the composition.
"""
import torch

from ._registry import ensure_cxx, on_extension_loaded
from .contrastive_lse import _budget_for, _fake_budget_forward, _lse_dtype

# The LSE predicates each kind asks of the kernel (csrc/cpu/contrastive_loss.cpp:lse_args).
_N_PREDICATES = {"2c": 2, "d2d": 1, "ntxent": 1, "supcon": 1, "clip": 1}


def _fake_forward(x, proxy, labels, kind, temperature, m_p, eps, reduction, score_budget):
    n, ct = x.shape[0], _lse_dtype(x)
    clip = kind == "clip"  # a = x against b = proxy, rows and columns: lse (2N, 1)
    lse, rowmax, scores = _fake_budget_forward(x, proxy if clip else None, labels, labels, None, 1.0, 0.0, False, True,
                                               eps, not clip, 0, [0] * _N_PREDICATES[kind], clip, score_budget)
    loss = x.new_empty((n,) if reduction == "none" else (), dtype=ct)
    pos = x.new_empty((n,), dtype=ct)
    n_pos = x.new_empty((n,) if kind == "supcon" else (0,), dtype=torch.int64)
    return loss, lse, rowmax, pos, n_pos, scores


def _fake_backward(grad, x, proxy, labels, lse, rowmax, pos, n_pos, scores, kind, temperature, m_p, eps, reduction):
    return torch.empty_like(x), (x.new_empty((0,)) if proxy is None else torch.empty_like(proxy))


@on_extension_loaded
def _register_cxx():
    torch.library.register_fake("fastgan::contrastive_loss")(_fake_forward)
    torch.library.register_fake("fastgan::contrastive_loss_backward")(_fake_backward)


def contrastive_loss(x, proxy, labels, kind: str, temperature: float, m_p: float, eps: float, reduction: str):
    """The loss `kind` ("2c", "d2d", "ntxent", "supcon", "clip") of CPU tensors, arguments validated by the
    public function: x (N, D) (ntxent: the two views stacked), proxy (2c, d2d; clip: b, x's shape and dtype),
    int64 labels (not ntxent, clip). eps is the norm clamp (clip: the sqrt of its eps on the squared norm)."""
    ensure_cxx()
    return torch.ops.fastgan.contrastive_loss.default(x, proxy, labels, kind, temperature, m_p, eps, reduction,
                                                       _budget_for(x))[0]
