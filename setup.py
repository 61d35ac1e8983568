"""Build fastgan._C: the C++ CPU kernels always, the CUDA kernels when a CUDA toolchain is usable.

Knobs (environment):
  FASTGAN_CUDA=1|0      force the CUDA build on (e.g. a build machine without a GPU) or off.
                        Default: on when torch was built with CUDA and nvcc is found.
  TORCH_CUDA_ARCH_LIST  honoured by torch.utils.cpp_extension (e.g. "8.0;9.0").
  MAX_JOBS              parallel compile jobs for ninja (honoured by torch.utils.cpp_extension).
  FASTGAN_NATIVE=0      build the CPU kernels without -march=native (portable binaries).
  FASTGAN_NO_EXTENSION=1  install the pure-Python package only (reference and Triton paths).

Install with the torch you already have:  pip install --no-build-isolation -e .
(or let scripts/test.sh set up a virtual environment, torch included).
"""
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "fastgan"))
# One list of sources and flags shared with the JIT fallback (fastgan/_build_config.py).
import _build_config as cfg  # noqa: E402

sys.path.pop(0)

packages = find_packages(include=["fastgan", "fastgan.*"]) + ["fastgan.triton_kernels"]
package_dir = {"fastgan.triton_kernels": "triton_kernels"}

ext_modules = []
cmdclass = {}
NO_TORCH = """
fastgan's build compiles against the PyTorch already installed, and none was found here.
Install torch first, then build without build isolation (an isolated build cannot see it):

  CPU only:  pip install torch --index-url https://download.pytorch.org/whl/cpu
  CUDA:      pip install torch            (the CUDA build; other CUDA versions: https://pytorch.org)
  then:      pip install --no-build-isolation -e .

or run scripts/test.sh, which does all of it in a virtual environment (.venv).
FASTGAN_NO_EXTENSION=1 installs the pure-Python package only (reference and Triton paths).
"""

if os.environ.get("FASTGAN_NO_EXTENSION", "0") != "1":
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit(NO_TORCH)
    from torch.utils import cpp_extension

    with_cuda = cfg.want_cuda()
    sources = cfg.sources(ROOT, with_cuda)
    Ext = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    ext_modules.append(
        Ext(
            name="fastgan._C",
            sources=[os.path.relpath(s, ROOT) for s in sources],
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cfg.cxx_flags(with_cuda), "nvcc": cfg.nvcc_flags()},
            extra_link_args=cfg.link_flags(),
            py_limited_api=False,
        )
    )

    class BuildExtension(cpp_extension.BuildExtension):
        def run(self):
            # One line before minutes of silent compiling (pip hides the compiler's output).
            sys.stderr.write("fastgan: building " + cfg.describe_build(with_cuda) + "\n")
            super().run()

    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    include_package_data=False,
)
