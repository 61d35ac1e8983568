"""One rank of a gloo test (tests/test_distributed.py): computes a loss over the global batch with
process_group, backpropagates, and saves the loss and the local gradients."""
import datetime
import faulthandler
import os
import sys

import torch
import torch.distributed as dist

import fastgan.functional as FG
import fastgan.nn as GN

SIZES = [5, 7, 6]  # unequal per-rank batch sizes
KEEP_ALIVE = []  # objects whose teardown must not run before os._exit (see the sn_ddp case)
D = 4


def global_data(world):
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES[:world])
    return {
        "x": torch.randn(n, D, generator=g, dtype=torch.float64),
        "p": torch.randn(n, D, generator=g, dtype=torch.float64),
        "y": torch.randint(0, 3, (n,), generator=g),
        "z": torch.randn(2 * n, D, generator=g, dtype=torch.float64),  # rank blocks of [view1; view2]
        "l": torch.randn(n, D, 3, generator=g, dtype=torch.float64),
    }


def local(data, world, rank):
    lo, hi = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
    out = {k: v[lo:hi] for k, v in data.items() if k != "z"}
    out["z"] = data["z"][2 * lo: 2 * hi]
    return out


def run_loss(case, t, gradient, backend, group):
    kw = dict(process_group=group, gradient=gradient, backend=backend)
    if case == "2c":
        return FG.conditional_contrastive_loss(t["x"], t["p"], t["y"], 0.5, **kw)
    if case == "d2d":
        return FG.data2data_cross_entropy_loss(t["x"], t["p"], t["y"], 0.5, 0.9, **kw)
    if case == "ntxent":
        return FG.nt_xent_loss(t["z"], 0.5, **kw)
    if case == "supcon":
        return FG.supcon_loss(t["x"], t["y"], 0.3, **kw)
    if case == "clip":
        return FG.symmetric_infonce_loss(t["x"], t["p"], 0.2, **kw)
    if case == "infonce":
        return FG.infonce_local_global(t["l"], t["p"], **kw)
    raise KeyError(case)


def main():
    rank, world, init, case, gradient, backend, out = sys.argv[1:8]
    rank, world = int(rank), int(world)
    # If this rank is still alive near the test's deadline, print every thread's stack to stderr
    # (the test shows it) and exit, so a hang is diagnosable instead of a bare timeout.
    faulthandler.dump_traceback_later(150, exit=True)
    # The collectives' timeout: short for the failing-rank case (the survivor must give up), generous
    # otherwise (a loaded CI machine can take many seconds to start the peer's interpreter).
    timeout = 10 if case == "raise" else 120
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))
    if case == "raise":
        if rank == 1:
            raise RuntimeError("rank 1 fails before the collective")
        t = local(global_data(world), world, rank)
        run_loss("2c", t, gradient, backend, True)  # waits for rank 1 until the gloo timeout
        return
    if case == "sn_ddp":
        torch.manual_seed(100 + rank)  # different u, v (and weights) per rank before DDP syncs them
        model = torch.nn.Sequential(GN.SNLinear(D, 8), torch.nn.ReLU(), GN.SNLinear(8, 1))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(rank)
        for _ in range(3):
            loss = ddp(torch.randn(4, D, generator=g, dtype=torch.float32)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.save({"u": [model[0].weight_u.clone(), model[2].weight_u.clone()],
                    "v": [model[0].weight_v.clone(), model[2].weight_v.clone()]}, out)
        dist.destroy_process_group()
        # DDP's reducer holds the gloo process group: freeing it with main's locals joins gloo's
        # threads, which can wait on a peer that already left (a CI run hung there, after main had
        # returned). Keep it alive until os._exit.
        KEEP_ALIVE.append(ddp)
        return
    t = local(global_data(world), world, rank)
    results = {}
    for mode in gradient.split(","):  # one process start for several gradient modes
        leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in t.items()}
        loss = run_loss(case, leaves, mode, backend, True)
        loss.backward()
        results[mode] = {"loss": loss.detach(), "grads": {k: v.grad for k, v in leaves.items() if v.grad is not None}}
    torch.save(results, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Leave without interpreter teardown: the result file is written and the group destroyed, and
    # nothing after this point is under test (gloo's and the thread pools' teardown can wait on a
    # peer that already left).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
