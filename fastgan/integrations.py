"""One-line integration with the training code people already run: Mimicry and StudioGAN.

    import fastgan.integrations as FI
    FI.mimicry(netD)                      # torch-mimicry: InfoMax-GAN's InfoNCE and the spectral norms
    FI.studiogan(losses, Gen, Dis)        # StudioGAN: its utils.losses classes and the models' spectral norms

Both change things in place and keep every number the projects compute (same losses, gradients, u, v
and state-dict keys, see tests/test_integrations.py); only the kernels differ.
"""
import functools
from typing import Optional

import torch

from . import functional as FG
from . import nn as GN

__all__ = ["mimicry", "studiogan"]


def _check_model(model, name: str) -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def mimicry(model: torch.nn.Module, *, backend: str = "auto", group: bool = True, infonce: bool = True,
            spectral_norm: bool = True) -> torch.nn.Module:
    """Swap fastgan into a torch-mimicry model (an InfoMax-GAN or SNGAN discriminator or generator), in
    place; returns the model.

    spectral_norm: every torch.nn.utils.spectral_norm layer (Mimicry's SNConv2d / SNLinear /
    SNEmbedding with their default=True) becomes fastgan's, grouped (group=True: one multi-tensor
    power iteration per forward, exact for Mimicry's call pattern of forward(real), forward(fake),
    project_features). Layers built with Mimicry's own SpectralNorm (default=False) are left alone.
    infonce: an InfoMax-GAN discriminator's `infonce_loss(l, m)` becomes fastgan's fused
    infonce_local_global in Mimicry's mode (its -10 self block), which never builds Mimicry's
    (N, HW, 1 + N*HW) logits tensor.
    The number of spectral-norm layers converted is `model._fastgan_spectral_norm_layers`."""
    _check_model(model, "model")
    if spectral_norm:
        GN.convert_spectral_norm(model, backend=backend, group=group)
        sn_group = next((h for h in model._forward_pre_hooks.values() if isinstance(h, GN.SpectralNormGroup)), None)
        if sn_group is not None and not isinstance(model.__dict__.get("forward"), _GroupedForward):
            model.forward = _GroupedForward(model, sn_group)
    if infonce and callable(getattr(model, "infonce_loss", None)):
        # An instance attribute shadows the method; a partial of a module-level function pickles.
        model.infonce_loss = functools.partial(FG.infonce_local_global, mode="mimicry", backend=backend)
    return model


class _GroupedForward:
    """model.forward for Mimicry, whose D.train_step calls self.forward(x), which runs no module
    hooks: a direct call steps the group first (through model(x) the group's pre-hook already has).
    Exactness does not depend on it (every layer would step itself); the batching does."""

    def __init__(self, model: torch.nn.Module, group: "GN.SpectralNormGroup"):
        self.model, self.group, self.forward = model, group, type(model).forward

    def __call__(self, *args, **kwargs):
        group = self.group
        if group._armed:
            group._armed = False  # called by model(...): its pre-hook stepped the group, its forward hook settles it
            return self.forward(self.model, *args, **kwargs)
        if not self.model.training or torch.compiler.is_compiling():
            return self.forward(self.model, *args, **kwargs)
        group.update_()
        try:
            return self.forward(self.model, *args, **kwargs)
        finally:
            group.settle_()  # what the model's forward hook does on a model(...) call


# StudioGAN's (src/utils/losses.py) loss classes and their fastgan drop-ins (same constructor and
# forward signatures).
STUDIOGAN_LOSSES = {
    "ConditionalContrastiveLoss": GN.ConditionalContrastiveLoss,
    "Data2DataCrossEntropyLoss": GN.Data2DataCrossEntropyLoss,
}


def studiogan(losses, *models: torch.nn.Module, backend: str = "auto", group: bool = True,
              gradient: Optional[str] = None) -> None:
    """Swap fastgan into a StudioGAN run, in place.

    losses: StudioGAN's `utils.losses` module; its ConditionalContrastiveLoss (ContraGAN's 2C) and
    Data2DataCrossEntropyLoss (ReACGAN's D2D-CE) classes are replaced by fastgan's, so every criterion
    built afterwards (StudioGAN's WORKER builds them in its __init__) is fastgan's. The originals stay
    in `losses._fastgan_originals`.
    models: StudioGAN models (Gen, Dis, ...) whose torch.nn.utils.spectral_norm layers (utils/ops.py's
    snconv2d / snlinear / sn_embedding) become fastgan's, grouped when group=True.
    gradient: the DDP gradient of the contrastive losses ("studiogan", the default of fastgan's
    classes, reproduces StudioGAN's GatherLayer; "exact" is the true gradient of the global loss)."""
    missing = [name for name in STUDIOGAN_LOSSES if not isinstance(getattr(losses, name, None), type)]
    if missing:
        raise ValueError(f"losses must be StudioGAN's utils.losses module: it has no class {', '.join(missing)}")
    originals = getattr(losses, "_fastgan_originals", None)
    if originals is None:
        originals = {name: getattr(losses, name) for name in STUDIOGAN_LOSSES}
        losses._fastgan_originals = originals
    for name, cls in STUDIOGAN_LOSSES.items():
        defaults = dict(backend=backend)
        if gradient is not None:
            defaults["gradient"] = gradient
        setattr(losses, name, _with_defaults(cls, defaults))
    for i, model in enumerate(models):
        GN.convert_spectral_norm(_check_model(model, f"models[{i}]"), backend=backend, group=group)


def _with_defaults(cls, defaults):
    """cls with keyword defaults (backend, gradient) bound, still a class (isinstance, subclassing)."""
    if not defaults:
        return cls

    def __init__(self, *args, **kwargs):
        cls.__init__(self, *args, **{**defaults, **kwargs})

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                       "__doc__": cls.__doc__})
