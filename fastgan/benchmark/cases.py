"""Benchmark cases, shared by the CLI (python -m fastgan bench) and the pytest-benchmark suite (bench/).

A case is an op at one size. `paths(case, device)` lists every way to compute it here: each
available fastgan backend, the eager reference, torch.compile of the reference, and the public-
implementation-style baselines (fastgan/benchmark/baselines.py). Every path is a function of fresh
inputs returning a scalar loss (or output) so forward and backward can be timed alike.
"""
import dataclasses
import math
from typing import Callable, Dict, List, Tuple

import torch

import fastgan.functional as FG
import fastgan.nn as GN
from fastgan import reference as R
from fastgan.backend import unavailable_reason

from . import baselines

OPS = ("cosine_similarity_matrix", "2c", "d2d", "ntxent", "supcon", "clip", "infonce", "spectral_norm")

# Sizes: (N, D) for the similarity family, (N, HW, R) for InfoNCE, a model name for spectral norm.
SIZES = {
    "cpu": {
        "quick": {"similarity": [(128, 256)], "infonce": [(16, 16, 256)], "spectral_norm": ["sngan32"]},
        "default": {"similarity": [(64, 512), (256, 768), (1024, 768)], "infonce": [(64, 64, 1024)],
                    "spectral_norm": ["sngan32"]},
        "full": {"similarity": [(64, 512), (256, 768), (1024, 768), (4096, 128)],
                 "infonce": [(64, 64, 1024), (128, 64, 1024)], "spectral_norm": ["sngan32"]},
    },
    "cuda": {
        "quick": {"similarity": [(64, 512), (1024, 768)], "infonce": [(64, 64, 1024)], "spectral_norm": ["sngan32"]},
        "default": {"similarity": [(64, 512), (256, 1536), (1024, 768), (8192, 1024)],
                    "infonce": [(64, 64, 1024), (128, 256, 1024)], "spectral_norm": ["sngan32", "sngan128"]},
        "full": {"similarity": [(64, 512), (256, 1536), (1024, 768), (8192, 1024), (65536, 1024)],
                 "infonce": [(64, 64, 1024), (128, 256, 1024), (256, 256, 512), (1024, 256, 1024)],
                 "spectral_norm": ["sngan32", "sngan128"]},
    },
}

# Spectral-norm layers of StudioGAN-like SN-ResNet discriminators: (kind, out, in, k).
SN_MODELS = {
    "sngan32": [("conv", 128, 3, 3), ("conv", 128, 128, 3), ("conv", 128, 3, 1)]
    + [("conv", 128, 128, 3)] * 6 + [("conv", 128, 128, 1)] * 1 + [("linear", 1, 128, 0), ("embedding", 10, 128, 0)],
    "sngan128": [("conv", 64, 3, 3), ("conv", 64, 64, 3), ("conv", 64, 3, 1)]
    + [(k, o, i, s) for (o, i) in [(128, 64), (256, 128), (512, 256), (1024, 512), (1024, 1024)]
       for (k, s) in [("conv", 3), ("conv", 3), ("conv", 1)]]
    + [("linear", 1, 1024, 0), ("embedding", 1000, 1024, 0)],
}


@dataclasses.dataclass
class Case:
    op: str
    size: tuple
    device: str
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return f"{self.op}[{'x'.join(map(str, self.size))}]"

    @property
    def n(self) -> int:
        return self.size[0] if self.op != "spectral_norm" else len(SN_MODELS[self.size[0]])

    def floor(self) -> Tuple[float, float]:
        """(FLOPs, bytes) of forward + backward, docs/semantics.md section 9."""
        el = torch.tensor([], dtype=self.dtype).element_size()
        if self.op == "infonce":
            n, hw, r = self.size
            return 3 * 2.0 * n * n * hw * r, 2.0 * (n * hw * r + n * r) * el
        if self.op == "spectral_norm":
            numel = sum(_sn_shape(layer)[0] * _sn_shape(layer)[1] for layer in SN_MODELS[self.size[0]])
            return 4.0 * numel, 2.0 * numel * el
        n, d = self.size
        m = n
        return 2.0 * n * m * d * 3, 2.0 * (n + m) * d * el


def _sn_shape(layer):
    kind, out, inp, k = layer
    return (out, inp * k * k) if kind == "conv" else (out, inp)


def cases(ops, preset: str, device: str, dtype: torch.dtype, sizes=None) -> List[Case]:
    table = SIZES["cuda" if device.startswith("cuda") else "cpu"][preset]
    out = []
    for op in ops:
        family = "infonce" if op == "infonce" else "spectral_norm" if op == "spectral_norm" else "similarity"
        for size in (sizes or {}).get(family, table[family]):
            out.append(Case(op, tuple(size) if not isinstance(size, str) else (size,), device, dtype))
    return out


def make_inputs(case: Case, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    dev, dt = case.device, case.dtype

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=dev, dtype=dt)

    if case.op == "infonce":
        n, hw, r = case.size
        return (rnd(n, r, hw) / math.sqrt(r), rnd(n, r, 1)), ()
    if case.op == "spectral_norm":
        return (), ()
    n, d = case.size
    y = torch.randint(0, 10, (n,), generator=g).to(dev)
    if case.op in ("2c", "d2d"):
        return (rnd(n, d), rnd(n, d)), (y,)
    if case.op == "supcon":
        return (rnd(n, d),), (y,)
    if case.op == "clip":
        return (rnd(n, d), rnd(n, d)), ()
    if case.op == "ntxent":
        return (rnd(n, d),), ()
    return (rnd(n, d),), ()


LOSS = {
    "cosine_similarity_matrix": (lambda a, backend: FG.cosine_similarity_matrix(a, backend=backend).sum(),
                                 lambda a: R.cosine_similarity_matrix(a).sum()),
    "2c": (lambda e, p, y, backend: FG.conditional_contrastive_loss(e, p, y, 1.0, backend=backend),
           lambda e, p, y: R.conditional_contrastive_loss(e, p, y, 1.0)),
    "d2d": (lambda e, p, y, backend: FG.data2data_cross_entropy_loss(e, p, y, 0.5, 0.98, backend=backend),
            lambda e, p, y: R.data2data_cross_entropy_loss(e, p, y, 0.5, 0.98)),
    "ntxent": (lambda z, backend: FG.nt_xent_loss(z, 0.5, backend=backend), lambda z: R.nt_xent_loss(z, 0.5)),
    "supcon": (lambda f, y, backend: FG.supcon_loss(f, y, 0.1, backend=backend), lambda f, y: R.supcon_loss(f, y, 0.1)),
    "clip": (lambda a, b, backend: FG.symmetric_infonce_loss(a, b, 0.1, backend=backend),
             lambda a, b: R.symmetric_infonce_loss(a, b, 0.1)),
    "infonce": (lambda l, m, backend: FG.infonce_local_global(l, m, backend=backend),
                lambda l, m: R.infonce_local_global(l, m)),
}

BASELINES = {
    "2c": {"studiogan_style": lambda e, p, y: baselines.studiogan_2c(e, p, y, 1.0, 10)},
    "d2d": {"studiogan_style": lambda e, p, y: baselines.studiogan_d2d(e, p, y, 0.5, 0.98, 10)},
    "infonce": {"mimicry_style": baselines.mimicry_infonce},
}


def sn_layers(case: Case, flavour):
    """The SN layers of the case's model, wrapped by `flavour(module)`; returns the module list."""
    mods = []
    torch.manual_seed(0)
    for kind, out, inp, k in SN_MODELS[case.size[0]]:
        if kind == "conv":
            m = torch.nn.Conv2d(inp, out, k)
        elif kind == "linear":
            m = torch.nn.Linear(inp, out)
        else:
            m = torch.nn.Embedding(out, inp)
        mods.append(flavour(m.to(device=case.device, dtype=case.dtype)))
    return torch.nn.ModuleList(mods)


class _LayerUse(torch.autograd.Function):
    """Stands for the discriminator's own use of the normalized weights (its convolutions): a
    forward that takes every W_i / sigma_i as a materialized tensor, and a backward that hands each
    one a dense gradient G_i, as a convolution's backward does. Costs nothing itself, so the step
    times the spectral-norm work alone."""

    @staticmethod
    def forward(ctx, grads, *weights):
        ctx.grads = grads
        return weights[0].new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx, _):
        return (None, *ctx.grads)


class _Use:
    """One path's layer use: fixed dense gradients (one draw per path, the same for every path of a
    case) and a training step's zero_grad(set_to_none=True) before the backward. Outside any
    torch.compile graph (torch.compiler.disable), as a convolution is an opaque kernel to the
    compiler: the compiled paths must materialize W / sigma and take a dense gradient too. (The
    former consumer, a sum of every weight, let inductor fuse W / sigma into the reduction without
    writing it, gave a constant gradient no convolution gives, and added about 40 eager ATen ops
    with their backward to the eager paths only.)"""

    def __init__(self, layers):
        gen = torch.Generator(device="cpu").manual_seed(1)
        self.params = [p for m in layers for p in m.parameters()]
        # The raw weight (weight_orig, or a parametrization's original): W / sigma's shape and dtype.
        raw = [next(p for n, p in m.named_parameters() if n.endswith(("weight_orig", "weight.original")))
               for m in layers]
        self.grads = [torch.randn(w.shape, generator=gen).to(w) for w in raw]

    @torch.compiler.disable
    def __call__(self, weights):
        for p in self.params:
            p.grad = None
        return _LayerUse.apply(self.grads, *weights)


def sn_step(layers, use):
    """The spectral-norm work of one training step: every layer's normalized weight, handed to
    `use` (_Use: the layers' convolutions, dense gradients back). A SpectralNormGroup on the list
    (convert_spectral_norm) updates every layer in one call first, as a model's forward would; each
    layer's own hook then takes its step, and the group's forward hook settles it."""
    for hook in layers._forward_pre_hooks.values():
        hook(layers, ())
    weights = []
    for m in layers:
        if hasattr(m, "weight_orig"):
            for hook in m._forward_pre_hooks.values():
                hook(m, None)
        weights.append(m.weight)
    for hook in layers._forward_hooks.values():  # the group's settle_, as the model's forward ends
        hook(layers, (), None)
    return use(weights)


SN_TORCH = {
    "torch_hook": lambda m: torch.nn.utils.spectral_norm(m),
    "torch_parametrization": lambda m: torch.nn.utils.parametrizations.spectral_norm(m),
}


def sn_paths(case: Case, compiled: bool = True) -> Dict[str, Callable]:
    """fastgan per layer and grouped (one multi-tensor call per step) for every backend available
    here; PyTorch's two flavours eager and under torch.compile (None without `compiled`: listed, not
    built). "torch_hook" is the baseline."""
    device = torch.device(case.device)
    out: Dict[str, Callable] = {}
    for backend in ("cpu", "cuda", "triton"):
        if unavailable_reason(backend, device) is not None or (backend == "triton" and device.type == "cpu"):
            continue
        layers = sn_layers(case, lambda m, b=backend: GN.spectral_norm(m, backend=b))
        out[f"fastgan_{backend}"] = lambda layers=layers, use=_Use(layers): sn_step(layers, use)
        grouped = GN.convert_spectral_norm(sn_layers(case, lambda m, b=backend: GN.spectral_norm(m, backend=b)),
                                           backend=backend, group=True)
        out[f"fastgan_{backend}_group"] = lambda layers=grouped, use=_Use(grouped): sn_step(layers, use)
    for name, flavour in SN_TORCH.items():
        layers = sn_layers(case, flavour)
        out[name] = lambda layers=layers, use=_Use(layers): sn_step(layers, use)
    for name, flavour in SN_TORCH.items():
        layers = sn_layers(case, flavour)
        out[name + "_compiled"] = (torch.compile(lambda layers=layers, use=_Use(layers): sn_step(layers, use))
                                   if compiled else None)
    return out


def paths(case: Case, compiled: bool = True) -> Dict[str, Callable]:
    """name -> fn(*tensors, *labels) returning a scalar; only paths that can run here. Without
    `compiled` the torch.compile paths are listed with None (seconds of compiling each: --quick)."""
    device = torch.device(case.device)
    out: Dict[str, Callable] = {}
    if case.op == "spectral_norm":
        return sn_paths(case, compiled)
    fused, reference = LOSS[case.op]
    for backend in ("cpu", "cuda", "triton"):
        if unavailable_reason(backend, device) is None and not (backend == "triton" and device.type == "cpu"):
            out[f"fastgan_{backend}"] = lambda *xs, b=backend: fused(*xs, backend=b)
    out["reference_eager"] = reference
    out["reference_compiled"] = torch.compile(reference, dynamic=False) if compiled else None
    out.update(BASELINES.get(case.op, {}))
    return out
