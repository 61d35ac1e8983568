"""The benchmark machinery on tiny sizes: every path runs, the files are written, errors are computed,
and `python -m fastgan info` reports the backends."""
import csv
import json
import subprocess
import sys

from fastgan.benchmark import cli


def test_bench_cli_writes_results(tmp_path):
    out = tmp_path / "b"
    rc = cli.main(["--ops", "2c", "infonce", "spectral_norm", "--sizes", "16x8,4x3x5,sngan32", "--out", str(out),
                   "--min-reps", "2", "--budget", "0"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
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
    # One row per (op, fastgan path): 2c and infonce, spectral norm per layer and grouped.
    assert (out / "table.txt").read_text().count("fastgan_cpu") == 4


def test_info_command():
    res = subprocess.run([sys.executable, "-m", "fastgan", "info"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "cpu        available" in res.stdout and "auto    -> cpu" in res.stdout
