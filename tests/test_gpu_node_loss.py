"""Node loss under `--wait-for-gpus` (issue 17, item 2), and slots given up for lack of
room coming back when room returns.

The GPU nodes are logical (`num_gpus` resources of `ray.cluster_utils.Cluster` nodes on
this CPU machine) and the scorers run on the CPU (`Drill(simulate_gpus=True)`), so the
scheduling is the real one without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from tfnas_ray import tables
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.distributed.drills import DRILL_ENV, Drill
from tfnas_ray.distributed.scoring import ScoreConfig, run_scoring
from tfnas_ray.metrics import BATCHES, load_metrics
from tfnas_ray.metrics.scoring import arch_seed, score_architecture

N_ARCHS = 5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archs() -> pa.Table:
    """Distinct NAS-Bench-NLP cells, the first of the shipped PTB benchmark."""
    table, _ = get_benchmark("nb-nlp-ptb").load()
    seen, keep = set(), []
    for i, arch_id in enumerate(table.column("arch_id").to_pylist()):
        if arch_id not in seen:
            seen.add(arch_id)
            keep.append(i)
    return table.take(keep[:N_ARCHS])


def _params_by_arch(archs: pa.Table) -> dict[str, float]:
    """`params` of each architecture computed in this process, without Ray: the known
    answer a distributed run must equal."""
    load_metrics()  # fills the batch registry
    batch = BATCHES.get("nb-nlp")({})
    out = {}
    for row in archs.to_pylist():
        seed = arch_seed(row["arch_id"], 0, "derived")
        (scored,) = score_architecture(arch_id=row["arch_id"], space=row["space"], spec=row["spec"], metrics=["params"], seed=seed, batch=batch)
        out[row["arch_id"]] = scored["value"]
    return out


NODE_LOSS = r"""
import json, os, sys, threading, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from tfnas_ray import tables
from tfnas_ray.distributed import scheduler
from tfnas_ray.distributed.drills import Drill
from tfnas_ray.distributed.scoring import ScoreConfig, run_scoring

# A short placement limit: were the replacement held to it (the fault), it would be given
# up long before the new GPU node joins.
scheduler.PLACEMENT_WAIT_S = 4.0
work = Path(sys.argv[2])
archs = tables.read_table("archs", sys.argv[1])
ids = archs.column("arch_id").to_pylist()
victim = ids[2]
# The scorer pauses in the middle of the third architecture: the window in which its node goes.
os.environ.update(Drill(simulate_gpus=True, pause={victim: 60}, dir=str(work / "drill")).to_env())
store = 80 * 2**20
# A head that runs no scorer and one GPU node, as an autoscaling GPU cluster.
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False, "object_store_memory": store})
first = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=store)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)

outcome, said = {}, []
def score():
    config = ScoreConfig(metrics=("params",), shard_size=1, device="gpu", workers=1, wait_for_gpus=60, max_tries=1)
    try:
        summary = run_scoring(archs, str(work / "out"), config, progress=False, log=said.append)
        outcome["rows"] = [[r["arch_id"], r["metric"], r["value"], r["error"], r["device"]] for r in summary.table.to_pylist()]
        outcome["uncharged"] = dict(summary.uncharged_deaths)
        outcome["scorer_nodes"] = sorted({node for _, node in summary.scorers.values()})
    except BaseException as err:
        outcome["error"] = repr(err)
thread = threading.Thread(target=score)
started = time.monotonic()
thread.start()
marker = work / "drill" / f"paused-{victim}"
while not marker.exists() and thread.is_alive() and time.monotonic() - started < 60:
    time.sleep(0.1)
report = {"paused": marker.exists()}
cluster.remove_node(first)  # Cluster.add_node / remove_node must run in the main thread
# The autoscaler brings a new GPU node later than the placement limit.
time.sleep(10)
report["alive_when_node_joins"] = thread.is_alive()
second = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=store)
thread.join(timeout=60)
report.update(outcome, log=said, first=first.node_id[:12], second=second.node_id[:12], seconds=time.monotonic() - started)
print(json.dumps(report))
ray.shutdown()
cluster.shutdown()
"""


def test_a_lost_gpu_node_is_waited_for_under_wait_for_gpus(archs, tmp_path):
    """The GPU node is removed in the middle of an architecture and a new one joins 10 s
    later (after the 4 s placement limit): the replacement scorer waits for it as the
    first scorer waited, and the run completes with every architecture once, nobody
    charged (max_tries=1: one charged death would record a failure). On 5a94169 the run
    stopped with "no scorer could be placed within 4 s"."""
    path = tmp_path / "archs.parquet"
    tables.write_table("archs", archs, path)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop(DRILL_ENV, None)
    result = subprocess.run([sys.executable, "-c", NODE_LOSS, str(path), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.get("error") is None, report
    assert report["paused"] and report["alive_when_node_joins"]
    rows = report["rows"]
    assert sorted(arch_id for arch_id, *_ in rows) == sorted(archs.column("arch_id").to_pylist())  # each once
    assert all(error is None for *_, error, _ in rows)
    assert {arch_id: value for arch_id, _, value, _, _ in rows} == _params_by_arch(archs)
    assert report["uncharged"] == {"node lost": 1}
    assert report["scorer_nodes"] == [report["second"]]  # the slot's scorer is the one on the new node
    assert not any("could not be placed" in line for line in report["log"]), report["log"]


def test_a_slot_given_up_for_lack_of_room_comes_back_when_room_returns(ray_cluster, archs, tmp_path, monkeypatch):
    """Other work holds one of the two CPUs: one scorer is given up after the placement
    limit; when the work ends, the slot comes back and both scorers score. On 5a94169
    the slot stayed given up for the rest of the run."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from tfnas_ray.distributed import scheduler

    monkeypatch.setattr(scheduler, "PLACEMENT_WAIT_S", 3.0)
    monkeypatch.setattr(scheduler, "_RETURN_CHECK_S", 1.0, raising=False)
    # Each architecture takes 3 s more, so the run outlasts the limit and the hold.
    slow = {arch_id: 3.0 for arch_id in archs.column("arch_id").to_pylist()}
    for name, value in Drill(pause=slow, dir=str(tmp_path / "drill")).to_env().items():
        monkeypatch.setenv(name, value)
    held = placement_group([{"CPU": 1}])
    ray_cluster.get(held.ready(), timeout=60)
    said: list[str] = []

    def log(line: str) -> None:
        said.append(line)
        if "could not be placed" in line:
            remove_placement_group(held)  # the other work ends: room for the slot again

    try:
        summary = run_scoring(archs, tmp_path / "out", ScoreConfig(metrics=("params",), shard_size=1, device="cpu"), progress=False, log=log)
    finally:
        try:
            remove_placement_group(held)
        except Exception:  # noqa: BLE001 — already removed by `log`
            pass
    assert said[0].startswith("1 scorer(s) could not be placed within 3 s")
    assert "the cluster has room again: 1 scorer(s) given up before are starting again" in said
    assert summary.scored == N_ARCHS and len(summary.scorers) == 2
    assert {r["arch_id"]: r["value"] for r in summary.table.to_pylist()} == _params_by_arch(archs)
