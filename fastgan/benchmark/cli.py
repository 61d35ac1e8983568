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
from .timing import device_peaks, peak_memory, relative_error, time_path

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


def run_case(case, args, peaks) -> List[dict]:
    rows = []
    tensors, labels = C.make_inputs(case)
    ref64 = _reference64(case, tensors, labels)
    flops, nbytes = case.floor()
    for name, fn in C.paths(case).items():
        if args.backends and not any(b in name for b in args.backends):
            continue
        row = {"op": case.op, "size": "x".join(map(str, case.size)), "n": case.n, "path": name,
               "dtype": str(case.dtype).replace("torch.", ""), "device": case.device}
        if name == "studiogan_style" and case.size[0] ** 2 * case.size[1] > MATERIALIZE_LIMIT[case.device.split(":")[0]] \
                and not args.full:
            row["note"] = f"skipped: would materialize N*N*D = {case.size[0] ** 2 * case.size[1]:.2g} values (--full runs it)"
            rows.append(row)
            continue
        try:
            t = time_path(fn, tensors, labels, case.device, min_reps=args.min_reps, budget_s=args.budget)
            row.update({f"{phase}_{k}_ms": v for phase in ("forward", "backward", "total") for k, v in t[phase].items()})
            row["reps"] = t["reps"]
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
        rows.append(row)
    # The baseline of the speed-up column: the eager reference, or PyTorch's own spectral norm.
    base_path = "torch_hook" if case.op == "spectral_norm" else "reference_eager"
    base = next((r for r in rows if r["path"] == base_path and "total_median_ms" in r), None)
    for r in rows:
        if base and "total_median_ms" in r:
            r["speedup_vs_eager"] = base["total_median_ms"] / r["total_median_ms"]
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
        sp = f"{r['speedup_vs_eager']:.2f}x" if "speedup_vs_eager" in r else "-"
        line = f"{r['op']:<25}{r['size']:<14}{r['path']:<32}{r['forward_median_ms']:>9.2f}{r['backward_median_ms']:>9.2f}" \
               f"{rng:>27}{r['peak_mem_mb']:>9.1f}{err:>10}{sp:>9}"
        if "predicted_ms" in r:
            line += f"  pred {r['predicted_ms']:.3f} ms ({r['launches']} launches, x{r['measured_over_predicted']:.1f})"
        if "floor_fraction" in r:
            line += f"  floor {r['floor_ms']:.3f} ms ({100 * r['floor_fraction']:.0f}%)"
        lines.append(line)
    return "\n".join(lines)


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
    for metric, ylabel in (("total_median_ms", "forward+backward (ms)"), ("peak_mem_mb", "extra peak memory (MB)")):
        ncols = min(4, len(ops))
        nrows = (len(ops) + ncols - 1) // ncols
        fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.3 * nrows), squeeze=False)
        for ax in axes.flat[len(ops):]:
            ax.set_visible(False)
        for ax, op in zip(axes.flat, ops):
            for path in sorted({r["path"] for r in rows if r["op"] == op}):
                pts = sorted((r["n"], r[metric]) for r in rows if r["op"] == op and r["path"] == path and metric in r)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=path)
            ax.set_title(op)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("batch size N (layers for spectral_norm)")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=6)
        fig.tight_layout()
        name = os.path.join(out_dir, f"{metric.split('_')[0]}_{'time' if 'ms' in metric else 'memory'}.png")
        fig.savefig(name, dpi=80)
        plt.close(fig)
        files.append(name)
    return files


def parse_sizes(text):
    if not text:
        return None
    fam = {"similarity": [], "infonce": [], "spectral_norm": []}
    for item in text.split(","):
        parts = item.strip().split("x")
        if len(parts) == 1 and not parts[0].isdigit():
            fam["spectral_norm"].append(parts[0])
        elif len(parts) == 2:
            fam["similarity"].append(tuple(int(p) for p in parts))
        elif len(parts) == 3:
            fam["infonce"].append(tuple(int(p) for p in parts))
        else:
            raise SystemExit(f"--sizes: cannot read {item!r} (use NxD, NxHWxR or a model name)")
    return {k: v for k, v in fam.items() if v}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastgan bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", nargs="+", default=list(C.OPS), choices=C.OPS)
    p.add_argument("--sizes", help="comma list: NxD (similarity family), NxHWxR (infonce), model name (spectral_norm)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    g.add_argument("--full", action="store_true", help="every size of the issues, baselines included at any size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--backends", nargs="*", help="only paths whose name contains one of these (e.g. fastgan eager)")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--min-reps", type=int, default=5)
    p.add_argument("--budget", type=float, default=0.5, help="seconds of repetitions per path (beyond --min-reps)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    preset = "quick" if args.quick else "full" if args.full else "default"
    dtype = DTYPES[args.dtype]
    selected = C.cases(args.ops, preset, args.device, dtype, parse_sizes(args.sizes))
    peaks = device_peaks(args.device, dtype)
    args.rates = perf_model.measure_rates(args.device, dtype)
    rows = []
    for i, case in enumerate(selected):
        _progress(i, len(selected), case.label)
        rows += run_case(case, args, peaks)
    _progress(len(selected), len(selected), "done")
    os.makedirs(args.out, exist_ok=True)
    info = machine_info(args.device)
    info.update({"preset": preset, "dtype": args.dtype, "peaks": peaks, "rates": perf_model.rates_dict(args.rates)})
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("op", "size", "path"), k))
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    table = format_table(rows)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(f"{info['date']}  {info.get('gpu') or info.get('cpu')}  torch {info['torch']}  {args.dtype}\n{table}\n")
    print(table)
    plots = plot(rows, args.out)
    print(f"\nwrote {args.out}/results.csv, results.json, table.txt" + (", " + ", ".join(os.path.basename(x) for x in plots) if plots else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
