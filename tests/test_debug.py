"""Debug mode (FASTGAN_DEBUG=1 / fastgan.set_debug): every data-dependent check on every device."""
import os
import subprocess
import sys

import pytest
import torch

import fastgan
import fastgan.functional as FG


@pytest.fixture
def debug():
    before = fastgan.debug_enabled()
    fastgan.set_debug(True)
    yield
    fastgan.set_debug(before)


def test_environment_variable_turns_it_on():
    code = "import fastgan; print(fastgan.debug_enabled())"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for value, want in (("1", "True"), ("0", "False"), ("", "False")):
        env = dict(os.environ, FASTGAN_DEBUG=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True)
        assert out.stdout.strip() == want, (value, out.stderr[-2000:])


def test_non_finite_inputs_raise_only_in_debug_mode(debug):
    e = torch.randn(6, 4)
    e[2, 1] = float("nan")
    with pytest.raises(ValueError, match="embed holds 1 non-finite"):
        FG.conditional_contrastive_loss(e, torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 2, 2]))
    with pytest.raises(ValueError, match="z holds 1 non-finite"):
        FG.nt_xent_loss(e)
    fastgan.set_debug(False)
    assert torch.isnan(FG.nt_xent_loss(e))  # outside debug mode NaN propagates, as in PyTorch
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fastgan.set_debug("yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-only difference: label checks skipped there")
def test_cuda_label_range_checked_in_debug_mode_only(debug):
    e = torch.randn(4, 8, device="cuda")
    y = torch.tensor([0, 1, 5, 1], device="cuda")
    with pytest.raises(ValueError, match="num_classes=3"):
        FG.conditional_contrastive_loss(e, e, y, num_classes=3)
    with pytest.raises(ValueError, match="no words"):
        FG.word_region_scores(torch.randn(2, 3, 4, device="cuda"), torch.randn(2, 5, 4, device="cuda"),
                              torch.tensor([[1, 1, 0], [0, 0, 0]], device="cuda").bool())
    fastgan.set_debug(False)
    FG.conditional_contrastive_loss(e, e, y, num_classes=3)  # no host sync outside debug mode: unchecked


def test_cpu_label_range_always_checked():
    with pytest.raises(ValueError, match="num_classes=3"):
        FG.conditional_contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), torch.tensor([0, 1, 5, 1]), num_classes=3)
