"""Test configuration. Triton runs on the CPU in its interpreter unless a GPU is present; the
variable must be set before triton is first imported."""
import os
import sys

# The checkout these tests belong to is the one under test, wherever it is cloned (a folder named
# `fastgan` included), whatever the working directory, and whether fastgan is installed or not (or
# installed from elsewhere): first on this process's path, and on the path of every subprocess a test
# starts (python -m fastgan, the distributed workers).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                      if p and os.path.abspath(p) != ROOT])

# Under pytest-xdist each worker gets its share of the cores (one each with -n 2 on 2 cores): two
# workers with two OpenMP threads each on two cores spin-wait on each other, which made CPU steps
# up to ~100x slower on a busy machine. Subprocesses started by tests inherit it. Set before torch
# is imported so OpenMP reads it; an explicit OMP_NUM_THREADS wins.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

import torch  # noqa: E402

if _workers > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastgan  # noqa: E402,F401


def kernel_backends():
    """The fused backends every kernel test runs on: the C++ CPU kernels and Triton always (Triton in
    its interpreter on a CPU-only machine), CUDA where a GPU is present. A missing backend fails the
    test (its error says why) rather than skipping it."""
    backends = ["cpu", "triton"]
    if torch.cuda.is_available():
        backends.append("cuda")
    return backends


def float64_backends():
    """Backends with float64 kernels: the C++ CPU kernels, and Triton in its CPU interpreter (on a GPU
    machine Triton runs on CUDA tensors, where float64 is not a supported kernel dtype)."""
    return ["cpu"] if torch.cuda.is_available() else ["cpu", "triton"]


def gradcheck(fn, inputs, backend: str, **kwargs) -> bool:
    """torch.autograd.gradcheck of a kernel backend's op. On Triton's CPU interpreter it runs in fast
    mode (one random projection u^T J v per input, checked against finite differences in the same
    direction, instead of every Jacobian entry): the interpreter pays for every kernel launch, and the
    full check took 20-54 s per case there. A wrong Jacobian entry still fails fast mode (it changes
    u^T J v for all but a measure-zero set of random directions), and the same kernels' gradients are
    compared element by element with the float64 reference's in the value-and-gradient tests.
    Tolerances are gradcheck's, the same in both modes."""
    fast = backend == "triton" and not torch.cuda.is_available()
    return torch.autograd.gradcheck(fn, inputs, fast_mode=fast, **kwargs)


def backend_device(backend: str) -> torch.device:
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def rel_err(out: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """||out - ref|| / max(||ref||, floor * sqrt(numel)) in float64 over the finite entries (absolute
    error when ref is all zeros). `floor` is for gradients that vanish mathematically (D = 1 under
    normalization, where x^ = +-1): there the error is measured against a per-element magnitude of
    `floor` instead of a rounding-level norm, i.e. an absolute error of tol * floor per element.
    Non-finite entries (-inf LSEs of empty sets) must match exactly."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), finite), f"non-finite entries differ: {out[~finite]} vs {ref[~finite]}"
    assert torch.equal(out[~finite], ref[~finite]), "non-finite values differ"
    diff = (out[finite] - ref[finite]).norm()
    denom = max(float(ref[finite].norm()), floor * float(finite.sum()) ** 0.5)
    return float(diff / denom) if denom > 0 else float(diff)


GRAD_FLOOR = 1e-2


# Tolerances of DEVELOPERS.md: relative error vs a float64 reference.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


@pytest.fixture
def gen():
    seed = int(os.environ.get("FASTGAN_TEST_SEED", "0"))
    g = torch.Generator().manual_seed(seed)
    return g


@pytest.fixture
def one_thread():
    """One CPU thread for one test, restored afterwards. The example GAN's models are tiny: one
    thread is fastest, and on a busy 2-core machine two OpenMP threads waiting on each other made
    every step ~100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_example_gan_matches_reference(backends, tolerance, steps=3, **train_kwargs):
    """Train the example GAN (fastgan.examples.contragan) for a few steps on the reference path and
    on each of `backends` with the same seed and settings; every backend's per-step losses must be
    within `tolerance` (max relative difference) of the reference's. Returns the reference history."""
    from fastgan.examples import contragan

    ref, _, _ = contragan.train("reference", steps=steps, **train_kwargs)
    for backend in backends:
        hist, times, _ = contragan.train(backend, steps=steps, **train_kwargs)
        assert len(hist) == steps and len(times) == steps
        diff = contragan.max_relative_difference(hist, ref, steps)
        assert diff < tolerance, (backend, diff, hist, ref)
    return ref


@pytest.fixture
def float64_default():
    """float64 as the default dtype for one test (Mimicry draws its noise in the default dtype, so
    float64 models need float64 noise)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
