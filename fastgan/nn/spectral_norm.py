"""Spectral normalization as a drop-in for both PyTorch implementations (docs/semantics.md section 7).

    fastgan.nn.spectral_norm(module)                              # like torch.nn.utils.spectral_norm
    fastgan.nn.spectral_norm(module, flavour="parametrization")   # like ...parametrizations.spectral_norm
    fastgan.nn.convert_spectral_norm(model)                       # swap PyTorch's in place

Same state-dict keys, initialization (same random draws), eps handling, iteration order and
train/eval semantics as the PyTorch versions, so a state dict moves freely between them:
  flavour="hook":            weight_orig, weight_u, weight_v; a forward pre-hook that (in training)
                             updates u, v in place, clones them and sets module.weight = W / sigma.
  flavour="parametrization": parametrizations.weight.original, parametrizations.weight.0._u / _v;
                             15 warm-up iterations at registration; recomputed on every access.
"""
from typing import Optional

import importlib

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ..functional.spectral_norm import check_spectral_backend, matrix_to_weight, normalize_weight, _spectral_backend
from ..ops import spectral_norm as ops
from ..reference import spectral_norm as ref

__all__ = [
    "spectral_norm",
    "remove_spectral_norm",
    "convert_spectral_norm",
    "SpectralNormHook",
    "SpectralNormParametrization",
    "SpectralNormGroup",
    "SNLinear",
    "SNConv2d",
    "SNConvTranspose2d",
    "SNEmbedding",
]

FLAVOURS = ("hook", "parametrization")
# torch.nn.utils.spectral_norm is shadowed by the function of that name: reach the module itself.
_TorchSpectralNorm = importlib.import_module("torch.nn.utils.spectral_norm").SpectralNorm
_TRANSPOSED = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def _default_dim(module: torch.nn.Module, dim: Optional[int]) -> int:
    if dim is not None:
        return dim
    return 1 if isinstance(module, _TRANSPOSED) else 0


def _check_args(n_power_iterations, eps, flavour, backend):
    if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) or n_power_iterations < 0:
        raise ValueError(f"n_power_iterations must be a non-negative int, got {n_power_iterations!r}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    check_spectral_backend(backend)


def _set_weight(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """module.<name> = value. The name is a plain attribute (neither parameter, buffer nor submodule
    since registration), for which Module.__setattr__ ends in object.__setattr__ after ~15 us of
    checks; eagerly we go there directly (a discriminator does this once per SN layer per forward)."""
    if torch.compiler.is_compiling() or name in module._parameters or name in module._buffers:
        setattr(module, name, value)
    else:
        object.__setattr__(module, name, value)


class SpectralNormHook:
    """The forward pre-hook of flavour "hook" (torch.nn.utils.spectral_norm's semantics)."""

    _version = 1  # the state-dict format version PyTorch writes (weight_orig, weight_u, weight_v)

    def __init__(self, name: str = "weight", n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12,
                 backend: str = "auto"):
        self.name, self.n_power_iterations, self.dim, self.eps, self.backend = name, n_power_iterations, dim, eps, backend

    def compute_weight(self, module: torch.nn.Module, do_power_iteration: bool) -> torch.Tensor:
        weight = getattr(module, self.name + "_orig")
        u, v = getattr(module, self.name + "_u"), getattr(module, self.name + "_v")
        return normalize_weight(weight, u, v, self.n_power_iterations, self.eps, "hook", self.dim,
                                do_power_iteration, self.backend)

    def __call__(self, module: torch.nn.Module, inputs) -> None:
        pending, self._pending = self._pending, None  # a group's step is used by the next call or never
        if pending is not None:
            if module.training and not torch.compiler.is_compiling():
                out = pending.take(module, self)
                if out is not None:
                    _set_weight(module, self.name, out)
                    return
            else:  # eval (or traced) call: u, v as they were before the group's step
                pending.drop()
        _set_weight(module, self.name, self.compute_weight(module, do_power_iteration=module.training))

    _pending = None  # a _PendingStep of a SpectralNormGroup, see there

    @staticmethod
    def apply(module, name, n_power_iterations, dim, eps, backend="auto") -> "SpectralNormHook":
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, (SpectralNormHook, _TorchSpectralNorm)) and hook.name == name:
                raise RuntimeError(f"Cannot register two spectral_norm hooks on the same parameter {name}")
        weight = module._parameters.get(name)
        if weight is None:
            raise ValueError(f"spectral_norm: module has no parameter {name!r}")
        if isinstance(weight, torch.nn.parameter.UninitializedParameter):
            raise ValueError("spectral_norm: the module has uninitialized parameters; run a dummy forward first")
        fn = SpectralNormHook(name, n_power_iterations, dim, eps, backend)
        with torch.no_grad():
            h, w = ref.weight_to_matrix(weight, dim).shape
            # The same random draws, in the same order, as PyTorch: equal seeds give equal u, v.
            u = F.normalize(weight.new_empty(h).normal_(0, 1), dim=0, eps=eps)
            v = F.normalize(weight.new_empty(w).normal_(0, 1), dim=0, eps=eps)
        delattr(module, name)
        module.register_parameter(name + "_orig", weight)
        setattr(module, name, weight.data)
        module.register_buffer(name + "_u", u)
        module.register_buffer(name + "_v", v)
        module.register_forward_pre_hook(fn)
        module._register_state_dict_hook(_StateDictVersion(fn))
        return fn

    def remove(self, module: torch.nn.Module) -> None:
        with torch.no_grad():
            weight = self.compute_weight(module, do_power_iteration=False)
        for suffix in ("", "_u", "_v", "_orig"):
            delattr(module, self.name + suffix)
        module.register_parameter(self.name, torch.nn.Parameter(weight.detach()))


class _StateDictVersion:
    # PyTorch's loader reads this version to tell the current key layout from the pre-2018 one.
    def __init__(self, fn: SpectralNormHook):
        self.fn = fn

    def __call__(self, module, state_dict, prefix, local_metadata) -> None:
        local_metadata.setdefault("spectral_norm", {})[self.fn.name + ".version"] = self.fn._version


class SpectralNormParametrization(torch.nn.Module):
    """The parametrization of flavour "parametrization" (torch.nn.utils.parametrizations.spectral_norm's
    semantics: buffers _u, _v; u = nrm(W v) then v = nrm(W^T u); 15 warm-up iterations)."""

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12,
                 backend: str = "auto"):
        super().__init__()
        ndim = weight.ndim
        if dim >= ndim or dim < -ndim:
            raise IndexError(f"dim must lie in [-{ndim}, {ndim - 1}], got {dim}")
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps, self.n_power_iterations, self.backend = eps, n_power_iterations, backend
        if ndim > 1:
            weight_mat = ref.weight_to_matrix(weight, self.dim)
            h, w = weight_mat.shape
            u = weight_mat.new_empty(h).normal_(0, 1)
            v = weight_mat.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=self.eps))
            ops.power_iteration_([weight_mat.detach()], [self._u], [self._v], 15, self.eps, "parametrization",
                                 _spectral_backend(backend, weight.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        return normalize_weight(weight, self._u, self._v, self.n_power_iterations, self.eps, "parametrization",
                                self.dim, self.training, self.backend)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value


class _PendingStep:
    """One layer's power-iteration step computed ahead by a SpectralNormGroup at the model's call:
    the new u, v (u_new, v_new: the group's own copies, which the W / sigma graph keeps, as the clones
    of a per-layer step), sigma, and the u, v from before the step (u_old, v_old).

    The group commits every layer's step AHEAD: one multi-tensor copy writes all the new u, v into
    the buffers at the model's call, so a layer called inside the model's forward only takes its W /
    sigma (no copy, no launch: the model's whole step is a constant number of launches). When the
    model's forward ends (SpectralNormGroup.settle_, also on an exception), the steps of the layers
    it did not call are rolled back in one multi-tensor copy and stay DEFERRED: the buffers hold the
    old u, v again, and such a layer's own next call (Mimicry's D.project_features) commits its step
    with one small copy. Outside a model forward the buffers are therefore always PyTorch's.

    A step is used only if nothing it was computed from has changed since (same tensors, same
    version counters: no optimizer step, load_state_dict, .to() or other update in between);
    otherwise it is rolled back (where the buffer still holds it) and the layer iterates on its own.
    So a layer's u, v move exactly once per training-mode call of the layer, as PyTorch's hook does,
    whichever way the layer is reached (inside the model forward, skipped by it, called directly,
    twice, under no_grad), and W / sigma is built at the call, under the call's own grad mode."""

    __slots__ = ("weight", "u", "v", "versions", "u_old", "v_old", "u_new", "v_new", "sigma", "backend", "out",
                 "node", "ahead")

    def __init__(self, weight, u, v, u_old, v_old, u_new, v_new, sigma, backend, out=None, node=None):
        self.weight, self.u, self.v, self.u_old, self.v_old = weight, u, v, u_old, v_old
        self.u_new, self.v_new, self.sigma = u_new, v_new, sigma
        self.ahead = True  # the buffers hold u_new, v_new (committed by the group's multi-tensor copy)
        self.versions = None  # (weight, u, v) version counters, recorded once committed (_commit_ahead)
        self.backend = backend
        # W / sigma built by the group's call (C++ backends), with its own autograd node; used when
        # the layer's call has the same grad mode (the node is recorded iff grad mode and the
        # weight's requires_grad were on then), else W / sigma is built again at the call.
        self.out = out
        self.node = node  # Triton, CUDA: the _GroupApply state shared by the group's layers

    def _unchanged(self, weight, u, v) -> bool:
        return (weight is self.weight and u is self.u and v is self.v
                and (weight._version, u._version, v._version) == self.versions)

    def _rollback_pairs(self):
        """(buffer, old value) for each of u, v that still holds this step (not written since)."""
        return [(buf, old) for buf, old, ver in ((self.u, self.u_old, self.versions[1]),
                                                 (self.v, self.v_old, self.versions[2])) if buf._version == ver]

    def drop(self) -> None:
        """Forget the step: roll an ahead-committed one back (the buffers as if it never ran)."""
        if self.ahead:
            _roll_back([self])

    def take(self, module: torch.nn.Module, hook: "SpectralNormHook"):
        """The layer's training-mode call: its W / sigma with u, v committed, or None (the step is
        stale and dropped: the layer iterates on its own)."""
        name = hook.name
        weight, u, v = module._parameters[name + "_orig"], module._buffers[name + "_u"], module._buffers[name + "_v"]
        if not self._unchanged(weight, u, v):
            self.drop()
            return None
        if not self.ahead:  # deferred (rolled back at the end of a model forward): one small copy
            # No no_grad needed (it costs a few us per layer): neither side requires grad, nothing is recorded.
            torch._foreach_copy_([u, v], [self.u_new, self.v_new])
        out = self.out
        if (out is not None and out.requires_grad == (weight.requires_grad and torch.is_grad_enabled())
                and (self.node is None or not self.node.spent)):
            return out
        w_mat = ref.weight_to_matrix(weight, hook.dim)
        if self.backend == "reference":
            return weight / ref.sigma(w_mat, self.u_new, self.v_new)
        return matrix_to_weight(ops.apply(w_mat, self.u_new, self.v_new, self.sigma, self.backend), weight.shape,
                                hook.dim)


def _commit_ahead(stepped) -> None:
    """Every stepped layer's new u, v into its buffers in one multi-tensor copy (a constant number
    of launches on a GPU), then each step handed to its layer's hook, ahead-committed."""
    if not stepped:
        return
    pendings = [p for _, p in stepped]
    torch._foreach_copy_([p.u for p in pendings] + [p.v for p in pendings],
                         [p.u_new for p in pendings] + [p.v_new for p in pendings])
    for hook, p in stepped:
        p.versions = (p.weight._version, p.u._version, p.v._version)
        hook._pending = p


def _roll_back(pendings) -> None:
    """The buffers of these ahead-committed steps back to their old u, v, in one multi-tensor copy
    (a buffer written since keeps what was written); the steps become deferred, their version
    counters those after the copy."""
    pairs = [pair for p in pendings for pair in p._rollback_pairs()]
    if pairs:
        torch._foreach_copy_([b for b, _ in pairs], [o for _, o in pairs])
    for p in pendings:
        p.ahead = False
        p.versions = (p.weight._version, p.u._version, p.v._version)


def _settle(stepped) -> None:
    """Roll back the ahead-committed steps their layers have not taken; they stay pending, deferred
    (the layer's own next call may still commit them, with one copy)."""
    left = [p for hook, p in stepped if hook._pending is p and p.ahead]
    if left:
        _roll_back(left)


class _GroupNode:
    """Shared by the layers of one group apply (Triton, CUDA): spent once its backward has run."""
    __slots__ = ("spent",)

    def __init__(self):
        self.spent = False


class _GroupApply(torch.autograd.Function):
    """W_i / sigma_i of a group's layers (one dtype) in one launch, its backward in two, as ONE
    autograd node for all of them: Triton (apply_group, which snapshots u, v) or CUDA
    (fastgan::spectral_norm_apply_group; u, v are the group's own copies, saved as they are). A
    backward through any of them frees what the node saved (without retain_graph), so it marks
    `state.spent`: a layer that commits after that (called after a first backward, e.g.
    D.project_features after loss_real.backward()) builds its own W / sigma instead of using this
    node's output."""

    @staticmethod
    def forward(ctx, state, triton, n, *tensors):
        mats, us, vs, sigmas = (list(tensors[i * n:(i + 1) * n]) for i in range(4))
        ctx.state, ctx.triton, ctx.n = state, triton, n
        ctx.set_materialize_grads(False)
        if triton:
            res = torch.ops.fastgan.spectral_norm_apply_group_triton(mats, us, vs, sigmas)
            ctx.save_for_backward(*mats, *sigmas, res[-1])
            return tuple(res[:-1])
        ctx.save_for_backward(*mats, *sigmas, *us, *vs)
        return tuple(torch.ops.fastgan.spectral_norm_apply_group(mats, sigmas))

    @staticmethod
    def backward(ctx, *grads):
        ctx.state.spent = True
        n, saved = ctx.n, ctx.saved_tensors
        mats, sigmas = list(saved[:n]), list(saved[n:2 * n])
        gs = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, mats)]
        if ctx.triton:
            gs = [g.contiguous() for g in gs]
            grad_ws = torch.ops.fastgan.spectral_norm_apply_group_triton_backward(gs, mats, saved[-1], sigmas)
        else:  # any strides of G (an expanded gradient of a sum is read as it is)
            grad_ws = torch.ops.fastgan.spectral_norm_apply_group_backward(gs, mats, list(saved[2 * n:3 * n]),
                                                                           list(saved[3 * n:]), sigmas)
        return (None, None, None, *[gw if g is not None else None for gw, g in zip(grad_ws, grads)],
                *[None] * (3 * n))


def _clones(tensors, copies: int = 1):
    """`copies` contiguous copies of each 1-D tensor, all in one multi-tensor copy (a constant
    number of launches on a GPU, not one per tensor), as views of one buffer when the tensors share
    a dtype; returns the list of copies repeated `copies` times (copy 0 of every tensor first)."""
    tensors = list(tensors)
    if len({t.dtype for t in tensors}) != 1:
        return [t.clone(memory_format=torch.contiguous_format) for _ in range(copies) for t in tensors]
    sizes = [t.numel() for t in tensors] * copies
    flat = torch.empty(sum(sizes), dtype=tensors[0].dtype, device=tensors[0].device)
    views = list(flat.split(sizes))
    torch._foreach_copy_(views, tensors * copies)
    return views


class SpectralNormGroup:
    """The "hook"-flavour spectral norms of many layers, stepped together: a forward pre-hook on the
    model (convert_spectral_norm) that steps all its training-mode layers at once and commits every
    new u, v ahead into the buffers (one multi-tensor copy), leaving each layer a _PendingStep that
    its call inside the forward takes without a copy; a forward hook on the model (settle_, run
    also when the forward raises) rolls back, in one multi-tensor copy, the steps of the layers the
    forward did not call. Per device and setting, the step is ONE call: on the C++ backends (CPU,
    CUDA) fastgan::spectral_norm_group_step (multi-tensor power iteration, then every W / sigma
    with its fused backward, one autograd node per layer, in C++: the per-layer Python and dispatch
    of the apply were most of a small model's step); on Triton and CUDA the multi-tensor power
    iteration (4 launches per step) and one apply_group launch for all W / sigma (backward: two
    launches), see _GroupApply. So a training forward + backward of the model's spectral norms is a
    constant number of launches whatever its layer count (README: launches per loss). A take under
    another grad mode than the group's call builds W / sigma again.

    The numerics are those of each layer's own hook (torch.nn.utils.spectral_norm) for every call
    pattern: a layer the forward skips keeps its u, v (its step is rolled back when the forward ends
    and committed, with one copy, at its own next call if nothing changed, equal to the step it
    would take then); a layer called twice in one forward iterates again at its second call; a
    submodule called directly (Mimicry's D.project_features) steps once per call; D(real) then
    D(fake) step twice; no_grad and eval calls behave as PyTorch's. The price of a skipped layer is
    its share of the (batched) power iteration. Under torch.compile the group does nothing and every
    layer steps itself (the compiler fuses them instead)."""

    def __init__(self, modules, backend: str = "auto"):
        self.entries = []
        for module in modules:
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, SpectralNormHook):
                    self.entries.append((module, hook))
        check_spectral_backend(backend)
        self.backend = backend
        self._stepped = []  # the _PendingSteps of the latest update_, for settle_

    def update_(self) -> None:
        """Step every training-mode layer ahead (one call per device and setting) and commit the new
        u, v into the buffers (one multi-tensor copy), as pending steps. Per layer this is the
        Python a model pays on every forward, so it reads the parameter and buffer dicts directly
        (tensors are looked up each call: .to() and load_state_dict may replace them) and leaves
        the checks to the ops."""
        self.settle_()  # a previous update_ whose forward hook did not run (update_ called by hand)
        groups = {}
        for module, hook in self.entries:
            if not module.training or hook.n_power_iterations == 0:
                continue
            pending = hook._pending
            if pending is not None and pending.ahead:
                continue  # stepped ahead by an enclosing model's group, inside whose forward this call is
            name = hook.name
            weight = module._parameters[name + "_orig"]
            key = (weight.device, hook.n_power_iterations, hook.eps)
            groups.setdefault(key, []).append((hook, weight, module._buffers[name + "_u"],
                                               module._buffers[name + "_v"]))
        stepped = []  # (hook, _PendingStep)
        for (device, n, eps), items in groups.items():
            backend = _spectral_backend(self.backend, device)
            if backend == "cuda" and ops.cuda_kernels_registered():
                stepped += self._gpu_step(items, n, eps, triton=False)
            elif backend in ("cpu", "cuda") and ops.ensure_cxx():
                stepped += self._cxx_step(items, n, eps, backend)
            elif backend == "triton":
                stepped += self._gpu_step(items, n, eps, triton=True)
            else:
                k = len(items)
                mats = [ref.weight_to_matrix(w.detach(), h.dim) for h, w, _, _ in items]
                copies = _clones([u for _, _, u, _ in items] + [v for _, _, _, v in items], 2)
                us, vs = copies[2 * k:3 * k], copies[3 * k:]
                sigmas = ops.power_iteration(mats, us, vs, n, eps, "hook", backend)
                stepped += [(hook, _PendingStep(weight, u, v, u_old, v_old, u_new, v_new, sigma, backend))
                            for (hook, weight, u, v), u_old, v_old, u_new, v_new, sigma
                            in zip(items, copies[:k], copies[k:2 * k], us, vs, sigmas)]
        _commit_ahead(stepped)
        self._stepped = stepped

    def settle_(self) -> None:
        """The model's forward has ended: roll back the ahead-committed steps its layers did not
        take (one multi-tensor copy, none when every stepped layer was called)."""
        stepped, self._stepped = self._stepped, []
        if stepped:
            _settle(stepped)

    def _rollback_copies(self, slot, tensors):
        """Copies of u, v as they were, for a rollback, in one multi-tensor copy into a buffer kept
        from step to step, one per call of update_ (`slot`: its device, setting and dtypes), whose
        views cost ~1.5 us each to make, as much as the copy itself on the CPU. Reusing it is safe: a
        step's old values are read only while the step is ahead-committed, and update_ settles every
        such step of this group before it copies again."""
        key = tuple((t.numel(), t.dtype, t.device) for t in tensors)
        buffers = self.__dict__.setdefault("_rollback_buffers", {})
        cached = buffers.get(slot)
        if cached is None or cached[0] != key:
            cached = buffers[slot] = (key, _clones(tensors))
        else:
            torch._foreach_copy_(cached[1], tensors)
        return cached[1]

    def _cxx_step(self, items, n, eps, backend):
        """One C++ call for the whole step (fastgan::spectral_norm_group_step): power iteration on
        copies of u, v and every W / sigma, each with its fused backward; u, v as they were kept
        for a rollback (one multi-tensor copy)."""
        k = len(items)
        slot = (items[0][1].device, n, eps, items[0][1].dtype, items[0][2].dtype, items[0][3].dtype, backend)
        olds = self._rollback_copies(slot, [u for _, _, u, _ in items] + [v for _, _, _, v in items])
        outs, us, vs, sigmas = ops.group_step([w for _, w, _, _ in items], [u for _, _, u, _ in items],
                                              [v for _, _, _, v in items], [h.dim for h, _, _, _ in items],
                                              n, eps, "hook")
        return [(hook, _PendingStep(weight, u, v, u_old, v_old, u_new, v_new, sigma, backend, out))
                for (hook, weight, u, v), u_old, v_old, out, u_new, v_new, sigma
                in zip(items, olds[:k], olds[k:], outs, us, vs, sigmas)]

    def _gpu_step(self, items, n, eps, triton):
        """Triton or CUDA: one multi-tensor power iteration (4 launches per step) on copies of u, v
        (one multi-tensor copy makes them and the rollback copies), then per (weight dtype, u
        dtype) one group apply launch for every W / sigma (backward: two), independent of the
        number of layers (CUDA: up to a kernel argument's worth of layers per launch,
        csrc/cuda/spectral_norm.h). CUDA float64 layers (gradchecks) take the C++ group step
        (per-layer float64 ATen math)."""
        backend = "triton" if triton else "cuda"
        by_dtype, stepped = {}, []
        for item in items:
            by_dtype.setdefault((item[1].dtype, item[2].dtype, item[3].dtype), []).append(item)
        for (w_dtype, u_dtype, v_dtype), part in by_dtype.items():
            if not triton and w_dtype == torch.float64:
                stepped += self._cxx_step(part, n, eps, backend)
                continue
            k = len(part)
            copies = _clones([u for _, _, u, _ in part] + [v for _, _, _, v in part], 2)
            olds, us, vs = copies[:2 * k], copies[2 * k:3 * k], copies[3 * k:]
            mats = [ref.weight_to_matrix(w, h.dim) for h, w, _, _ in part]
            sigmas = ops.power_iteration([m.detach() for m in mats], us, vs, n, eps, "hook", backend)
            node = _GroupNode()
            outs = _GroupApply.apply(node, triton, k, *mats, *us, *vs, *sigmas)
            stepped += [(hook, _PendingStep(weight, u, v, u_old, v_old, u_new, v_new, sigma, backend,
                                            matrix_to_weight(out, weight.shape, hook.dim), node))
                        for (hook, weight, u, v), u_old, v_old, out, u_new, v_new, sigma
                        in zip(part, olds[:k], olds[k:], outs, us, vs, sigmas)]
        return stepped

    _armed = False  # this model call's step is done (read by fastgan.integrations' forward wrapper)
    _stepped = ()  # (also for a group pickled by an older fastgan, which had no settle_)

    def __call__(self, model: torch.nn.Module, inputs) -> None:
        if model.training and not torch.compiler.is_compiling():
            self.update_()
            self._armed = True


class _SettleGroup:
    """The model's forward hook (always called, also when the forward raises): the group's settle_."""

    def __init__(self, group: SpectralNormGroup):
        self.group = group

    def __call__(self, model: torch.nn.Module, inputs, output) -> None:
        if not torch.compiler.is_compiling():
            self.group.settle_()


def spectral_norm(module: torch.nn.Module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: Optional[int] = None, *, flavour: str = "hook", backend: str = "auto") -> torch.nn.Module:
    """Spectrally normalize `module.<name>`; returns the module (as PyTorch's functions do).
    flavour "hook" is a drop-in for torch.nn.utils.spectral_norm, "parametrization" for
    torch.nn.utils.parametrizations.spectral_norm."""
    _check_args(n_power_iterations, eps, flavour, backend)
    dim = _default_dim(module, dim)
    if flavour == "hook":
        SpectralNormHook.apply(module, name, n_power_iterations, dim, eps, backend)
    else:
        weight = getattr(module, name, None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"spectral_norm: module has no parameter or buffer {name!r}")
        parametrize.register_parametrization(
            module, name, SpectralNormParametrization(weight, n_power_iterations, dim, eps, backend))
    return module


def remove_spectral_norm(module: torch.nn.Module, name: str = "weight") -> torch.nn.Module:
    """Undo spectral_norm (either flavour, fastgan's or PyTorch's), leaving W / sigma as a plain weight."""
    for k, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, (SpectralNormHook, _TorchSpectralNorm)) and hook.name == name:
            hook.remove(module)
            del module._forward_pre_hooks[k]
            return module
    if parametrize.is_parametrized(module, name):
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        return module
    raise ValueError(f"spectral_norm of {name!r} not found in {module}")


def convert_spectral_norm(model: torch.nn.Module, *, backend: str = "auto", group: bool = True) -> torch.nn.Module:
    """Swap every PyTorch spectral norm in `model` (either flavour) for fastgan's, in place, keeping
    the weights, u, v and state-dict keys. Returns the number of layers converted as
    `model._fastgan_spectral_norm_layers` and the model itself. With group=True the "hook"-flavour
    layers (fastgan's or converted) are stepped together by one SpectralNormGroup, a forward pre-hook
    on `model` (one multi-tensor power-iteration call per training forward of the model); the
    numbers stay those of each layer's own hook for any call pattern (layers the forward skips,
    submodules called directly, repeated, no_grad and eval calls: see SpectralNormGroup).
    Note a model whose training loop calls `model.forward(x)` rather than `model(x)` (Mimicry's D
    train_step) runs no module hooks: there every layer simply steps itself."""
    check_spectral_backend(backend)
    converted = 0
    for module in model.modules():
        for k, hook in list(module._forward_pre_hooks.items()):
            if type(hook) is _TorchSpectralNorm:
                module._forward_pre_hooks[k] = SpectralNormHook(hook.name, hook.n_power_iterations, hook.dim, hook.eps,
                                                                backend)
                converted += 1
        plist = getattr(module, "parametrizations", None)
        if isinstance(plist, torch.nn.ModuleDict):
            for pname, chain in plist.items():
                for idx, p in enumerate(chain):
                    if type(p).__name__ == "_SpectralNorm" and type(p).__module__ == "torch.nn.utils.parametrizations":
                        ours = SpectralNormParametrization.__new__(SpectralNormParametrization)
                        torch.nn.Module.__init__(ours)
                        ours.dim, ours.eps, ours.n_power_iterations, ours.backend = p.dim, p.eps, p.n_power_iterations, backend
                        if hasattr(p, "_u"):
                            ours.register_buffer("_u", p._u)
                            ours.register_buffer("_v", p._v)
                        ours.train(p.training)
                        chain[idx] = ours
                        converted += 1
    model._fastgan_spectral_norm_layers = converted
    if group:
        # Replace an earlier group (a second conversion) rather than stacking two.
        for k, hook in list(model._forward_pre_hooks.items()):
            if isinstance(hook, SpectralNormGroup):
                hook.settle_()
                del model._forward_pre_hooks[k]
        for k, hook in list(model._forward_hooks.items()):
            if isinstance(hook, _SettleGroup):
                del model._forward_hooks[k]
                model._forward_hooks_always_called.pop(k, None)
        sn_group = SpectralNormGroup(model.modules(), backend)
        if sn_group.entries:
            model.register_forward_pre_hook(sn_group)
            model.register_forward_hook(_SettleGroup(sn_group), always_call=True)
    return model


def _sn(module, n_power_iterations, eps, flavour, backend):
    return spectral_norm(module, n_power_iterations=n_power_iterations, eps=eps, flavour=flavour, backend=backend)


def SNLinear(in_features, out_features, bias=True, *, n_power_iterations=1, eps=1e-12, flavour="hook",
             backend="auto", **kw):
    """torch.nn.Linear with spectral norm (StudioGAN uses eps=1e-6)."""
    return _sn(torch.nn.Linear(in_features, out_features, bias, **kw), n_power_iterations, eps, flavour, backend)


def SNConv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True, *,
             n_power_iterations=1, eps=1e-12, flavour="hook", backend="auto", **kw):
    """torch.nn.Conv2d with spectral norm."""
    conv = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, **kw)
    return _sn(conv, n_power_iterations, eps, flavour, backend)


def SNConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                      bias=True, dilation=1, *, n_power_iterations=1, eps=1e-12, flavour="hook", backend="auto", **kw):
    """torch.nn.ConvTranspose2d with spectral norm over dim 1."""
    conv = torch.nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups,
                                    bias, dilation, **kw)
    return _sn(conv, n_power_iterations, eps, flavour, backend)


def SNEmbedding(num_embeddings, embedding_dim, *, n_power_iterations=1, eps=1e-12, flavour="hook", backend="auto",
                **kw):
    """torch.nn.Embedding with spectral norm (StudioGAN's class embedding of the projection head)."""
    return _sn(torch.nn.Embedding(num_embeddings, embedding_dim, **kw), n_power_iterations, eps, flavour, backend)
