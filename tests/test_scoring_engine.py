"""The Ray scoring engine: shards, resume, determinism, dead workers, bad input."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from tfnas_ray import tables
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.cli import app
from tfnas_ray.distributed.drills import Drill
from tfnas_ray.distributed.scoring import ScoreConfig, plan_shards, run_scoring
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import BATCHES
from tfnas_ray.metrics.scoring import arch_seed, score_architecture

METRICS = ("hidden_cov", "params")


@pytest.fixture(scope="module")
def archs() -> pa.Table:
    """Six distinct NAS-Bench-NLP cells (the first of the shipped PTB benchmark)."""
    table, _ = get_benchmark("nb-nlp-ptb").load()
    seen, keep = set(), []
    for i, arch_id in enumerate(table.column("arch_id").to_pylist()):
        if arch_id not in seen:
            seen.add(arch_id)
            keep.append(i)
    return table.take(keep[:6])


def values(table: pa.Table) -> dict:
    return {(r["arch_id"], r["metric"]): (r["value"], r["error"], r["seed"]) for r in table.to_pylist()}


def test_the_automatic_shard_size_keeps_every_scorer_of_a_small_run_busy():
    """Without --shard-size: ⌈n / 32⌉ archs per shard, 1 to 8 — a function of the archs
    alone (a rerun with another worker count finds the same shards)."""
    table, _ = get_benchmark("nb-nlp-ptb").load()
    first = {}
    for i, arch_id in enumerate(table.column("arch_id").to_pylist()):
        first.setdefault(arch_id, i)
    distinct = table.take(sorted(first.values()))
    assert distinct.num_rows == 254
    sizes = lambda n, **kw: [len(s.arch_ids) for s in plan_shards(distinct.slice(0, n), ScoreConfig(metrics=METRICS, **kw))]
    assert sizes(4) == [1, 1, 1, 1]  # four shards: two scorers share them
    assert sizes(40) == [2] * 20
    assert sizes(254) == [8] * 31 + [6]  # the main job's shards, as before this rule
    assert sizes(4, shard_size=3) == [3, 1]  # an explicit size is kept
    # Duplicated rows (a cell trained twice) count once.
    assert sizes(254) == [len(s.arch_ids) for s in plan_shards(table, ScoreConfig(metrics=METRICS))]


def test_memory_per_worker_runs_only_as_many_scorers_as_the_memory_holds(ray_cluster, archs, tmp_path):
    """--memory-per-worker reserves Ray's `memory` resource per scorer: with room for
    one scorer only, one runs (and scores everything); with room for none, one line
    says so before any scorer starts."""
    from tfnas_ray.distributed.cluster import cluster_memory

    gib = 1024**3
    room = cluster_memory() / gib
    assert room > 0.5  # Ray gives a local cluster most of the machine's memory
    one = ScoreConfig(metrics=("params",), shard_size=1, memory_per_worker=0.6 * room)
    summary = run_scoring(archs, tmp_path / "one", one, progress=False)
    assert len(summary.scorers) == 1 and summary.scored == archs.num_rows
    assert summary.table.num_rows == archs.num_rows

    with pytest.raises(TfnasError, match=r"^--memory-per-worker 1e\+06 GiB: the Ray cluster has [0-9.]+ GiB of memory"):
        run_scoring(archs, tmp_path / "none", dataclasses.replace(one, memory_per_worker=1e6), progress=False)
    assert not list((tmp_path / "none").glob("shard-*.parquet"))
    with pytest.raises(TfnasError, match="--memory-per-worker must be >= 0 GiB, got -1"):
        ScoreConfig(metrics=("params",), memory_per_worker=-1)
    # A scorer the cluster cannot place says what memory it asked for and what is free.
    from tfnas_ray.distributed.scheduler import _lacking

    assert re.search(r"each needs 2\.0 GiB of memory, the cluster has [0-9.]+ of [0-9.]+ GiB free", _lacking({"num_cpus": 1, "memory": 2 * gib}))


def test_scoring_through_ray_writes_one_shard_file_per_shard(ray_cluster, archs, tmp_path):
    config = ScoreConfig(metrics=METRICS, seed=0, shard_size=4)
    summary = run_scoring(archs, tmp_path, config, progress=False)
    files = sorted(p.name for p in tmp_path.glob("shard-*.parquet"))
    assert len(files) == 2 and summary.shards_total == 2 and summary.scored == 6
    assert summary.table.num_rows == 12
    # Each row equals scoring the architecture directly, without Ray, on one thread as
    # the CPU scorers do (the thread count changes float reductions).
    batch = BATCHES.get("nb-nlp")({})
    row = archs.to_pylist()[0]
    seed = arch_seed(row["arch_id"], 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        direct = score_architecture(arch_id=row["arch_id"], space="nb-nlp", spec=row["spec"], metrics=list(METRICS), seed=seed, batch=batch)
    finally:
        torch.set_num_threads(threads)
    got = values(summary.table)
    for expected in direct:
        value, error, got_seed = got[(row["arch_id"], expected["metric"])]
        # Ray runs workers with OMP_NUM_THREADS=1, which numpy's BLAS also obeys: the
        # driver's eigen-solver may sum in another order (last digits only).
        assert (error, got_seed) == (expected["error"], seed)
        assert value == pytest.approx(expected["value"], rel=1e-12)

    # Rerunning the same job skips every finished shard.
    again = run_scoring(archs, tmp_path, config, progress=False)
    assert again.scored == 0 and again.shards_skipped == 2
    assert values(again.table) == got


def test_values_do_not_depend_on_workers_or_shard_size(ray_cluster, archs, tmp_path):
    one = run_scoring(archs, tmp_path / "one", ScoreConfig(metrics=METRICS, seed=5, shard_size=1, workers=1), progress=False)
    many = run_scoring(archs, tmp_path / "many", ScoreConfig(metrics=METRICS, seed=5, shard_size=100, workers=2), progress=False)
    assert values(one.table) == values(many.table)
    assert len(list((tmp_path / "one").glob("shard-*.parquet"))) == 6


def test_a_corrupt_shard_is_reported_and_recomputed(ray_cluster, archs, tmp_path):
    config = ScoreConfig(metrics=METRICS, seed=0, shard_size=3)
    first = run_scoring(archs, tmp_path, config, progress=False)
    victim = sorted(tmp_path.glob("shard-*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated mid-file
    messages = []
    second = run_scoring(archs, tmp_path, config, progress=False, log=messages.append)
    assert second.shards_recomputed == 1 and second.scored == 3
    assert any(victim.name in m and "corrupt" in m for m in messages)
    assert values(second.table) == values(first.table)


def test_a_shard_with_missing_rows_is_recomputed(ray_cluster, archs, tmp_path):
    config = ScoreConfig(metrics=METRICS, seed=0, shard_size=6)
    run_scoring(archs, tmp_path, config, progress=False)
    shard = next(tmp_path.glob("shard-*.parquet"))
    pq.write_table(pq.read_table(shard).slice(0, 5), shard)
    messages = []
    again = run_scoring(archs, tmp_path, config, progress=False, log=messages.append)
    assert again.shards_recomputed == 1
    assert any("holds 5 rows, expected 12" in m for m in messages)


def stage(monkeypatch, drill: Drill) -> None:
    for name, value in drill.to_env().items():
        monkeypatch.setenv(name, value)


def test_a_worker_killed_mid_shard_is_recovered(ray_cluster, archs, tmp_path, monkeypatch):
    victim = archs.column("arch_id")[2].as_py()
    stage(monkeypatch, Drill(exit={victim: 1}, dir=str(tmp_path / "drill")))
    config = ScoreConfig(metrics=METRICS, seed=0, shard_size=6, workers=1)
    summary = run_scoring(archs, tmp_path / "out", config, progress=False)
    assert summary.worker_deaths == 1  # only the call that crashed; the replacement is waited for
    assert not summary.failures
    assert summary.table.column("error").null_count == summary.table.num_rows
    reference = run_scoring(archs, tmp_path / "ref", ScoreConfig(metrics=METRICS, seed=0, shard_size=6), progress=False)
    assert values(summary.table) == values(reference.table)


def test_a_poison_architecture_is_recorded_as_failed_after_max_tries(ray_cluster, archs, tmp_path, monkeypatch):
    victim = archs.column("arch_id")[1].as_py()
    stage(monkeypatch, Drill(exit={victim: 99}, dir=str(tmp_path / "drill")))
    config = ScoreConfig(metrics=METRICS, seed=0, shard_size=3, max_tries=2)
    summary = run_scoring(archs, tmp_path / "out", config, progress=False)
    rows = summary.table.to_pylist()
    failed = [r for r in rows if r["arch_id"] == victim]
    assert len(failed) == 2 and all(r["value"] is None and "worker died 2 times" in r["error"] for r in failed)
    others = [r for r in rows if r["arch_id"] != victim and r["metric"] == "params"]
    assert len(others) == 5 and all(r["value"] is not None for r in others)
    assert any("worker died" in reason for reason in summary.failures)
    # The shard's death split it, charging nobody; then the victim died twice alone.
    assert summary.worker_deaths == 3


def test_a_busy_cluster_scores_with_the_scorers_it_can_place(ray_cluster, archs, tmp_path, monkeypatch):
    """Other work holds one of the cluster's two CPUs: the scorer that fits scores
    everything, the other is given up after the placement wait, naming what it lacked.
    With both CPUs held, the run stops after the wait, naming them (it used to wait for
    ever)."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from tfnas_ray.distributed import scheduler

    monkeypatch.setattr(scheduler, "PLACEMENT_WAIT_S", 4.0)
    config = ScoreConfig(metrics=("params",), shard_size=2, device="cpu")
    held = placement_group([{"CPU": 1}])
    ray_cluster.get(held.ready(), timeout=60)
    # The one scorer pauses on the last architecture, so the run outlasts the placement
    # wait whatever the machine's speed (a run that ends first has nothing to give up).
    last = archs.column("arch_id")[-1].as_py()
    stage(monkeypatch, Drill(pause={last: 6.0}, dir=str(tmp_path / "drill")))
    try:
        said = []
        summary = run_scoring(archs, tmp_path / "half", config, progress=False, log=said.append)
        assert summary.scored == 6 and len(summary.scorers) == 1
        assert said == ["1 scorer(s) could not be placed within 4 s (each needs 1 CPU, the cluster has 0 of 2 free "
                        "(other work holds the rest)); going on with 1"]
    finally:
        remove_placement_group(held)
    monkeypatch.delenv("TFNAS_DRILL")
    held = placement_group([{"CPU": 1}, {"CPU": 1}])
    ray_cluster.get(held.ready(), timeout=60)
    try:
        started = time.monotonic()
        with pytest.raises(TfnasError, match=r"^no scorer could be placed within 4 s: each needs 1 CPU, the cluster has 0 of 2 free"):
            run_scoring(archs, tmp_path / "none", config, progress=False)
        assert time.monotonic() - started < 30
    finally:
        remove_placement_group(held)


def test_a_scorer_whose_constructor_fails_stops_the_run_with_its_cause(ray_cluster, archs, tmp_path, monkeypatch):
    stage(monkeypatch, Drill(fail_init="cannot open /dev/nvidia0"))
    started = time.monotonic()
    with pytest.raises(TfnasError, match=r"^a scorer actor failed to start: RuntimeError: cannot open /dev/nvidia0$"):
        run_scoring(archs, tmp_path, ScoreConfig(metrics=("params",)), progress=False)
    assert time.monotonic() - started < 30  # was 300 probes of 0.2 s per actor


def test_a_full_gpu_is_retried_and_recorded_failures_rescored_on_request(ray_cluster, archs, tmp_path, monkeypatch):
    """A full GPU (a real torch.OutOfMemoryError raised by the model's forward in the
    scorer, `Drill.full_gpu`) is retried as the README says: the cache freed and a second
    try; then the architecture alone on a scorer, uncharged; recorded as `cuda-oom` only
    when it does not fit alone `max_tries` times. A poison architecture recorded as
    failed is rescored by --retry-failed, and the rescored shards equal an undisturbed run."""
    from tfnas_ray.distributed.scorer import OUT_OF_MEMORY_TRIES

    reference = run_scoring(archs, tmp_path / "ref", ScoreConfig(metrics=METRICS, shard_size=3), progress=False)
    ids = archs.column("arch_id").to_pylist()
    fits_alone, never, poison = ids[0], ids[2], ids[4]
    max_tries = 2
    # In its shard, both tries of `never` find the GPU full; then each of its 2 attempts
    # alone does: 2 + 2 × 2 tries. One more and it would fit (on the --retry-failed run).
    never_tries = OUT_OF_MEMORY_TRIES * (1 + max_tries)
    drill = tmp_path / "drill"
    stage(monkeypatch, Drill(cuda_oom={fits_alone: OUT_OF_MEMORY_TRIES, never: never_tries}, exit={poison: 3}, dir=str(drill)))
    config = ScoreConfig(metrics=METRICS, shard_size=3, max_tries=max_tries)
    first = run_scoring(archs, tmp_path / "out", config, progress=False)
    rows = first.table.to_pylist()
    failed = {r["arch_id"]: r["error"] for r in rows if r["error"] is not None}
    assert set(failed) == {never, poison} and first.worker_deaths == 3  # a full GPU kills no scorer
    assert failed[never].startswith(
        f"cuda-oom: does not fit on its scorer's GPU alone: {max_tries} times alone, {OUT_OF_MEMORY_TRIES} tries each "
        "with the cache freed between (last: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (fault drill: "
    )
    assert (drill / f"cuda-oom-{never}").read_text() == str(never_tries)  # every try made, none more
    assert first.failures["hidden_cov: cuda-oom: does not fit on its scorer's GPU alone: N times alone, N tries each with the cache freed between"] == 1
    # The one that fits alone was not charged and has its undisturbed values.
    assert {k: v for k, v in values(first.table).items() if k[0] == fits_alone} == {k: v for k, v in values(reference.table).items() if k[0] == fits_alone}
    again = run_scoring(archs, tmp_path / "out", config, progress=False)
    assert again.scored == 0  # without --retry-failed a recorded failure stays
    retried = run_scoring(archs, tmp_path / "out", dataclasses.replace(config, retry_failed=True), progress=False)
    assert retried.scored == 2 and retried.shards_retried == 2 and retried.shards_skipped == 0
    assert values(retried.table) == values(reference.table)


def test_plan_rejects_unknown_metrics_and_bad_settings(archs):
    with pytest.raises(TfnasError, match="unknown metric 'hidden_covariance'; known: .*hidden_cov"):
        plan_shards(archs, ScoreConfig(metrics=("hidden_covariance",)))
    with pytest.raises(TfnasError, match="--shard-size must be >= 1, got 0"):
        ScoreConfig(metrics=METRICS, shard_size=0)
    with pytest.raises(TfnasError, match="--device 'tpu' is not one of auto, cpu, gpu"):
        ScoreConfig(metrics=METRICS, device="tpu")
    with pytest.raises(TfnasError, match="--wait-for-gpus applies to --device gpu only, got --device auto"):
        ScoreConfig(metrics=METRICS, wait_for_gpus=60)
    with pytest.raises(TfnasError, match="--wait-for-gpus must be >= 0 seconds, got -1"):
        ScoreConfig(metrics=METRICS, device="gpu", wait_for_gpus=-1)
    # 1.5 scorers per GPU would take 2/3 GPU each: the second never fits, and the pool waited for it.
    for share in (1.5, 0.5, 0):
        with pytest.raises(TfnasError, match=rf"--actors-per-gpu must be a whole number >= 1 \(scorers sharing one GPU, each taking 1/N of it\), got {share:g}$"):
            ScoreConfig(metrics=METRICS, actors_per_gpu=share)
    assert ScoreConfig(metrics=METRICS, actors_per_gpu=3).actors_per_gpu == 3


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not parquet at all", "is not a readable Parquet file"),
        ("truth", "is not a valid archs table: it lacks column 'space'"),
    ],
)
def test_cli_rejects_malformed_input_files_in_one_line(tmp_path, content, message):
    path = tmp_path / "archs.parquet"
    if content == "truth":
        tables.write_table("truth", tables.from_rows("truth", [{"arch_id": "a", "target": "t", "value": 1.0}]), path)
    else:
        path.write_bytes(content)
    result = CliRunner().invoke(app, ["score", str(path), "--metric", "hidden_cov", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2  # malformed input: a usage error
    assert message in result.output and result.output.count("\n") == 1


def test_cli_rejects_an_unknown_metric_and_a_bad_spec_before_work(tmp_path, archs):
    path = tmp_path / "archs.parquet"
    tables.write_table("archs", archs, path)
    result = CliRunner().invoke(app, ["score", str(path), "--metric", "hiden_cov", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "unknown metric 'hiden_cov'" in result.output
    bad = archs.set_column(2, "spec", pa.array(['{"h_new_0": {"op": "linear", "input": ["x"]}}'] * archs.num_rows))
    tables.write_table("archs", bad, path)
    result = CliRunner().invoke(app, ["score", str(path), "--metric", "params", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "row 0" in result.output and "never uses 'h_prev_0'" in result.output


def test_cli_rejects_a_share_of_a_gpu_no_scorer_fits_before_ray_starts(tmp_path, archs):
    path = tmp_path / "archs.parquet"
    tables.write_table("archs", archs, path)
    result = CliRunner().invoke(app, ["score", str(path), "-m", "params", "--actors-per-gpu", "1.5", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and result.output.count("\n") == 1  # input refused up front
    assert "--actors-per-gpu must be a whole number >= 1" in result.output and "got 1.5" in result.output
    assert not (tmp_path / "s").exists()
    for command in (["score", str(path), "-m", "params"], ["reproduce", "nb-nlp-ptb"], ["search", "nb-nlp", "-m", "params", "--candidates", "4"]):
        result = CliRunner().invoke(app, [*command, "--memory-per-worker", "-1", "--out", str(tmp_path / "s")])
        assert result.exit_code == 2 and result.output == "error: --memory-per-worker must be >= 0 GiB, got -1\n", command
        assert not (tmp_path / "s").exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tfnas_ray.cli", *args]


@pytest.mark.slow
def test_a_killed_driver_resumes_and_scores_every_architecture_once(tmp_path):
    """A real `tfnas score` process, killed with SIGKILL after its first shard, then
    interrupted with SIGINT, then rerun to the end."""
    table, _ = get_benchmark("nb-nlp-ptb").load()
    archs_path = tmp_path / "archs.parquet"
    tables.write_table("archs", table.slice(0, 40), archs_path)
    out = tmp_path / "scores"
    command = _cli("score", str(archs_path), "--metric", "hidden_cov", "--out", str(out), "--shard-size", "2", "--no-progress")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

    def start_and_wait_for_shards(n: int) -> subprocess.Popen:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.time() + 120
        while len(list(out.glob("shard-*.parquet"))) < n:
            assert process.poll() is None, process.stdout.read()
            assert time.time() < deadline, "no shard written in time"
            time.sleep(0.2)
        return process

    killed = start_and_wait_for_shards(1)
    os.killpg(killed.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
    killed.wait()
    after_kill = len(list(out.glob("shard-*.parquet")))

    interrupted = start_and_wait_for_shards(after_kill + 1)
    interrupted.send_signal(signal.SIGINT)
    output, _ = interrupted.communicate(timeout=60)
    assert interrupted.returncode == 1, output
    assert "interrupted:" in output and "run the same command again to resume" in output

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    scores = tables.read_table("scores", out)
    distinct = len(set(table.slice(0, 40).column("arch_id").to_pylist()))
    assert scores.num_rows == distinct  # every architecture once, none lost
    assert len(set(scores.column("arch_id").to_pylist())) == distinct
    assert "failures" in finished.stdout


def test_device_gpu_on_a_cluster_without_gpus_is_a_clear_error(ray_cluster, archs, tmp_path):
    with pytest.raises(TfnasError, match="--device gpu, but the Ray cluster has no GPUs"):
        run_scoring(archs, tmp_path, ScoreConfig(metrics=("params",), device="gpu"), progress=False)


def _run_cluster_script(script: str, *, n_archs: int, tmp_path) -> dict:
    """Run `script` (which starts its own Ray cluster) on the first `n_archs` PTB cells;
    return the JSON report it prints last."""
    import json

    table, _ = get_benchmark("nb-nlp-ptb").load()
    path = tmp_path / "archs.parquet"
    tables.write_table("archs", table.slice(0, n_archs), path)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path)], env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


SIMULATED_CLUSTER = r"""
import json, os, sys
import ray
from tfnas_ray import tables
from tfnas_ray.distributed.drills import Drill
from tfnas_ray.distributed.scoring import ScoreConfig, run_scoring
archs = tables.read_table("archs", sys.argv[1])
# Each architecture takes 2 s more, so that scorers still starting get work too (work
# goes to the scorers that are up). Staged before Ray starts: its workers inherit it.
slow = {arch_id: 2.0 for arch_id in archs.column("arch_id").to_pylist()}
os.environ.update(Drill(simulate_gpus=True, pause=slow, dir=sys.argv[2] + "/drill").to_env())
ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, object_store_memory=100 * 2**20)
report = {}
for device in ("auto", "cpu"):
    config = ScoreConfig(metrics=("params",), shard_size=1, device=device)
    summary = run_scoring(archs, sys.argv[2] + "/" + device, config, progress=False)
    report[device] = [device for device, _ in summary.scorers.values()]
    report[device + "_rows"] = sorted(set(summary.table.column("device").to_pylist()))
    os.environ.update(Drill(simulate_gpus=True, pause=slow, dir=sys.argv[2] + "/drill-" + device).to_env())
half = ScoreConfig(metrics=("params",), shard_size=1, device="gpu", actors_per_gpu=2)
report["half"] = [device for device, _ in run_scoring(archs, sys.argv[2] + "/half", half, progress=False).scorers.values()]
print(json.dumps(report))
"""


@pytest.mark.slow
def test_a_cluster_of_logical_gpus_gets_one_scorer_per_gpu(archs, tmp_path):
    """Ray started with 4 logical GPUs: each scorer holds a distinct GPU id; work goes
    to the scorers that are up; `--device cpu` falls back to CPU actors."""
    report = _run_cluster_script(SIMULATED_CLUSTER, n_archs=8, tmp_path=tmp_path)
    gpus = [f"cpu (simulated gpu {i})" for i in range(4)]
    # The scorers that were up (on a busy machine not every one of them starts before
    # the work is done): each on its own GPU; at least two GPUs used.
    assert len(report["auto"]) >= 2 and len(set(report["auto"])) == len(report["auto"]) and set(report["auto"]) <= set(gpus)
    assert set(report["auto_rows"]) <= set(report["auto"])
    assert {d.split(" (")[0] for d in report["cpu"]} == {"cpu"} and not any("simulated" in d for d in report["cpu"])
    # Two actors on each GPU: no GPU holds more than two scorers.
    assert len(report["half"]) >= 2 and set(report["half"]) <= set(gpus)
    assert max(report["half"].count(gpu) for gpu in gpus) <= 2


AUTOSCALED_CLUSTER = r"""
import json, os, sys, threading, time
import ray
from ray.cluster_utils import Cluster
from tfnas_ray import tables
from tfnas_ray.distributed.drills import Drill
from tfnas_ray.distributed.scoring import ScoreConfig, run_scoring
from tfnas_ray.errors import TfnasError
os.environ.update(Drill(simulate_gpus=True).to_env())

# A head that runs no work and a cluster without workers, as an autoscaling cluster is
# before any work arrives.
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False, "object_store_memory": 100 * 2**20})
ray.init(address=cluster.address, log_to_driver=False)
head = ray.get_runtime_context().get_node_id()
archs = tables.read_table("archs", sys.argv[1])
report = {}
try:
    run_scoring(archs, sys.argv[2] + "/auto", ScoreConfig(metrics=("params",)), progress=False)
except TfnasError as err:
    report["auto_error"] = str(err)
try:
    run_scoring(archs, sys.argv[2] + "/none", ScoreConfig(metrics=("params",), device="gpu", workers=2, wait_for_gpus=3), progress=False)
except TfnasError as err:
    report["no_gpu_error"] = str(err)

outcome = {}
def score():
    config = ScoreConfig(metrics=("params",), shard_size=1, device="gpu", workers=2, wait_for_gpus=120)
    try:
        outcome["summary"] = run_scoring(archs, sys.argv[2] + "/grown", config, progress=False)
    except BaseException as err:
        outcome["error"] = repr(err)
scorer = threading.Thread(target=score)
scorer.start()
time.sleep(4)
report["waiting_before_node"] = scorer.is_alive()
# What the autoscaler does when GPU actors are pending: a GPU node joins
# (Cluster.add_node must run in the main thread).
node = cluster.add_node(num_cpus=1, num_gpus=2, object_store_memory=100 * 2**20)
scorer.join(timeout=240)
summary = outcome["summary"]
report["error"] = outcome.get("error")
report["devices"] = sorted(set(summary.table.column("device").to_pylist()))
report["rows"] = summary.table.num_rows
report["scorer_nodes"] = sorted({node for _, node in summary.scorers.values()})
report["head"] = head[:12]
report["gpu_node"] = node.node_id[:12]
report["lines"] = summary.lines()
print(json.dumps(report))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_gpu_scorers_wait_for_the_autoscaler_to_add_a_gpu_node(archs, tmp_path):
    """--wait-for-gpus on a cluster with no GPU yet: the scorer asks for GPU actors,
    waits while they are pending, and scores on the GPU node once it joins; with no node
    ever coming it fails after the wait with a one-line error. `--device auto` on such a
    cluster (no CPU or GPU for scorers) fails at once, naming the flags to use."""
    report = _run_cluster_script(AUTOSCALED_CLUSTER, n_archs=6, tmp_path=tmp_path)
    assert report["auto_error"].startswith("--device auto: the Ray cluster has no CPU or GPU for scorers yet")
    assert report["no_gpu_error"].startswith("no GPU scorer was placed within --wait-for-gpus 3 s (the cluster has 0 GPUs)")
    assert report["waiting_before_node"] is True
    assert report["error"] is None
    assert report["rows"] == 6
    assert all(device.startswith("cpu (simulated gpu ") for device in report["devices"])
    assert report["scorer_nodes"] == [report["gpu_node"]] and report["gpu_node"] != report["head"]
