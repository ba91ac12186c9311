"""Ground truth by Ray Tune: real Tune runs of tiny nb-nlp models on the local cluster.

Every run here trains three-layer models of width 16 for a handful of steps on slices
of the embedded PTB; the kill-and-resume test drives the `tfnas train` command in
subprocesses that start their own Ray cluster, as a user would.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from tfnas_ray import tables
from tfnas_ray.analysis.correlation import CorrelationConfig, correlate
from tfnas_ray.distributed.tune import TuneOptions, budget_from_options, train_architectures, trials_use_gpus
from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces.nasbench_nlp import SPACE
from tfnas_ray.spaces.nasbench_nlp.benchmarks import load_ptb
from tfnas_ray.training.lm import Budget, TrainConfig

TINY = dict(emsize=16, nhid=16, bptt=20, train_tokens=4_000, valid_tokens=500)


@pytest.fixture(scope="module")
def ptb_archs() -> pa.Table:
    archs, _ = load_ptb()
    return archs.slice(0, 3)


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_tune_run_writes_the_truth_table(ray_cluster, ptb_archs, tmp_path):
    config = TrainConfig(budget=Budget("steps", 4), iterations=2, **TINY)
    outcome = train_architectures(ptb_archs, tmp_path, train=config)

    truth = tables.read_table("truth", tmp_path / "truth.parquet")
    rows = truth.to_pylist()
    ids = ptb_archs.column("arch_id").to_pylist()
    assert [(r["arch_id"], r["target"]) for r in rows] == [
        (arch, target) for arch in ids for target in ("val_loss@4st", "train_loss@4st")
    ]
    for row in rows:
        assert row["status"] == "ok"
        assert len(row["curve"]) == 2 and row["curve"][-1] == row["value"]
        assert 5.0 < row["value"] < 10.0  # near ln(10,000) = 9.21 after 4 steps
        assert row["seconds"] > 0
        assert row["source"] == "tune:ptb:emsize=16,nhid=16,nlayers=3"
    assert [r["benchmark_id"] for r in rows[::2]] == ptb_archs.column("benchmark_id").to_pylist()
    assert json.loads(truth.schema.metadata[b"tfnas.train_config"])["budget"] == {"kind": "steps", "amount": 4}
    assert outcome.lines()[0] == "trials: 3 (3 ok)"

    # `tfnas correlate` reads it like published truth: here against the parameter count.
    scores = tables.from_rows(
        "scores",
        [{"arch_id": a, "metric": "params", "value": float(SPACE.count_parameters(s, emsize=16, nhid=16))}
         for a, s in zip(ids, ptb_archs.column("spec").to_pylist())],
    )
    correlations = correlate(scores, truth, config=CorrelationConfig(resamples=0))
    assert {(r["target"], r["n"]) for r in correlations.to_pylist()} == {("val_loss@4st", 3), ("train_loss@4st", 3)}


def test_a_diverging_trial_is_recorded_not_retried(ray_cluster, ptb_archs, tmp_path):
    # lr 1e30: Adam's first step puts every weight near ±1e30, the next loss is NaN.
    config = TrainConfig(budget=Budget("steps", 40), iterations=4, lr=1e30, **TINY)
    # The output given as a URL (what a multi-node run uses: s3://…), here file://.
    train_architectures(ptb_archs.slice(0, 1), f"file://{tmp_path}", train=config, options=TuneOptions(max_failures=3))

    rows = tables.read_table("truth", tmp_path / "truth.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["diverged", "diverged"]
    assert [r["value"] for r in rows] == [None, None]
    val = rows[0]
    assert len(val["curve"]) == 1 and math.isnan(val["curve"][0])  # the curve so far
    (trial_dir,) = (tmp_path / "tune" / "train").glob("arch_*")
    results = _results(trial_dir)
    # One report, then the trial ended by itself: no retry, no further iterations.
    assert len(results) == 1 and results[0]["diverged"] is True


def _train_command(ptb_archs, tmp_path) -> tuple[list[str], Path]:
    archs_path = tables.write_table("archs", ptb_archs, tmp_path / "archs.parquet")
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "tfnas_ray.cli", "train", str(archs_path), "--out", str(out),
        "--steps", "12", "--iterations", "4", "--emsize", "16", "--nhid", "16",
        "--train-tokens", "4000", "--valid-tokens", "500",
    ]
    return command, out


def _kill_midway(command: list[str], experiment: Path) -> None:
    """Start `tfnas train` and kill the driver (with the Ray cluster it started: its
    process group) once a trial has reported and checkpointed an iteration but not its
    whole budget."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    first = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            assert first.poll() is None, "the run ended before it could be killed mid-way"
            partial = [d for d in experiment.glob("arch_*") if (r := _results(d)) and not r[-1]["budget_done"]]
            if partial:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no trial reported an iteration within 150 s")
        time.sleep(0.5)  # let the driver snapshot the experiment after that checkpoint
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def _lost_its_checkpoint(trial_dir: Path) -> bool:
    error = trial_dir / "error.txt"
    return error.exists() and "does not exist on storage anymore" in error.read_text()


def test_a_killed_experiment_resumes_by_rerunning_the_command(ptb_archs, tmp_path):
    command, out = _train_command(ptb_archs, tmp_path)
    experiment = out / "tune" / "train"
    _kill_midway(command, experiment)

    # Rerun the same command: Tuner.restore continues the unfinished trials.
    second = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "restored the experiment" in second.stdout

    truth = tables.read_table("truth", out / "truth.parquet").to_pylist()
    assert [r["status"] for r in truth] == ["ok"] * 6
    assert all(len(r["curve"]) == 4 for r in truth)
    restored, trained = [], 0
    for trial_dir in sorted(experiment.glob("arch_*")):
        if _lost_its_checkpoint(trial_dir):
            continue  # the kill fell where Tune loses a checkpoint (see the next test): trained again in a new directory
        results = _results(trial_dir)
        # Trained to its budget exactly once: one final report, one start from scratch.
        assert [r["iteration"] for r in results if r["budget_done"]] == [4], trial_dir.name
        assert sum(r["iteration"] == 1 and r["restored_from_iteration"] == 0 for r in results) == 1, trial_dir.name
        assert results[-1]["steps"] == 12
        restored += [r["restored_from_iteration"] for r in results]
        trained += 1
    assert trained == 3
    assert max(restored) > 0, "no trial continued from a checkpoint"


def test_trials_whose_checkpoint_tune_lost_are_trained_again(ptb_archs, tmp_path):
    """A driver killed between Tune deleting a trial's older checkpoint and snapshotting
    the newer one leaves a snapshot that names a deleted checkpoint (ray-project/ray#27790).
    Deleting the checkpoints after the kill recreates that state: the rerun trains those
    trials again from scratch instead of ending them as errors."""
    command, out = _train_command(ptb_archs.slice(0, 2), tmp_path)
    experiment = out / "tune" / "train"
    _kill_midway(command, experiment)
    lost = [d for d in experiment.glob("arch_*") if list(d.glob("checkpoint_*"))]
    assert lost, "no trial had a checkpoint when the driver was killed"
    for trial_dir in lost:
        for checkpoint in trial_dir.glob("checkpoint_*"):
            shutil.rmtree(checkpoint)

    second = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Tune lost the checkpoint of" in second.stdout
    truth = tables.read_table("truth", out / "truth.parquet").to_pylist()
    assert [r["status"] for r in truth] == ["ok"] * 4
    # A trial that checkpointed in the last instant before the kill may not be named in
    # the snapshot yet (it then restarts in place); the others must have been replaced.
    replaced = [d for d in lost if _lost_its_checkpoint(d)]
    assert replaced, "no restored trial missed its checkpoint"
    for trial_dir in replaced:
        (again,) = experiment.glob(f"{trial_dir.name}_*")  # the trial trained anew
        results = _results(again)
        assert [r["iteration"] for r in results if r["budget_done"]] == [4], again.name
        assert sum(r["iteration"] == 1 and r["restored_from_iteration"] == 0 for r in results) == 1, again.name


def test_asha_stops_some_trials_early(ray_cluster, tmp_path):
    # Six trials of 4 iterations, ASHA with grace 1 and reduction 2: at each rung only
    # the better half continues, so some trials stop before their budget.
    archs, _ = load_ptb()
    config = TrainConfig(budget=Budget("steps", 8), iterations=4, **TINY)
    outcome = train_architectures(archs.slice(0, 6), tmp_path, train=config, options=TuneOptions(scheduler="asha"))
    val = [r for r in outcome.truth.to_pylist() if r["target"] == "val_loss@8st"]
    statuses = [r["status"] for r in val]
    assert set(statuses) == {"ok", "stopped_early"}, statuses
    for row in val:
        if row["status"] == "ok":
            assert len(row["curve"]) == 4 and row["value"] == row["curve"][-1]
        else:  # no value at the budget it did not reach; its curve so far is kept
            assert row["value"] is None and 1 <= len(row["curve"]) < 4


def test_resuming_with_another_budget_is_refused(ptb_archs, tmp_path):
    config = TrainConfig(budget=Budget("steps", 4), iterations=2, **TINY)
    (tmp_path / "train_manifest.json").write_text(
        json.dumps({"arch_ids": ptb_archs.column("arch_id").to_pylist(), "space": "nb-nlp",
                    "train": TrainConfig(budget=Budget("steps", 8), iterations=2, **TINY).to_dict(), "scheduler": "fifo"})
    )
    with pytest.raises(TfnasError, match=r"holds an experiment .* started with different train; rerun with the same options"):
        train_architectures(ptb_archs, tmp_path, train=config)


def test_one_budget_per_run():
    assert budget_from_options(tokens=100_000) == Budget("tokens", 100_000)
    assert budget_from_options() is None
    with pytest.raises(TfnasError, match=r"give one budget per run, got --epochs 3, --steps 5; allowed: one of"):
        budget_from_options(epochs=3, steps=5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(scheduler="hyperband"), r"scheduler 'hyperband' is not one of fifo, asha"),
        (dict(gpus_per_trial=1.5), r"gpus_per_trial above 1 must be a whole number, got 1.5"),
        (dict(cpus_per_trial=0), r"cpus_per_trial must be > 0, got 0"),
    ],
)
def test_tune_options_errors(options, message):
    with pytest.raises(TfnasError, match=message):
        TuneOptions(**options)


def test_trials_ask_for_gpus_before_an_autoscaling_cluster_has_them():
    assert trials_use_gpus(TuneOptions(gpus_per_trial=1), gpus_now=0)  # GPU workers scale from zero
    assert not trials_use_gpus(TuneOptions(gpus_per_trial=0), gpus_now=4)
    assert trials_use_gpus(TuneOptions(), gpus_now=2) and not trials_use_gpus(TuneOptions(), gpus_now=0)
