"""The end-to-end ContraGAN example: a few steps on the CPU with one seed give the same losses,
step by step, on every fused backend as on the reference path (float32 rounding)."""
import pytest
import torch

from fastgan.examples import contragan

from conftest import assert_example_gan_matches_reference, kernel_backends

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("infomax", [False, True])
def test_backends_give_the_same_losses_step_by_step(infomax):
    # The example trains on CPU tensors: every backend but "cuda".
    ref = assert_example_gan_matches_reference([b for b in kernel_backends() if b != "cuda"], contragan.TOLERANCE,
                                               batch=16, infomax=infomax)
    assert all(abs(v) < 1e3 for h in ref for v in h.values())


def test_example_cli_writes_plots(tmp_path, capsys):
    assert contragan.main(["--steps", "6", "--compare-steps", "2", "--batch", "16", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(a) losses over the first 2 steps" in out and "cpu" in out
    assert " 2C " in out and "InfoNCE" not in out
    assert (tmp_path / "samples.png").exists() and (tmp_path / "losses.png").exists()
    # Readable at a glance: at least 800 px wide.
    import matplotlib.image

    assert matplotlib.image.imread(str(tmp_path / "losses.png")).shape[1] >= 800


def test_infomax_cli(tmp_path, capsys):
    from fastgan.examples import infomax

    assert infomax.main(["--steps", "3", "--compare-steps", "2", "--batch", "8", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "max relative difference" in out
    assert (tmp_path / "samples.png").exists()
    # The contrastive term is InfoMax-GAN's InfoNCE here, and the log says so.
    assert "InfoNCE" in out and " 2C " not in out, out
    assert "milliseconds" in out and "seconds per" not in out


def test_comparison_detects_a_different_run():
    # The check in (a) is not vacuous: a run that differs (another seed) is far outside the tolerance.
    a, _, _ = contragan.train("reference", steps=2, batch=8)
    b, _, _ = contragan.train("reference", steps=2, batch=8, seed=1)
    assert contragan.max_relative_difference(b, a, 2) > 1e-2
