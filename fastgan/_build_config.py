"""Sources and compiler flags of fastgan._C, shared by setup.py and the JIT fallback.

Kept free of torch imports at module level so setup.py can import it by path.
"""
import glob
import os
import shutil


def want_cuda() -> bool:
    forced = os.environ.get("FASTGAN_CUDA")
    if forced is not None:
        return forced == "1"
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None and shutil.which("nvcc") is not None


def sources(root: str, with_cuda: bool) -> list:
    csrc = os.path.join(root, "csrc")
    files = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    files += sorted(glob.glob(os.path.join(csrc, "ops", "*.cpp")))
    files += sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    if with_cuda:
        files += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        files += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cpp")))
    return files


def cxx_flags(with_cuda: bool) -> list:
    flags = ["-O3", "-std=c++17", "-fopenmp", "-DFASTGAN_WITH_CUDA=%d" % int(with_cuda)]
    if os.environ.get("FASTGAN_NATIVE", "1") == "1":
        # The kernels lean on the compiler's vectorizer for the exp/max loops; -march=native
        # gives AVX2/AVX-512 where the build machine has it. FASTGAN_NATIVE=0 for portable wheels.
        flags.append("-march=native")
    return flags


def nvcc_flags() -> list:
    return ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr"]


def link_flags() -> list:
    return ["-fopenmp"]
