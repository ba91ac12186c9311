"""Distributed scoring: a pool of scorer actors over shards of architectures.

The work is cut into shards; each finished shard is written atomically to its own
Parquet file named by the shard's identity (a hash of its architectures, metrics, seed,
seeding and batch), so a rerun of the same command skips finished shards, recomputes a
corrupt one, and never writes a shard twice. The output is a local path or a URL
(`storage`: s3://, gs://, …). The driver writes shards to a path; to an object store
the scorers upload their shards themselves, from whichever node they run on. One actor per GPU (or per CPU without GPUs) scores shards; with
`wait_for_gpus`, GPU actors the cluster cannot place yet wait for the autoscaler and
join when placed. An actor that dies is restarted, its shard is retried one
architecture at a time, and an architecture that kills its worker `max_tries` times is
recorded as failed instead of sinking the run. Values do not depend on how many workers
ran or how the shards were cut: each architecture is scored in a fresh context seeded
from its arch_id (`metrics.scoring.arch_seed`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from tfnas_ray import tables
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics.scoring import SEEDINGS, arch_seed, validate_metrics
from tfnas_ray.storage import Location, locate

DEVICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class ScoreConfig:
    """How to score a table of architectures.

    Attributes:
        metrics: metric names (registry keys), scored together per architecture.
        seed: the run's seed.
        seeding: "derived" (per-architecture seed from arch_id and `seed`) or "fixed"
            (every model initialised with `seed`, the paper's protocol).
        shard_size: architectures per shard (the unit of resume).
        workers: at most this many scorer actors (default: one per GPU or CPU).
        device: "auto" (GPUs if the cluster has them), "cpu" or "gpu".
        actors_per_gpu: scorer actors sharing one GPU (fractional GPUs for small models).
        batch_options: options of the space's metric minibatch (corpus, bptt, …).
        model_options: options passed to the space's model builder.
        max_tries: attempts per architecture whose worker dies before it is recorded
            as failed.
        exit_drill: fault-injection drill for testing recovery: {arch_id: n} makes the
            scorer process exit abruptly on the first n attempts at that architecture
            (attempts are counted in files under `drill_dir`). Empty in real runs.
        drill_dir: where the drill counts attempts (shared by restarted actors).
        simulate_gpus: run GPU actors on the CPU — to test placement on a cluster of
            logical GPUs (`ray start --num-gpus 4` on a machine without any).
        wait_for_gpus: with device "gpu" on an autoscaling cluster: start `workers` GPU
            actors even if the cluster has fewer GPUs now (the pending actors are the
            autoscaler's signal to add GPU nodes), score with those placed so far, and
            fail if none is placed within this many seconds. 0: use the GPUs present.
    """

    metrics: tuple[str, ...]
    seed: int = 0
    seeding: str = "derived"
    shard_size: int = 16
    workers: int | None = None
    device: str = "auto"
    actors_per_gpu: float = 1.0
    batch_options: Mapping[str, Any] = field(default_factory=dict)
    model_options: Mapping[str, Any] = field(default_factory=dict)
    max_tries: int = 3
    exit_drill: Mapping[str, int] = field(default_factory=dict)
    drill_dir: str | None = None
    simulate_gpus: bool = False
    wait_for_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.seeding not in SEEDINGS:
            raise TfnasError(f"seeding {self.seeding!r} is not one of {', '.join(SEEDINGS)}")
        if self.shard_size < 1:
            raise TfnasError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.workers is not None and self.workers < 1:
            raise TfnasError(f"--workers must be >= 1, got {self.workers}")
        if self.device not in DEVICES:
            raise TfnasError(f"--device {self.device!r} is not one of {', '.join(DEVICES)}")
        if not self.actors_per_gpu > 0:
            raise TfnasError(f"--actors-per-gpu must be > 0, got {self.actors_per_gpu}")
        if self.max_tries < 1:
            raise TfnasError(f"max_tries must be >= 1, got {self.max_tries}")
        if self.wait_for_gpus < 0:
            raise TfnasError(f"--wait-for-gpus must be >= 0 seconds, got {self.wait_for_gpus}")
        if self.wait_for_gpus > 0 and self.device != "gpu":
            raise TfnasError(f"--wait-for-gpus applies to --device gpu only, got --device {self.device}")


@dataclass(frozen=True)
class Shard:
    """A slice of the work: architectures in table order, and its identity."""

    shard_id: str
    arch_ids: tuple[str, ...]
    spaces: tuple[str, ...]
    specs: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"shard-{self.shard_id}.parquet"


@dataclass
class ScoreSummary:
    """What a scoring run did, for the final report."""

    archs: int = 0  # architectures in the plan
    scored: int = 0  # architectures scored in this run
    shards_total: int = 0
    shards_skipped: int = 0  # already finished by an earlier run
    shards_recomputed: int = 0  # found corrupt and recomputed
    failures: collections.Counter = field(default_factory=collections.Counter)  # reason -> count
    worker_deaths: int = 0
    shards_written_by_scorers: int = 0  # uploaded by the actors (object-store output)
    scorers: dict[int, tuple[str, str]] = field(default_factory=dict)  # actor index -> (device, node)
    stale_files: int = 0
    seconds: float = 0.0
    table: pa.Table | None = None

    def lines(self) -> list[str]:
        rate = self.scored / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"archs: {self.archs} in {self.shards_total} shards; scored now {self.scored} "
            f"({self.shards_skipped} shards already done, {self.shards_recomputed} recomputed)",
            f"wall time {self.seconds:.1f} s, {rate:.2f} archs/s",
        ]
        if self.scorers:
            nodes = {node for _, node in self.scorers.values()}
            devices = collections.Counter(device for device, _ in self.scorers.values())
            kinds = ", ".join(f"{n}× {d}" if n > 1 else d for d, n in sorted(devices.items()))
            out.append(f"scorers: {len(self.scorers)} on {len(nodes)} node(s): {kinds}")
        if self.shards_written_by_scorers:
            out.append(f"shards written by the scorers to the object store: {self.shards_written_by_scorers}")
        if self.worker_deaths:
            out.append(f"worker deaths recovered: {self.worker_deaths}")
        if self.failures:
            out.append("failures by reason:")
            out += [f"  {count:5d}  {reason}" for reason, count in self.failures.most_common()]
        else:
            out.append("failures: none")
        if self.stale_files:
            out.append(f"note: {self.stale_files} shard file(s) in the output belong to another plan; ignored")
        return out


class ScoringInterrupted(TfnasError):
    """The driver was interrupted; finished shards are saved."""


def plan_shards(archs: pa.Table, config: ScoreConfig) -> list[Shard]:
    """Cut the (deduplicated) architectures into shards and name each by its identity."""
    archs = tables.conform("archs", archs, what="archs table")
    seen: dict[str, tuple[str, str]] = {}
    for arch_id, space, spec in zip(
        archs.column("arch_id").to_pylist(), archs.column("space").to_pylist(), archs.column("spec").to_pylist()
    ):
        seen.setdefault(arch_id, (space, spec))  # the same architecture is scored once
    for space in sorted({space for space, _ in seen.values()}):
        validate_metrics(space, config.metrics)
    identity = json.dumps(
        {
            "metrics": list(config.metrics),
            "seed": config.seed,
            "seeding": config.seeding,
            "batch": dict(sorted(config.batch_options.items())),
            "model": dict(sorted(config.model_options.items())),
        },
        sort_keys=True,
    )
    items = list(seen.items())
    shards = []
    for start in range(0, len(items), config.shard_size):
        chunk = items[start : start + config.shard_size]
        digest = hashlib.sha256(identity.encode())
        for arch_id, (space, spec) in chunk:
            digest.update(f"\n{arch_id}\t{space}\t{spec}".encode())
        shards.append(
            Shard(
                shard_id=digest.hexdigest()[:20],
                arch_ids=tuple(a for a, _ in chunk),
                spaces=tuple(s for _, (s, _) in chunk),
                specs=tuple(p for _, (_, p) in chunk),
            )
        )
    return shards


def check_shard(path: str | os.PathLike | Location, shard: Shard, metrics: Sequence[str]) -> None:
    """Raise TfnasError saying why a shard file is not a complete shard of `shard`."""
    where = locate(path)
    try:
        table = pq.read_table(where.path, filesystem=where.filesystem)
    except (pa.ArrowInvalid, OSError) as err:
        raise TfnasError(f"unreadable Parquet ({str(err).splitlines()[0]})") from None
    try:
        table = tables.conform("scores", table, what=where.url)
    except TfnasError as err:
        raise TfnasError(str(err)) from None
    expected = {(a, m) for a in shard.arch_ids for m in metrics}
    found = set(zip(table.column("arch_id").to_pylist(), table.column("metric").to_pylist()))
    if table.num_rows != len(expected) or found != expected:
        raise TfnasError(f"holds {table.num_rows} rows, expected {len(expected)} (one per arch and metric)")


@dataclass
class ResumeState:
    finished: set[str]  # ids of the planned shards whose files are complete
    corrupt: int  # planned shard files found incomplete, moved aside
    stale: int  # shard files that belong to another plan


# Shard checks are reads that wait on storage (an object store: tens of ms each), so
# they run in threads; pyarrow releases the GIL while it reads.
_CHECK_THREADS = 16


def resume_state(out: Location, shards: Sequence[Shard], metrics: Sequence[str], *, log=print, threads: int = _CHECK_THREADS) -> ResumeState:
    """Which planned shards a rerun can skip: one listing of `out`, then every planned
    shard found there read and checked. A corrupt one is reported and moved aside (to
    a hidden name, which readers skip) so that it is recomputed."""
    existing = {f.name: f for f in out.files(".parquet") if f.name.startswith("shard-")}  # one listing, also on S3
    planned = {s.filename for s in shards}
    found = [s for s in shards if s.filename in existing]

    def problem(shard: Shard) -> str | None:
        try:
            check_shard(existing[shard.filename], shard, metrics)
        except TfnasError as err:
            return str(err)
        return None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        problems = list(pool.map(problem, found))
    state = ResumeState(finished=set(), corrupt=0, stale=sum(1 for name in existing if name not in planned))
    for shard, reason in zip(found, problems):
        if reason is None:
            state.finished.add(shard.shard_id)
            continue
        log(f"shard {shard.filename} is corrupt ({reason}); recomputing it")
        existing[shard.filename].move_aside(f"corrupt-{int(time.time())}")
        state.corrupt += 1
    return state


def _failure_reason(error: str) -> str:
    # Group failures by their kind, not their numbers: "layer-1 hidden covariance: 3 of
    # 600 variables are constant" and "… 7 of 600 …" are one reason.
    text = error.split(" (first:")[0].split(" (at ")[0]
    return "".join("N" if ch.isdigit() else ch for ch in text)[:120]


def _make_actor_class():
    import ray

    @ray.remote
    class ScorerActor:
        """Scores architectures on one device (a GPU Ray assigned it, or the CPU)."""

        def __init__(self, device_kind: str, batch_options: Mapping[str, Any], model_options: Mapping[str, Any], simulate_gpus: bool):
            import torch

            from tfnas_ray.metrics.scoring import pick_threads

            self._gpu_ids = [str(g) for g in ray.get_gpu_ids()]  # ids Ray gave this actor
            self._problem = None  # why this actor cannot score, reported by describe()
            self._device = "cpu"
            self._label = "cpu"
            if device_kind == "gpu":
                gpu = ",".join(self._gpu_ids) or "?"
                if simulate_gpus:
                    self._label = f"cpu (simulated gpu {gpu})"
                elif torch.cuda.is_available():
                    self._device = "cuda:0"  # CUDA_VISIBLE_DEVICES holds only the assigned GPU
                    self._label = f"cuda (gpu {gpu})"
                else:
                    self._problem = (
                        f"Ray assigned GPU {gpu} to a scorer, but torch {torch.__version__} there sees no "
                        "CUDA device; install a CUDA build of torch on the GPU workers"
                    )
            pick_threads(self._device)
            self._batch_options = dict(batch_options)
            self._model_options = dict(model_options)
            self._batches: dict[str, Any] = {}  # space -> metric minibatch, built once

        def describe(self) -> dict:
            return {
                "device": self._label,
                "gpu_ids": self._gpu_ids,
                "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id(),
                "problem": self._problem,
            }

        def score(
            self,
            items: list[tuple[str, str, str, int]],
            metrics: list[str],
            drill: Mapping[str, int],
            drill_dir: str | None,
            destination: str | None = None,
        ) -> dict:
            """Score `items`; with a `destination` URL (a whole shard), also write the
            shard there. Returns {"rows", "written", "write_error"}."""
            from tfnas_ray.metrics import BATCHES, load_metrics
            from tfnas_ray.metrics.scoring import score_architecture

            load_metrics()  # fills the metric and batch registries in this process

            rows = []
            for arch_id, space, spec, seed in items:
                if arch_id in drill:
                    _exit_drill(arch_id, drill[arch_id], drill_dir)
                if space not in self._batches:
                    self._batches[space] = BATCHES.get(space)(self._batch_options)
                for row in score_architecture(
                    arch_id=arch_id,
                    space=space,
                    spec=spec,
                    metrics=metrics,
                    seed=seed,
                    batch=self._batches[space],
                    device=self._device,
                    options=self._model_options,
                ):
                    row["device"] = self._label
                    row["batch"] = int(self._batch_options.get("index", 0))  # `--batches`
                    rows.append(row)
            reply = {"rows": rows, "written": False, "write_error": None}
            if destination is not None:
                try:
                    tables.write_table("scores", tables.from_rows("scores", rows), destination)
                    reply["written"] = True
                except TfnasError as err:  # e.g. no credentials on this node: the driver writes
                    reply["write_error"] = str(err)
            return reply

    return ScorerActor


def _exit_drill(arch_id: str, times: int, drill_dir: str | None) -> None:
    """Exit the process abruptly on the first `times` attempts at `arch_id` (drills only)."""
    marker_dir = Path(drill_dir or ".")
    marker_dir.mkdir(parents=True, exist_ok=True)
    marker = marker_dir / f"exit-drill-{arch_id}"
    attempts = int(marker.read_text()) if marker.exists() else 0
    if attempts < times:
        marker.write_text(str(attempts + 1))
        os._exit(17)


_MAX_PROBES = 300  # ~1 minute of 0.2 s waits for an actor to come back before giving it up


@dataclass
class _Work:
    shard: Shard
    positions: tuple[int, ...]  # indexes into the shard's architectures
    attempt: int = 1


class _Progress:
    """One status line on stderr: archs done, archs/s, ETA."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.done = total, enabled, 0
        self.started = time.perf_counter()

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "--:--:--"
        sys.stderr.write(f"\rscored {self.done}/{self.total} archs  {rate:.2f} archs/s  ETA {eta_text}   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.total:
            sys.stderr.write("\n")


class _Pool(NamedTuple):
    kind: str  # "gpu" or "cpu"
    count: int  # scorer actors to start
    resources: dict  # Ray resources of each
    start_with: int  # actors to wait for before handing out work: those placeable now


def _actor_plan(config: ScoreConfig, n_shards: int) -> _Pool:
    """The scorer pool for the cluster as it is now."""
    from tfnas_ray.distributed.cluster import cluster_cpus, cluster_gpus

    gpus = cluster_gpus()
    waiting = config.wait_for_gpus > 0
    if config.device == "gpu" and gpus == 0 and not waiting:
        raise TfnasError(
            "--device gpu, but the Ray cluster has no GPUs; use --device cpu or auto "
            "(or --wait-for-gpus SECONDS on a cluster that autoscales GPU nodes)"
        )
    kind = "gpu" if (config.device == "gpu" or (config.device == "auto" and gpus > 0)) else "cpu"
    if kind == "gpu":
        present = int(gpus * config.actors_per_gpu)
        # On an autoscaling cluster the actors beyond the present GPUs stay pending
        # until the autoscaler adds nodes for them; they join the pool when placed.
        count = max(present, config.workers or 1) if waiting else present
        resources = {"num_gpus": 1.0 / config.actors_per_gpu, "num_cpus": 0}
        placeable_now = present if waiting else count
    else:
        cpus = int(cluster_cpus())
        if cpus == 0:
            # A head started with num-cpus 0 and no workers yet: CPU scorers would wait
            # for whatever node the autoscaler adds, one at a time, and GPUs go unused.
            raise TfnasError(
                f"--device {config.device}: the Ray cluster has no CPU or GPU for scorers yet (a head with "
                "num-cpus 0 and no workers?); on a cluster that autoscales GPU workers use "
                "--device gpu --workers N --wait-for-gpus SECONDS"
            )
        count = placeable_now = cpus
        resources = {"num_cpus": 1}
    count = max(1, min(count, config.workers or count, n_shards))
    # Wait for every actor the cluster can place now, so that shards spread over all of
    # them; actors that wait for the autoscaler join later.
    return _Pool(kind, count, resources, start_with=max(1, min(count, placeable_now)))


def run_scoring(
    archs: pa.Table,
    out_dir: str | os.PathLike,
    config: ScoreConfig,
    *,
    progress: bool = True,
    log=print,
) -> ScoreSummary:
    """Score every architecture of `archs` with `config.metrics` into shard files.

    Ray must be connected (`distributed.cluster.connect`). Returns a summary whose
    `table` holds the scores of every planned shard (old and new).

    Raises:
        TfnasError: an unknown metric, a metric not defined for a space, no GPUs for
            `--device gpu`.
        ScoringInterrupted: on Ctrl-C, after saying how much was saved.
    """
    import ray

    out = locate(out_dir)
    out.make_dirs()
    started = time.perf_counter()
    shards = plan_shards(archs, config)
    metrics = list(config.metrics)
    summary = ScoreSummary(archs=sum(len(s.arch_ids) for s in shards), shards_total=len(shards))
    resume = resume_state(out, shards, metrics, log=log)
    summary.stale_files, summary.shards_skipped, summary.shards_recomputed = resume.stale, len(resume.finished), resume.corrupt
    planned = {s.filename for s in shards}
    todo = [shard for shard in shards if shard.shard_id not in resume.finished]

    bar = _Progress(sum(len(s.arch_ids) for s in todo), progress and bool(todo))
    if todo:
        kind, count, resources, start_with = _actor_plan(config, len(todo))
        actor_class = _make_actor_class().options(max_restarts=-1, max_task_retries=0, **resources)
        actors = [
            actor_class.remote(kind, dict(config.batch_options), dict(config.model_options), config.simulate_gpus)
            for _ in range(count)
        ]
        drill_dir = config.drill_dir or os.path.join(out.path if out.is_local else tempfile.gettempdir(), ".drill")
        try:
            _drive(actors, start_with, todo, config, metrics, out, summary, bar, drill_dir, ray, log)
        except KeyboardInterrupt:
            bar.close()
            saved = len(planned & {f.name for f in out.files(".parquet")})
            raise ScoringInterrupted(
                f"interrupted: {saved} of {len(shards)} shards are saved in {out.url}; "
                "run the same command again to resume"
            ) from None
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
    bar.close()
    summary.seconds = time.perf_counter() - started
    summary.table = tables.read_tables("scores", [out.child(s.filename) for s in shards])
    return summary


def _drive(actors, start_with: int, todo: list[Shard], config: ScoreConfig, metrics, out: Location, summary: ScoreSummary, bar: _Progress, drill_dir: str, ray, log) -> None:
    """The scheduling loop: keep every actor busy, retry after deaths, write shards."""
    from ray.exceptions import RayActorError, WorkerCrashedError

    pending = collections.deque(_Work(shard, tuple(range(len(shard.arch_ids)))) for shard in todo)
    results: dict[str, dict[int, list[dict]]] = {s.shard_id: {} for s in todo}  # shard -> position -> rows
    idle: list = []  # actors that answered and wait for work
    in_flight: dict[Any, tuple[Any, _Work]] = {}
    drill = dict(config.exit_drill)

    # describe() calls to actors not yet known to be up (starting, pending placement on
    # a node the autoscaler has yet to add, or restarting) -> (actor, tries). An actor
    # gets work only once it answers.
    probes: dict[Any, tuple[Any, int]] = {actor.describe.remote(): (actor, 1) for actor in actors}
    deadline = time.monotonic() + config.wait_for_gpus if config.wait_for_gpus > 0 else None
    given_up = 0  # actors that never came back after a death
    # Scorers write whole shards themselves to an object store every node reaches, so
    # the driver's loop is not held up by uploads; otherwise (and for shards put
    # together from retries) the driver writes.
    scorers_write = out.is_object_store
    written_by_scorer: set[str] = set()
    while pending or in_flight:
        while idle and pending and len(summary.scorers) + given_up >= start_with:
            actor, work = idle.pop(), pending.popleft()
            shard = work.shard
            items = [
                (shard.arch_ids[i], shard.spaces[i], shard.specs[i], arch_seed(shard.arch_ids[i], config.seed, config.seeding))
                for i in work.positions
            ]
            whole = len(work.positions) == len(shard.arch_ids)
            destination = out.child(shard.filename).url if scorers_write and whole else None
            in_flight[actor.score.remote(items, metrics, drill, drill_dir, destination)] = (actor, work)
        if not in_flight and not probes:
            raise TfnasError("every scorer actor died and none could be restarted; see the Ray logs")
        timeout = None
        if deadline is not None and not summary.scorers:
            timeout = max(0.0, deadline - time.monotonic())
        ready, _ = ray.wait(list(in_flight) + list(probes), num_returns=1, timeout=timeout)
        if not ready:
            raise TfnasError(
                f"no GPU scorer was placed within --wait-for-gpus {config.wait_for_gpus:g} s "
                f"(the cluster has {ray.cluster_resources().get('GPU', 0):g} GPUs); does it have an "
                "autoscaling GPU worker group with room to grow?"
            )
        for future in ready:
            if future in probes:
                # A restarted actor takes new work only once it answers: a call queued
                # while it was still dead would fail and be charged to an innocent arch.
                actor, tries = probes.pop(future)
                try:
                    info = ray.get(future)
                    if info["problem"]:
                        raise TfnasError(info["problem"])
                    summary.scorers[actors.index(actor)] = (info["device"], info["node"][:12])
                    idle.append(actor)
                except (RayActorError, WorkerCrashedError):
                    if tries < _MAX_PROBES:
                        time.sleep(0.2)
                        probes[actor.describe.remote()] = (actor, tries + 1)
                    else:
                        given_up += 1
                continue
            actor, work = in_flight.pop(future)
            shard = work.shard
            try:
                reply = ray.get(future)
                idle.append(actor)
                rows = reply["rows"]
                if reply["written"]:
                    written_by_scorer.add(shard.shard_id)
                elif reply["write_error"] and scorers_write:
                    scorers_write = False
                    log(f"a scorer could not write its shard ({reply['write_error']}); the driver writes the shards instead")
            except (RayActorError, WorkerCrashedError) as death:
                summary.worker_deaths += 1
                probes[actor.describe.remote()] = (actor, 1)
                if len(work.positions) > 1:
                    # Retry one architecture at a time, so a poison one is isolated.
                    pending.extendleft(_Work(shard, (p,), work.attempt + 1) for p in reversed(work.positions))
                    continue
                if work.attempt < config.max_tries:
                    pending.appendleft(_Work(shard, work.positions, work.attempt + 1))
                    continue
                reason = f"worker died {work.attempt} times scoring this architecture ({type(death).__name__})"
                rows = _failed_rows(shard.arch_ids[work.positions[0]], metrics, reason, config)
            by_arch = collections.defaultdict(list)
            for row in rows:
                by_arch[row["arch_id"]].append(row)
            for position in work.positions:
                results[shard.shard_id][position] = by_arch[shard.arch_ids[position]]
            bar.advance(len(work.positions))
            summary.scored += len(work.positions)
            if len(results[shard.shard_id]) == len(shard.arch_ids):
                done = results.pop(shard.shard_id)
                ordered = [row for p in range(len(shard.arch_ids)) for row in done[p]]
                for row in ordered:
                    if row["error"] is not None:
                        summary.failures[f"{row['metric']}: {_failure_reason(row['error'])}"] += 1
                if shard.shard_id in written_by_scorer:
                    summary.shards_written_by_scorers += 1
                else:
                    tables.write_table("scores", tables.from_rows("scores", ordered), out.child(shard.filename))


def _failed_rows(arch_id: str, metrics, reason: str, config: ScoreConfig) -> list[dict]:
    import tfnas_ray

    seed = arch_seed(arch_id, config.seed, config.seeding)
    return [
        {"arch_id": arch_id, "metric": m, "value": None, "error": reason, "seconds": None, "seed": seed, "device": None, "version": tfnas_ray.__version__, "batch": int(config.batch_options.get("index", 0))}
        for m in metrics
    ]
