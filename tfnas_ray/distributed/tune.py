"""Ground truth by Ray Tune: one short training run per architecture, resumable.

`train_architectures` runs one Tune trial per architecture (a `grid_search` over the
arch ids), each a short training run of `tfnas_ray.training` with a stated budget.
Every iteration reports its losses (`ray.tune.report`) with a checkpoint of the whole
run, so rerunning the same command after the driver was killed calls `Tuner.restore`
and continues every unfinished trial from its last checkpoint; finished trials are
not run again. `Tuner.restore` unpickles Tune's tuner.pkl, so it is called only for an
experiment this user's tfnas wrote with the same versions (`check_restorable`; restore
only from storage the user owns). A trial whose loss turns NaN/inf stops itself and is recorded as
diverged, with its curve so far — it ends normally, so Tune never retries it.

The results become rows of the `truth` table: `val_loss@<budget>` and
`train_loss@<budget>` (e.g. `val_loss@3ep`, `val_loss@100ktok`; nb-bert runs:
`val_mlm_loss@200st`, `train_mlm_loss@200st`), with the per-iteration curve, the run's
wall time and its status (`ok`, `diverged`, `stopped_early` by ASHA, `error`), so
`tfnas correlate` reads them like published truth.

Example:
    >>> from tfnas_ray.training.lm import Budget, TrainConfig
    >>> truth = train_architectures(archs, "runs/train",                      # doctest: +SKIP
    ...     train=TrainConfig(budget=Budget("tokens", 100_000), emsize=64, nhid=64))
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pyarrow as pa

from tfnas_ray import tables
from tfnas_ray.errors import TfnasError, checking_input
from tfnas_ray.lease import hold, leased
from tfnas_ray.storage import Location, locate
from tfnas_ray.training.lm import Budget, LMTrainer, TrainConfig

SCHEDULERS = ("fifo", "asha")
EXPERIMENT_NAME = "train"
MANIFEST = "train_manifest.json"  # what the experiment in an out dir was started with
# Beside Tune's tuner.pkl: who wrote it, with which tfnas and Ray, and its SHA-256.
# `Tuner.restore` unpickles tuner.pkl (unpickling runs code), so a rerun restores only
# an experiment this record vouches for (`check_restorable`).
ORIGIN = "tfnas-origin.json"
TUNER_PKL = "tuner.pkl"  # Tune's name (ray.tune.impl.tuner_internal._TUNER_PKL)
CHECKPOINT_FILE = "trainer.pt"

# The default budget where the cluster has no GPU: a width shrunk from the published
# 400 / 600 to 64 / 64 and 100k training tokens (~70 optimizer steps of batch 20),
# validated on the first 10k validation tokens — about half a minute per trial on one
# busy CPU core here, most of it the 10,000-word softmax.
CPU_DEFAULTS: Mapping[str, Any] = {
    "budget": Budget("tokens", 100_000),
    "emsize": 64,
    "nhid": 64,
    "valid_tokens": 10_000,
}
# With GPUs: the published model and hyper-parameters, 3 epochs.
GPU_DEFAULTS: Mapping[str, Any] = {"budget": Budget("epochs", 3)}


def default_train_config(*, gpus: bool, **overrides: Any) -> TrainConfig:
    """The run's `TrainConfig`: the GPU or CPU defaults, then `overrides` (None skipped).

    Example:
        >>> default_train_config(gpus=False).describe()   # doctest: +ELLIPSIS
        'ptb, budget 100,000 tokens per trial in 4 iterations, emsize 64 / nhid 64 ...'
    """
    fields = dict(GPU_DEFAULTS if gpus else CPU_DEFAULTS)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**fields)


@dataclass(frozen=True)
class TuneOptions:
    """How Tune runs the trials (not what they train: that is the `TrainConfig`).

    Attributes:
        scheduler: "fifo" (every trial to its budget) or "asha" (ASHA early stopping on
            the validation loss, checked at each iteration).
        gpus_per_trial: GPUs per trial; None: 1 where the cluster has GPUs, else 0.
            Fractions share a GPU between trials.
        cpus_per_trial: CPUs per trial.
        storage: where Tune keeps the experiment (trial checkpoints, results); every
            node must reach it on a real cluster (a shared file system or s3://…).
            None: `<out>/tune`.
        max_failures: retries of a trial that errors (a crash, not a divergence).
        verbose: Tune's console verbosity (0 silent … 3 detailed).
    """

    scheduler: str = "fifo"
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1.0
    storage: str | None = None
    max_failures: int = 1
    verbose: int = 0

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise TfnasError(f"scheduler {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if self.gpus_per_trial is not None and not 0 <= self.gpus_per_trial:
            raise TfnasError(f"gpus_per_trial must be >= 0, got {self.gpus_per_trial}")
        if self.gpus_per_trial is not None and self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise TfnasError(f"gpus_per_trial above 1 must be a whole number, got {self.gpus_per_trial}")
        if not self.cpus_per_trial > 0:
            raise TfnasError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.max_failures < 0:
            raise TfnasError(f"max_failures must be >= 0, got {self.max_failures}")


# ---- the trial -------------------------------------------------------------------------


def _make_trainer(space: str, spec: str, train: Mapping[str, Any], device: str):
    """The trainer of one architecture; the space decides which loop trains it."""
    if space == "nb-nlp":
        return LMTrainer(spec, TrainConfig.from_dict(train), device=device)
    if space == "nb-bert":
        from tfnas_ray.training.mlm import MLMConfig, MLMTrainer

        return MLMTrainer(spec, MLMConfig.from_dict(train), device=device)
    if space == "hf":
        from tfnas_ray.training.hf import HFTrainConfig, HFTrainer

        return HFTrainer(spec, HFTrainConfig.from_dict(train), device=device)
    raise TfnasError(f"no training loop for space {space!r}; known: nb-nlp, nb-bert, hf")


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """A trainer's state saved by `train_trial`, read with `weights_only=True`: tensors,
    numbers, strings and containers only. The experiment storage is shared (a bucket, a
    volume); a full unpickle would run whatever code a planted checkpoint names.

    Raises:
        TfnasError: the file holds anything else (one line, naming the file).
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TfnasError(f"checkpoint {os.fspath(path)!r} is not a plain trainer state (refused by weights_only=True): {reason}") from None


def train_trial(config: dict[str, Any], *, specs: Mapping[str, str]) -> None:
    """Tune function trainable: train `config["arch_id"]`, reporting every iteration.

    config: {"arch_id": …, "space": …, "train": TrainConfig/MLMConfig fields}; the
    specs come through `tune.with_parameters` (the object store), not the config, so
    every result row stays small.
    """
    import ray
    import torch
    from ray import tune

    arch_id = config["arch_id"]
    # One torch thread per CPU the trial holds: more threads than cores make small
    # models wait on each other (10x slower on a shared 2-core machine).
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    # Ray hides GPUs a trial did not ask for, so this is true only for GPU trials.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = _make_trainer(config["space"], specs[arch_id], config["train"], device)
    restored_from = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(Path(directory) / CHECKPOINT_FILE, device)
        trainer.load_state_dict(state)
        restored_from = trainer.iteration
    while not trainer.finished:
        result = trainer.train_iteration()
        metrics = {
            **result,
            "arch_id": arch_id,
            "restored_from_iteration": restored_from,
            "val_curve": [h["val_loss"] for h in trainer.history],
            "train_curve": [h["train_loss"] for h in trainer.history],
            "budget_done": trainer.finished and not trainer.diverged,
        }
        with tempfile.TemporaryDirectory() as directory:
            torch.save(trainer.state_dict(), Path(directory) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
    # Returning ends the trial normally (TERMINATED): a diverged run is a result, not
    # an error for Tune to retry.


def _trial_dirname(trial) -> str:
    # Arch ids are unique within an experiment; short, stable names beat Tune's default
    # of the whole config.
    return f"arch_{trial.config['arch_id']}"


# ---- the experiment ----------------------------------------------------------------------


@dataclass
class TrainOutcome:
    """What `train_architectures` produced.

    Attributes:
        truth: the truth table (also written to `<out>/truth.parquet`).
        path: where it was written.
        experiment: the Tune experiment directory (resume by rerunning the same call).
        resumed: whether this call restored an interrupted experiment.
        config: the training config every trial used (as a dict).
    """

    truth: pa.Table
    path: Location
    experiment: str
    resumed: bool
    config: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """One line per status count and the wall time per trial."""
        rows = [r for r in self.truth.to_pylist() if r["target"].startswith("val_")]  # one per trial
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        seconds = sorted(r["seconds"] for r in rows if r["seconds"] is not None)
        out = [
            f"trials: {len(rows)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
            + (f" — restored the experiment in {self.experiment}" if self.resumed else "")
        ]
        if seconds:
            median = seconds[len(seconds) // 2]
            out.append(f"wall time per trial (train + validation): median {median:.1f} s, min {seconds[0]:.1f} s, max {seconds[-1]:.1f} s")
        return out


_ARCH_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _arch_items(archs: pa.Table) -> list[dict[str, Any]]:
    """Rows of the archs table, checked: one space, unique ids, valid specs."""
    from tfnas_ray.spaces import get_space

    if archs.num_rows == 0:
        raise TfnasError("archs table has no rows: nothing to train")
    rows = archs.select(["arch_id", "space", "spec", "benchmark_id"]).to_pylist()
    spaces = sorted({r["space"] for r in rows})
    if len(spaces) != 1:
        raise TfnasError(f"archs table mixes spaces {', '.join(spaces)}; train one space per run")
    seen: set[str] = set()
    for row in rows:
        # The id names the trial's directory and its checkpoints: no path separators,
        # no dot-names, nothing a file system or Tune treats specially.
        if not isinstance(row["arch_id"], str) or not _ARCH_ID.fullmatch(row["arch_id"]):
            raise TfnasError(
                f"archs table: arch_id {row['arch_id']!r} cannot name a trial; "
                "allowed: 1-128 letters, digits, '_', '-' or '.', not starting with '.' or '-'"
            )
        if row["arch_id"] in seen:
            raise TfnasError(f"archs table lists arch_id {row['arch_id']} twice; ids must be unique")
        seen.add(row["arch_id"])
        try:
            get_space(row["space"]).canonicalize(row["spec"])
        except TfnasError as err:
            raise TfnasError(f"archs table: arch_id {row['arch_id']}: {err}") from None
    return rows


def _check_manifest(out_dir: Location, manifest: dict[str, Any], experiment: str) -> None:
    """Refuse to resume an experiment that was started with other architectures or
    another config: its trials would mix two budgets under one target name."""
    path = out_dir.child(MANIFEST)
    if path.exists():
        previous = json.loads(path.read_bytes())
        if previous != manifest:
            changed = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
            raise TfnasError(
                f"{out_dir.url} holds an experiment ({experiment}) started with different "
                f"{', '.join(changed)}; rerun with the same options to resume it, or use a new --out"
            )
    else:
        path.write_bytes(json.dumps(manifest, indent=1, sort_keys=True).encode())


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return f"uid {os.getuid()}"


def _versions() -> dict[str, str]:
    import ray

    from tfnas_ray import __version__

    return {"tfnas": __version__, "ray": ray.__version__}


def record_origin(experiment: str | Location) -> None:
    """Write `ORIGIN` beside the tuner.pkl Tune has just written in `experiment`: the
    user, the tfnas and Ray versions, and the file's SHA-256."""
    where = locate(experiment)
    digest = hashlib.sha256(where.child(TUNER_PKL).read_bytes()).hexdigest()
    record = {"user": _user(), **_versions(), "tuner_pkl_sha256": digest}
    where.child(ORIGIN).write_bytes(json.dumps(record, indent=1, sort_keys=True).encode())


def check_restorable(experiment: str | Location) -> None:
    """Refuse to restore the Tune experiment in `experiment` unless this user's tfnas
    wrote it with the same tfnas and Ray versions, and its tuner.pkl is unchanged since:
    `Tuner.restore` unpickles that file, and a pickle runs code. Read before anything
    there is unpickled; a directory without tuner.pkl passes (nothing to restore).

    What can be told is checked: the `ORIGIN` record (user, versions, SHA-256 of
    tuner.pkl) and, on a local or shared file system, that the user owns both files.
    Someone who may write the storage can forge the record; restore only from storage
    the user owns (README, "Faults, safety and exit codes").

    Raises:
        TfnasError: one line naming what does not match, and how to start afresh.
    """
    where = locate(experiment)
    pkl = where.child(TUNER_PKL)
    if not pkl.exists():
        return
    fresh = f"delete {where.url} to train afresh, or use another --out"
    origin = where.child(ORIGIN)
    if not origin.exists():
        raise TfnasError(
            f"refusing to restore {pkl.url}: no {ORIGIN} says this user's tfnas wrote it, and restoring "
            f"unpickles it (runs code); {fresh}"
        )
    problems = []
    if where.is_local:
        for item in (pkl, origin):
            owner = os.stat(item.path).st_uid
            if owner != os.getuid():
                problems.append(f"{item.name} is owned by uid {owner}, not {os.getuid()}")
    try:
        record = json.loads(origin.read_bytes())
        if not isinstance(record, dict):
            raise ValueError("not an object")
    except ValueError as err:
        raise TfnasError(f"refusing to restore {pkl.url}: {origin.url} is not a JSON record ({err}); {fresh}") from None
    if record.get("user") != _user():
        problems.append(f"written by user {record.get('user')!r}, this is {_user()!r}")
    for name, version in _versions().items():
        if record.get(name) != version:
            problems.append(f"written by {name} {record.get(name)}, this is {name} {version}")
    if not problems and record.get("tuner_pkl_sha256") != hashlib.sha256(pkl.read_bytes()).hexdigest():
        problems.append(f"{TUNER_PKL} changed since tfnas wrote it (its SHA-256 differs from {ORIGIN}'s)")
    if problems:
        raise TfnasError(f"refusing to restore {pkl.url}: {'; '.join(problems)}; {fresh}")


# What Tune says when a restored trial's checkpoint was deleted (see train_architectures).
_LOST_CHECKPOINT = "does not exist on storage anymore"


@leased("out_dir")  # one driver per output directory: two would share one Tune experiment
def train_architectures(
    archs: pa.Table,
    out_dir: str | os.PathLike,
    *,
    train: TrainConfig | Any,
    options: TuneOptions = TuneOptions(),
    address: str | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> TrainOutcome:
    """Train every architecture of `archs` as one Tune trial; write the truth table.

    Args:
        archs: an archs table of one space (nb-nlp: `TrainConfig`; nb-bert: `MLMConfig`).
        out_dir: gets `truth.parquet`, the manifest, and (by default) the experiment.
        train: the training config every trial uses (budget, width, corpus slice).
        options: scheduler, resources, storage.
        address: Ray cluster to join; None starts a local one (if Ray is not running).
        log: receives progress lines.

    Returns:
        The outcome; its `truth` has two rows per architecture (val_loss@…, train_loss@…).

    Raises:
        TfnasError: bad archs, a config that differs from the experiment being resumed,
            another run holding the lease of `out_dir`.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from tfnas_ray.distributed.cluster import cluster_gpus, connect

    items = _arch_items(archs)
    space = items[0]["space"]
    _check_trainable(items, train)
    out_dir = locate(out_dir)
    # Tune takes a local path or a URL; every node must reach it.
    storage = options.storage or (out_dir.path if out_dir.is_local else out_dir.url).rstrip("/") + "/tune"
    experiment = storage.rstrip("/") + "/" + EXPERIMENT_NAME
    manifest = {
        "arch_ids": [r["arch_id"] for r in items],
        "space": space,
        "train": train.to_dict(),
        "scheduler": options.scheduler,
    }
    _check_manifest(out_dir, manifest, experiment)
    check_restorable(experiment)  # before Tune unpickles anything there

    connect(address)
    # With one checkpoint kept per trial, Tune snapshots the experiment after every trial
    # checkpoint (what makes resume lose little) and warns that this may be slow; for
    # short iterations it is the point, so the warning is off unless the user set it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    gpus = options.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if cluster_gpus() > 0 else 0.0
    specs = {r["arch_id"]: r["spec"] for r in items}
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, specs=specs),
        {"cpu": options.cpus_per_trial, "gpu": gpus},
    )
    resumed = tune.Tuner.can_restore(experiment)
    if resumed:
        log(f"resuming the experiment in {experiment}")
        # Unfinished trials continue from their last checkpoint; errored ones too (a
        # crash is worth one more try per rerun); finished ones are kept as they are.
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = None
        if options.scheduler == "asha":
            scheduler = ASHAScheduler(
                time_attr="training_iteration",
                metric="val_loss",
                mode="min",
                max_t=train.num_iterations,
                grace_period=1,
                reduction_factor=2,
            )
        tuner = tune.Tuner(
            trainable,
            param_space={
                "arch_id": tune.grid_search([r["arch_id"] for r in items]),
                "space": space,
                "train": train.to_dict(),
            },
            tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True, trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=EXPERIMENT_NAME,
                storage_path=storage,
                verbose=options.verbose,
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                # Keeping one checkpoint per trial also makes Tune save the experiment
                # state after every trial checkpoint (sync_every_n_trial_checkpoints =
                # num_to_keep), so a killed driver loses at most the running iteration.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        record_origin(experiment)  # Tuner() has written tuner.pkl
    log(f"training {len(items)} architectures: {train.describe()}; {gpus:g} GPU and {options.cpus_per_trial:g} CPU per trial")
    results = tuner.fit()
    lost = [r for r in results if r.error is not None and _LOST_CHECKPOINT in str(r.error)]
    if resumed and lost:
        # Tune deletes a trial's older checkpoint before its experiment snapshot names
        # the newer one; a driver killed in between leaves a snapshot naming a deleted
        # checkpoint (ray-project/ray#27790). Those trials start again from scratch.
        log(f"Tune lost the checkpoint of {len(lost)} trial(s) when the driver was killed; training them again from scratch")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, restart_errored=True)
        results = tuner.fit()
    truth = results_to_truth(results, items, train=train)
    path = tables.write_table("truth", truth, out_dir.child("truth.parquet"))
    return TrainOutcome(truth=truth, path=path, experiment=experiment, resumed=resumed, config=train.to_dict())


def results_to_truth(results, items: list[dict[str, Any]], *, train: Any) -> pa.Table:
    """Turn a Tune `ResultGrid` into truth rows, in the archs table's order.

    Status: "ok" (trained to the budget), "diverged" (NaN/inf loss; value null, curve so
    far), "stopped_early" (ASHA; value null, curve so far), "error" (the trial failed;
    value null).
    """
    by_arch: dict[str, Any] = {}
    for result in results:
        if result.config is not None:
            by_arch[result.config["arch_id"]] = result
    label = train.budget.label
    source = train.source
    rows = []
    for item in items:
        result = by_arch.get(item["arch_id"])
        metrics = (result.metrics or {}) if result is not None else {}
        if result is None or result.error is not None or not metrics.get("iteration"):
            status = "error"
        elif metrics.get("diverged"):
            status = "diverged"
        elif not metrics.get("budget_done"):
            status = "stopped_early"
        else:
            status = "ok"
        for name, target in train.TARGETS.items():
            value = metrics.get(name)
            rows.append(
                {
                    "arch_id": item["arch_id"],
                    "target": f"{target}@{label}",
                    "value": float(value) if status == "ok" and value is not None and math.isfinite(value) else None,
                    "source": source,
                    "benchmark_id": item["benchmark_id"],
                    "curve": [float(v) for v in metrics.get(name.replace("_loss", "_curve"), [])],
                    "seconds": float(metrics["seconds"]) if "seconds" in metrics else None,
                    "status": status,
                }
            )
    table = tables.from_rows("truth", rows)
    return table.replace_schema_metadata({"tfnas.train_config": json.dumps(train.to_dict(), sort_keys=True)})


def budget_from_options(*, epochs: int | None = None, steps: int | None = None, tokens: int | None = None) -> Budget | None:
    """The one budget given on the command line (None if none was).

    Raises:
        TfnasError: more than one of epochs, steps, tokens.
    """
    given = {kind: amount for kind, amount in (("epochs", epochs), ("steps", steps), ("tokens", tokens)) if amount is not None}
    if len(given) > 1:
        raise TfnasError(
            f"give one budget per run, got {', '.join(f'--{k} {v}' for k, v in given.items())}; "
            "allowed: one of --epochs, --steps, --tokens"
        )
    if not given:
        return None
    (kind, amount), = given.items()
    return Budget(kind, amount)


def trials_use_gpus(options: TuneOptions, gpus_now: float) -> bool:
    """Whether trials train on GPUs (and so get the GPU defaults). Trials that ask for
    GPUs do, even before an autoscaling cluster has added the GPU nodes they wait for;
    otherwise the cluster as it is now decides."""
    if options.gpus_per_trial is not None:
        return options.gpus_per_trial > 0
    return gpus_now > 0


def _check_trainable(items: list[dict[str, Any]], train: Any) -> None:
    """hf: every spec fits the run (task, vocabulary, positions), before Ray starts."""
    if items[0]["space"] == "hf":
        from tfnas_ray.training.hf import check_trainable

        for item in items:
            check_trainable(item["arch_id"], item["spec"], train)


def _train_config(items: list[dict[str, Any]], *, gpus: bool, fields: Mapping[str, Any]):
    """The space's training config: its GPU or CPU defaults, then `fields`."""
    space = items[0]["space"]
    if space == "hf":
        from tfnas_ray.training.hf import default_hf_config, task_of

        return default_hf_config(task=task_of([item["spec"] for item in items]), gpus=gpus, **fields)
    from tfnas_ray.training.mlm import MLMConfig, default_mlm_config

    config_class = MLMConfig if space == "nb-bert" else TrainConfig
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(k for k, v in fields.items() if v is not None and k not in known)
    if unknown:  # one line, not the dataclass's TypeError
        raise TfnasError(
            f"option(s) {', '.join('--' + k.replace('_', '-') for k in unknown)} do not apply to space {space}; "
            f"its training takes {', '.join(sorted(known))}"
        )
    if space == "nb-bert":
        return default_mlm_config(gpus=gpus, **fields)
    return default_train_config(gpus=gpus, **fields)


def train_table(
    archs_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    budget: Budget | None = None,
    overrides: Mapping[str, Any] | None = None,
    options: TuneOptions = TuneOptions(),
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> TrainOutcome:
    """`tfnas train`: read an archs table, pick the defaults for the cluster, train.

    Without a budget, the defaults depend on the cluster: with GPUs the published model
    for 3 epochs (nb-nlp); without, the shrunk CPU budget (`CPU_DEFAULTS`), stated in
    the log. `overrides` are config fields (None values ignored).
    """
    from tfnas_ray.distributed.cluster import connect

    with checking_input():  # every check before Ray starts or a file is written
        locate(out_dir)
        if options.storage is not None:
            locate(options.storage)
        archs = tables.read_table("archs", archs_path)
        items = _arch_items(archs)
        fields = {k: v for k, v in (overrides or {}).items() if v is not None}
        if budget is not None:
            fields["budget"] = budget
        _check_trainable(items, _train_config(items, gpus=False, fields=fields))  # the fields make a valid config
    with hold(out_dir, log=log):  # a second run on this --out stops before starting Ray
        connect(address)
        return _train_with_defaults(archs, items, out_dir, fields=fields, options=options, address=address, log=log)


def _train_with_defaults(archs, items, out_dir, *, fields, options: TuneOptions, address, log) -> TrainOutcome:
    """Pick the defaults for the connected cluster and train."""
    from tfnas_ray.distributed.cluster import cluster_gpus

    has_gpus = trials_use_gpus(options, cluster_gpus())
    train = _train_config(items, gpus=has_gpus, fields=fields)
    if items[0]["space"] != "nb-bert":
        if items[0]["space"] == "hf":
            from tfnas_ray.training import hf

            defaults = hf.GPU_DEFAULTS if has_gpus else hf.CPU_DEFAULTS
        else:
            defaults = GPU_DEFAULTS if has_gpus else CPU_DEFAULTS
        used = [k for k in defaults if k not in fields]
        if used:
            log(
                f"{'GPU' if has_gpus else 'CPU'} defaults (trials {'with' if has_gpus else 'without'} GPUs): "
                + ", ".join(f"{k}={defaults[k].label if isinstance(defaults[k], Budget) else defaults[k]}" for k in used)
            )
    return train_architectures(archs, out_dir, train=train, options=options, address=address, log=log)
