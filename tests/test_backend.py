"""Backend selection, the FASTGAN_BACKEND override, errors for unavailable backends, the extension
loading and the layout (triton_kernels only under fastgan)."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import fastgan
from fastgan.backend import BackendUnavailableError, available_backends, resolve_backend


def test_auto_on_cpu_is_the_fused_cpu_kernel():
    assert fastgan.extension_info()["loaded"], fastgan.extension_info()
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"


def test_env_override(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    monkeypatch.setenv("FASTGAN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="CUDA tensors"):
        resolve_backend("auto", torch.device("cpu"))
    monkeypatch.setenv("FASTGAN_BACKEND", "nope")
    with pytest.raises(ValueError, match="FASTGAN_BACKEND must be one of"):
        resolve_backend("auto", torch.device("cpu"))


def test_explicit_backend_is_not_overridden(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    assert resolve_backend("cpu", torch.device("cpu")) == "cpu"


def test_available_backends_reasons():
    av = available_backends(torch.device("cpu"))
    assert set(av) == {"reference", "cpu", "cuda", "triton"}
    assert av["reference"] is None and av["cpu"] is None
    assert "CUDA tensors" in av["cuda"]


def test_ops_are_registered():
    for op in ("contrastive_lse", "contrastive_lse_backward", "cosine_similarity_matrix",
               "cosine_similarity_matrix_backward", "contrastive_lse_triton", "cosine_similarity_matrix_triton"):
        assert hasattr(torch.ops.fastgan, op), op
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastgan::contrastive_lse", "CPU")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_built_wheel_has_no_top_level_triton_kernels(tmp_path):
    # PyPI has its own top-level `triton_kernels`: the wheel must hold ours only as
    # fastgan/triton_kernels. Checked on a real wheel of the sources (the pure-Python one:
    # FASTGAN_NO_EXTENSION=1 packs the same files without compiling), built from a copy so the
    # checkout's build/ is untouched, whatever the clone's folder is called.
    import shutil
    import zipfile

    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")
    for name in ("fastgan", "triton_kernels", "csrc"):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=ignore)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    env = dict(os.environ, FASTGAN_NO_EXTENSION="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = (tmp_path / "dist").glob("fastgan-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"fastgan"}, sorted(top)
    assert "fastgan/triton_kernels/__init__.py" in names and "fastgan/triton_kernels/contrastive_lse.py" in names
    top_level = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    for n in top_level:
        assert zipfile.ZipFile(wheel).read(n).decode().split() == ["fastgan"]


def test_triton_kernels_load_as_fastgan_triton_kernels_only():
    # At run time ours is fastgan.triton_kernels (installed, or loaded from the checkout's folder under
    # that name), and loading it never creates a top-level `triton_kernels` module.
    from fastgan._triton_loader import import_triton_kernels

    module = import_triton_kernels()
    assert module.__name__ == "fastgan.triton_kernels"
    homes = {os.path.join(ROOT, "triton_kernels"), os.path.join(os.path.dirname(fastgan.__file__), "triton_kernels")}
    assert os.path.dirname(os.path.realpath(module.__file__)) in {os.path.realpath(h) for h in homes}, module.__file__
    assert "triton_kernels" not in sys.modules


def test_import_without_extension_warns_once_and_falls_back(tmp_path):
    # A process where the compiled library can be neither imported nor built: one warning, and
    # backend="auto" runs the reference path.
    code = (
        "import sys, warnings\n"
        "sys.modules['fastgan._C'] = None\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import fastgan, torch\n"
        "    import fastgan.functional as F\n"
        "    e = torch.randn(4, 3); y = torch.tensor([0, 1, 0, 1])\n"
        "    out = F.conditional_contrastive_loss(e, e, y)\n"
        "    out2 = F.conditional_contrastive_loss(e, e, y)\n"
        "msgs = [str(x.message) for x in w if 'compiled extension' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "print(fastgan.backend.resolve_backend('auto', torch.device('cpu')))\n"
    )
    env = dict(os.environ, FASTGAN_JIT="0")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "reference"


def test_specification_citations_point_into_the_repository():
    # Docstrings and the README cite the specification as "docs/semantics.md section N": it must be in
    # the repository, with every cited section, and nothing may cite the old file outside it.
    import re

    headings = set(re.findall(r"^## (\d+)\. ", open(os.path.join(ROOT, "docs", "semantics.md")).read(), re.M))
    cited, stale = set(), []
    for folder in ("fastgan", "triton_kernels", "csrc", "tests", "bench"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith((".py", ".cpp", ".h", ".cu", ".md")):
                    text = open(os.path.join(dirpath, name), encoding="utf-8").read()
                    cited |= {m for a, b in re.findall(r"semantics\.md sections? (\d+)(?: to (\d+))?", text)
                              for m in ([a] if not b else map(str, range(int(a), int(b) + 1)))}
                    if "SPEC" + ".md" in text:
                        stale.append(os.path.join(dirpath, name))
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "SPEC" + ".md" not in readme and not stale, stale
    assert cited and cited <= headings, sorted(cited - headings)


def test_install_without_torch_says_how_to_install_it():
    # `pip install .` where torch is missing (or hidden by build isolation): one message with the CPU
    # and the CUDA install commands, not a bare ModuleNotFoundError.
    code = ("import runpy, sys\n"
            "sys.modules['torch'] = None\n"
            "sys.argv = ['setup.py', '--version']\n"
            "runpy.run_path('setup.py', run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k != "FASTGAN_NO_EXTENSION"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert res.returncode != 0
    assert "download.pytorch.org/whl/cpu" in res.stderr and "CUDA:" in res.stderr, res.stderr
    assert "--no-build-isolation" in res.stderr and "Traceback" not in res.stderr, res.stderr


def _keep_torch_cuda_home(monkeypatch):
    # ensure_cuda_home also sets torch.utils.cpp_extension.CUDA_HOME: restored after the test.
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)


def _fake_nvcc(tmp_path, top):
    # A wrapper script like /usr/local/bin/nvcc: torch's guess from its location would be tmp_path.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    nvcc = bindir / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho '#$ TOP={top}/bin/..' >&2\n")
    nvcc.chmod(0o755)
    return str(bindir)


def test_cuda_home_comes_from_nvcc_itself(tmp_path, monkeypatch):
    from fastgan import _build_config as cfg

    _keep_torch_cuda_home(monkeypatch)
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    monkeypatch.setenv("PATH", _fake_nvcc(tmp_path, toolkit) + os.pathsep + os.environ["PATH"])
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert cfg.cuda_home_from_nvcc() == os.path.realpath(toolkit)
    assert cfg.ensure_cuda_home() == os.path.realpath(toolkit) and os.environ["CUDA_HOME"] == os.path.realpath(toolkit)


def test_cuda_build_without_headers_fails_at_once_naming_cuda_home(tmp_path, monkeypatch):
    from fastgan import _build_config as cfg

    _keep_torch_cuda_home(monkeypatch)
    monkeypatch.setenv("PATH", _fake_nvcc(tmp_path, tmp_path / "nowhere") + os.pathsep + os.environ["PATH"])
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    with pytest.raises(RuntimeError, match="CUDA_HOME"):
        cfg.ensure_cuda_home()
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"CUDA_HOME=.*no include/cuda_runtime\.h"):
        cfg.ensure_cuda_home()
