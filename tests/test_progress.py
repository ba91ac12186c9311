"""Progress on stderr: a bar on a terminal, plain lines in logs."""

from __future__ import annotations

import io

import pytest

from tfnas_ray.distributed.cost import LONG_RUN_S, Cheaper, cheaper_settings, duration, project, projection_lines
from tfnas_ray.distributed.progress import Progress
from tfnas_ray.errors import TfnasError


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _clock(times):
    it = iter(times)
    return lambda: next(it)


def test_logs_get_a_plain_line_every_tenth_of_the_work_and_every_30_seconds():
    log = io.StringIO()
    # Start at 0 s; 100 archs: one at a time every second, then a slow stretch.
    times = [0.0] + [float(t) for t in range(1, 26)] + [60.0, 61.0]
    progress = Progress(100, enabled=True, stream=log, clock=_clock(times))
    for _ in range(25):
        progress.advance(1)
    progress.advance(1)  # 26 done at 60 s: 35 s after the last line, under 10 % since it
    progress.advance(74)  # the rest
    progress.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [line.split()[1] for line in lines] == ["10/100", "20/100", "26/100", "100/100"]
    assert lines[0] == "scored 10/100 archs  1.00 archs/s  ETA 00:01:30"


def test_a_terminal_gets_one_line_redrawn_in_place():
    term = _Terminal()
    progress = Progress(2, enabled=True, stream=term, clock=_clock([0.0, 1.0, 2.0]))
    progress.advance(1)
    progress.advance(1)
    progress.close()
    assert term.getvalue() == "\rscored 1/2 archs  1.00 archs/s  ETA 00:00:01   \rscored 2/2 archs  1.00 archs/s  ETA 00:00:00   \n"


def test_disabled_or_empty_progress_writes_nothing():
    for total, enabled in ((5, False), (0, True)):
        log = io.StringIO()
        progress = Progress(total, enabled=enabled, stream=log, clock=_clock([0.0]))
        progress.advance(total)
        progress.close()
        assert log.getvalue() == ""


# ---- per-architecture progress, heartbeats, cost (issue 18, row 6 and "cost before long work")


def test_a_silent_log_gets_a_heartbeat_at_least_every_heartbeat_seconds():
    log = io.StringIO()
    # Clock reads: start, then each tick; nothing finishes for 130 s, then one arch.
    times = [0.0, 30.0, 59.0, 60.0, 61.0, 119.0, 120.0, 125.0, 126.0]
    progress = Progress(8, enabled=True, stream=log, clock=_clock(times), heartbeat=60.0)
    for _ in range(5):
        progress.tick()  # reads 30, 59, 60 (line), 61, 119
    progress.tick()  # 120: 60 s after the last line (line)
    progress.finished("a", 5.0)  # 125: an architecture of the shard in flight
    progress.tick()  # 126
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines == [
        "scored 0/8 archs  0.00 archs/s  ETA --:--:--  (working; no architecture finished yet, 60 s in)",
        "scored 0/8 archs  0.00 archs/s  ETA --:--:--  (working; no architecture finished yet, 120 s in)",
        "scored 1/8 archs  0.01 archs/s  ETA 00:14:35",  # 1 of 8 is a 10 % step: a line of its own
    ]


def test_heartbeat_interval_from_the_environment(monkeypatch):
    from tfnas_ray.distributed.progress import HEARTBEAT_ENV, heartbeat_seconds

    monkeypatch.delenv(HEARTBEAT_ENV, raising=False)
    assert heartbeat_seconds() == 60.0
    monkeypatch.setenv(HEARTBEAT_ENV, "2.5")
    assert heartbeat_seconds() == 2.5
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(HEARTBEAT_ENV, bad)
        with pytest.raises(TfnasError, match=rf"TFNAS_HEARTBEAT_S must be a number of seconds > 0, got '{bad}'"):
            heartbeat_seconds()


def test_an_architecture_reported_by_its_scorer_and_recorded_with_its_shard_counts_once():
    progress = Progress(3, enabled=False, clock=_clock([0.0] * 10))
    for arch_id in ("a", "b", "a", "b", "c"):  # reported, then recorded with the shard
        progress.finished(arch_id, 1.0)
    assert progress.done == 3


def test_the_projection_is_logged_once_when_every_scorer_has_finished_an_architecture():
    said = []
    clock = _clock([0.0, 40.0, 41.0, 50.0, 51.0, 60.0])
    cheaper = [Cheaper("--seq-len 128 --mode eval", 0.25, "scaled by tokens")]
    progress = Progress(100, enabled=False, clock=clock, note=said.append, cheaper=cheaper)
    progress.attach(None, scorers=2)
    progress.finished("a", 30.0)  # one of two scorers: not yet
    assert said == []
    progress.finished("b", 20.0)  # now, at 40 s: 40 + 98 × 25 / 2 = 1265 s
    progress.finished("c", 20.0)  # once only
    assert said == [
        "projected: 21 min for 100 archs (from the first 2: median 25.0 s per arch, 2 scorers at a time)",
        "  cheaper: --seq-len 128 --mode eval ≈ 5 min (scaled by tokens)",
        "  (a rerun with other settings is a new plan: it does not reuse these scores)",
    ]


def test_project_scales_the_median_architecture_over_the_scorers():
    # 96 left × median 10 s / 2 scorers + 30 s spent = 510 s; the odd 100 s arch is ignored.
    assert project(total=100, done=4, elapsed_s=30.0, arch_seconds=[9.0, 10.0, 100.0, 10.0], scorers=2) == 510.0
    assert project(total=10, done=10, elapsed_s=7.0, arch_seconds=[1.0], scorers=3) == 7.0
    with pytest.raises(ValueError, match="at least one finished architecture"):
        project(total=10, done=0, elapsed_s=0.0, arch_seconds=[], scorers=1)
    with pytest.raises(ValueError, match="scorers must be >= 1, got 0"):
        project(total=10, done=1, elapsed_s=0.0, arch_seconds=[1.0], scorers=0)


def test_cheaper_settings_exist_for_nb_bert_above_128_tokens_only():
    (paper,) = cheaper_settings(["nb-bert"], {})  # the paper's 512 tokens
    assert paper.flags == "--seq-len 128 --mode eval" and paper.factor == 0.25
    assert "scaled by tokens per sequence, 128/512" in paper.basis
    assert cheaper_settings(["nb-bert"], {"seq_len": 256})[0].factor == 0.5
    assert cheaper_settings(["nb-bert"], {"seq_len": 128}) == []
    assert cheaper_settings(["nb-nlp"], {}) == []


def test_a_short_run_gets_its_projection_without_cheaper_settings():
    cheaper = cheaper_settings(["nb-bert"], {})
    short = projection_lines(LONG_RUN_S - 1, done=2, total=10, arch_seconds=[1.0, 2.0], scorers=1, cheaper=cheaper)
    assert short == ["projected: 10 min for 10 archs (from the first 2: median 1.5 s per arch, 1 scorer at a time)"]
    long = projection_lines(LONG_RUN_S + 1, done=2, total=10, arch_seconds=[1.0, 2.0], scorers=1, cheaper=cheaper)
    assert long[1] == "  cheaper: --seq-len 128 --mode eval ≈ 4 s (scaled by tokens per sequence, 128/512; attention grows faster, so likely less)"
    assert duration(45.2) == "45 s" and duration(754) == "13 min" and duration(11520) == "3.2 h"


@pytest.mark.slow
def test_a_real_run_logs_each_architecture_heartbeats_and_its_projected_cost(tmp_path):
    """`tfnas score` of 200 nb-bert configs (`-m params`, counted from the config, so
    the run is quick) whose first three architectures take 6 s each (a drill pause):
    stderr going to a file gets heartbeats while the first shard of 8 is in flight, and
    they count its architectures one by one; stdout gets the projection, long enough
    (≈ 200 × 6 s) to list the cheaper nb-bert setting."""
    import os
    import subprocess
    import sys

    from tfnas_ray import tables
    from tfnas_ray.distributed.drills import Drill
    from tfnas_ray.distributed.progress import HEARTBEAT_ENV
    from tfnas_ray.pipeline import sample_archs

    archs = sample_archs("nb-bert", 200, seed=0)
    ids = list(dict.fromkeys(archs.column("arch_id").to_pylist()))
    path = tmp_path / "archs.parquet"
    tables.write_table("archs", archs, path)
    slow = {arch_id: 6 for arch_id in ids[:3]}
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", HEARTBEAT_ENV: "1", **Drill(pause=slow, dir=str(tmp_path / "drill")).to_env()}
    command = [sys.executable, "-m", "tfnas_ray.cli", "score", str(path), "-m", "params", "--workers", "1", "--shard-size", "8", "--out", str(tmp_path / "out")]
    with open(tmp_path / "stderr.log", "w") as err:
        run = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True, timeout=300)
    log = (tmp_path / "stderr.log").read_text()
    assert run.returncode == 0, log[-3000:]
    assert "\r" not in log
    beats = [line for line in log.splitlines() if line.startswith("scored ") and "(working;" in line]
    within_first_shard = {int(line.split()[1].split("/")[0]) for line in beats} & {1, 2}
    assert within_first_shard == {1, 2}, log  # counted per architecture, not per shard of 8
    out = run.stdout.splitlines()
    projected = next(line for line in out if line.startswith("projected: "))
    assert f"for {len(ids)} archs (from the first 1: median 6." in projected
    assert any(line.startswith("  cheaper: --seq-len 128 --mode eval ≈ ") for line in out), run.stdout


def test_a_run_projected_under_a_minute_gets_no_projection_line():
    said = []
    progress = Progress(10, enabled=False, clock=_clock([0.0, 5.0]), note=said.append)
    progress.attach(None, scorers=1)
    progress.finished("a", 1.0)  # 5 + 9 × 1 s: 14 s
    progress.finished("b", 1.0)
    assert said == []
