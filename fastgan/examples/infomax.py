"""The InfoMax-GAN variant of the ContraGAN example: a smaller run where the contrastive term is
InfoMax-GAN's local x global InfoNCE (fastgan.functional.infonce_local_global, Mimicry's form,
weight 0.2) in place of the 2C loss; same SN discriminator with a projection head, hinge loss and
synthetic 8x8 class-conditional data.

    python -m fastgan.examples.infomax                    # writes ./infomax_out/{samples,losses}.png
    python -m fastgan.examples.infomax --steps 100 --out /tmp/im

It prints (a) the largest relative difference of the per-step losses of each fused backend against
backend="reference" over the first --compare-steps steps, (b) time per step per backend, and
(c) the paths of the sample grid and the loss plot.
"""
from .contragan import main as _main


def main(argv=None):
    return _main(argv, description=__doc__, default_steps=1000, default_batch=32, default_infomax=True,
                 default_out="infomax_out")


if __name__ == "__main__":
    raise SystemExit(main())
