"""torch.library registrations: for each op, fake kernels and autograd of the C++ op, the Triton
custom op, and a dispatcher taking a resolved backend name. One module per op."""
from . import contrastive_loss, contrastive_lse, cosine_similarity_matrix, infonce_lse, spectral_norm  # noqa: F401
