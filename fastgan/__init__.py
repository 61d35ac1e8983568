"""fastgan: fused CUDA, Triton and C++ kernels for the losses and layers GAN training spends its time in.

    import fastgan.functional as FG      # losses and ops as functions, each with backend=...
    import fastgan.nn as GN              # drop-in modules (StudioGAN / Mimicry / torch.nn.utils)

    import fastgan.integrations as FI    # one line into Mimicry / StudioGAN training code

Backends: "auto" | "reference" | "cpu" | "cuda" | "triton" (see fastgan.backend).
Debug mode: FASTGAN_DEBUG=1 or fastgan.set_debug(True) runs every data-dependent argument check
(label ranges, word masks, finite inputs) on every device, CUDA included (a host sync per check).
"""
__version__ = "0.1.0"

from . import backend  # noqa: F401
from ._extension import extension_info, load_extension  # noqa: F401
from .ops import _registry as _ops_registry
from . import ops  # noqa: F401  (registers the ops' Python sides)
from . import functional, nn  # noqa: F401, E402
from . import integrations  # noqa: F401, E402
from ._checks import debug_enabled, set_debug  # noqa: F401, E402


def _load_prebuilt_quietly():
    # A prebuilt extension loads at import (cheap) so torch.ops.fastgan.* exist before any
    # torch.compile trace; a JIT build waits for the first call that needs it.
    import importlib.util

    if importlib.util.find_spec("fastgan._C") is not None:
        _ops_registry.ensure_cxx()


_load_prebuilt_quietly()
