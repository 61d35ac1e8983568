"""Per-architecture launch configurations of the Triton kernels (one configuration per case, no autotune).

Why a table and not @triton.autotune: the interpreter (CI) runs exactly one configuration, a launch must
stay deterministic and free of host syncs, and bench/triton_aot.py must know, without a GPU, what a GPU
would compile. The architecture comes from the tensor's device (sm_80 class, sm_90 class); on the CPU
(interpreter) a small configuration keeps the tests fast. bench/triton_aot.py forces an architecture
with `force_arch` to compile what that GPU would run.

Retune: edit a row below, then check it compiles clean for both targets with one command (no GPU
needed; the table shows registers, spills, shared memory and HMMA/HGMMA per launch):
    python3 bench/triton_aot.py --out docs/triton_compile_table.md
A timing sweep on a GPU (candidate rows x benchmark sizes) is not written yet: rows were chosen from
the compile table alone (zero spills, tensor cores), not from measured times.
"""
import contextlib

import torch

_FORCED = None


@contextlib.contextmanager
def force_arch(arch):
    """Make the wrappers choose the configuration of `arch` (80, 90) whatever the tensors' device."""
    global _FORCED
    saved, _FORCED = _FORCED, arch
    try:
        yield
    finally:
        _FORCED = saved


def arch_of(x: torch.Tensor):
    """80 (Ampere class: sm_80/86/89), 90 (Hopper and newer), or None for the CPU interpreter."""
    if _FORCED is not None:
        return _FORCED
    if x.device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(x.device)
    return 90 if major >= 9 else 80


def pow2_clamp(x, lo, hi):
    """The power of two >= x, clamped to [lo, hi] (tile sides: tl.dot needs at least 16)."""
    p = 1
    while p < x:
        p *= 2
    return max(lo, min(hi, p))


_HALF = (torch.float16, torch.bfloat16)

# contrastive_lse: (arch, half?) -> tiles and launch options. BLOCK_N x BLOCK_M score tiles built over
# BLOCK_D slices of D; the backward's gradient accumulator is BLOCK_N (or BLOCK_M) x BLOCK_DU, kept in
# registers (BLOCK_DU = the power of two >= D, up to the cap: larger D takes D / cap programs per block).
# Hopper: 64-row tiles and 4 warps (one warpgroup) let tl.dot lower to wgmma (HGMMA) for half inputs.
_CONTRASTIVE = {
    (80, True): dict(BLOCK_N=64, BLOCK_M=64, BLOCK_D=64, DU_CAP=128, num_warps=8, num_stages=2),
    (80, False): dict(BLOCK_N=64, BLOCK_M=64, BLOCK_D=16, DU_CAP=64, num_warps=8, num_stages=1),
    (90, True): dict(BLOCK_N=64, BLOCK_M=64, BLOCK_D=32, DU_CAP=128, num_warps=8, num_stages=2),
    (90, False): dict(BLOCK_N=64, BLOCK_M=64, BLOCK_D=16, DU_CAP=64, num_warps=8, num_stages=1),
}


def contrastive(arch, dtype, d):
    """(constexprs, launch options) of the contrastive_lse kernels for an (N, d) input on `arch`."""
    c = _CONTRASTIVE[(arch, dtype in _HALF)]
    cfg = dict(BLOCK_N=c["BLOCK_N"], BLOCK_M=c["BLOCK_M"], BLOCK_D=min(c["BLOCK_D"], pow2_clamp(d, 16, 64)),
               BLOCK_DU=pow2_clamp(d, 16, c["DU_CAP"]))
    return cfg, dict(num_warps=c["num_warps"], num_stages=c["num_stages"])


# infonce_lse: (arch, half?) -> BLOCK_M images x BLOCK_K flattened columns score tiles over BLOCK_R
# channel slices; the backward's accumulators are BLOCK_M (BLOCK_K) x BLOCK_RU channels, in registers.
# float32 (sm_80 and sm_90): 32-image tiles with an explicit .maxnreg 128; without it ptxas stopped at 80-128
# registers and spilled 20-40 B (R=1536), with 4 warps it went to 255 registers and spilled 336-448 B.
_INFONCE = {
    (80, True): dict(BLOCK_M=64, BLOCK_K=64, BLOCK_R=64, RU_CAP=128, num_warps=8, num_stages=2),
    (80, False): dict(BLOCK_M=32, BLOCK_K=64, BLOCK_R=16, RU_CAP=64, num_warps=8, num_stages=1, maxnreg=128),
    (90, True): dict(BLOCK_M=64, BLOCK_K=64, BLOCK_R=64, RU_CAP=128, num_warps=8, num_stages=2),
    (90, False): dict(BLOCK_M=32, BLOCK_K=64, BLOCK_R=16, RU_CAP=64, num_warps=8, num_stages=1, maxnreg=128),
}


def infonce(arch, dtype, n, hw, r):
    """(constexprs, launch options) of the infonce_lse kernels for l (n, r, hw) on `arch`."""
    c = _INFONCE[(arch, dtype in _HALF)]
    cfg = dict(BLOCK_M=pow2_clamp(n, 16, c["BLOCK_M"]), BLOCK_K=pow2_clamp(n * hw, 16, c["BLOCK_K"]),
               BLOCK_R=pow2_clamp(r, 16, c["BLOCK_R"]), BLOCK_RU=pow2_clamp(r, 16, c["RU_CAP"]))
    return cfg, {k: c[k] for k in ("num_warps", "num_stages", "maxnreg") if k in c}


# cosine_similarity_matrix's scaled GEMM: (arch, half?) -> (BLOCK_M, BLOCK_N, BLOCK_K cap), options.
_GEMM = {
    (80, True): ((64, 64, 64), dict(num_warps=4, num_stages=3)),
    (80, False): ((64, 64, 32), dict(num_warps=4, num_stages=2)),
    (90, True): ((64, 128, 64), dict(num_warps=4, num_stages=3)),
    (90, False): ((64, 64, 32), dict(num_warps=4, num_stages=2)),
}


def gemm(arch, dtype, k):
    (bm, bn, bk), launch = _GEMM[(arch, dtype in _HALF)]
    return (bm, bn, min(bk, pow2_clamp(k, 16, 64))), dict(launch)
