"""bench/bench_gpu.py works before a GPU runs it: the whole script as a `--device cpu`
dry run on 2 architectures, its failure reporting, and its rates over successes only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import bench_gpu  # noqa: E402


def _row(arch, metric, value, error=None, seconds=1.0):
    return {"arch_id": arch, "metric": metric, "value": value, "error": error, "seconds": seconds}


def test_throughput_counts_successes_only_and_survives_all_failed():
    rows = [_row("a" * 12, "hidden_cov", 1.0, seconds=2.0), _row("b" * 12, "hidden_cov", None, "CUDA out of memory")]
    line = bench_gpu.throughput_line("hidden_cov 1 scorer(s)/GPU", rows, 2, 4.0)
    # 1 success in 4 s: 0.25 archs/s; the failed architecture neither counts nor sets the median
    assert "1 of 2 archs succeeded in 4.0 s" in line and "= 0.25 archs/s" in line
    assert "median 2.00 s per arch" in line and "1 failed" in line
    failed = [_row("a" * 12, "hidden_cov", None, "boom"), _row("b" * 12, "hidden_cov", None, "boom")]
    assert bench_gpu.throughput_line("x", failed, 2, 4.0) == "throughput x: no architecture succeeded (2 of 2 failed) in 4.0 s"
    assert bench_gpu.throughput_line("x", [], 2, 1.0) == "throughput x: no architecture succeeded (0 of 2 failed) in 1.0 s"


def test_value_errors_are_printed_never_skipped(capsys):
    bench_gpu.values_on_device("cpu", [("bad-arch-id", "{}")], ["hidden_cov"])
    out = capsys.readouterr().out
    assert re.search(r"^error bad-arch-i hidden_cov on cpu: \S", out, re.M), out
    assert "values bad-arch-i: no column succeeded on both devices" in out
    assert re.search(r"^error bad-arch-i hidden_cov on cpu graphs off: \S", out, re.M)
    assert re.search(r"^error bad-arch-i hidden_cov on cpu graphs on: \S", out, re.M)
    assert "hidden_cov bad-arch-i on cpu: graphs off failed, on failed" in out


def test_the_script_runs_as_a_cpu_dry_run_on_two_architectures(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)  # its own local Ray, as on the GPU machine
    command = [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--device", "cpu", "--archs", "2",
               "--value-archs", "2", "--columns", "hidden_cov,params", "--sets", "hidden_cov", "--per-gpu", "1"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    assert "device cpu" in out and re.search(r"^roofline cpu: \(50, 600\) @ \(600, 2400\) fp32 [\d.]+ TFLOP/s", out, re.M)
    assert not re.search(r"^error", out, re.M), out
    compared = re.findall(r"^values (\S+): largest relative difference (\S+) \(\w+\); (\d+) of (\d+) columns compared", out, re.M)
    assert len(compared) == 2 and all(float(d) == 0.0 and n == total == "2" for _, d, n, total in compared), out  # cpu vs cpu
    per_column = re.findall(r"^value (\S+) (\w+) +cpu (\S+) cpu (\S+) rel\. diff", out, re.M)
    assert len(per_column) == 2 * int(compared[0][3]) and all(a == b for _, _, a, b in per_column)
    graphs = re.findall(r"^hidden_cov (\S+) on cpu: graphs off [\d.]+ s, on [\d.]+ s .*rel\. diff (\S+)", out, re.M)
    assert len(graphs) == 2 and all(float(d) == 0.0 for _, d in graphs), out
    assert re.search(r"^throughput hidden_cov +1 CPU scorer\(s\): 2 of 2 archs succeeded in [\d.]+ s", out, re.M), out
    assert out.rstrip().endswith("done")
