"""A small class-conditional ContraGAN that trains on the CPU in a few minutes, with no download.

    python -m fastgan.examples.contragan                 # ContraGAN: SN discriminator + projection + 2C
    python -m fastgan.examples.contragan --infomax       # InfoMax-GAN variant (also fastgan.examples.infomax)
    python -m fastgan.examples.contragan --steps 50 --out /tmp/cg

Data: a synthetic class-conditional set of 8x8 images (one smooth random template per class plus
noise; a fixed seed makes it the same everywhere). Model: MLP generator with a class embedding; SN
conv discriminator (fastgan.nn.SNConv2d / SNLinear / SNEmbedding) with a projection head, an SN
linear projection of its feature for the 2C loss and the class embedding as proxy (StudioGAN's
ContraGAN), hinge adversarial loss, cond_lambda 1. fastgan spectral norm: its fused CPU power
iteration on the fused runs, its reference path on the reference run. With --infomax the contrastive
term is InfoMax-GAN's local x global InfoNCE (weight 0.2, D on reals, G on fakes) between an SN 1x1
conv projection of D's feature map and an SN linear projection of its pooled feature, in place of 2C
(the projection head stays, so samples are still per class).

It shows:
  (a) with one seed, the fastgan backends ("cpu", and "triton" when TRITON_INTERPRET=1 or a GPU is
      present) and "reference" give the same losses step by step over the first steps;
  (b) time per step for each backend;
  (c) a PNG grid of generated samples per class and a plot of the losses (needs matplotlib).
"""
import argparse
import os
import time

import torch
import torch.nn.functional as TF

import fastgan.functional as FG
import fastgan.nn as GN
from fastgan.backend import unavailable_reason

IMG, NOISE = 8, 16
# Largest relative difference of any per-step loss against the reference that float32 rounding
# explains (measured: ~1e-7 on the cpu and triton backends over the first steps).
TOLERANCE = 1e-4


def make_dataset(num_classes: int, per_class: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, 1, 4, 4, generator=g)
    templates = TF.interpolate(templates, size=(IMG, IMG), mode="bilinear", align_corners=False)
    templates = torch.tanh(2 * templates)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    x = templates[y] + 0.15 * torch.randn(len(y), 1, IMG, IMG, generator=g)
    return x.clamp(-1, 1), y


class Generator(torch.nn.Module):
    def __init__(self, num_classes: int, width: int = 128):
        super().__init__()
        self.embed = torch.nn.Embedding(num_classes, NOISE)
        self.net = torch.nn.Sequential(torch.nn.Linear(2 * NOISE, width), torch.nn.ReLU(),
                                       torch.nn.Linear(width, width), torch.nn.ReLU(),
                                       torch.nn.Linear(width, IMG * IMG), torch.nn.Tanh())

    def forward(self, z, y):
        return self.net(torch.cat([z, self.embed(y)], dim=1)).view(-1, 1, IMG, IMG)


def spectral_norm_backend(backend: str) -> str:
    """fastgan's spectral norm has 'reference' and 'cpu' kernels (its CUDA/Triton kernels are not
    written yet): the fused runs use the fused CPU power iteration, the reference run the reference."""
    return "reference" if backend == "reference" else ("cpu" if unavailable_reason("cpu", torch.device("cpu")) is None
                                                       else "reference")


class Discriminator(torch.nn.Module):
    """SN conv trunk; adversarial output linear(h) + <embed(y), h>; 2C embedding = SN linear(h);
    proxy = SN class embedding. With local_dim, also local (N, R, HW) and global (N, R) features
    for the InfoMax-GAN InfoNCE."""

    def __init__(self, num_classes: int, ch: int = 32, feat: int = 64, embed_dim: int = 32, local_dim: int = 0,
                 backend: str = "auto"):
        super().__init__()
        sn = dict(eps=1e-6, backend=spectral_norm_backend(backend))
        self.c1 = GN.SNConv2d(1, ch, 3, padding=1, **sn)
        self.c2 = GN.SNConv2d(ch, 2 * ch, 3, stride=2, padding=1, **sn)
        self.fc = GN.SNLinear(2 * ch * (IMG // 2) ** 2, feat, **sn)
        self.head = GN.ProjectionHead(feat, num_classes, backend=sn["backend"])
        self.embed_linear = GN.SNLinear(feat, embed_dim, **sn)
        self.proxy = GN.SNEmbedding(num_classes, embed_dim, **sn)
        self.local_dim = local_dim
        if local_dim:
            self.local_proj = GN.SNConv2d(2 * ch, local_dim, 1, **sn)
            self.global_proj = GN.SNLinear(feat, local_dim, **sn)

    def forward(self, x, y):
        fmap = TF.leaky_relu(self.c2(TF.leaky_relu(self.c1(x), 0.1)), 0.1)
        h = TF.leaky_relu(self.fc(fmap.flatten(1)), 0.1)
        out = {"adv": self.head(h, y), "embed": self.embed_linear(h), "proxy": self.proxy(y)}
        if self.local_dim:
            out["local"] = self.local_proj(fmap).flatten(2)  # (N, R, HW)
            out["global"] = self.global_proj(h)  # (N, R)
        return out


def train(backend: str, steps: int = 2000, batch: int = 64, num_classes: int = 10, seed: int = 0, infomax: bool = False,
          temperature: float = 1.0, lr: float = 2e-4, log_every: int = 0, *, device: str = "cpu",
          autocast=None, grad_scaler: bool = False):
    """Train from `seed`; return per-step losses (dicts), seconds per step and the generator.
    Mixed precision (tests/test_mixed_precision.py): `autocast` a dtype (torch.bfloat16 /
    torch.float16) runs the forwards and losses under torch.autocast(device, dtype); grad_scaler=True
    adds a torch.amp.GradScaler (CUDA)."""
    torch.manual_seed(seed)
    x_all, y_all = make_dataset(num_classes, 100, seed)
    x_all, y_all = x_all.to(device), y_all.to(device)
    gen = Generator(num_classes).to(device)
    disc = Discriminator(num_classes, local_dim=32 if infomax else 0, backend=backend).to(device)
    amp = dict(device_type=torch.device(device).type, dtype=autocast, enabled=autocast is not None)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=grad_scaler)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    data_gen = torch.Generator().manual_seed(seed + 1)
    history, times = [], []

    # The drop-in StudioGAN layer; as in every StudioGAN ContraGAN config, embed and proxy are
    # L2-normalized (F.normalize) before the loss.
    criterion_2c = GN.ConditionalContrastiveLoss(num_classes, temperature, backend=backend)
    hinge = GN.HingeLoss()

    def contrastive(out, y):
        if infomax:
            # InfoMax-GAN: local x global InfoNCE (Mimicry's form) with weight 0.2, D on reals, G on fakes.
            return 0.2 * FG.infonce_local_global(out["local"], out["global"], backend=backend)
        return criterion_2c(TF.normalize(out["embed"], dim=1), TF.normalize(out["proxy"], dim=1), y)

    for step in range(steps):
        t0 = time.perf_counter()
        idx = torch.randint(0, len(y_all), (batch,), generator=data_gen).to(device)
        real, y = x_all[idx], y_all[idx]
        z = torch.randn(batch, NOISE, generator=data_gen).to(device)
        y_fake = torch.randint(0, num_classes, (batch,), generator=data_gen).to(device)
        # D step: hinge on D(real) and D(fake) in one graph, plus 2C on reals.
        with torch.autocast(**amp):
            fake = gen(z, y_fake).detach()
            out_r, out_f = disc(real, y), disc(fake, y_fake)
            d_adv = hinge.d(out_r["adv"], out_f["adv"])
            d_con = contrastive(out_r, y)
        opt_d.zero_grad()
        scaler.scale(d_adv + d_con).backward()
        scaler.step(opt_d)
        scaler.update()
        # G step: hinge on D(G(z)) plus 2C on fakes.
        with torch.autocast(**amp):
            out_g = disc(gen(z, y_fake), y_fake)
            g_adv = hinge.g(out_g["adv"])
            g_con = contrastive(out_g, y_fake)
        opt_g.zero_grad()
        scaler.scale(g_adv + g_con).backward()
        scaler.step(opt_g)
        scaler.update()
        times.append(time.perf_counter() - t0)
        history.append({k: v.item() for k, v in dict(d_adv=d_adv, d_con=d_con, g_adv=g_adv, g_con=g_con).items()})
        if log_every and (step % log_every == 0 or step == steps - 1):
            h = history[-1]
            print(f"  [{backend}] step {step:4d}  D adv {h['d_adv']:.3f} 2C {h['d_con']:.3f} | "
                  f"G adv {h['g_adv']:.3f} 2C {h['g_con']:.3f}")
    return history, times, gen


def backends_here():
    out = ["reference"]
    for b in ("cpu", "cuda", "triton"):
        if unavailable_reason(b, torch.device("cpu")) is None:
            out.append(b)
    return out


def max_relative_difference(a, b, steps):
    worst = 0.0
    for ha, hb in zip(a[:steps], b[:steps]):
        for k in ha:
            worst = max(worst, abs(ha[k] - hb[k]) / max(abs(hb[k]), 1e-6))
    return worst


def save_outputs(history, gen, num_classes, out_dir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        print(f"(no plots: matplotlib unavailable: {exc})")
        return []
    os.makedirs(out_dir, exist_ok=True)
    with torch.no_grad():
        z = torch.randn(8 * num_classes, NOISE, generator=torch.Generator().manual_seed(123))
        y = torch.arange(num_classes).repeat_interleave(8)
        imgs = gen(z, y).view(num_classes, 8, IMG, IMG)
    fig, axes = plt.subplots(num_classes, 8, figsize=(8, num_classes))
    for c in range(num_classes):
        for j in range(8):
            axes[c, j].imshow(imgs[c, j].numpy(), cmap="gray", vmin=-1, vmax=1)
            axes[c, j].axis("off")
    fig.suptitle("generated samples, one row per class")
    grid = os.path.join(out_dir, "samples.png")
    fig.savefig(grid, dpi=60)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k in history[0]:
        ax.plot([h[k] for h in history], label=k)
    ax.set_xlabel("step")
    ax.legend()
    curves = os.path.join(out_dir, "losses.png")
    fig.savefig(curves, dpi=80)
    plt.close(fig)
    return [grid, curves]


def main(argv=None, *, description=__doc__, default_steps=2000, default_batch=64, default_infomax=False,
         default_out="contragan_out"):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=default_steps)
    p.add_argument("--compare-steps", type=int, default=5, help="steps over which the backends are compared")
    p.add_argument("--time-steps", type=int, default=20,
                   help="steps run (and timed) on the backends other than 'cpu', which trains --steps")
    p.add_argument("--batch", type=int, default=default_batch)
    p.add_argument("--infomax", action="store_true", default=default_infomax,
                   help="InfoMax-GAN's local x global InfoNCE in place of the 2C loss")
    p.add_argument("--out", default=default_out)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: this model is too small to gain from more, and on a busy "
                        "2-core machine OpenMP threads waiting on each other made steps ~100x slower)")
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error("--threads must be >= 1")
    torch.set_num_threads(a.threads)
    backends = backends_here()
    print(f"backends: {backends}")
    for b in ("cpu", "triton"):
        if b not in backends:
            print(f"  (skipping {b!r}: {unavailable_reason(b, torch.device('cpu'))})")
    runs = {}
    for b in backends:
        n = a.steps if b == "cpu" else max(a.compare_steps, min(a.time_steps, a.steps))
        runs[b] = train(b, steps=n, batch=a.batch, infomax=a.infomax, log_every=250 if b == "cpu" else 0)
    ref_hist = runs["reference"][0]
    print(f"\n(a) losses over the first {a.compare_steps} steps, against backend='reference' "
          f"(float32; pass below {TOLERANCE:.0e}):")
    ok = True
    for b, (hist, times, _) in runs.items():
        diff = max_relative_difference(hist, ref_hist, a.compare_steps)
        ok &= diff < TOLERANCE
        print(f"  {b:<10} max relative difference {diff:.2e}  {'ok' if diff < TOLERANCE else 'MISMATCH'}")
    print("\n(b) seconds per training step (D and G updates):")
    for b, (hist, times, _) in runs.items():
        t = sorted(times[1:] or times)
        print(f"  {b:<10} median {t[len(t) // 2] * 1e3:.1f} ms over {len(times)} steps")
    hist, _, gen = runs["cpu" if "cpu" in runs else "reference"]
    files = save_outputs(hist, gen, 10, a.out)
    if files:
        print("\n(c) wrote " + ", ".join(files))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
