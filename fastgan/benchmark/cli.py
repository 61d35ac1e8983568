"""python -m fastgan bench: time every op on every available path, side by side in one run.

Writes results.csv, results.json (machine, GPU, versions, date) and plots (PNG) into --out, and
prints a table: forward / backward / forward+backward medians (p20-p80), extra peak memory,
relative error against a float64 reference, speed-up over the eager reference, and on a GPU the
floor (FLOPs over measured matmul throughput, bytes over measured bandwidth) and its fraction.
"""
import argparse
import csv
import datetime
import json
import os
import platform
import sys
from typing import List

import torch

from . import cases as C
from . import perf_model
from .timing import device_peaks, peak_memory, relative_error, time_paths

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# A StudioGAN-style step materializes N*N*D values; beyond this many it is left out unless --full.
MATERIALIZE_LIMIT = {"cpu": 2e8, "cuda": 4e9}


def _progress(i: int, total: int, label: str) -> None:
    width = 30
    done = int(width * i / max(total, 1))
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{total} {label:<48}")
    sys.stderr.flush()
    if i == total:
        sys.stderr.write("\n")


def machine_info(device: str) -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
            "device": device}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else None
    except OSError:
        info["cpu"] = None
    return info


def _reference64(case, tensors, labels):
    if case.op == "spectral_norm":
        return None
    _, ref = C.LOSS[case.op]
    xs = [t.detach().double().cpu() for t in tensors] + [y.cpu() for y in labels]
    return ref(*xs)


# A row whose forward+backward p80/p20 exceeds this is flagged noisy: its ratio is not printed as firm.
NOISY_SPREAD = 1.5


def _spread(row) -> float:
    return row["total_p80_ms"] / row["total_p20_ms"] if row.get("total_p20_ms") else float("inf")


def run_case(case, args, peaks) -> List[dict]:
    rows = {}
    tensors, labels = C.make_inputs(case)
    ref64 = _reference64(case, tensors, labels)
    flops, nbytes = case.floor()
    timed = {}
    for name, fn in C.paths(case, compiled=not args.quick).items():
        if args.backends and not any(b in name for b in args.backends):
            continue
        row = {"op": case.op, "size": "x".join(map(str, case.size)), "n": case.n, "path": name,
               "dtype": str(case.dtype).replace("torch.", ""), "device": case.device}
        rows[name] = row
        if fn is None:
            row["note"] = "skipped in --quick: torch.compile takes seconds per case (the default preset times it)"
        elif name == "studiogan_style" and case.size[0] ** 2 * case.size[1] > MATERIALIZE_LIMIT[case.device.split(":")[0]] \
                and not args.full:
            row["note"] = f"skipped: would materialize N*N*D = {case.size[0] ** 2 * case.size[1]:.2g} values (--full runs it)"
        else:
            timed[name] = fn
    try:
        results = time_paths(timed, tensors, labels, case.device, min_reps=args.min_reps, budget_s=args.budget,
                             warmup=1 if args.quick else 2)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        results = {name: {"error": "out of memory (the case's paths together)"} for name in timed}
    for name, t in results.items():
        row, fn = rows[name], timed[name]
        try:
            if "error" in t:
                raise t["error"] if isinstance(t["error"], BaseException) else RuntimeError(t["error"])
            row.update({f"{phase}_{k}_ms": v for phase in ("forward", "backward", "total") for k, v in t[phase].items()})
            row["reps"] = t["reps"]
            row["noisy"] = _spread(row) > NOISY_SPREAD
            row["peak_mem_mb"] = peak_memory(fn, tensors, labels, case.device) / 2**20
            if ref64 is not None:
                xs = [x.detach() for x in tensors] + list(labels)
                with torch.no_grad():
                    row["rel_err"] = relative_error(fn(*xs), ref64)
            if getattr(args, "rates", None):  # the performance model's prediction (perf_model.py)
                row.update(perf_model.predict_row(case, fn, tensors, labels, args.rates, row["total_median_ms"]))
            if peaks:
                row["floor_ms"] = max(flops / peaks["matmul_flops"], nbytes / peaks["bandwidth_bytes"]) * 1e3
                row["floor_fraction"] = row["floor_ms"] / row["total_median_ms"]
        except torch.cuda.OutOfMemoryError as exc:
            row["note"] = f"out of memory: {str(exc).splitlines()[0][:80]}"
            torch.cuda.empty_cache()
        except Exception as exc:  # a path that cannot run this case is reported, not fatal
            row["note"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
    rows = list(rows.values())
    # The baseline of the speed-up column: the eager reference, or PyTorch's own spectral norm. A
    # ratio involving a noisy row (p80/p20 > NOISY_SPREAD) is kept in the files but marked.
    base_path = "torch_hook" if case.op == "spectral_norm" else "reference_eager"
    base = next((r for r in rows if r["path"] == base_path and "total_median_ms" in r), None)
    for r in rows:
        if base and "total_median_ms" in r:
            r["speedup_vs_eager"] = base["total_median_ms"] / r["total_median_ms"]
            r["speedup_noisy"] = bool(r["noisy"] or base["noisy"])
    return rows


def format_table(rows) -> str:
    head = f"{'op':<25}{'size':<14}{'path':<32}{'fwd ms':>9}{'bwd ms':>9}{'f+b ms (p20-p80)':>27}{'mem MB':>9}" \
           f"{'rel err':>10}{'speedup':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "total_median_ms" not in r:
            lines.append(f"{r['op']:<25}{r['size']:<14}{r['path']:<32}  {r.get('note', '')}")
            continue
        rng = f"{r['total_median_ms']:.2f} ({r['total_p20_ms']:.2f}-{r['total_p80_ms']:.2f})"
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
        sp = "-" if "speedup_vs_eager" not in r else "noisy" if r["speedup_noisy"] else f"{r['speedup_vs_eager']:.2f}x"
        line = f"{r['op']:<25}{r['size']:<14}{r['path']:<32}{r['forward_median_ms']:>9.2f}{r['backward_median_ms']:>9.2f}" \
               f"{rng:>27}{r['peak_mem_mb']:>9.1f}{err:>10}{sp:>9}"
        if "predicted_ms" in r:
            line += f"  pred {r['predicted_ms']:.3f} ms ({r['launches']} launches, x{r['measured_over_predicted']:.1f})"
        if "floor_fraction" in r:
            line += f"  floor {r['floor_ms']:.3f} ms ({100 * r['floor_fraction']:.0f}%)"
        lines.append(line)
    return "\n".join(lines)


def _colours(paths) -> dict:
    """One colour per path, the same in every panel and both figures (sorted names, a fixed palette)."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"].colors
    return {p: palette[(2 * i) % 20 + (2 * i // 20) % 2] for i, p in enumerate(sorted(set(paths)))}


def plot(rows, out_dir) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        print(f"(no plots: matplotlib unavailable: {exc})")
        return []
    files = []
    ops = sorted({r["op"] for r in rows})
    colour = _colours({r["path"] for r in rows})
    for metric, ylabel in (("total_median_ms", "forward+backward time (ms)"), ("peak_mem_mb", "extra peak memory (MB)")):
        ncols = min(4, len(ops))
        nrows = (len(ops) + ncols - 1) // ncols
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 2.6, 3.2 * nrows), squeeze=False)
        for ax in axes.flat[len(ops):]:
            ax.set_visible(False)
        shown = set()
        for ax, op in zip(axes.flat, ops):
            for path in sorted({r["path"] for r in rows if r["op"] == op}):
                pts = sorted((r["n"], r[metric]) for r in rows if r["op"] == op and r["path"] == path and metric in r)
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=colour[path], label=path)
                    shown.add(path)
            ax.set_title(op)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("layers in the model" if op == "spectral_norm" else "batch size N")
            ax.set_ylabel(ylabel)
        # One legend for the whole figure, outside the panels: the same colour is the same path everywhere.
        handles = [plt.Line2D([], [], color=colour[p], marker="o", label=p) for p in sorted(shown)]
        width, height = fig.get_size_inches()
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1 - 2.5 / width, 0.5), fontsize=8, frameon=False)
        # Fixed margins instead of tight_layout, which measured every label (seconds on a busy machine).
        fig.subplots_adjust(left=0.9 / width, right=1 - 2.7 / width, bottom=0.7 / height, top=1 - 0.45 / height,
                            wspace=0.45, hspace=0.55)
        name = os.path.join(out_dir, f"{metric.split('_')[0]}_{'time' if 'ms' in metric else 'memory'}.png")
        fig.savefig(name, dpi=100)
        plt.close(fig)
        files.append(name)
    return files


def parse_sizes(text):
    """--sizes "64x512,4x3x5,sngan32" -> {"similarity": [(64, 512)], "infonce": [(4, 3, 5)], ...};
    anything else exits with one line saying what is wrong."""
    if not text:
        return None
    fam = {"similarity": [], "infonce": [], "spectral_norm": []}
    for item in text.split(","):
        item = item.strip()
        parts = item.split("x")
        if len(parts) == 1 and item in C.SN_MODELS:
            fam["spectral_norm"].append(item)
        elif len(parts) in (2, 3) and all(p.isdigit() and int(p) > 0 for p in parts):
            fam["similarity" if len(parts) == 2 else "infonce"].append(tuple(int(p) for p in parts))
        else:
            raise SystemExit(f"fastgan bench: --sizes: cannot read {item!r}: use NxD (e.g. 64x512), NxHWxR (e.g. "
                             f"64x64x1024) with positive integers, or a model name ({', '.join(C.SN_MODELS)})")
    return {k: v for k, v in fam.items() if v}


PRESET_REPS = {"quick": (5, 0.05), "default": (8, 0.4), "full": (10, 1.0)}  # (--min-reps, --budget)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastgan bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", nargs="+", default=list(C.OPS), choices=C.OPS)
    p.add_argument("--sizes", help="comma list: NxD (similarity family), NxHWxR (infonce), model name (spectral_norm)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true",
                   help="one small size per op, no torch.compile paths: under 20 s on 2 cores")
    g.add_argument("--full", action="store_true", help="every size of the issues, baselines included at any size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--backends", nargs="*", help="only paths whose name contains one of these (e.g. fastgan eager)")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for every path (default: torch's default, the physical cores)")
    p.add_argument("--min-reps", type=int, default=None, help="repetitions per path at least (default: by preset)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of repetitions per path beyond --min-reps (default: by preset)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("fastgan bench: --device cuda: no CUDA device is available here")
    sizes = parse_sizes(args.sizes)
    preset = "quick" if args.quick else "full" if args.full else "default"
    reps, budget = PRESET_REPS[preset]
    args.min_reps = reps if args.min_reps is None else args.min_reps
    args.budget = budget if args.budget is None else args.budget
    # Pinned for the whole run, so every path gets the same threads and no library picks its own.
    torch.set_num_threads(args.threads or torch.get_num_threads())
    dtype = DTYPES[args.dtype]
    selected = C.cases(args.ops, preset, args.device, dtype, sizes)
    peaks = device_peaks(args.device, dtype)
    args.rates = perf_model.measure_rates(args.device, dtype)
    rows = []
    for i, case in enumerate(selected):
        _progress(i, len(selected), case.label)
        rows += run_case(case, args, peaks)
    _progress(len(selected), len(selected), "done")
    os.makedirs(args.out, exist_ok=True)
    info = machine_info(args.device)
    info.update({"preset": preset, "dtype": args.dtype, "peaks": peaks, "rates": perf_model.rates_dict(args.rates),
                 "min_reps": args.min_reps, "budget_s": args.budget})
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("op", "size", "path"), k))
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    table = format_table(rows)
    noisy = sum(bool(r.get("noisy")) for r in rows)
    legend = (f"f+b: median forward+backward over the repetitions (p20-p80); paths of a case timed interleaved, "
              f"{info['cpu_threads']} CPU threads. speedup: over the eager reference (spectral norm: over "
              f"torch.nn.utils.spectral_norm); 'noisy' where this row's or the baseline's p80/p20 exceeds "
              f"{NOISY_SPREAD} ({noisy} rows): rerun on a quieter machine or with a larger --budget.")
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(f"{info['date']}  {info.get('gpu') or info.get('cpu')}  torch {info['torch']}  {args.dtype}\n{table}\n{legend}\n")
    print(table)
    print(legend)
    plots = plot(rows, args.out)
    print(f"\nwrote {args.out}/results.csv, results.json, table.txt" + (", " + ", ".join(os.path.basename(x) for x in plots) if plots else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
