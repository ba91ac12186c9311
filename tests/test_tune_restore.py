"""`Tuner.restore` unpickles tuner.pkl from the output's storage (issue 18, row 8): a rerun
restores only an experiment this user's tfnas wrote, with the same tfnas and Ray, whose
tuner.pkl is unchanged since (the `tfnas-origin.json` record beside it)."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from tfnas_ray.distributed.tune import ORIGIN, TUNER_PKL, check_restorable, record_origin, train_architectures
from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces.nasbench_nlp.benchmarks import load_ptb
from tfnas_ray.training.lm import Budget, TrainConfig

TINY = dict(emsize=16, nhid=16, bptt=20, train_tokens=4_000, valid_tokens=500)


class _Planted:
    """Unpickling it creates a file: what code in a planted tuner.pkl could do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_tuner_pkl_is_refused_before_it_is_unpickled(ray_cluster, tmp_path):
    archs, _ = load_ptb()
    experiment = tmp_path / "out" / "tune" / "train"
    experiment.mkdir(parents=True)
    marker = tmp_path / "unpickled"
    (experiment / TUNER_PKL).write_bytes(pickle.dumps(_Planted(str(marker))))
    config = TrainConfig(budget=Budget("steps", 2), iterations=1, **TINY)
    with pytest.raises(TfnasError, match=rf"^refusing to restore .*/tune/train/tuner.pkl: no {ORIGIN} says this user's tfnas wrote it.*; delete .*/tune/train to train afresh, or use another --out$"):
        train_architectures(archs.slice(0, 1), tmp_path / "out", train=config)
    assert not marker.exists()


def _experiment(tmp_path):
    experiment = tmp_path / "train"
    experiment.mkdir()
    (experiment / TUNER_PKL).write_bytes(pickle.dumps({"state": 1}))
    record_origin(experiment)
    return experiment


def test_the_record_of_this_user_and_versions_vouches_for_an_unchanged_tuner_pkl(tmp_path):
    experiment = _experiment(tmp_path)
    record = json.loads((experiment / ORIGIN).read_text())
    import ray

    import tfnas_ray

    assert record["tfnas"] == tfnas_ray.__version__ and record["ray"] == ray.__version__
    assert len(record["tuner_pkl_sha256"]) == 64
    check_restorable(experiment)  # passes
    check_restorable(tmp_path / "empty")  # nothing to restore: passes


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda record: {**record, "user": "mallory"}, r"written by user 'mallory', this is '.+'"),
        (lambda record: {**record, "ray": "2.9.0"}, r"written by ray 2\.9\.0, this is ray \d"),
        (lambda record: {**record, "tfnas": "0.0.1"}, r"written by tfnas 0\.0\.1, this is tfnas "),
    ],
)
def test_a_record_of_another_user_or_version_is_refused(tmp_path, change, message):
    experiment = _experiment(tmp_path)
    record = json.loads((experiment / ORIGIN).read_text())
    (experiment / ORIGIN).write_text(json.dumps(change(record)))
    with pytest.raises(TfnasError, match=r"^refusing to restore .*tuner\.pkl: " + message):
        check_restorable(experiment)


def test_a_tuner_pkl_changed_since_it_was_recorded_is_refused(tmp_path):
    experiment = _experiment(tmp_path)
    (experiment / TUNER_PKL).write_bytes(pickle.dumps({"state": 2}))
    with pytest.raises(TfnasError, match=r"tuner\.pkl changed since tfnas wrote it \(its SHA-256 differs from tfnas-origin\.json's\)"):
        check_restorable(experiment)


def test_an_unreadable_record_is_refused(tmp_path):
    experiment = _experiment(tmp_path)
    (experiment / ORIGIN).write_text("[1, 2")
    with pytest.raises(TfnasError, match=r"tfnas-origin\.json is not a JSON record"):
        check_restorable(experiment)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_files_another_user_owns_are_refused(tmp_path):
    experiment = _experiment(tmp_path)
    os.chown(experiment / TUNER_PKL, 4242, -1)
    with pytest.raises(TfnasError, match=r"tuner\.pkl is owned by uid 4242, not 0"):
        check_restorable(experiment)


def test_a_real_experiment_is_restored_by_its_own_rerun(ray_cluster, tmp_path):
    archs, _ = load_ptb()
    config = TrainConfig(budget=Budget("steps", 2), iterations=1, **TINY)
    first = train_architectures(archs.slice(0, 1), tmp_path, train=config)
    assert not first.resumed and (tmp_path / "tune" / "train" / ORIGIN).exists()
    again = train_architectures(archs.slice(0, 1), tmp_path, train=config)
    assert again.resumed and again.truth.to_pylist() == first.truth.to_pylist()
