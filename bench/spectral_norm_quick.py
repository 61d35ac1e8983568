"""CPU benchmark: the spectral-norm work of one training step of a StudioGAN-like SN-ResNet
discriminator for 32x32 images (train mode: power iteration + W / sigma for every SN layer),
fastgan vs torch.nn.utils.spectral_norm on the same layers, side by side in one run.

    python bench/spectral_norm_quick.py [--repeats 200] [--eps 1e-6]

Layers (StudioGAN resnet32 D, d_conv_dim 128, 10 classes; weight shape -> W_mat shape):
  block1 (optimized): conv1 128x3x3x3, conv2 128x128x3x3, conv0 128x3x1x1
  block2 (down):      conv1 128x128x3x3, conv2 128x128x3x3, conv0 128x128x1x1
  block3, block4:     conv1 128x128x3x3, conv2 128x128x3x3
  linear1 1x128, embedding 10x128
"""
import argparse
import statistics
import time

import torch

import fastgan.nn as GN

SHAPES = [
    ("block1.conv1", "conv", (3, 128, 3)), ("block1.conv2", "conv", (128, 128, 3)), ("block1.conv0", "conv", (3, 128, 1)),
    ("block2.conv1", "conv", (128, 128, 3)), ("block2.conv2", "conv", (128, 128, 3)), ("block2.conv0", "conv", (128, 128, 1)),
    ("block3.conv1", "conv", (128, 128, 3)), ("block3.conv2", "conv", (128, 128, 3)),
    ("block4.conv1", "conv", (128, 128, 3)), ("block4.conv2", "conv", (128, 128, 3)),
    ("linear1", "linear", (128, 1)), ("embedding", "embedding", (10, 128)),
]


def make_layer(kind, args):
    if kind == "conv":
        return torch.nn.Conv2d(args[0], args[1], args[2], padding=args[2] // 2)
    if kind == "linear":
        return torch.nn.Linear(*args)
    return torch.nn.Embedding(*args)


def build(sn, eps):
    torch.manual_seed(0)
    return [sn(make_layer(kind, args), eps=eps) for _, kind, args in SHAPES]


def step(layers):
    # What each layer's forward pre-hook does in a training step: update u, v, set weight = W / sigma.
    for layer in layers:
        for hook in layer._forward_pre_hooks.values():
            hook(layer, None)


def time_it(fn, repeats):
    for _ in range(20):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--eps", type=float, default=1e-6)
    args = ap.parse_args()
    theirs = build(torch.nn.utils.spectral_norm, args.eps)
    ours = build(lambda m, eps: GN.spectral_norm(m, eps=eps, backend="cpu"), args.eps)
    ours_ref = build(lambda m, eps: GN.spectral_norm(m, eps=eps, backend="reference"), args.eps)
    grouped = build(lambda m, eps: GN.spectral_norm(m, eps=eps, backend="cpu"), args.eps)
    group = GN.SpectralNormGroup(grouped)
    total = sum(layer.weight_orig.numel() for layer in theirs)
    print(f"{len(SHAPES)} SN layers, {total} weight elements (float32), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    rows = [
        ("torch.nn.utils.spectral_norm", time_it(lambda: step(theirs), args.repeats)),
        ("fastgan reference (per layer)", time_it(lambda: step(ours_ref), args.repeats)),
        ("fastgan cpu (per layer)", time_it(lambda: step(ours), args.repeats)),
        ("fastgan cpu (multi-tensor group)", time_it(group.update_, args.repeats)),
    ]
    base = rows[0][1]
    for name, us in rows:
        print(f"  {name:34s} {us:9.1f} us   {base / us:5.2f}x")
    # The same u, v and weights after identical step counts (sanity, not timing).
    for a, b in zip(theirs, grouped):
        assert torch.allclose(a.weight_u, b.weight_u, atol=1e-6)


if __name__ == "__main__":
    main()
