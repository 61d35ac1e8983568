"""pytest-benchmark suite over the same cases as `python -m fastgan bench` (fastgan/benchmark/cases.py):

    pytest bench/ --benchmark-only                      # CPU quick preset
    FASTGAN_BENCH_PRESET=default pytest bench/ --benchmark-only
Each benchmark is one forward+backward of one path of one case; groups are cases, so
pytest-benchmark's table shows the paths of a case side by side.
"""
import os

import pytest
import torch

from fastgan.benchmark import cases as C
from fastgan.benchmark.timing import _fresh

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PRESET = os.environ.get("FASTGAN_BENCH_PRESET", "quick")
CASES = C.cases(C.OPS, PRESET, DEVICE, torch.float32)
PARAMS = [(case, name) for case in CASES for name in C.paths(case)
          if not (name == "studiogan_style" and case.size[0] ** 2 * case.size[1] > 2e8)]


@pytest.mark.parametrize("case,path", PARAMS, ids=[f"{c.label}-{p}" for c, p in PARAMS])
def test_forward_backward(benchmark, case, path):
    benchmark.group = case.label
    fn = C.paths(case)[path]
    tensors, labels = C.make_inputs(case)

    def step():
        out = fn(*_fresh(tensors, labels))
        if out.requires_grad:
            out.backward()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    out = benchmark(step)
    assert torch.isfinite(out).all()
