"""Sources and compiler flags of fastgan._C, shared by setup.py and the JIT fallback.

Kept free of torch imports at module level so setup.py can import it by path.
"""
import glob
import os
import re
import shutil
import subprocess

# Rough wall-clock times of a first build, said before it starts so the wait explains itself.
BUILD_MINUTES = {False: "about 6 minutes on 2 cores", True: "about 8 minutes on 2 cores"}


def cuda_home_from_nvcc():
    """The CUDA toolkit root that the `nvcc` on PATH belongs to, or None without an nvcc.

    torch.utils.cpp_extension guesses CUDA_HOME as nvcc's grandparent folder. Where nvcc is a wrapper
    script (/usr/local/bin/nvcc exec-ing the real one) that guess is /usr/local and the glue fails
    with `cuda_runtime.h: No such file or directory`. nvcc itself knows its root: `--dryrun` prints
    `TOP=<root>` (the same place .ci/nvcc_check.sh reads the include path from)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        res = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=120)
        for line in (res.stderr + res.stdout).splitlines():
            m = re.match(r"#\$ TOP=(.+)", line.strip())
            if m:
                return os.path.realpath(m.group(1).strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _has_cuda_headers(home) -> bool:
    return bool(home) and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))


def ensure_cuda_home() -> str:
    """Set CUDA_HOME (environment and torch.utils.cpp_extension) to a toolkit root with headers, or
    raise at once with a message naming CUDA_HOME, before minutes of compiling fail on a header."""
    given = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    home = given if given else cuda_home_from_nvcc()
    if not _has_cuda_headers(home):
        where = f"CUDA_HOME={given}" if given else f"the toolkit of `nvcc` on PATH ({home})" if home else "no nvcc on PATH"
        raise RuntimeError(
            f"fastgan CUDA build: no CUDA toolkit headers found ({where} has no include/cuda_runtime.h). "
            "Set CUDA_HOME to the toolkit root (the folder with bin/nvcc and include/cuda_runtime.h), "
            "or FASTGAN_CUDA=0 to build the CPU kernels only.")
    os.environ["CUDA_HOME"] = home
    import sys

    cpp_extension = sys.modules.get("torch.utils.cpp_extension")
    if cpp_extension is not None:  # already imported: its module-level guess is what the build uses
        cpp_extension.CUDA_HOME = home
    return home


def want_cuda() -> bool:
    """Whether to build the CUDA kernels; when yes, CUDA_HOME is set from nvcc (ensure_cuda_home)."""
    forced = os.environ.get("FASTGAN_CUDA")
    if forced is not None:
        wanted = forced == "1"
    else:
        import torch

        wanted = torch.version.cuda is not None and shutil.which("nvcc") is not None
    if wanted:
        ensure_cuda_home()
    return wanted


def describe_build(with_cuda: bool) -> str:
    """What a build of fastgan._C compiles and roughly how long it takes: the one line printed
    before a build (setup.py, the JIT fallback, scripts/), so a wait of minutes explains itself."""
    what = "the C++ CPU kernels and the CUDA kernels" if with_cuda else "the C++ CPU kernels"
    if with_cuda:
        what += f", CUDA_HOME={os.environ.get('CUDA_HOME')}"
    jobs = os.environ.get("MAX_JOBS")
    return f"fastgan._C ({what}): {BUILD_MINUTES[with_cuda]}{' with MAX_JOBS=' + jobs if jobs else ''} the first time, " \
           "seconds when nothing changed"


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
