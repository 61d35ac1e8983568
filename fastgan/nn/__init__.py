"""Drop-in modules: StudioGAN's contrastive losses, Mimicry's InfoNCE, torch.nn.utils' spectral norms,
and the GAN objectives of the source papers."""
from .contrastive import *  # noqa: F401,F403
from .infonce import *  # noqa: F401,F403
from .spectral_norm import *  # noqa: F401,F403
from .objectives import *  # noqa: F401,F403
