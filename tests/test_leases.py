"""Leases of an output directory (issue 18, rows 1, 2 and 9): an empty or unreadable
lease, a full disk, two runs racing to take over one stale lease, staleness by the
storage's clock rather than another host's, and a run whose lease was taken over."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tfnas_ray import lease
from tfnas_ray.distributed import scoring
from tfnas_ray.errors import TfnasError
from tfnas_ray.storage import locate

REPO = Path(__file__).resolve().parents[1]


def _quiet(line: str) -> None:
    pass


def _plant(directory: Path, *, storage_age_s: float, heartbeat_age_s: float | None = None, **fields) -> dict:
    """A lease as a run on another host holds it: its record says its heartbeat was
    `heartbeat_age_s` ago by that host's clock; the storage last wrote it
    `storage_age_s` ago (the file's modification time)."""
    heartbeat_age_s = storage_age_s if heartbeat_age_s is None else heartbeat_age_s
    record = {
        "token": "0" * 32, "owner": "alice", "host": "node-7", "pid": 4242, "beat": 3,
        "command": "tfnas score archs.parquet -m params", "started": time.time() - 3600, "heartbeat": time.time() - heartbeat_age_s,
        **fields,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / lease.LEASE_NAME
    path.write_text(json.dumps(record))
    then = time.time() - storage_age_s
    os.utime(path, (then, then))
    return record


# ---- row 1: empty or unreadable leases, a full disk -----------------------------------------


@pytest.mark.parametrize("content, what", [(b"", "an empty lease (0 bytes)"), (b'{"token": "ab', "an unreadable lease (13 bytes)")])
def test_an_empty_or_unreadable_lease_is_set_aside_not_a_lock(tmp_path, content, what):
    (tmp_path / lease.LEASE_NAME).write_bytes(content)
    said = []
    held = lease.Lease(locate(tmp_path), log=said.append).acquire()
    try:
        assert json.loads((tmp_path / lease.LEASE_NAME).read_text())["pid"] == os.getpid()
        (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith(lease.UNREADABLE_PREFIX)]
        assert aside.read_bytes() == content  # kept for a look, under a hidden name
        assert said == [f"{tmp_path}: set aside {what} as {aside.name}; taking the lease"]
    finally:
        held.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [aside.name]  # no lease, no claim left


def test_a_full_disk_while_taking_the_lease_is_one_line_and_leaves_no_lease(tmp_path):
    """`tfnas score` under `ulimit -f 0`: every write of a byte fails with EFBIG, as on
    a full disk; the lease is the first thing the run writes."""
    from tfnas_ray import tables
    from tfnas_ray.benchmarks import get_benchmark

    tables.write_table("archs", get_benchmark("nb-nlp-ptb").load()[0].slice(0, 2), tmp_path / "archs.parquet")
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        ["bash", "-c", 'ulimit -f 0 && exec "$0" -m tfnas_ray.cli score archs.parquet --out out -m params', sys.executable],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )
    assert result.returncode == 1, result
    assert result.stderr == f"error: cannot write the lease out/{lease.LEASE_NAME}: File too large; nothing was written\n", result.stderr
    assert os.listdir(out) == []  # no empty lease, no temporary
    lease.Lease(locate(out), log=_quiet).acquire().release()  # and the directory is free


# ---- row 2: staleness by the storage's clock; racing takeovers ------------------------------------


def test_staleness_is_the_storages_age_not_the_other_hosts_clock(tmp_path):
    # The holder's clock runs an hour behind ours, but the storage wrote its lease just now: live.
    _plant(tmp_path, storage_age_s=1, heartbeat_age_s=3600)
    with pytest.raises(TfnasError, match=r"is in use by another run: alice@node-7 pid 4242 .*heartbeat [01] s ago"):
        lease.Lease(locate(tmp_path), log=_quiet).acquire()
    # Its clock runs an hour ahead, but the storage last heard from it 10 minutes ago: dead.
    _plant(tmp_path, storage_age_s=600, heartbeat_age_s=-3600)
    said = []
    lease.Lease(locate(tmp_path), log=said.append).acquire().release()
    assert len(said) == 1 and said[0].startswith(f"taking over the lease of {tmp_path} from a run that stopped renewing it 6"), said


def _race(directory: str, start, results, index: int) -> None:
    def slow_terminal(line: str) -> None:  # racers held up for different times by their logs
        time.sleep(0.02 * index)

    start.wait()
    try:
        held = lease.Lease(locate(directory), log=slow_terminal).acquire()
        results[index] = "won"
        time.sleep(0.3)  # hold it while the others try
        held.release()
    except TfnasError as err:
        results[index] = str(err)


@pytest.mark.parametrize("round_", range(25))
def test_of_racing_takeovers_of_one_stale_lease_exactly_one_wins(tmp_path, round_):
    """Four real processes, released at one barrier, take over one stale lease; each
    is held up by its log for a different time (a slow terminal, a busy host)."""
    _plant(tmp_path, storage_age_s=lease.STALE_AFTER_S + 60)
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(4), context.Manager().dict()
    racers = [context.Process(target=_race, args=(str(tmp_path), start, results, i)) for i in range(4)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    outcomes = [results.get(i) for i in range(4)]
    assert outcomes.count("won") == 1, outcomes
    losers = [o for o in outcomes if o != "won"]
    assert all(o and ("in use by another run" in o or "taking over the same stale lease" in o) for o in losers), outcomes
    assert not any(p.name.startswith(lease.TAKEOVER_PREFIX) for p in tmp_path.iterdir())


# ---- a run whose lease was taken over ------------------------------------------------------------


def _take_over_behind_its_back(directory: Path) -> None:
    """What another run's takeover leaves: its own record under the lease's name."""
    record = {"token": "f" * 32, "owner": "bob", "host": "node-9", "pid": 77, "command": "tfnas score x", "started": time.time(), "beat": 1}
    (directory / ".taker.tmp.json").write_text(json.dumps(record))
    os.replace(directory / ".taker.tmp.json", directory / lease.LEASE_NAME)


def test_a_lease_taken_over_is_seen_lost_at_the_next_heartbeat(tmp_path):
    held = lease.Lease(locate(tmp_path), log=_quiet, heartbeat=0.05).acquire()
    try:
        deadline = time.monotonic() + 5
        while json.loads((tmp_path / lease.LEASE_NAME).read_text())["beat"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        held.check()  # renewed three times, still this run's: no error
        assert not held.lost
        _take_over_behind_its_back(tmp_path)
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(lease.LeaseLost, match=r"bob@node-9 pid 77 .* took over this run's lease .* stopping before the next shard"):
            held.check()
    finally:
        held.release()
    assert json.loads((tmp_path / lease.LEASE_NAME).read_text())["owner"] == "bob"  # its lease is left alone


def test_a_scoring_run_whose_lease_was_taken_over_stops_before_its_next_shard(ray_cluster, tmp_path, monkeypatch):
    from tfnas_ray.benchmarks import get_benchmark

    archs = get_benchmark("nb-nlp-ptb").load()[0].slice(0, 2)
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    with lease.hold(tmp_path, log=_quiet) as held:  # the run's own lease (run_scoring re-enters it)
        _take_over_behind_its_back(tmp_path)
        deadline = time.monotonic() + 5
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(lease.LeaseLost, match="took over this run's lease"):
            scoring.run_scoring(archs, tmp_path, scoring.ScoreConfig(metrics=("params",), shard_size=1), progress=False, log=_quiet)
    assert not list(tmp_path.glob("shard-*.parquet"))  # it wrote no shard into the other run's directory


def test_taking_over_from_a_live_run_keeps_its_writes_in_progress(tmp_path):
    _plant(tmp_path, storage_age_s=lease.STALE_AFTER_S + 60)
    in_progress = tmp_path / ".shard-aa.parquet.1111.tmp"  # the paused run is writing it
    in_progress.write_bytes(b"part of a shard")
    left_by_the_dead = tmp_path / ".shard-bb.parquet.2222.tmp"
    left_by_the_dead.write_bytes(b"half a shard")
    then = time.time() - lease.STALE_AFTER_S - 60
    os.utime(left_by_the_dead, (then, then))
    logged = []
    with lease.hold(tmp_path, log=logged.append):
        scoring.resume_state(locate(tmp_path), [], [], log=logged.append)
    assert in_progress.exists() and not left_by_the_dead.exists(), logged
    assert f"removed 1 temporary file(s) that an interrupted run left in {tmp_path}" in logged


def test_after_a_dead_run_on_this_host_every_temporary_goes(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant(tmp_path, storage_age_s=1, host=socket.gethostname(), pid=dead.pid)
    (tmp_path / ".shard-aa.parquet.1111.tmp").write_bytes(b"part of a shard")
    with lease.hold(tmp_path, log=_quiet):
        scoring.resume_state(locate(tmp_path), [], [], log=_quiet)
    assert not list(tmp_path.glob(".*.tmp"))


def test_without_modification_times_a_taker_watches_the_heartbeat_on_its_own_clock():
    """fsspec's memory file system keeps no modification times: a taker watches the
    lease's heartbeat counter for `stale_after` seconds of its monotonic clock."""
    where = locate(f"memory://lease-watch-{os.getpid()}/out")
    holder = lease.Lease(where, log=_quiet, heartbeat=0.05, stale_after=0.5).acquire()
    said = []
    try:
        with pytest.raises(TfnasError, match=r"is in use by another run: .* heartbeat 0 s ago"):
            lease.Lease(where, log=said.append, stale_after=0.5).acquire()  # its counter moved: alive
    finally:
        holder._stop.set()  # the holder hangs: its lease stays, its heartbeat stops
        holder._thread.join()
    assert said == [f"{where.url}: the storage keeps no modification times; watching the lease's heartbeat for 0.5 s"]
    started = time.monotonic()
    taker = lease.Lease(where, log=said.append, stale_after=0.5).acquire()
    assert time.monotonic() - started >= 0.5
    assert re.match(rf"taking over the lease of {re.escape(where.url)} from a run that stopped renewing it [01] s ago", said[-1]), said
    taker.release()
