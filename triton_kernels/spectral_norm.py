"""Triton kernels of spectral normalization (contract: fastgan/ops/spectral_norm.py, docs/semantics.md section 7).

  power iteration  multi-tensor: every layer of a call in a constant number of launches, whatever
                   the number of layers (the design of csrc/cuda/spectral_norm.cu; apex's
                   multi_tensor_apply is the same idea). The host builds, once per call, an int64
                   descriptor table with one row per layer (W's address, shape and strides, u / v /
                   sigma addresses and strides, offsets into one float32 (float64) working buffer,
                   first tile of each pass) and two tile tables (tile -> layer) for the two passes:
                     cols pass  x = W^T u (W's columns are the outputs),   then v = nrm(x)
                     rows pass  x = W v   (W's rows are the outputs),      then u = nrm(x)
                   A program takes one tile of BLOCK_O outputs of one layer: so many small layers
                   share a launch and a big layer spreads over many programs. Per half step:
                     _mv_tiles_kernel     the tile's outputs (full dot products over the layer's
                                          other dimension, CT accumulation), stored raw into the
                                          working buffer, and the tile's sum of squares into
                                          partials[tile];
                     _norm_tiles_kernel   the layer's partials summed in a fixed order (the same in
                                          every program of the layer: the same bits), the tile
                                          divided by max(||x||, eps) into the working buffer and
                                          the caller's u or v (its dtype, in place); the layer's
                                          first tile writes sigma = ||x||^2 / max(||x||, eps)
                                          (= <u, W v>, no extra pass over W) after the last one.
                   => 4 launches per step for the whole call (n steps: 4 n), no atomics,
                   deterministic, and a layer's results do not depend on the other layers in the
                   call (multi-tensor == per-layer, bitwise). Layers of different dtypes (W, u/v)
                   form separate groups (pointer element types are compile-time): 4 n launches per
                   distinct dtype pair, in practice one.
                   n == 0 (eval): sigma = <u, W v> with the stored u, v and NOTHING written to u, v
                   (sigma_): rows-pass tiles write partials of <u, W v>, a per-layer kernel sums
                   them: 2 launches for the whole call.
                   Addresses travel as int64 and are cast to pointers in the kernel; this works on
                   a GPU and in the interpreter (which dereferences host addresses of CPU tensors).
  apply            one elementwise pass: out = W / sigma (any strides in, contiguous out); sigma is
                   read on the device (no host synchronization). Per layer; or for a whole group of
                   one dtype in ONE launch (apply_group: a descriptor table and tile -> layer table
                   as above, row-major tiles of _BLOCK_E elements, u and v snapshotted in the same
                   kernel), whose backward is TWO launches (apply_group_backward).
  apply_backward   G / sigma - (<G, W> / sigma^2) u v^T without atomics: a tile kernel writes one
                   partial of <G, W> per tile, then every program of the elementwise kernel sums the
                   partials in the same fixed order (deterministic) and writes its tile.
Floor: power iteration 2 |W| reads per step; apply |W| read + |W| written; backward 2 |W| + |G|
reads and |W| written.
"""
import struct
from typing import List

import torch
import triton
import triton.language as tl


def _ct(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# Element types of the pointers cast from the descriptor table's addresses.
_ELEMENT = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
            torch.float64: tl.float64}


# Descriptor row of one layer (int64). Addresses are cast to pointers of the group's element types.
_F_W, _F_M, _F_N, _F_SM, _F_SN, _F_U, _F_SU, _F_V, _F_SV, _F_OFF_U, _F_OFF_V = range(11)
_F_COL0, _F_COLS, _F_ROW0, _F_ROWS, _F_SIGMA = range(11, 16)
_NF = 16


@triton.jit
def _pass_view(d, COLS: tl.constexpr):
    # The layer's half step seen as out = A x: (n_out, n_red, stride_out, stride_red, x address,
    # x stride, out-vector address and stride, working offsets of x and out, first tile, tiles).
    m = tl.load(d + 1)
    n = tl.load(d + 2)
    s_m = tl.load(d + 3)
    s_n = tl.load(d + 4)
    u_addr = tl.load(d + 5)
    s_u = tl.load(d + 6)
    v_addr = tl.load(d + 7)
    s_v = tl.load(d + 8)
    off_u = tl.load(d + 9)
    off_v = tl.load(d + 10)
    if COLS:  # x = W^T u: outputs along W's columns, into v
        res = (n, m, s_n, s_m, u_addr, s_u, v_addr, s_v, off_u, off_v, tl.load(d + 11), tl.load(d + 12))
    else:  # x = W v: outputs along W's rows, into u
        res = (m, n, s_m, s_n, v_addr, s_v, u_addr, s_u, off_v, off_u, tl.load(d + 13), tl.load(d + 14))
    return res


@triton.jit
def _mv_tiles_kernel(desc_ptr, tile_layer_ptr, ws_ptr, part_ptr, COLS: tl.constexpr, FROM_USER: tl.constexpr,
                     DOT: tl.constexpr, WT: tl.constexpr, XT: tl.constexpr, CT: tl.constexpr, NF: tl.constexpr,
                     BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr):
    # One tile of BLOCK_O outputs of one layer: y = A x over the whole reduction dimension, a
    # [BLOCK_O, BLOCK_K] accumulator reduced once at the end. FROM_USER: x is the caller's vector
    # (first half step; its dtype XT, its stride), else the working buffer. DOT (eval): the partial
    # is <u, y> over the tile (u = the caller's u, XT) and y is not stored; else y goes to the
    # working buffer and the partial is the tile's sum of squares.
    t = tl.program_id(0)
    layer = tl.load(tile_layer_ptr + t)
    d = desc_ptr + layer * NF
    w = tl.load(d + 0).to(tl.pointer_type(WT))
    n_out, n_red, s_out, s_red, x_addr, x_stride, o_addr, o_stride, off_x, off_out, tile0, _ = _pass_view(d, COLS)
    outs = (t - tile0) * BLOCK_O + tl.arange(0, BLOCK_O)
    omask = outs < n_out
    acc = tl.zeros((BLOCK_O, BLOCK_K), dtype=CT)
    for k0 in range(0, n_red, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < n_red
        a = tl.load(w + outs[:, None] * s_out + ks[None, :] * s_red, mask=omask[:, None] & kmask[None, :],
                    other=0.0).to(CT)
        if FROM_USER:
            x = tl.load(x_addr.to(tl.pointer_type(XT)) + ks * x_stride, mask=kmask, other=0.0).to(CT)
        else:
            x = tl.load(ws_ptr + off_x + ks, mask=kmask, other=0.0)
        acc += a * x[None, :]
    y = tl.sum(acc, axis=1)
    if DOT:
        uo = tl.load(o_addr.to(tl.pointer_type(XT)) + outs * o_stride, mask=omask, other=0.0).to(CT)
        tl.store(part_ptr + t, tl.sum(uo * y, axis=0))
    else:
        tl.store(ws_ptr + off_out + outs, y, mask=omask)
        tl.store(part_ptr + t, tl.sum(y * y, axis=0))


@triton.jit
def _norm_tiles_kernel(desc_ptr, tile_layer_ptr, ws_ptr, part_ptr, eps_ptr, COLS: tl.constexpr, LAST: tl.constexpr,
                       XT: tl.constexpr, CT: tl.constexpr, NF: tl.constexpr, BLOCK_O: tl.constexpr,
                       BLOCK_P: tl.constexpr):
    # The tile's outputs divided by max(||x||, eps): ||x||^2 is the layer's partials summed in one
    # fixed order by every program of the layer (so all get the same bits). Writes the working
    # buffer and the caller's vector (v for COLS, u otherwise; dtype XT, in place). LAST: the
    # layer's first tile writes sigma = ||x||^2 / max(||x||, eps) = <u, W v> (the CPU kernel's
    # formula). eps: the bits of its float64 in the table (a Python float argument would be rounded
    # to float32), converted to CT as PyTorch's clamp_min converts it.
    t = tl.program_id(0)
    layer = tl.load(tile_layer_ptr + t)
    d = desc_ptr + layer * NF
    n_out, _, _, _, _, _, o_addr, o_stride, _, off_out, tile0, n_tiles = _pass_view(d, COLS)
    sq = tl.zeros((BLOCK_P,), dtype=CT)
    for p0 in range(0, n_tiles, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        sq += tl.load(part_ptr + tile0 + ps, mask=ps < n_tiles, other=0.0)
    sumsq = tl.sum(sq, axis=0)
    eps = tl.load(eps_ptr).to(tl.float64, bitcast=True).to(CT)
    norm = tl.sqrt(sumsq)
    denom = tl.where(norm < eps, eps, norm)  # keeps a NaN norm NaN, as clamp_min
    j = t - tile0
    outs = j * BLOCK_O + tl.arange(0, BLOCK_O)
    omask = outs < n_out
    xn = tl.load(ws_ptr + off_out + outs, mask=omask, other=0.0) / denom
    tl.store(ws_ptr + off_out + outs, xn, mask=omask)
    tl.store(o_addr.to(tl.pointer_type(XT)) + outs * o_stride, xn.to(XT), mask=omask)
    if LAST:
        tl.store(tl.load(d + 15).to(tl.pointer_type(CT)), sumsq / denom, mask=j == 0)


@triton.jit
def _sigma_kernel(desc_ptr, part_ptr, CT: tl.constexpr, NF: tl.constexpr, BLOCK_P: tl.constexpr):
    # Eval: sigma = <u, W v> of one layer, its rows-pass partials summed in a fixed order.
    d = desc_ptr + tl.program_id(0) * NF
    tile0 = tl.load(d + 13)
    n_tiles = tl.load(d + 14)
    acc = tl.zeros((BLOCK_P,), dtype=CT)
    for p0 in range(0, n_tiles, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(part_ptr + tile0 + ps, mask=ps < n_tiles, other=0.0)
    tl.store(tl.load(d + 15).to(tl.pointer_type(CT)), tl.sum(acc, axis=0))


@triton.jit
def _apply_kernel(w_ptr, sigma_ptr, out_ptr, M, N, stride_m, stride_n,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CT: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    s = tl.load(sigma_ptr).to(CT)
    w = tl.load(w_ptr + rows[:, None] * stride_m + cols[None, :] * stride_n, mask=mask, other=0.0).to(CT)
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], (w / s).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dot_partial_kernel(g_ptr, w_ptr, part_ptr, M, N, sg_m, sg_n, sw_m, sw_n,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CT: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    g = tl.load(g_ptr + rows[:, None] * sg_m + cols[None, :] * sg_n, mask=mask, other=0.0).to(CT)
    w = tl.load(w_ptr + rows[:, None] * sw_m + cols[None, :] * sw_n, mask=mask, other=0.0).to(CT)
    tl.store(part_ptr + pid_m * tl.num_programs(1) + pid_n, tl.sum(tl.sum(g * w, axis=1), axis=0))


@triton.jit
def _apply_backward_kernel(g_ptr, u_ptr, v_ptr, sigma_ptr, part_ptr, n_part, out_ptr, M, N, sg_m, sg_n,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, CT: tl.constexpr):
    # Every program sums the partials of <G, W> in the same order, so all use the same value.
    acc = tl.zeros((BLOCK_P,), dtype=CT)
    for p0 in range(0, n_part, BLOCK_P):
        idx = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(part_ptr + idx, mask=idx < n_part, other=0.0)
    dot = tl.sum(acc, axis=0)
    s = tl.load(sigma_ptr).to(CT)
    coef = dot / (s * s)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    g = tl.load(g_ptr + rows[:, None] * sg_m + cols[None, :] * sg_n, mask=mask, other=0.0).to(CT)
    u = tl.load(u_ptr + rows, mask=rows < M, other=0.0).to(CT)
    v = tl.load(v_ptr + cols, mask=cols < N, other=0.0).to(CT)
    out = g / s - (coef * u)[:, None] * v[None, :]
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


_BLOCK_O, _BLOCK_K, _BLOCK_P = 32, 128, 128
_BLOCK_M, _BLOCK_N = 32, 128


def _check_vector(x, w, size, name, i, op):
    if x.dim() != 1 or x.shape[0] != size:
        raise RuntimeError(f"{op}: {name}[{i}] must have {size} entries, got shape {tuple(x.shape)}")
    if x.dtype not in (w.dtype, torch.float32):
        raise RuntimeError(f"{op}: {name}[{i}] must have the dtype of the weight or float32, got {x.dtype} for a "
                           f"{w.dtype} weight")
    if x.device != w.device:
        raise RuntimeError(f"{op}: {name}[{i}] is on {x.device}, its weight on {w.device}")


def _check_layers(weight_mats, us, vs, op):
    if not (len(weight_mats) == len(us) == len(vs)):
        raise RuntimeError(f"{op}: weight_mats, us and vs must have the same length")
    for i, w in enumerate(weight_mats):
        if w.dim() != 2:
            raise RuntimeError(f"{op}: weight_mats[{i}] must be 2-D, got shape {tuple(w.shape)}")
        if us[i].dtype != vs[i].dtype:
            raise RuntimeError(f"{op}: us[{i}] and vs[{i}] must have one dtype, got {us[i].dtype} and {vs[i].dtype}")
        _check_vector(us[i], w, w.shape[0], "us", i, op)
        _check_vector(vs[i], w, w.shape[1], "vs", i, op)


def _to_device(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host-built descriptor table on the layers' device: pinned and non-blocking on a GPU (no host
    synchronization). The tables hold this call's tensor addresses, so they are built and copied on
    every call; under CUDA graph capture that copy would be captured from a reusable pinned block
    whose contents later calls overwrite, so capture is refused rather than replaying stale tables."""
    if device.type != "cuda":
        return table
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError("fastgan Triton spectral norm: its descriptor tables are copied host-to-device on every "
                           "call, which a CUDA graph cannot replay; capture the CUDA backend's spectral norm "
                           "(backend='cuda', descriptors passed by value) or run the Triton one outside the graph")
    return table.pin_memory().to(device, non_blocking=True)


class _Plan:
    """One group of layers sharing (W dtype, u/v dtype): the descriptor table, both tile tables and
    eps (the bits of its float64) in ONE int64 device tensor: one host-to-device copy per call, from
    pinned memory and non-blocking on a GPU (no host synchronization, and no fill kernel for eps);
    the partials buffer and the sigma outputs."""

    def __init__(self, items, device, ct, eps=0.0):
        rows, col_tiles, row_tiles = [], [], []
        self.sigmas = [torch.empty((), dtype=ct, device=device) for _ in items]
        off = 0
        for layer, ((w, u, v), sigma) in enumerate(zip(items, self.sigmas)):
            m, n = w.shape
            nc, nr = max(1, triton.cdiv(n, _BLOCK_O)), max(1, triton.cdiv(m, _BLOCK_O))
            rows.append([w.data_ptr(), m, n, w.stride(0), w.stride(1), u.data_ptr(), u.stride(0), v.data_ptr(),
                         v.stride(0), off, off + m, len(col_tiles), nc, len(row_tiles), nr, sigma.data_ptr()])
            off += m + n
            col_tiles += [layer] * nc
            row_tiles += [layer] * nr
        self.n_layers, self.n_col, self.n_row = len(items), len(col_tiles), len(row_tiles)
        eps_bits = struct.unpack("<q", struct.pack("<d", float(eps)))[0]
        flat = _to_device(torch.tensor([x for r in rows for x in r] + col_tiles + row_tiles + [eps_bits],
                                       dtype=torch.int64), device)
        self.table = flat
        self.desc = flat[: _NF * self.n_layers]
        self.col_layer = flat[_NF * self.n_layers: _NF * self.n_layers + self.n_col]
        self.row_layer = flat[_NF * self.n_layers + self.n_col: -1]
        self.eps = flat[-1:]
        self.ws_numel = off
        self.part = torch.empty(max(self.n_col, self.n_row), dtype=ct, device=device)


def _groups(weight_mats, us, vs):
    groups = {}
    for i, (w, u, v) in enumerate(zip(weight_mats, us, vs)):
        groups.setdefault((w.device, w.dtype, u.dtype), []).append(i)
    return groups


def power_iteration_(weight_mats: List[torch.Tensor], us: List[torch.Tensor], vs: List[torch.Tensor],
                     n_power_iterations: int, eps: float, hook_order: bool) -> List[torch.Tensor]:
    op = "spectral_norm_power_iteration_triton_"
    _check_layers(weight_mats, us, vs, op)
    if n_power_iterations < 0:
        raise RuntimeError(f"{op}: n_power_iterations must be >= 0")
    if n_power_iterations == 0:
        return sigma_(weight_mats, us, vs)
    sigmas = [None] * len(weight_mats)
    for (device, wdt, xdt), idx in _groups(weight_mats, us, vs).items():
        ct = _ct(wdt)
        plan = _Plan([(weight_mats[i], us[i], vs[i]) for i in idx], device, ct, eps)
        ws = torch.empty(plan.ws_numel, dtype=ct, device=device)
        consts = dict(WT=_ELEMENT[wdt], XT=_ELEMENT[xdt], CT=_tl(ct), NF=_NF, BLOCK_O=_BLOCK_O)
        passes = (True, False) if hook_order else (False, True)  # True: v = nrm(W^T u)
        first = True
        for step in range(n_power_iterations):
            for half, cols in enumerate(passes):
                tiles = plan.col_layer if cols else plan.row_layer
                grid = (tiles.numel(),)
                _mv_tiles_kernel[grid](plan.desc, tiles, ws, plan.part, COLS=cols, FROM_USER=first, DOT=False,
                                       BLOCK_K=_BLOCK_K, **consts)
                last = step == n_power_iterations - 1 and half == 1
                _norm_tiles_kernel[grid](plan.desc, tiles, ws, plan.part, plan.eps, COLS=cols, LAST=last,
                                         XT=consts["XT"], CT=consts["CT"], NF=_NF, BLOCK_O=_BLOCK_O, BLOCK_P=_BLOCK_P)
                first = False
        for i, s in zip(idx, plan.sigmas):
            sigmas[i] = s
    return sigmas


def sigma_(weight_mats: List[torch.Tensor], us: List[torch.Tensor], vs: List[torch.Tensor]) -> List[torch.Tensor]:
    """sigma = <u, W v> of every layer with the stored u, v, which are only read (eval mode): 2
    launches per call (per dtype group)."""
    _check_layers(weight_mats, us, vs, "spectral_norm_sigma_triton")
    sigmas = [None] * len(weight_mats)
    for (device, wdt, xdt), idx in _groups(weight_mats, us, vs).items():
        ct = _ct(wdt)
        plan = _Plan([(weight_mats[i], us[i], vs[i]) for i in idx], device, ct)
        _mv_tiles_kernel[(plan.n_row,)](plan.desc, plan.row_layer, plan.part, plan.part, COLS=False, FROM_USER=True,
                                        DOT=True, WT=_ELEMENT[wdt], XT=_ELEMENT[xdt], CT=_tl(ct), NF=_NF, BLOCK_O=_BLOCK_O,
                                        BLOCK_K=_BLOCK_K)
        _sigma_kernel[(plan.n_layers,)](plan.desc, plan.part, CT=_tl(ct), NF=_NF, BLOCK_P=_BLOCK_P)
        for i, s in zip(idx, plan.sigmas):
            sigmas[i] = s
    return sigmas


def _check_apply(weight_mat, u, v, sigma, op):
    if weight_mat.dim() != 2:
        raise RuntimeError(f"{op}: the weight matrix must be 2-D, got shape {tuple(weight_mat.shape)}")
    if u.shape != (weight_mat.shape[0],) or v.shape != (weight_mat.shape[1],):
        raise RuntimeError(f"{op}: u and v must have {weight_mat.shape[0]} and {weight_mat.shape[1]} entries")
    if sigma.numel() != 1:
        raise RuntimeError(f"{op}: sigma must have one element")


def apply(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    _check_apply(weight_mat, u, v, sigma, "spectral_norm_apply_triton")
    m, n = weight_mat.shape
    out = torch.empty((m, n), dtype=weight_mat.dtype, device=weight_mat.device)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(m, _BLOCK_M), triton.cdiv(n, _BLOCK_N))
    _apply_kernel[grid](weight_mat, sigma, out, m, n, weight_mat.stride(0), weight_mat.stride(1),
                        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, CT=_tl(weight_mat.dtype))
    return out


def apply_backward(grad: torch.Tensor, weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                   sigma: torch.Tensor) -> torch.Tensor:
    _check_apply(weight_mat, u, v, sigma, "spectral_norm_apply_triton_backward")
    if grad.shape != weight_mat.shape:
        raise RuntimeError("spectral_norm_apply_triton_backward: grad must have the weight's shape")
    m, n = weight_mat.shape
    ct = _ct(weight_mat.dtype)
    tct = _tl(weight_mat.dtype)
    out = torch.empty((m, n), dtype=weight_mat.dtype, device=weight_mat.device)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(m, _BLOCK_M), triton.cdiv(n, _BLOCK_N))
    part = torch.empty(grid[0] * grid[1], dtype=ct, device=weight_mat.device)
    _dot_partial_kernel[grid](grad, weight_mat, part, m, n, grad.stride(0), grad.stride(1),
                              weight_mat.stride(0), weight_mat.stride(1), BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, CT=tct)
    _apply_backward_kernel[grid](grad, u, v, sigma, part, part.numel(), out, m, n, grad.stride(0), grad.stride(1),
                                 BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_P=256, CT=tct)
    return out


# ------------------------------------------------------------------ multi-tensor apply (a group)
# W_i / sigma_i for every layer of a group in ONE launch, and its backward in TWO, whatever the
# number of layers (fastgan::spectral_norm_apply_group_triton). Descriptor row of a layer (int64):
_G_W, _G_M, _G_N, _G_SM, _G_SN, _G_U, _G_SU, _G_V, _G_SV, _G_OFF_U, _G_OFF_V, _G_TILE0, _G_TILES = range(13)
_G_OUT, _G_SIGMA, _G_GRAD = range(13, 16)
_GF = 16
_BLOCK_E = 1024  # elements per tile: a layer's row-major W_mat in ceil(max(m n, m, n) / _BLOCK_E) tiles


@triton.jit
def _group_tile(d, BLOCK: tl.constexpr):
    t0 = tl.load(d + 11)
    m = tl.load(d + 1)
    n = tl.load(d + 2)
    e = (tl.program_id(0) - t0) * BLOCK + tl.arange(0, BLOCK)
    nn = tl.where(n > 0, n, 1)
    return e, m, n, e // nn, e % nn, e < m * n


@triton.jit
def _apply_group_kernel(desc_ptr, tile_layer_ptr, snap_ptr, WT: tl.constexpr, XT: tl.constexpr, CT: tl.constexpr,
                        NF: tl.constexpr, BLOCK: tl.constexpr):
    # out = W / sigma over this tile of the layer's row-major W_mat (out contiguous), and the
    # tile's slice of u and v copied into the snapshot (the constants of the backward: the caller's
    # buffers change in place at the next training forward).
    d = desc_ptr + tl.load(tile_layer_ptr + tl.program_id(0)) * NF
    e, m, n, i, j, mask = _group_tile(d, BLOCK)
    w = tl.load(d + 0).to(tl.pointer_type(WT))
    s = tl.load(tl.load(d + 14).to(tl.pointer_type(CT)))
    x = tl.load(w + i * tl.load(d + 3) + j * tl.load(d + 4), mask=mask, other=0.0).to(CT)
    tl.store(tl.load(d + 13).to(tl.pointer_type(WT)) + e, (x / s).to(WT), mask=mask)
    u = tl.load(tl.load(d + 5).to(tl.pointer_type(XT)) + e * tl.load(d + 6), mask=e < m, other=0.0).to(CT)
    tl.store(snap_ptr + tl.load(d + 9) + e, u, mask=e < m)
    v = tl.load(tl.load(d + 7).to(tl.pointer_type(XT)) + e * tl.load(d + 8), mask=e < n, other=0.0).to(CT)
    tl.store(snap_ptr + tl.load(d + 10) + e, v, mask=e < n)


@triton.jit
def _group_dot_kernel(desc_ptr, tile_layer_ptr, part_ptr, WT: tl.constexpr, CT: tl.constexpr, NF: tl.constexpr,
                      BLOCK: tl.constexpr):
    # The tile's partial of <G, W> (G contiguous, the layer's incoming gradient).
    d = desc_ptr + tl.load(tile_layer_ptr + tl.program_id(0)) * NF
    e, m, n, i, j, mask = _group_tile(d, BLOCK)
    w = tl.load(d + 0).to(tl.pointer_type(WT))
    x = tl.load(w + i * tl.load(d + 3) + j * tl.load(d + 4), mask=mask, other=0.0).to(CT)
    g = tl.load(tl.load(d + 15).to(tl.pointer_type(WT)) + e, mask=mask, other=0.0).to(CT)
    tl.store(part_ptr + tl.program_id(0), tl.sum(g * x, axis=0))


@triton.jit
def _group_backward_kernel(desc_ptr, tile_layer_ptr, snap_ptr, part_ptr, WT: tl.constexpr, CT: tl.constexpr,
                           NF: tl.constexpr, BLOCK: tl.constexpr, BLOCK_P: tl.constexpr):
    # grad_W = G / sigma - (<G, W> / sigma^2) u v^T into the output slot (out address), the layer's
    # partials summed in one fixed order by each of its programs (deterministic, no atomics).
    d = desc_ptr + tl.load(tile_layer_ptr + tl.program_id(0)) * NF
    e, m, n, i, j, mask = _group_tile(d, BLOCK)
    t0 = tl.load(d + 11)
    n_tiles = tl.load(d + 12)
    acc = tl.zeros((BLOCK_P,), dtype=CT)
    for p0 in range(0, n_tiles, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(part_ptr + t0 + ps, mask=ps < n_tiles, other=0.0)
    s = tl.load(tl.load(d + 14).to(tl.pointer_type(CT)))
    coef = tl.sum(acc, axis=0) / (s * s)
    g = tl.load(tl.load(d + 15).to(tl.pointer_type(WT)) + e, mask=mask, other=0.0).to(CT)
    u = tl.load(snap_ptr + tl.load(d + 9) + i, mask=mask, other=0.0)
    v = tl.load(snap_ptr + tl.load(d + 10) + j, mask=mask, other=0.0)
    tl.store(tl.load(d + 13).to(tl.pointer_type(WT)) + e, (g / s - coef * u * v).to(WT), mask=mask)


def _group_table(weight_mats, us, vs, sigmas, outs, grads, snap_offsets):
    rows, tiles = [], []
    for layer, w in enumerate(weight_mats):
        m, n = w.shape
        nt = max(1, triton.cdiv(max(m * n, m, n), _BLOCK_E))
        off_u, off_v = snap_offsets[layer]
        rows.append([w.data_ptr(), m, n, w.stride(0), w.stride(1), us[layer].data_ptr() if us else 0,
                     us[layer].stride(0) if us else 0, vs[layer].data_ptr() if vs else 0,
                     vs[layer].stride(0) if vs else 0, off_u, off_v, len(tiles), nt, outs[layer].data_ptr(),
                     sigmas[layer].data_ptr(), grads[layer].data_ptr() if grads else 0])
        tiles += [layer] * nt
    flat = _to_device(torch.tensor([x for r in rows for x in r] + tiles, dtype=torch.int64), weight_mats[0].device)
    return flat[: _GF * len(weight_mats)], flat[_GF * len(weight_mats):]


def _snap_offsets(weight_mats):
    offs, off = [], 0
    for w in weight_mats:
        offs.append((off, off + w.shape[0]))
        off += w.shape[0] + w.shape[1]
    return offs, off


def _check_group(weight_mats, sigmas, op):
    if not weight_mats:
        raise RuntimeError(f"{op}: weight_mats must not be empty")
    w0 = weight_mats[0]
    for i, w in enumerate(weight_mats):
        if w.dim() != 2 or w.dtype != w0.dtype or w.device != w0.device:
            raise RuntimeError(f"{op}: weight_mats[{i}] must be 2-D, of one dtype and device with weight_mats[0] "
                               f"(got {tuple(w.shape)}, {w.dtype}, {w.device})")
        if sigmas[i].numel() != 1 or sigmas[i].dtype != _ct(w0.dtype) or not sigmas[i].is_contiguous():
            raise RuntimeError(f"{op}: sigmas[{i}] must be one {_ct(w0.dtype)} element")


def apply_group(weight_mats: List[torch.Tensor], us: List[torch.Tensor], vs: List[torch.Tensor],
                sigmas: List[torch.Tensor]) -> List[torch.Tensor]:
    """[W_i / sigma_i] + [snapshot of every u, v (compute dtype)]: one launch for the group."""
    op = "spectral_norm_apply_group_triton"
    _check_layers(weight_mats, us, vs, op)
    if len(sigmas) != len(weight_mats):
        raise RuntimeError(f"{op}: sigmas must have one entry per weight matrix")
    _check_group(weight_mats, sigmas, op)
    if any(u.dtype != us[0].dtype for u in us):
        raise RuntimeError(f"{op}: every u and v must have one dtype")
    w0 = weight_mats[0]
    ct = _ct(w0.dtype)
    outs = [torch.empty(w.shape, dtype=w.dtype, device=w.device) for w in weight_mats]
    offs, total = _snap_offsets(weight_mats)
    snap = torch.empty(total, dtype=ct, device=w0.device)
    desc, tiles = _group_table(weight_mats, us, vs, sigmas, outs, None, offs)
    _apply_group_kernel[(tiles.numel(),)](desc, tiles, snap, WT=_ELEMENT[w0.dtype], XT=_ELEMENT[us[0].dtype],
                                          CT=_tl(ct), NF=_GF, BLOCK=_BLOCK_E)
    return outs + [snap]


def apply_group_backward(grads: List[torch.Tensor], weight_mats: List[torch.Tensor], snapshot: torch.Tensor,
                         sigmas: List[torch.Tensor]) -> List[torch.Tensor]:
    """Every layer's G_i / sigma_i - (<G_i, W_i> / sigma_i^2) u_i v_i^T: two launches for the group."""
    op = "spectral_norm_apply_group_triton_backward"
    _check_group(weight_mats, sigmas, op)
    for i, (g, w) in enumerate(zip(grads, weight_mats)):
        if g.shape != w.shape or g.dtype != w.dtype or not g.is_contiguous():
            raise RuntimeError(f"{op}: grads[{i}] must be contiguous, of weight_mats[{i}]'s shape and dtype")
    w0 = weight_mats[0]
    ct = _ct(w0.dtype)
    outs = [torch.empty(w.shape, dtype=w.dtype, device=w.device) for w in weight_mats]
    offs, _ = _snap_offsets(weight_mats)
    desc, tiles = _group_table(weight_mats, None, None, sigmas, outs, grads, offs)
    part = torch.empty(tiles.numel(), dtype=ct, device=w0.device)
    grid = (tiles.numel(),)
    _group_dot_kernel[grid](desc, tiles, part, WT=_ELEMENT[w0.dtype], CT=_tl(ct), NF=_GF, BLOCK=_BLOCK_E)
    _group_backward_kernel[grid](desc, tiles, snapshot, part, WT=_ELEMENT[w0.dtype], CT=_tl(ct), NF=_GF,
                                 BLOCK=_BLOCK_E, BLOCK_P=_BLOCK_P)
    return outs
