"""The performance model's arithmetic (fastgan/benchmark/perf_model.py) and the committed H200
predictions (docs/gpu_predictions.md), which must be what the model computes."""
import math
import os

import pytest
import torch

from fastgan.benchmark import perf_model as PM

R = PM.Rates(mma_flops=1e12, bandwidth=1e11, launch_s=1e-6)


def test_compute_bound_plus_launches():
    # 2 TFLOP at 1 TFLOP/s = 2 s; 1 GB at 100 GB/s = 0.01 s; 3 launches of 1 us.
    assert PM.predict(2e12, 1e9, 3, R) == pytest.approx(2.0 + 3e-6, rel=1e-12)
    assert PM.bound(2e12, 1e9, R) == "compute"


def test_memory_bound_without_launches():
    assert PM.predict(1e9, 5e11, 0, R) == pytest.approx(5.0, rel=1e-12)
    assert PM.bound(1e9, 5e11, R) == "memory"


def test_launch_bound_small_op():
    # A 2C step at N = 64, D = 512 in bfloat16 on the H200 rates: ~0.1 us of work, 49 launches.
    high = PM.H200["bfloat16"]["high"]
    flops, nbytes = 2.0 * 64 * 64 * 512 * 3, 2.0 * 128 * 512 * 2
    t = PM.predict(flops, nbytes, 49, high)
    assert t == pytest.approx(max(flops / 790e12, nbytes / 4.3e12) + 49 * 3e-6, rel=1e-12)
    assert 49 * 3e-6 / t > 0.99


def test_rejects_negative_work():
    with pytest.raises(ValueError, match="launches"):
        PM.predict(1.0, 1.0, -1, R)


def test_targets():
    low = PM.H200["bfloat16"]["low"]
    assert PM.tensor_core_floor(65536, 1024, low) == pytest.approx(6 * 65536 ** 2 * 1024 / 790e12, rel=1e-12)
    # 2 MB of weights at 3 TB/s, 100 launches of 5 us, times 2.
    assert PM.sn_target(2e6, 100, low) == pytest.approx(2 * (4e6 / 3e12 + 100 * 5e-6), rel=1e-12)
    assert PM.assumed_sn_launches(12) == (12, 266)


@pytest.mark.parametrize("model", ["sngan32", "sngan128"])  # 12 and 20 layers: the same grouped count
def test_assumed_sn_launches_are_the_counted_ones(model):
    # The benchmark's SN-GAN step, counted as the committed predictions are (Triton launches in
    # the interpreter, not executed, plus every non-view ATen op): grouped Triton and PyTorch's hook.
    import fastgan.nn as GN
    from fastgan.benchmark.cases import SN_TORCH, Case, _Use, sn_layers, sn_step

    case = Case("spectral_norm", (model,), "cpu", torch.float32)
    grouped = GN.convert_spectral_norm(sn_layers(case, lambda m: GN.spectral_norm(m, backend="triton")),
                                       backend="triton", group=True)
    hook = sn_layers(case, SN_TORCH["torch_hook"])
    counts = []
    for layers in (grouped, hook):
        use = _Use(layers)
        triton_launches, aten = PM.count_launches_cpu(lambda: sn_step(layers, use), [], execute=False)
        counts.append(len(triton_launches) + len(aten))
    assert tuple(counts) == PM.assumed_sn_launches(case.n)


def test_no_rates_off_a_gpu():
    assert PM.measure_rates("cpu", torch.bfloat16) is None
    assert PM.rates_dict(None) == {}


def test_prediction_rows_are_the_formula():
    rows = PM.prediction_rows(PM.H200["bfloat16"])
    sizes = {(r["op"], r["size"]) for r in rows}
    assert ("2c", "64x512") in sizes and ("2c", "65536x1024") in sizes and ("spectral_norm", "sngan32") in sizes
    for r in rows:
        for k, rates in PM.H200["bfloat16"].items():
            want = (max(r["flops"] / rates.mma_flops, r["bytes"] / rates.bandwidth) + r["launches"] * rates.launch_s)
            assert math.isclose(r[f"pred_{k}_us"], want * 1e6, rel_tol=1e-12)


def test_committed_predictions_are_the_models():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "gpu_predictions.md")
    with open(path) as f:
        doc = f.read()
    assert PM.markdown_table(PM.prediction_rows(PM.H200["bfloat16"])) in doc
