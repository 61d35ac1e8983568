"""Compile every Triton kernel of triton_kernels/ ahead of time for real GPUs, on a machine without one.

    python3 bench/triton_aot.py --out docs/triton_compile_table.md [--json rows.json] [--arch 80,90] [--jobs 2]

Why: the interpreter (TRITON_INTERPRET=1, what CI runs) never lowers a kernel to PTX, so it hides every
compile error (a reassigned constexpr, a dot shape the MMA lowering refuses) and every register or
shared-memory problem. Here each kernel goes through Triton's real pipeline (TTIR -> TTGIR -> LLVM ->
PTX -> ptxas, bundled in the wheel) for sm_80 and sm_90a, with no driver.

How: the real wrappers (triton_kernels/*.py forward / backward functions) are called on CPU tensors
with JITFunction.run replaced by a recorder. The recorder uses Triton's own binder and _pack_args for
the target's backend, so the signature, constexprs, integer / pointer specializations (divisibility by
16, == 1) and options (num_warps, num_stages) are exactly the ones a launch on that GPU would compile;
nothing runs. The wrappers pick their GPU configuration for the architecture forced through
triton_kernels/configs.py (not the interpreter's small one). Each distinct launch is then compiled with
triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)); ptxas's -v log gives registers
and spill bytes, the metadata the shared memory, the SASS (nvdisasm, bundled) the tensor-core
instructions (HMMA = mma.sync, HGMMA = wgmma).

Configurations: a covering set of the axes (dtype x predicates x labels x extra x relu x D, and
InfoNCE's dtype x layout x HW x R x self logit / normalize), every value of every axis and every pair
of the main axes at least once, so the CI cost stays bounded (the run prints its time).
Exit status 1 if any compile fails (the table then lists the error).
"""
import argparse
import contextlib
import io
import itertools
import json
import os
import re
import sys
import tempfile
import time

# The interpreter turns @triton.jit into an InterpretedFunction: this tool must see the real JITFunction.
os.environ.pop("TRITON_INTERPRET", None)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

from fastgan._triton_loader import import_triton_kernels  # noqa: E402

import_triton_kernels()
from fastgan.triton_kernels import configs  # noqa: E402
from fastgan.triton_kernels import contrastive_lse as CL  # noqa: E402
from fastgan.triton_kernels import cosine_similarity_matrix as CS  # noqa: E402
from fastgan.triton_kernels import infonce_lse as IL  # noqa: E402
from fastgan.triton_kernels import loss_terms as LT  # noqa: E402
from fastgan.triton_kernels import spectral_norm as SN  # noqa: E402

MODULES = (CL, CS, IL, SN, LT)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def entry_kernels():
    """Every launched @triton.jit kernel of triton_kernels/ (module-level JITFunctions named *_kernel)."""
    out = set()
    for mod in MODULES:
        for name, obj in vars(mod).items():
            if isinstance(obj, JITFunction) and name.endswith("_kernel"):
                # By the defining module: a kernel imported into another module is the same kernel.
                out.add(f"{obj.module.rsplit('.', 1)[1]}.{obj.__name__}")
    return out


def _pairwise(axes):
    """A covering set: every pair of values of every two axes appears in some row (greedy)."""
    names = list(axes)
    need = set()
    for i, j in itertools.combinations(range(len(names)), 2):
        for vi in axes[names[i]]:
            for vj in axes[names[j]]:
                need.add((i, vi, j, vj))
    rows = []
    full = list(itertools.product(*(axes[n] for n in names)))
    while need:
        best = max(full, key=lambda r: sum((i, r[i], j, r[j]) in need
                                           for i, j in itertools.combinations(range(len(names)), 2)))
        rows.append(dict(zip(names, best)))
        need -= {(i, best[i], j, best[j]) for i, j in itertools.combinations(range(len(names)), 2)}
    return rows


def contrastive_cases():
    if COVER == "each":
        # Every value of every axis once (CI): the Latin square's worst cases (bf16 at D=100, fp16 at 1536).
        return [
            {"dtype": "fp32", "K": 1, "D": 100, "labels": False, "extra": True, "relu": False, "exclude_self": True},
            {"dtype": "fp16", "K": 2, "D": 1536, "labels": True, "extra": False, "relu": True, "exclude_self": False},
            {"dtype": "bf16", "K": 3, "D": 100, "labels": True, "extra": True, "relu": True, "exclude_self": True},
            {"dtype": "bf16", "K": 1, "D": 64, "labels": False, "extra": False, "relu": False, "exclude_self": False},
        ]
    # Every pair of (dtype, predicates, D) once (a 3x3 Latin square, 9 rows), and every value of the
    # boolean axes spread over those rows (each on and off at least twice, in different dtypes).
    rows = []
    for i, dt in enumerate(["fp32", "fp16", "bf16"]):
        for j, k in enumerate([1, 2, 3]):
            d = [64, 100, 1536][(i + j) % 3]
            r = 3 * i + j
            rows.append({"dtype": dt, "K": k, "D": d, "labels": r % 2 == 0, "extra": r % 3 == 1,
                         "relu": r % 3 == 2 or r == 0, "exclude_self": r % 2 == 1})
    return rows


def run_contrastive(c):
    dt = DTYPES[c["dtype"]]
    n, m, d = 96, 80, c["D"]
    a, b = torch.randn(n, d).to(dt), torch.randn(m, d).to(dt)
    la = torch.randint(0, 4, (n,)) if c["labels"] else None
    lb = torch.randint(0, 4, (m,)) if c["labels"] else None
    extra = torch.randn(n).to(dt) if c["extra"] else None
    preds = [0, 1, 2][: c["K"]] if c["labels"] else [0, 0, 0][: c["K"]]
    args = (1.5, 0.1, c["relu"], True, 1e-8, c["exclude_self"], 0, preds)
    lse, _ = CL.contrastive_lse_forward(a, b, la, lb, extra, *args)
    CL.contrastive_lse_backward(torch.ones_like(lse), a, b, la, lb, extra, lse, *args)


def cosine_cases():
    return [{"dtype": dt, "D": d} for dt, d in (("fp32", 100), ("fp16", 1536), ("bf16", 64))]


def run_cosine(c):
    dt = DTYPES[c["dtype"]]
    a, b = torch.randn(96, c["D"]).to(dt), torch.randn(80, c["D"]).to(dt)
    s = CS.cosine_similarity_matrix_forward(a, b, 2.0, 1e-8)
    CS.cosine_similarity_matrix_backward(torch.ones_like(s), a, b, 2.0, 1e-8)


def infonce_cases():
    # Every value of every axis; channels-last `l` in every dtype (the layout that changes the loads).
    cases = [
        {"dtype": "fp32", "layout": "contiguous", "HW": 64, "R": 100, "self_logit": True, "normalize": True},
        {"dtype": "fp16", "layout": "channels_last", "HW": 64, "R": 512, "self_logit": False, "normalize": True},
        {"dtype": "bf16", "layout": "channels_last", "HW": 64, "R": 100, "self_logit": True, "normalize": False},
        {"dtype": "bf16", "layout": "contiguous", "HW": 1, "R": 512, "self_logit": False, "normalize": True},
        {"dtype": "fp32", "layout": "channels_last", "HW": 1, "R": 1536, "self_logit": False, "normalize": True},
    ]
    return cases[:4] if COVER == "each" else cases


def run_infonce(c):
    dt = DTYPES[c["dtype"]]
    n, r, hw = 64, c["R"], c["HW"]
    side = int(round(hw ** 0.5))
    x = torch.randn(n, r, side, side).to(dt)
    if c["layout"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    lmap = x.view(n, r, hw) if c["layout"] == "contiguous" else x.permute(0, 2, 3, 1).reshape(n, hw, r).transpose(1, 2)
    mvec = torch.randn(n, r).to(dt)
    sl = 0.5 if c["self_logit"] else None
    pos, neg = IL.infonce_lse_forward(lmap, mvec, 0.2, sl, c["normalize"], 1e-8)
    IL.infonce_lse_backward(torch.ones_like(pos), torch.ones_like(neg), lmap, mvec, neg, 0.2, sl, c["normalize"], 1e-8)


def spectral_cases():
    return [{"dtype": dt, "hook_order": ho, "iters": it} for dt, ho, it in
            (("fp32", True, 1), ("fp16", False, 1), ("bf16", True, 0))]


def run_spectral(c):
    dt = DTYPES[c["dtype"]]
    w = torch.randn(64, 100).to(dt)
    u, v = torch.randn(64).to(dt), torch.randn(100).to(dt)
    (sigma,) = SN.power_iteration_([w], [u], [v], c["iters"], 1e-12, c["hook_order"])
    SN.apply(w, u, v, sigma)
    SN.apply_backward(torch.ones_like(w), w, u, v, sigma)
    # The multi-tensor apply of a whole group (SpectralNormGroup): two layers of different shapes.
    w2 = torch.randn(8, 27).to(dt)
    u2, v2 = torch.randn(8).to(dt), torch.randn(27).to(dt)
    sigmas = SN.power_iteration_([w, w2], [u, u2], [v, v2], c["iters"], 1e-12, c["hook_order"])
    *outs, snapshot = SN.apply_group([w, w2], [u, u2], [v, v2], sigmas)
    SN.apply_group_backward([torch.ones_like(w), torch.ones_like(w2)], [w, w2], snapshot, sigmas)


def loss_terms_cases():
    return [{"dtype": dt} for dt in ("fp32", "fp16", "bf16")]


def run_loss_terms(c):
    # The loss terms around contrastive_lse: pair cosine (shifted), LSE combine, D2D-CE epilogue, SupCon's terms.
    dt = DTYPES[c["dtype"]]
    x, y = torch.randn(96, 100).to(dt), torch.randn(96, 100).to(dt)
    cos = LT.pair_cosine_forward(x, y, 1e-8, 2.0, 48)
    LT.pair_cosine_backward(torch.ones_like(cos), x, y, 1e-8, 2.0, 48)
    lse, rowmax = torch.randn(96, 2), torch.randn(96)
    g = torch.ones(())
    LT.combine_forward(lse, cos, cos, [1.0, -1.0], -1.0, 1.0, 0.01)
    LT.combine_backward(g, lse, cos, cos, [1.0, -1.0], -1.0, 1.0, 0.01)
    LT.d2d_forward(lse[:, :1].contiguous(), rowmax, cos, 0.98, 0.5, 0.01)
    LT.d2d_backward(g, lse[:, :1].contiguous(), rowmax, cos, 0.98, 0.5, 0.01)
    # SupCon's same-class cosine sums (D = 100 and the widest, 1536: the backward's D blocks) and epilogue.
    labels = torch.arange(96) % 7
    for d in (100, 1536):
        f = torch.randn(96, d).to(dt)
        pos, n_pos, nrm, inv = LT.same_class_cosine_forward(f, labels, 1e-8)
        LT.same_class_cosine_backward(torch.ones_like(pos), f, labels, nrm, inv, 1e-8)
    loss, den = LT.supcon_forward(lse[:, :1].contiguous(), pos, n_pos, 0.1, True)
    LT.supcon_backward(g, den, lse[:, :1].contiguous(), pos, n_pos, 0.1)


OPS = (("contrastive_lse", contrastive_cases, run_contrastive), ("cosine_similarity_matrix", cosine_cases, run_cosine),
       ("infonce_lse", infonce_cases, run_infonce), ("spectral_norm", spectral_cases, run_spectral),
       ("loss_terms", loss_terms_cases, run_loss_terms))


def _label(case):
    parts = []
    for k, v in case.items():
        if isinstance(v, bool):
            if v:
                parts.append(k)
        else:
            parts.append(f"{k}={v}" if k not in ("dtype", "layout") else str(v))
    return " ".join(parts)


ONLY = None
COVER = "pairwise"


def capture(arch):
    """Every launch the wrappers make for `arch`, as (kernel, case label, signature, constexprs, attrs, options)."""
    backend = make_backend(GPUTarget("cuda", arch, 32))
    launches = []

    def record(self, *args, grid, warmup, **kwargs):
        binder = create_function_from_signature(self.signature, self.params, backend)
        bound, spec, opts = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, spec, opts)
        launches.append((self, signature, constexprs, attrs, options, grid))
        return None

    saved = JITFunction.run
    JITFunction.run = record
    rows = []
    try:
        with configs.force_arch(arch):
            for op, cases, run in OPS:
                if ONLY and op not in ONLY:
                    continue
                for case in cases():
                    torch.manual_seed(0)
                    launches.clear()
                    run(case)
                    for fn, sig, ce, attrs, options, grid in launches:
                        rows.append((fn, op, _label(case), sig, ce, attrs, options, grid))
    finally:
        JITFunction.run = saved
    return rows


def _key(fn, sig, ce, attrs, options):
    return repr((fn.module, fn.__name__, sorted(sig.items()), sorted((k, str(v)) for k, v in ce.items()),
                 sorted((k, str(v)) for k, v in attrs.items()), sorted(options.__dict__.items())))


def _constexpr_summary(fn, ce):
    names = [p.name for p in fn.params]
    keep = ("BLOCK", "PREC", "NUM_", "SPLIT")
    return " ".join(f"{names[k[0]]}={v}" for k, v in sorted(ce.items())
                    if len(k) == 1 and any(names[k[0]].startswith(s) for s in keep))


def compile_one(fn, sig, ce, attrs, options, arch):
    target = GPUTarget("cuda", arch, 32)
    log = io.StringIO()
    t0 = time.perf_counter()
    row = {"regs": None, "spill_stores": None, "spill_loads": None, "stack": None, "shared": None,
           "hmma": False, "hgmma": False, "error": None}
    try:
        with contextlib.redirect_stdout(log):
            k = triton.compile(ASTSource(fn, sig, ce, attrs), target=target, options=options.__dict__)
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the table and fails the run
        # Triton's CompilationError ends with the source excerpt and a caret; the cause says why.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and set(ln.strip()) != {"^"}]
        inner = exc
        while (inner.__cause__ or inner.__context__) is not None:  # nested, one per @triton.jit call level
            inner = inner.__cause__ or inner.__context__
        why = getattr(inner, "error_message", None) or repr(inner) if inner is not exc else (lines[-1] if lines else "")
        why = " ".join(str(why).split())
        row["error"] = f"{type(exc).__name__}: {why[:300]}"
        row["seconds"] = time.perf_counter() - t0
        return row
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    stack = re.search(r"(\d+) bytes stack frame", text)
    row["regs"] = int(regs.group(1)) if regs else None
    row["spill_stores"], row["spill_loads"] = (int(spill.group(1)), int(spill.group(2))) if spill else (None, None)
    row["stack"] = int(stack.group(1)) if stack else None
    row["shared"] = int(k.metadata.shared)
    sass = k.asm["sass"]
    row["hgmma"] = "HGMMA" in sass
    row["hmma"] = re.search(r"\bHMMA\b", sass) is not None
    row["seconds"] = time.perf_counter() - t0
    return row


def _worker(arch, keys, out_path, only, cover):
    global ONLY, COVER
    ONLY, COVER = only, cover
    knobs.nvidia.dump_ptxas_log = True
    results = {}
    for fn, op, label, sig, ce, attrs, options, grid in capture(arch):
        key = _key(fn, sig, ce, attrs, options)
        if key in keys and key not in results:
            results[key] = compile_one(fn, sig, ce, attrs, options, arch)
    with open(out_path, "w") as f:
        json.dump(results, f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "triton_compile_table.md"))
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    p.add_argument("--arch", default="80,90")
    p.add_argument("--cover", choices=("each", "pairwise"), default="pairwise",
                   help="each: every value of every axis (CI); pairwise: every pair of the main axes (the table)")
    p.add_argument("--only", default=None, help="comma-separated ops (contrastive_lse, ...) to compile")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    global ONLY, COVER
    ONLY = args.only.split(",") if args.only else None
    COVER = args.cover
    t0 = time.perf_counter()
    archs = [int(a) for a in args.arch.split(",")]
    # A fresh cache: a cache hit would skip ptxas, and with it the register / spill report.
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        knobs.cache.dir = cache
        tasks, table = [], []
        for arch in archs:
            seen = {}
            for fn, op, label, sig, ce, attrs, options, grid in capture(arch):
                key = _key(fn, sig, ce, attrs, options)
                # Named by the kernel's module (cosine_similarity_matrix launches contrastive_lse's
                # norm and merge kernels), as entry_kernels() names them.
                entry = {"kernel": f"{fn.module.rsplit('.', 1)[1]}.{fn.__name__}", "config": label, "arch": arch,
                         "constexprs": _constexpr_summary(fn, ce), "num_warps": options.num_warps,
                         "num_stages": options.num_stages, "grid": list(grid) if not callable(grid) else None,
                         "key": key}
                table.append(entry)
                if key not in seen:
                    seen[key] = len(tasks)
                    tasks.append((arch, key))
        # Split the distinct compiles over worker processes (each re-captures, which is cheap).
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing as mp
        shares = [[] for _ in range(max(1, args.jobs))]
        for i, t in enumerate(tasks):
            shares[i % len(shares)].append(t)
        results = {}
        with tempfile.TemporaryDirectory() as tmp, \
                ProcessPoolExecutor(len(shares), mp_context=mp.get_context("spawn")) as pool:
            futs = []
            for w, share in enumerate(shares):
                for arch in archs:
                    keys = {k for a, k in share if a == arch}
                    if keys:
                        path = os.path.join(tmp, f"{w}_{arch}.json")
                        futs.append((arch, path, pool.submit(_worker, arch, keys, path, ONLY, COVER)))
            for arch, path, fut in futs:
                fut.result()
                with open(path) as f:
                    results.update({(arch, k): v for k, v in json.load(f).items()})
    rows, where = [], {}
    for e in table:
        k = (e["arch"], e["key"])
        if k in where:  # the same compile launched by another configuration: name it once
            r = rows[where[k]]
            if e["config"] not in r["configs"]:
                r["configs"].append(e["config"])
            continue
        r = dict(e, configs=[e["config"]])
        r.update(results[k])
        del r["key"], r["config"]
        where[k] = len(rows)
        rows.append(r)
    for r in rows:
        r["config"] = r["configs"][0] + (f" (+{len(r['configs']) - 1})" if len(r["configs"]) > 1 else "")
    elapsed = time.perf_counter() - t0
    import resource
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    write_table(rows, args.out, elapsed, archs, cpu)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "seconds": elapsed, "cpu_seconds": cpu, "entry_kernels": sorted(entry_kernels())}, f, indent=1)
    errors = [r for r in rows if r["error"]]
    print(f"{len(rows)} distinct compiles, {len(errors)} errors, {elapsed:.1f} s wall, {cpu:.1f} s CPU")
    for r in errors:
        print(f"FAILED {r['kernel']} [{r['config']}] sm_{r['arch']}: {r['error']}")
    return 1 if errors else 0


def _grid(r):
    # The grid of the first configuration that launched it (contrastive at N=96, M=80; InfoNCE at N=64),
    # planned for 132 SMs: a second axis > 1 on the forward kernels is the column split.
    return "x".join(str(g) for g in r["grid"]) if r.get("grid") else "-"


def write_table(rows, path, elapsed, archs, cpu):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lines = [
        "# Triton kernels compiled ahead of time (no GPU)",
        "",
        "Generated by `python3 bench/triton_aot.py --out docs/triton_compile_table.md` "
        f"(Triton {triton.__version__}, targets {', '.join('sm_90a' if a == 90 else f'sm_{a}' for a in archs)}). "
        "One row per distinct compile of a launch the real wrappers make (the first configuration that launches it is named, (+n) counts the others); regs, spills (stores/loads, bytes) and "
        "stack from ptxas -v, shared memory (bytes) from the compiled metadata, grid as launched for 132 SMs, HMMA (mma.sync) / HGMMA (wgmma) "
        "found in the SASS. tests/test_triton_aot.py reruns it in CI (with `--cover each`, a subset).",
        "",
        f"{len(rows)} compiles, {sum(1 for r in rows if r['error'])} compile errors, "
        f"{sum(1 for r in rows if r['spill_stores'])} with spills; {elapsed:.0f} s wall, {cpu:.0f} s CPU "
        "on the (shared, 2-core) machine that wrote it.",
        "",
        "| kernel | config | arch | constexprs | warps | stages | grid | regs | spill st/ld | stack | smem | HMMA | HGMMA |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['kernel']} | {r['config']} | sm_{r['arch']} | {r['constexprs']} | {r['num_warps']} | "
                         f"{r['num_stages']} | {_grid(r)} | **error** | {r['error'].replace('|', '/')} | | | | |")
            continue
        lines.append(f"| {r['kernel']} | {r['config']} | sm_{r['arch']} | {r['constexprs']} | {r['num_warps']} | "
                     f"{r['num_stages']} | {_grid(r)} | {r['regs']} | {r['spill_stores']}/{r['spill_loads']} | {r['stack']} | "
                     f"{r['shared']} | {'yes' if r['hmma'] else '-'} | {'yes' if r['hgmma'] else '-'} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
