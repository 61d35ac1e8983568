"""Every CUDA loss step captured in a CUDA graph (issue 14.1: no host syncs, so a loss can be captured).

Forward + backward of each loss on the CUDA backend (the composition of fastgan's CUDA kernels, the
single-process mean), warmed up on a side stream, captured once, then replayed on new inputs copied
into the captured tensors: the replay must give the bits of an eager step on those inputs. A host
sync anywhere in the step (a value read back, a data-dependent size, a per-call host-to-device copy
from pageable memory) makes the capture raise. On the CPU, tests/test_loss_terms.py checks the same
steps' ATen ops for host syncs (test_cuda_composition_has_no_host_sync).
Needs a GPU: skipped only when CUDA is absent."""
import pytest
import torch

from fastgan.benchmark import cases as C

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")

# (N, D), InfoNCE (N, HW, R): odd sizes, more than one 32-row tile.
SIZES = {"infonce": (12, 16, 24)}
OPS = ["cosine_similarity_matrix", "2c", "d2d", "ntxent", "supcon", "clip", "infonce"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_loss_step_replays_in_a_cuda_graph(op, dtype):
    size = SIZES.get(op, (70, 96))
    case = C.Case(op, size, "cuda", dtype)
    tensors, labels = C.make_inputs(case, seed=1)
    fused, _ = C.LOSS[op]
    xs = [t.detach().clone().requires_grad_() for t in tensors]

    def step():
        out = fused(*xs, *labels, backend="cuda")
        return (out,) + torch.autograd.grad(out, xs)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, as torch.cuda.graphs asks
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    fresh, _ = C.make_inputs(case, seed=2)
    with torch.no_grad():
        for x, f in zip(xs, fresh):
            x.copy_(f)
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, step()):
        assert torch.equal(got, want)
