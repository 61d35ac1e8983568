"""Contrastive losses over a torch.distributed global batch (gloo, 2 and 3 CPU processes): every
rank gets the single-process loss of the concatenated batch, and its local gradients in the chosen
semantics (studiogan: d loss / d local inputs; exact: world_size times that). Unequal per-rank
batch sizes, a failing rank (the others time out instead of hanging), and spectral norm buffers
under DistributedDataParallel."""
import os
import subprocess
import sys

import pytest
import torch

from fastgan import reference as R
from fastgan.reference.contrastive import normalize_rows

sys.path.insert(0, os.path.dirname(__file__))
import dist_worker as W  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")


def launch(tmp_path, world, case, gradient="exact", backend="cpu", timeout=90):
    init = tmp_path / "init"
    procs, outs = [], []
    for rank in range(world):
        out = tmp_path / f"out{rank}.pt"
        outs.append(out)
        procs.append(subprocess.Popen([sys.executable, WORKER, str(rank), str(world), str(init), case, gradient,
                                       backend, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"rank processes hung for {timeout} s")
        results.append((p.returncode, err))
    return results, outs


def single_process(case, data, world):
    """The global-batch loss and its gradients, in float64 on the reference path."""
    t = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in data.items()}
    if case == "ntxent":
        # Each rank's block [view1; view2] keeps its positives; negatives are the whole global batch.
        z = t["z"]
        lse, _ = R.contrastive_lse(z, z, None, None, None, 2.0, 0.0, False, True, 1e-8, True, 0, [0])
        zn = normalize_rows(z, 1e-8)
        pos, start = [], 0
        for n in W.SIZES[:world]:
            blk = zn[start: start + 2 * n]
            pos.append((blk * blk.roll(n, 0)).sum(1) * 2.0)
            start += 2 * n
        loss = (lse[:, 0] - torch.cat(pos)).mean()
    else:
        loss = W.run_loss(case, t, "exact", "reference", None)
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in t.items() if v.grad is not None}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("case", ["2c", "d2d", "ntxent", "supcon", "clip", "infonce"])
def test_global_batch_loss_and_gradients(tmp_path, world, case):
    data = W.global_data(world)
    want_loss, want_grads = single_process(case, data, world)
    for gradient, factor in (("exact", world), ("studiogan", 1)):
        (tmp_path / gradient).mkdir()
        results, outs = launch(tmp_path / gradient, world, case, gradient)
        for rank, (rc, err) in enumerate(results):
            assert rc == 0, err[-2000:]
            got = torch.load(outs[rank])
            assert torch.allclose(got["loss"], want_loss, rtol=1e-10), (rank, got["loss"], want_loss)
            lo, hi = sum(W.SIZES[:rank]), sum(W.SIZES[: rank + 1])
            if case == "ntxent":
                lo, hi = 2 * lo, 2 * hi
            for k, g in got["grads"].items():
                assert torch.allclose(g, factor * want_grads[k][lo:hi], rtol=1e-9, atol=1e-12), (gradient, rank, k)


def test_failing_rank_does_not_hang_the_others(tmp_path):
    results, _ = launch(tmp_path, 2, "raise", timeout=90)
    assert results[1][0] != 0 and "rank 1 fails" in results[1][1]
    assert results[0][0] != 0  # rank 0 gave up after the process group's timeout


def test_spectral_norm_buffers_consistent_under_ddp(tmp_path):
    results, outs = launch(tmp_path, 2, "sn_ddp")
    for rc, err in results:
        assert rc == 0, err[-2000:]
    r0, r1 = torch.load(outs[0]), torch.load(outs[1])
    for a, b in zip(r0["u"] + r0["v"], r1["u"] + r1["v"]):
        assert torch.equal(a, b)


def test_bad_gradient_mode():
    import fastgan.functional as FG

    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="gradient must be one of"):
        FG.conditional_contrastive_loss(x, x, torch.tensor([0, 1, 0, 1]), process_group=True, gradient="sum")
