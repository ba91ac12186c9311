"""Fault injection: the scoring engine under the faults of a real cluster.

Each fault ends with every architecture scored exactly once and values identical to an
undisturbed run. The multi-node faults run on a local multi-node Ray cluster
(`ray.cluster_utils.Cluster`) in a subprocess, since a process holds one Ray cluster and
the session's `ray_cluster` may already be up; one cluster serves every scenario (a
cluster takes many seconds to start on a 2-core machine). Faults are staged with drills
(`tfnas_ray.distributed.drills`, the TFNAS_DRILL environment variable), never with
options of the product.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfnas_ray import tables
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.distributed.drills import DRILL_ENV, Drill

METRICS = ("params", "hidden_cov")  # cheap: a parameter count and one forward pass
N_ARCHS = 6

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archs_path(tmp_path_factory) -> Path:
    """Six distinct NAS-Bench-NLP cells, the first of the shipped PTB benchmark."""
    table, _ = get_benchmark("nb-nlp-ptb").load()
    seen, keep = set(), []
    for i, arch_id in enumerate(table.column("arch_id").to_pylist()):
        if arch_id not in seen and len(keep) < N_ARCHS:
            seen.add(arch_id)
            keep.append(i)
    path = tmp_path_factory.mktemp("archs") / "archs.parquet"
    tables.write_table("archs", table.take(keep), path)
    return path


CLUSTER_SCENARIOS = r"""
import json, os, shutil, sys, threading, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from tfnas_ray import tables
from tfnas_ray.distributed import scheduler
from tfnas_ray.distributed.drills import DRILL_ENV, Drill
from tfnas_ray.distributed.scoring import ScoreConfig, run_scoring

METRICS = tuple(json.loads(sys.argv[3]))
scheduler.PLACEMENT_WAIT_S = 10.0  # the replacement of a lost node's scorer has nowhere to go
archs = tables.read_table("archs", sys.argv[1])
ids = archs.column("arch_id").to_pylist()
work = Path(sys.argv[2])
# A head that runs no scorer (removing a node never removes the driver's) and two
# one-CPU worker nodes: two scorers, one per node.
store = 80 * 2**20
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": store})
nodes = [cluster.add_node(num_cpus=1, object_store_memory=store) for _ in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)

def score(name, drill=None, **options):
    if drill is None:
        os.environ.pop(DRILL_ENV, None)
    else:
        os.environ.update(drill.to_env())  # the driver forwards it to the scorers it starts
    said = []
    summary = run_scoring(archs, str(work / name), ScoreConfig(metrics=METRICS, **options), progress=False, log=said.append)
    return {
        "rows": sorted([r["arch_id"], r["metric"], r["value"], r["error"]] for r in summary.table.to_pylist()),
        "scored": summary.scored,
        "deaths": summary.worker_deaths,
        "uncharged": dict(summary.uncharged_deaths),
        "failures": dict(summary.failures),
        "recomputed": summary.shards_recomputed,
        "scorer_nodes": len({node for _, node in summary.scorers.values()}),
        "log": said,
    }

report = {"reference": score("reference", shard_size=3)}
# A scorer process killed in the middle of a shard (it exits as a segfault would).
report["scorer_killed"] = score("scorer_killed", Drill(exit={ids[1]: 1}, dir=str(work / "drill-kill")), shard_size=3)
# A shard truncated on disk, then the same command again.
shutil.copytree(work / "reference", work / "corrupt")
shard = sorted((work / "corrupt").glob("shard-*.parquet"))[0]
shard.write_bytes(shard.read_bytes()[:200])
report["corrupt"] = score("corrupt", shard_size=3)
# A node removed while its scorer is in the middle of an architecture. max_tries=1: a
# single charged death would record the architecture as failed.
victim = ids[3]
drill = Drill(pause={victim: 60}, dir=str(work / "drill-node"))
outcome = {}
def run():
    try:
        outcome.update(score("node_lost", drill, shard_size=1, max_tries=1))
    except BaseException as err:
        outcome["error"] = repr(err)
thread = threading.Thread(target=run)
thread.start()
marker = work / "drill-node" / f"paused-{victim}"
deadline = time.monotonic() + 240
while not marker.exists() and thread.is_alive() and time.monotonic() < deadline:
    time.sleep(0.1)
paused_on = marker.read_text()
lost = next(node for node in nodes if node.node_id == paused_on)
cluster.remove_node(lost)  # Cluster.remove_node must run in the main thread
thread.join(timeout=240)
report["node_lost"] = outcome
print(json.dumps(report))
ray.shutdown()
cluster.shutdown()
"""


@pytest.fixture(scope="module")
def scenarios(archs_path, tmp_path_factory) -> dict:
    """Every multi-node scenario, run once on one local cluster."""
    work = tmp_path_factory.mktemp("faults")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop(DRILL_ENV, None)
    result = subprocess.run(
        [sys.executable, "-c", CLUSTER_SCENARIOS, str(archs_path), str(work), json.dumps(METRICS)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _scored_once(rows: list, n_archs: int = N_ARCHS) -> bool:
    keys = [(arch_id, metric) for arch_id, metric, _, _ in rows]
    return len(keys) == len(set(keys)) == n_archs * len(METRICS)


def test_the_undisturbed_run_scores_every_architecture(scenarios):
    reference = scenarios["reference"]
    assert _scored_once(reference["rows"]) and reference["deaths"] == 0
    assert all(value is not None for _, _, value, _ in reference["rows"])
    assert reference["scorer_nodes"] == 2  # one scorer on each worker node


def test_a_scorer_killed_mid_shard(scenarios):
    killed = scenarios["scorer_killed"]
    assert killed["rows"] == scenarios["reference"]["rows"] and _scored_once(killed["rows"])
    assert killed["deaths"] == 1 and killed["failures"] == {}
    # The shard's architectures were retried one at a time; none was charged.
    assert killed["uncharged"] == {"worker process died (shard retried one architecture at a time)": 1}


def test_a_corrupt_shard_then_resume(scenarios):
    corrupt = scenarios["corrupt"]
    assert corrupt["recomputed"] == 1 and corrupt["scored"] == 3
    assert any("is corrupt" in line for line in corrupt["log"])
    assert corrupt["rows"] == scenarios["reference"]["rows"] and _scored_once(corrupt["rows"])


def test_a_node_lost_mid_architecture_charges_no_architecture(scenarios):
    """The scorer of the removed node was scoring an architecture alone (shards of one)
    with max_tries=1: charging that death would record a healthy architecture as failed
    for good (as the engine did before it read Ray's death cause)."""
    lost = scenarios["node_lost"]
    assert "error" not in lost, lost.get("error")
    assert lost["failures"] == {} and lost["uncharged"] == {"node lost": 1}
    assert lost["rows"] == scenarios["reference"]["rows"] and _scored_once(lost["rows"])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tfnas_ray.cli", *args]


def test_a_driver_killed_with_sigkill_resumes(scenarios, archs_path, tmp_path):
    """A real `tfnas score`, killed with SIGKILL (with the local Ray it started) while a
    scorer is in the middle of an architecture, then run again: the rerun scores only
    what was missing, and its progress on a non-terminal stderr is plain lines."""
    out = tmp_path / "scores"
    drill_dir = tmp_path / "drill"
    table = tables.read_table("archs", archs_path)
    victim = table.column("arch_id")[1].as_py()  # the second: the first shard is saved by then
    command = _cli("score", str(archs_path), "-m", ",".join(METRICS), "--out", str(out), "--shard-size", "1", "--workers", "1")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop(DRILL_ENV, None)
    drilled = {**env, **Drill(pause={victim: 120}, dir=str(drill_dir)).to_env()}
    killed = subprocess.Popen(command, env=drilled, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    paused = drill_dir / f"paused-{victim}"
    deadline = time.time() + 240
    while not paused.exists():
        assert killed.poll() is None, killed.stdout.read()
        assert time.time() < deadline, "the scorer never reached the paused architecture"
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
    killed.wait()
    saved = len(list(out.glob("shard-*.parquet")))
    assert 0 < saved < N_ARCHS  # killed in the middle

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"scored now {N_ARCHS - saved}" in finished.stdout
    rows = sorted([r["arch_id"], r["metric"], r["value"], r["error"]] for r in tables.read_table("scores", out).to_pylist())
    assert rows == scenarios["reference"]["rows"] and _scored_once(rows)
    progress = [line for line in finished.stderr.splitlines() if line.startswith("scored ")]
    assert "\r" not in finished.stderr and progress and progress[-1].startswith(f"scored {N_ARCHS - saved}/{N_ARCHS - saved} archs")


CHAOS = r"""
import json, os, random, signal, sys, threading, time
from pathlib import Path
import ray
from ray._private import state
from ray.cluster_utils import Cluster
from tfnas_ray import tables
from tfnas_ray.distributed.drills import DRILL_ENV, Drill
from tfnas_ray.distributed.scoring import ScoreConfig, run_scoring

archs = tables.read_table("archs", sys.argv[1])
ids = archs.column("arch_id").to_pylist()
work = Path(sys.argv[2])
store = 80 * 2**20
# A head that runs no scorer and three one-CPU worker nodes: three scorers, one per node.
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": store})
for _ in range(3):
    cluster.add_node(num_cpus=1, object_store_memory=store)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
# max_tries well above what random kills can reach: a scorer killed while an
# architecture was alone on it charges that architecture, and three charges on one
# architecture would record it as failed.
config = dict(metrics=("params",), shard_size=4, max_tries=20)

def rows(summary):
    return sorted([r["arch_id"], r["metric"], r["value"], r["error"]] for r in summary.table.to_pylist())

os.environ.pop(DRILL_ENV, None)
reference = run_scoring(archs, str(work / "reference"), ScoreConfig(**config), progress=False, log=lambda line: None)

# Every architecture pauses 0.3 s on its first attempt, so the run lasts long enough
# for the killer; values do not depend on it.
os.environ.update(Drill(pause={a: 0.3 for a in ids}, dir=str(work / "drill")).to_env())
done = threading.Event()
kills = []

MAX_KILLS = 8  # then the run is left to finish: the chaos is bounded

def killer():
    rng = random.Random(0)
    first_seen = {}
    while len(kills) < MAX_KILLS and not done.wait(2.0):
        now = time.monotonic()
        alive = {}
        for info in state.actors().values():
            if info["ActorClassName"].endswith("ScorerActor") and info["State"] == "ALIVE" and info["Pid"]:
                alive[info["Pid"]] = info
                first_seen.setdefault(info["Pid"], now)
        # Only scorers up for a while: one killed before it answers counts as a failed start.
        ripe = sorted(pid for pid in alive if now - first_seen[pid] >= 3.0)
        if ripe:
            pid = rng.choice(ripe)
            try:
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
            except ProcessLookupError:
                pass

thread = threading.Thread(target=killer, daemon=True)
thread.start()
started = time.monotonic()
try:
    chaos = run_scoring(archs, str(work / "chaos"), ScoreConfig(**config), progress=False, log=lambda line: None)
finally:
    done.set()
seconds = time.monotonic() - started
print(json.dumps({
    "reference": rows(reference), "chaos": rows(chaos), "kills": len(kills), "seconds": seconds,
    "deaths": chaos.worker_deaths, "failures": dict(chaos.failures), "scored": chaos.scored,
}))
ray.shutdown()
cluster.shutdown()
"""


def test_chaos_random_scorers_killed_every_few_seconds(tmp_path):
    """One run of 120 nb-nlp cells on three one-CPU nodes while a random scorer process
    is killed (SIGKILL) every 2 s, up to 8 kills: every architecture ends scored exactly
    once, with the values of an undisturbed run (≈ 100 s on a loaded 2-core machine,
    12 kills)."""
    table, _ = get_benchmark("nb-nlp-ptb").load()
    seen, keep = set(), []
    for i, arch_id in enumerate(table.column("arch_id").to_pylist()):
        if arch_id not in seen and len(keep) < 120:
            seen.add(arch_id)
            keep.append(i)
    path = tmp_path / "archs.parquet"
    tables.write_table("archs", table.take(keep), path)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop(DRILL_ENV, None)
    result = subprocess.run([sys.executable, "-c", CHAOS, str(path), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    # Ray's raylets may print after the report: take the report's line.
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"reference"')))
    keys = [(arch_id, metric) for arch_id, metric, _, _ in report["chaos"]]
    assert len(keys) == len(set(keys)) == 120  # every architecture exactly once
    assert report["chaos"] == report["reference"] and report["failures"] == {}
    assert report["kills"] >= 3 and report["deaths"] >= 3, report  # it was disturbed
