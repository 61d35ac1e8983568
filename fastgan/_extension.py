"""Loading fastgan._C: the compiled extension, else a just-in-time build, else none (one warning).

Loading the library runs its TORCH_LIBRARY registrations, which is what makes torch.ops.fastgan.*
exist. Order:
  1. `fastgan._C` built by setup.py (pip install --no-build-isolation -e .).
  2. In a source checkout, torch.utils.cpp_extension.load of the same sources (cached under
     $FASTGAN_BUILD_DIR or torch's extension cache). Set FASTGAN_JIT=0 to skip it.
  3. Neither: the "cpu"/"cuda" backends report why they are unavailable and "auto" falls back to the
     reference path, with one warning.
"""
import os
import sys
import threading
import warnings

import torch

_lock = threading.Lock()
_state = {"loaded": None, "how": None, "error": None}

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_prebuilt():
    from . import _C  # noqa: F401

    return "prebuilt fastgan._C"


def _load_jit():
    from . import _build_config as cfg
    from torch.utils.cpp_extension import load

    csrc = os.path.join(_ROOT, "csrc")
    if not os.path.isdir(csrc):
        raise RuntimeError("no csrc/ beside the package (not a source checkout)")
    with_cuda = cfg.want_cuda()
    name = "fastgan_C_jit_cuda" if with_cuda else "fastgan_C_jit"
    build_dir = os.environ.get("FASTGAN_BUILD_DIR")
    if build_dir:
        os.makedirs(build_dir, exist_ok=True)
    from torch.utils.cpp_extension import _get_build_directory

    cached = os.path.exists(os.path.join(build_dir or _get_build_directory(name, False), name + ".so"))
    if not cached:
        # A first build takes minutes and torch's loader is silent: say so, once, before it starts.
        sys.stderr.write("fastgan: no prebuilt extension; compiling " + cfg.describe_build(with_cuda)
                         + f" (cached in {build_dir or _get_build_directory(name, False)}; "
                         "`pip install --no-build-isolation -e .` builds it ahead of time, FASTGAN_JIT=0 skips it)\n")
        sys.stderr.flush()
    load(
        name=name,
        sources=cfg.sources(_ROOT, with_cuda),
        extra_include_paths=[csrc],
        extra_cflags=cfg.cxx_flags(with_cuda),
        extra_cuda_cflags=cfg.nvcc_flags(),
        extra_ldflags=cfg.link_flags(),
        build_directory=build_dir,
        is_python_module=False,
        verbose=os.environ.get("FASTGAN_VERBOSE_BUILD", "0") == "1",
    )
    return "JIT build (torch.utils.cpp_extension.load)"


def load_extension() -> bool:
    """Load the compiled ops once; True if torch.ops.fastgan's C++ ops are registered."""
    if _state["loaded"] is not None:
        return _state["loaded"]
    with _lock:
        if _state["loaded"] is not None:
            return _state["loaded"]
        errors = []
        loaders = [_load_prebuilt]
        if os.environ.get("FASTGAN_JIT", "1") != "0":
            loaders.append(_load_jit)
        for loader in loaders:
            try:
                _state["how"] = loader()
                _state["loaded"] = True
                return True
            except Exception as exc:  # ImportError, build failures: keep going, report once
                errors.append(f"{loader.__name__[1:]}: {type(exc).__name__}: {exc}".strip())
        _state["loaded"] = False
        _state["error"] = " | ".join(e.splitlines()[0] for e in errors)
        warnings.warn(
            "fastgan: the compiled extension is not available, so the 'cpu' and 'cuda' backends are "
            "off and backend='auto' uses the reference (pure PyTorch) path. Build it with "
            "`pip install --no-build-isolation -e .`. Cause: " + _state["error"],
            RuntimeWarning,
            stacklevel=3,
        )
        return False


def extension_info() -> dict:
    load_extension()
    return {"loaded": _state["loaded"], "how": _state["how"], "error": _state["error"]}


def has_cuda_kernels() -> bool:
    """True if the loaded extension was built with the CUDA kernels."""
    if not load_extension():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastgan::contrastive_lse", "CUDA")
