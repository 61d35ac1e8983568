"""Public functions. Every kernel-backed function takes backend="auto"|"reference"|"cpu"|"cuda"|"triton"."""
from .contrastive import *  # noqa: F401,F403
from .infonce import *  # noqa: F401,F403
from .spectral_norm import *  # noqa: F401,F403
from .objectives import *  # noqa: F401,F403
