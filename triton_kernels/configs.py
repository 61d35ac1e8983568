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
import os

import torch

_FORCED = None
# The SM count a forced architecture plans for (bench/triton_aot.py, tests/test_launch_plan.py): an
# H100 SXM / H200 (132 SMs); a real device reports its own.
H100_SMS = 132
_SMS = {}
# Column split forced on (tests: the interpreter then runs the split-and-merge path at tiny sizes).
# None: chosen from the shapes and the SM count (1 in the interpreter, which has no SMs to fill).
_FORCED_SPLIT = {"n": int(os.environ["FASTGAN_TRITON_SPLIT"]) if os.environ.get("FASTGAN_TRITON_SPLIT") else None}


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


@contextlib.contextmanager
def force_split(n):
    """Split every swept dimension into (up to) n parts, whatever the SM count (None: the normal choice)."""
    saved, _FORCED_SPLIT["n"] = _FORCED_SPLIT["n"], n
    try:
        yield
    finally:
        _FORCED_SPLIT["n"] = saved


def sm_count(x: torch.Tensor):
    """Streaming multiprocessors the launch should fill: the device's (a cached property query, no
    sync), H100_SMS for a forced architecture, None in the interpreter."""
    if _FORCED is not None:
        return H100_SMS
    if x.device.type != "cuda":
        return None
    idx = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if idx not in _SMS:
        _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SMS[idx]


def split_plan(programs, tiles, x):
    """(splits, tiles per split) for a kernel whose grid has `programs` programs, each sweeping `tiles`
    tiles of one dimension: split that sweep into equal runs of tiles when the programs alone do not
    reach one program per SM. A pure function of the shapes and the device's SM count (no host sync,
    no data-dependent choice), so the merge order, and with it every bit of the result, is fixed for
    a given shape and device. Each program then handles at least one tile; at most one partial state
    per (row, split) is written, and the merge reads the splits in order 0, 1, 2, ..."""
    tiles = max(1, int(tiles))
    want = _FORCED_SPLIT["n"]
    if want is None:
        sms = sm_count(x)
        want = 1 if sms is None else -(-sms // max(1, int(programs)))
    want = max(1, min(int(want), tiles))
    per = -(-tiles // want)
    return -(-tiles // per), per


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
    return _tiles(_CONTRASTIVE[(arch, dtype in _HALF)], d)


def _tiles(c, d):
    # A table row for an (N, d) input: the D slice at most the power of two >= d, BLOCK_DU up to its cap.
    cfg = dict(BLOCK_N=c["BLOCK_N"], BLOCK_M=c["BLOCK_M"], BLOCK_D=min(c["BLOCK_D"], pow2_clamp(d, 16, 64)),
               BLOCK_DU=pow2_clamp(d, 16, c["DU_CAP"]))
    return cfg, dict(num_warps=c["num_warps"], num_stages=c["num_stages"])


# loss_terms' same-class cosine sums (SupCon's positive term): the contrastive_lse tiles, with the
# backward's accumulator (BLOCK_N x BLOCK_DU, float32 operands for every input type) capped at 64 and
# D slices of at most 32: with contrastive_lse's 64 (half, sm_80) the backward spilled 24-32 bytes at
# D = 100 (bench/triton_aot.py --only loss_terms); with these no configuration spills.
_SAME_CLASS = {k: dict(c, BLOCK_D=min(c["BLOCK_D"], 32), DU_CAP=64) for k, c in _CONTRASTIVE.items()}


def same_class_cosine(arch, dtype, d):
    """(constexprs, launch options) of the same-class cosine kernels for an (N, d) input on `arch`."""
    return _tiles(_SAME_CLASS[(arch, dtype in _HALF)], d)


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
