"""Triton kernels of fastgan, installed as `fastgan.triton_kernels` (never as a top-level
`triton_kernels`, a name another PyPI package owns). One module per op; each states its tiling and
floor at the top. Registered as torch.library custom ops in fastgan/ops/<op>.py."""
