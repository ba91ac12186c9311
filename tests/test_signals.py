"""SIGTERM, what Kubernetes sends a pod it deletes, stops a run like Ctrl-C (issue 18, row 5).

A real `tfnas score` process is terminated after its first shards are saved: it must
stop dispatching, keep what is saved, say how to resume, give its lease back and exit
with 143 (128 + SIGTERM) well within Kubernetes' default 30 s grace period; the rerun
scores only what was missing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfnas_ray import tables
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.lease import LEASE_NAME

GRACE_PERIOD_S = 30.0  # Kubernetes' default terminationGracePeriodSeconds


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tfnas_ray.cli", *args]


@pytest.mark.slow
def test_sigterm_saves_shards_prints_the_resume_line_frees_the_lease_and_exits_143(tmp_path):
    table, _ = get_benchmark("nb-nlp-ptb").load()
    archs = table.slice(0, 40)
    archs_path = tmp_path / "archs.parquet"
    tables.write_table("archs", archs, archs_path)
    distinct = len(set(archs.column("arch_id").to_pylist()))
    out = tmp_path / "scores"
    # hidden_cov: a forward pass over the metric batch per cell, seconds per shard of 2 here.
    command = _cli("score", str(archs_path), "-m", "hidden_cov", "--out", str(out), "--shard-size", "2", "--workers", "1", "--no-progress")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not list(out.glob("shard-*.parquet")):
            assert process.poll() is None, process.stdout.read()
            assert time.time() < deadline, "no shard written in time"
            time.sleep(0.2)
        assert (out / LEASE_NAME).exists()
        # Only the driver, as the kubelet signals a container's main process.
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        output, _ = process.communicate(timeout=GRACE_PERIOD_S + 30)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        else:  # whatever the driver left of the Ray cluster it started
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert process.returncode == 143, output[-3000:]
    print(f"exited {took:.1f} s after SIGTERM")
    assert took < GRACE_PERIOD_S, f"took {took:.1f} s to exit after SIGTERM"
    said = re.search(r"interrupted: (\d+) of (\d+) shards are saved in .*; run the same command again to resume", output)
    assert said, output[-3000:]
    assert "Traceback" not in output and "SIGABRT" not in output and "*** " not in output, output[-3000:]
    assert not (out / LEASE_NAME).exists()
    saved_files = {p.name: p.read_bytes() for p in out.glob("shard-*.parquet")}
    assert int(said.group(1)) == len(saved_files) > 0

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"({len(saved_files)} shards already done, 0 recomputed)" in finished.stdout
    saved_archs = 2 * len(saved_files)  # shards of 2; the last (possibly shorter) one is never first
    assert f"scored now {distinct - saved_archs} " in finished.stdout
    for name, content in saved_files.items():  # nothing saved was written again
        assert (out / name).read_bytes() == content
    scores = tables.read_table("scores", out)
    assert scores.num_rows == distinct and len(set(scores.column("arch_id").to_pylist())) == distinct


def test_sigterm_raises_terminated_once_and_ray_init_cannot_replace_the_handler():
    from tfnas_ray import termination

    before = signal.getsignal(signal.SIGTERM)
    try:
        termination.install()
        with termination.keep_handler():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init does
        assert signal.getsignal(signal.SIGTERM) is termination._on_sigterm
        with pytest.raises(termination.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode boundary
        assert termination.received() and isinstance(termination.Terminated(), KeyboardInterrupt)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one while unwinding: ignored
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, before)
        termination._received.clear()
    assert termination.EXIT_CODE == 143


def test_the_exit_code_of_sigterm_is_documented():
    from typer.testing import CliRunner

    from tfnas_ray.cli import app

    help_text = " ".join(CliRunner().invoke(app, ["--help"]).output.split())
    assert "143 SIGTERM (as Kubernetes sends)" in help_text
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "**143** SIGTERM" in readme and "well within Kubernetes' 30 s grace period" in readme
