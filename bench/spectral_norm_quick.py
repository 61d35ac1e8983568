"""CPU benchmark: the spectral-norm work of one training step of a StudioGAN-like SN-ResNet
discriminator for 32x32 images (train mode: power iteration + W / sigma for every SN layer),
fastgan vs torch.nn.utils.spectral_norm on the same layers, side by side in one run.

    python bench/spectral_norm_quick.py [--repeats 200] [--eps 1e-6] [--threads N]

Two timings per implementation: "forward" (what the forward pre-hooks / parametrizations of all SN
layers do in one training-mode forward: power iteration, then W / sigma) and "fwd+bwd" (the same,
then the backward of sum_i <G_i, W_i / sigma_i> into every weight_orig, i.e. the spectral-norm part
of the discriminator's backward).

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
    return [layer.weight for layer in layers]


def step_parametrized(layers):
    return [layer.weight for layer in layers]  # each access runs the parametrization


def fwd_bwd(forward, layers, grads):
    outs = forward()
    torch.autograd.backward(outs, grads)
    for layer in layers:
        for p in layer.parameters():
            p.grad = None


def time_round_robin(fns, repeats):
    """Median time of each fn in microseconds, sampled in turn (fn0, fn1, ..., fn0, ...) so that load
    from other processes on a shared machine hits every implementation alike."""
    for fn in fns:
        for _ in range(10):
            fn()
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [statistics.median(x) * 1e6 for x in samples]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    par = lambda m, eps: torch.nn.utils.parametrizations.spectral_norm(m, eps=eps)  # noqa: E731
    theirs = build(torch.nn.utils.spectral_norm, args.eps)
    theirs_par = build(par, args.eps)
    ours = build(lambda m, eps: GN.spectral_norm(m, eps=eps, backend="cpu"), args.eps)
    ours_par = build(lambda m, eps: GN.spectral_norm(m, eps=eps, backend="cpu", flavour="parametrization"), args.eps)
    ours_ref = build(lambda m, eps: GN.spectral_norm(m, eps=eps, backend="reference"), args.eps)
    grouped = build(lambda m, eps: GN.spectral_norm(m, eps=eps, backend="cpu"), args.eps)
    group = GN.SpectralNormGroup(grouped)

    def group_step():
        group.update_()  # the model's pre-hook: every layer stepped in one call, as pending steps
        return step(grouped)  # each layer's own hook commits its step (u, v and W / sigma), as in a forward

    total = sum(layer.weight_orig.numel() for layer in theirs)
    print(f"{len(SHAPES)} SN layers, {total} weight elements (float32), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    grads = [torch.randn_like(layer.weight_orig) for layer in theirs]
    cases = [
        ("torch.nn.utils.spectral_norm (hook)", theirs, lambda: step(theirs)),
        ("torch parametrizations.spectral_norm", theirs_par, lambda: step_parametrized(theirs_par)),
        ("fastgan reference (per layer)", ours_ref, lambda: step(ours_ref)),
        ("fastgan cpu (hook, per layer)", ours, lambda: step(ours)),
        ("fastgan cpu (parametrization)", ours_par, lambda: step_parametrized(ours_par)),
        ("fastgan cpu (multi-tensor group)", grouped, group_step),
    ]
    fwd_times = time_round_robin([fwd for _, _, fwd in cases], args.repeats)
    fb_times = time_round_robin([(lambda f=fwd, l=layers: fwd_bwd(f, l, grads)) for _, layers, fwd in cases],
                                max(args.repeats // 2, 10))
    rows = [(name, f, fb) for (name, _, _), f, fb in zip(cases, fwd_times, fb_times)]
    base_f, base_fb = rows[0][1], rows[0][2]
    print(f"  {'':38s} {'forward':>10s} {'vs hook':>8s} {'fwd+bwd':>10s} {'vs hook':>8s}")
    for name, f, fb in rows:
        print(f"  {name:38s} {f:8.1f}us {base_f / f:7.2f}x {fb:8.1f}us {base_fb / fb:7.2f}x")
    # The same u, v and weights after identical step counts (sanity, not timing).
    assert len(fwd_times) == len(cases)
    for a, b in zip(theirs, grouped):
        assert torch.allclose(a.weight_u, b.weight_u, atol=1e-6)


if __name__ == "__main__":
    main()
