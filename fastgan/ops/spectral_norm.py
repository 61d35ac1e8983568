"""Spectral norm ops: the fused kernels (issue 5) are not built yet; the layers in fastgan.nn run the
reference path (fastgan/reference/spectral_norm.py). This module is where their registrations go."""
__all__ = []
