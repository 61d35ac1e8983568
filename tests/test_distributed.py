"""Contrastive losses over a torch.distributed global batch (gloo, 2 and 3 CPU processes): every
rank gets the single-process loss of the concatenated batch, and its local gradients in the chosen
semantics (studiogan: d loss / d local inputs; exact: world_size times that). Unequal per-rank
batch sizes, a failing rank (the others time out instead of hanging), and spectral norm buffers
under DistributedDataParallel."""
import os
import subprocess
import sys
import time

import pytest
import torch

from fastgan import reference as R
from fastgan.reference.contrastive import normalize_rows

sys.path.insert(0, os.path.dirname(__file__))
import dist_worker as W  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")


def launch(tmp_path, world, case, gradient="exact", backend="cpu", timeout=180):
    """Start `world` rank processes and wait for all of them (one shared deadline). Their stderr
    goes to files, not pipes: a rank blocked on a full pipe would stall its peers' collectives."""
    init = tmp_path / "init"
    procs, outs, logs = [], [], []
    # One thread per rank (the ranks share the machine's cores) and MKL's thread count fixed: under
    # load MKL_DYNAMIC may otherwise pick a different thread count, hence a different gemv reduction
    # order, in each rank, and the ranks' own spectral-norm updates would differ in the last bit.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MKL_DYNAMIC="FALSE")
    for rank in range(world):
        out, log = tmp_path / f"out{rank}.pt", tmp_path / f"err{rank}.txt"
        outs.append(out)
        logs.append(log)
        with open(log, "w") as f:
            procs.append(subprocess.Popen([sys.executable, WORKER, str(rank), str(world), str(init), case, gradient,
                                           backend, str(out)], stdout=subprocess.DEVNULL, stderr=f, env=env))
    deadline = time.monotonic() + timeout
    hung = []
    for rank, p in enumerate(procs):
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            hung.append(rank)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    results = [(p.returncode, log.read_text()) for p, log in zip(procs, logs)]
    if hung:  # the workers dump their Python stacks (faulthandler) before the deadline
        pytest.fail(f"ranks {hung} hung for {timeout} s:\n" + "\n".join(e[-3000:] for _, e in results))
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
    results, outs = launch(tmp_path, world, case, "exact,studiogan")
    for rank, (rc, err) in enumerate(results):
        assert rc == 0, err[-2000:]
    for gradient, factor in (("exact", world), ("studiogan", 1)):
        for rank in range(world):
            got = torch.load(outs[rank])[gradient]
            assert torch.allclose(got["loss"], want_loss, rtol=1e-10), (rank, got["loss"], want_loss)
            lo, hi = sum(W.SIZES[:rank]), sum(W.SIZES[: rank + 1])
            if case == "ntxent":
                lo, hi = 2 * lo, 2 * hi
            assert set(got["grads"]) == set(want_grads), (gradient, rank, set(got["grads"]))
            for k, g in got["grads"].items():
                assert torch.allclose(g, factor * want_grads[k][lo:hi], rtol=1e-9, atol=1e-12), (gradient, rank, k)


def test_failing_rank_does_not_hang_the_others(tmp_path):
    results, _ = launch(tmp_path, 2, "raise")
    assert results[1][0] != 0 and "rank 1 fails" in results[1][1]
    assert results[0][0] != 0  # rank 0 gave up after the process group's timeout


def test_spectral_norm_buffers_consistent_under_ddp(tmp_path):
    results, outs = launch(tmp_path, 2, "sn_ddp")
    for rc, err in results:
        assert rc == 0, err[-2000:]
    r0, r1 = torch.load(outs[0]), torch.load(outs[1])
    for i, (a, b) in enumerate(zip(r0["u"] + r0["v"], r1["u"] + r1["v"])):
        assert torch.equal(a, b), (i, (a - b).abs().max().item())


def test_bad_gradient_mode():
    import fastgan.functional as FG

    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="gradient must be one of"):
        FG.conditional_contrastive_loss(x, x, torch.tensor([0, 1, 0, 1]), process_group=True, gradient="sum")
