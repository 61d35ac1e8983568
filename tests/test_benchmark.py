"""The benchmark machinery on tiny sizes: every path runs, the files are written, errors are computed,
and `python -m fastgan info` reports the backends."""
import csv
import json
import subprocess
import sys

import pytest
import torch

from fastgan.benchmark import cli


@pytest.mark.slow  # four torch.compile paths: most of its time is inductor compiling
def test_bench_cli_writes_results(tmp_path):
    out = tmp_path / "b"
    rc = cli.main(["--ops", "2c", "spectral_norm", "--sizes", "16x8,sngan32", "--out", str(out),
                   "--min-reps", "2", "--budget", "0"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    # InfoNCE's paths without its compiled reference (the same torch.compile path as 2c's, compiled
    # again for nothing new), in a second run: the files are rewritten, so read both.
    out2 = tmp_path / "b2"
    assert cli.main(["--ops", "infonce", "--sizes", "4x3x5", "--out", str(out2), "--min-reps", "2", "--budget", "0",
                     "--backends", "fastgan", "eager", "mimicry"]) == 0
    rows += list(csv.DictReader(open(out2 / "results.csv")))
    paths = {(r["op"], r["path"]) for r in rows}
    assert {("2c", "fastgan_cpu"), ("2c", "reference_eager"), ("2c", "reference_compiled"), ("2c", "studiogan_style"),
            ("infonce", "mimicry_style"), ("spectral_norm", "torch_hook"), ("spectral_norm", "fastgan_cpu"),
            ("spectral_norm", "fastgan_cpu_group"), ("spectral_norm", "torch_hook_compiled"),
            ("spectral_norm", "torch_parametrization_compiled")} <= paths
    for r in rows:
        assert r.get("note", "") == "", r
        if r["op"] != "spectral_norm":
            assert float(r["rel_err"]) < 1e-5, r
        assert float(r["total_median_ms"]) > 0
    meta = json.load(open(out / "results.json"))["machine"]
    assert meta["torch"] and meta["date"] and meta["device"] == "cpu"
    # One row per (op, fastgan path): 2c, spectral norm per layer and grouped; infonce.
    assert (out / "table.txt").read_text().count("fastgan_cpu") == 3
    assert (out2 / "table.txt").read_text().count("fastgan_cpu") == 1


def test_info_command():
    res = subprocess.run([sys.executable, "-m", "fastgan", "info"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "cpu        available" in res.stdout and "auto    -> cpu" in res.stdout


def test_bad_sizes_give_one_line_errors():
    for bad in ("64x", "x512", "64x0", "64x512x3x1", "nomodel", "64xabc"):
        with pytest.raises(SystemExit) as exc:
            cli.parse_sizes(bad)
        msg = str(exc.value)
        assert "--sizes" in msg and repr(bad) in msg and "\n" not in msg, msg
    assert cli.parse_sizes("64x512, 4x3x5,sngan32") == {"similarity": [(64, 512)], "infonce": [(4, 3, 5)],
                                                        "spectral_norm": ["sngan32"]}


def _row(path, p20, median, p80):
    return {"op": "2c", "size": "8x8", "n": 8, "path": path, "forward_median_ms": median / 2,
            "backward_median_ms": median / 2, "total_median_ms": median, "total_p20_ms": p20, "total_p80_ms": p80,
            "peak_mem_mb": 0.0}


def test_noisy_rows_get_no_firm_ratio():
    # A row (or its baseline) whose p80/p20 exceeds 1.5 says "noisy" in the speed-up column.
    rows = [_row("reference_eager", 10, 11, 12), _row("fastgan_cpu", 5, 6, 7), _row("studiogan_style", 10, 30, 40)]
    for r in rows:
        r["noisy"] = cli._spread(r) > cli.NOISY_SPREAD
        r["speedup_vs_eager"] = 11 / r["total_median_ms"]
        r["speedup_noisy"] = r["noisy"] or rows[0]["noisy"]
    lines = {line.split()[2]: line for line in cli.format_table(rows).splitlines()[2:]}
    assert lines["fastgan_cpu"].rstrip().endswith("1.83x")
    assert lines["studiogan_style"].rstrip().endswith("noisy") and "0.37x" not in lines["studiogan_style"]


def test_quick_preset_leaves_out_compiled_paths_with_a_note(tmp_path):
    out = tmp_path / "q"
    assert cli.main(["--quick", "--ops", "2c", "--sizes", "16x8", "--out", str(out), "--budget", "0"]) == 0
    rows = {r["path"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert "torch.compile" in rows["reference_compiled"]["note"]
    assert float(rows["fastgan_cpu"]["total_median_ms"]) > 0 and rows["fastgan_cpu"]["noisy"] in ("True", "False")


def test_profiler_prints_nothing(capfd):
    # The CPU memory measurement runs torch.profiler, whose library logs profiler_start/stop lines
    # straight to the process's stderr: none may reach the user.
    import torch

    from fastgan.benchmark.timing import peak_memory

    x = torch.randn(64, 64)
    for _ in range(3):
        assert peak_memory(lambda a: (a @ a).sum(), [x], [], "cpu") > 0
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "USDT" not in err, err


def test_plot_colours_are_one_per_path():
    paths = ["fastgan_cpu", "reference_eager", "torch_hook", "studiogan_style", "mimicry_style"]
    c1, c2 = cli._colours(paths), cli._colours(list(reversed(paths)) + ["fastgan_cpu"])
    assert c1 == c2 and len(set(c1.values())) == len(paths)


def test_compilation_in_the_warm_up_costs_no_repetitions():
    """A path whose first call is slow (torch.compile compiling) gets as many repetitions as its
    speed afterwards allows: the warm-up's time counts neither against the budget nor in the floor."""
    import time

    from fastgan.benchmark.timing import time_paths

    calls = {"n": 0}

    def compiled_like(x):
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(0.3)  # "compilation", longer than the budget
        return (x * 2).sum()

    x = torch.randn(8, requires_grad=True)
    out = time_paths({"compiled_like": compiled_like, "plain": lambda x: (x * 3).sum()}, [x], [], "cpu",
                     min_reps=10, max_reps=40, budget_s=0.05)
    assert out["compiled_like"]["reps"] >= 10, out["compiled_like"]["reps"]
    assert out["plain"]["reps"] >= 10
