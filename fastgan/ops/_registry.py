"""Wiring shared by every op: load the C++ library once, then attach its Python-side registrations
(fake kernels and autograd) exactly once.

Each op module (fastgan/ops/<op>.py) calls `on_extension_loaded(fn)` with a function that registers
fake + autograd for its C++ op. Triton ops are Python custom ops (torch.library.custom_op) defined
at import; their bodies import fastgan.triton_kernels (and so triton) on first call.
"""
from typing import Callable, List

from .. import _extension

_cxx_hooks: List[Callable[[], None]] = []
_done = {"cxx": False}


def on_extension_loaded(fn: Callable[[], None]) -> Callable[[], None]:
    _cxx_hooks.append(fn)
    if _done["cxx"]:
        fn()
    return fn


def ensure_cxx() -> bool:
    """Load fastgan._C and run the Python-side registrations once. Cheap after the first call."""
    if _done["cxx"]:
        return True
    if not _extension.load_extension():
        return False
    for fn in _cxx_hooks:
        fn()
    _done["cxx"] = True
    return True


def triton_module(name: str):
    """fastgan.triton_kernels.<name>, importing triton on first use."""
    import importlib

    from .._triton_loader import import_triton_kernels

    import_triton_kernels()
    return importlib.import_module("fastgan.triton_kernels." + name)
