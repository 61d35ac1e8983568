"""The specification: pure-PyTorch reference paths of every op (SPEC.md sections 1 to 8)."""
from .contrastive import (  # noqa: F401
    conditional_contrastive_loss,
    contrastive_lse,
    cosine_similarity_matrix,
    data2data_cross_entropy_loss,
    nt_xent_loss,
    nt_xent_loss_labels,
    supcon_loss,
    symmetric_infonce_loss,
)
from .infonce import infonce_local_global  # noqa: F401
from . import spectral_norm  # noqa: F401
