"""Distributed scoring: a pool of scorer actors over shards of architectures.

The work is cut into shards; each finished shard is written atomically to its own
Parquet file named by the shard's identity (a hash of its architectures, metrics, seed,
seeding and batch), so a rerun of the same command skips finished shards, recomputes a
corrupt one, and never writes a shard twice. The output is a local path or a URL
(`storage`: s3://, gs://, …). The driver writes shards to a path; to an object store
the scorers upload their shards themselves, from whichever node they run on. One actor
per GPU (or per CPU without GPUs) scores shards; with `wait_for_gpus`, GPU actors the
cluster cannot place yet wait for the autoscaler and join when placed. The scheduler
(`scheduler.Scheduler`) replaces scorers that die and charges an architecture only for
deaths it causes alone (`max_tries` of them and it is recorded as failed). Values do not depend on how many workers
ran or how the shards were cut: each architecture is scored in a fresh context seeded
from its arch_id (`metrics.scoring.arch_seed`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from tfnas_ray import plans, tables
from tfnas_ray.distributed import drills
from tfnas_ray.distributed.cost import cheaper_settings
from tfnas_ray.distributed.gpu_memory import scorer_memory_need
from tfnas_ray.distributed.progress import Progress, start_reports
from tfnas_ray.distributed.scheduler import Scheduler, Work
from tfnas_ray.distributed.scorer import scorer_class
from tfnas_ray.errors import TfnasError
from tfnas_ray.lease import lease_held, leased
from tfnas_ray.metrics.scoring import SEEDINGS, metric_versions, validate_metrics
from tfnas_ray.storage import Location, locate

DEVICES = ("auto", "cpu", "gpu")
# The automatic shard size: enough shards that a small run keeps every scorer busy and
# the last shard leaves the others idle only briefly, at most this many archs per shard
# (a shard is the unit of resume: what an interruption loses).
AUTO_SHARDS = 32
AUTO_SHARD_CAP = 8


def auto_shard_size(distinct: int) -> int:
    """Architectures per shard when none is given: ⌈n / 32⌉ clamped to 1–8. A function
    of the work alone, never of the worker count, so a rerun on another cluster finds
    the same shards (254 PTB cells: 8 per shard; 24 archs: 1)."""
    return max(1, min(AUTO_SHARD_CAP, -(-distinct // AUTO_SHARDS)))


@dataclass(frozen=True)
class ScoreConfig:
    """How to score a table of architectures.

    Attributes:
        metrics: metric names (registry keys), scored together per architecture.
        seed: the run's seed.
        seeding: "derived" (per-architecture seed from arch_id and `seed`) or "fixed"
            (every model initialised with `seed`, the paper's protocol).
        shard_size: architectures per shard (the unit of resume); None: `auto_shard_size`
            of the number of distinct architectures.
        workers: at most this many scorer actors (default: one per GPU or CPU).
        device: "auto" (GPUs if the cluster has them), "cpu" or "gpu".
        actors_per_gpu: scorer actors sharing one GPU (fractional GPUs for small models).
        batch_options: options of the space's metric minibatch (corpus, bptt, …).
        model_options: options passed to the space's model builder.
        max_tries: deaths of its scorer while scoring an architecture alone before it
            is recorded as failed (deaths the environment caused are not counted).
        wait_for_gpus: with device "gpu" on an autoscaling cluster: start `workers` GPU
            actors even if the cluster has fewer GPUs now (the pending actors are the
            autoscaler's signal to add GPU nodes), score with those placed so far, and
            fail if none is placed within this many seconds. 0: use the GPUs present.
        retry_failed: rescore the architectures that finished shards record as failed
            (a metric error, or a worker that died on it).
        memory_per_worker: GiB of memory each scorer reserves (Ray's `memory` resource),
            so that a node runs only as many scorers as its memory holds (nb-bert at the
            paper's 128 × 512 tokens peaked at 13.4 GiB per scorer); 0: no reservation.
    """

    metrics: tuple[str, ...]
    seed: int = 0
    seeding: str = "derived"
    shard_size: int | None = None
    workers: int | None = None
    device: str = "auto"
    actors_per_gpu: float = 1.0
    batch_options: Mapping[str, Any] = field(default_factory=dict)
    model_options: Mapping[str, Any] = field(default_factory=dict)
    max_tries: int = 3
    wait_for_gpus: float = 0.0
    retry_failed: bool = False
    memory_per_worker: float = 0.0

    def __post_init__(self) -> None:
        # `-m params -m params` scores params once: a duplicate would double the rows of
        # every shard, and a rerun would then find every shard corrupt.
        object.__setattr__(self, "metrics", tuple(dict.fromkeys(self.metrics)))
        if self.seeding not in SEEDINGS:
            raise TfnasError(f"seeding {self.seeding!r} is not one of {', '.join(SEEDINGS)}")
        if self.shard_size is not None and self.shard_size < 1:
            raise TfnasError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.workers is not None and self.workers < 1:
            raise TfnasError(f"--workers must be >= 1, got {self.workers}")
        if self.device not in DEVICES:
            raise TfnasError(f"--device {self.device!r} is not one of {', '.join(DEVICES)}")
        if not (self.actors_per_gpu >= 1 and float(self.actors_per_gpu).is_integer()):
            # Each scorer takes 1/N of a GPU; N that is not whole leaves a remainder no
            # scorer fits in (1.5: two scorers of 2/3 GPU each do not fit on one GPU).
            raise TfnasError(
                f"--actors-per-gpu must be a whole number >= 1 (scorers sharing one GPU, each taking "
                f"1/N of it), got {self.actors_per_gpu:g}"
            )
        if self.max_tries < 1:
            raise TfnasError(f"max_tries must be >= 1, got {self.max_tries}")
        if self.wait_for_gpus < 0:
            raise TfnasError(f"--wait-for-gpus must be >= 0 seconds, got {self.wait_for_gpus}")
        if not self.memory_per_worker >= 0:
            raise TfnasError(f"--memory-per-worker must be >= 0 GiB, got {self.memory_per_worker:g}")
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
    uncharged_deaths: collections.Counter = field(default_factory=collections.Counter)  # cause -> deaths charged to no architecture
    shards_retried: int = 0  # finished shards with failures, rescored (--retry-failed)
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
            out += [f"  {count:5d}  {cause}, no architecture charged" for cause, count in self.uncharged_deaths.most_common()]
        if self.shards_retried:
            out.append(f"shards with recorded failures rescored (--retry-failed): {self.shards_retried}")
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


# Every model is built and scored in torch's default dtype; a run in another dtype
# (a future --dtype) would name it in its identity.
SCORING_DTYPE = "float32"


def device_kind(config: ScoreConfig) -> str:
    """Where the scorers of `config` run: "gpu" or "cpu" ("auto": GPUs if the connected
    Ray cluster has any; without a connection, "cpu")."""
    if config.device != "auto":
        return config.device
    import sys

    ray = sys.modules.get("ray")  # not imported: not connected (the checks of input never import it)
    if ray is None or not ray.is_initialized():
        return "cpu"
    from tfnas_ray.distributed.cluster import cluster_gpus

    return "gpu" if cluster_gpus() > 0 else "cpu"


def scoring_runtime(kind: str) -> dict[str, str] | None:
    """The runtime a plan's values depend on beyond its options: device kind, dtype and
    torch version on a GPU (where kernels, reductions and library versions change the
    low digits, and a GPU run must not resume into a CPU run's shards, nor the reverse).
    None for the CPU in float32: the reference runtime, left out of the identity so
    that shards scored before it entered keep their names (and resume)."""
    if kind == "cpu" and SCORING_DTYPE == "float32":
        return None
    import torch

    # The release only: a CUDA build's "+cu128" on the GPU workers and a driver's "+cpu"
    # are the same version (the scorers check that theirs is this one).
    return {"device": "cuda" if kind == "gpu" else kind, "dtype": SCORING_DTYPE, "torch": torch.__version__.split("+")[0]}


def plan_identity(config: ScoreConfig, spaces, *, kind: str | None = None) -> dict[str, Any]:
    """What a shard's values depend on besides its architectures: the metrics and the
    version of each one's implementation in `spaces`, the seed and seeding, the batch
    and model options, and on a GPU the runtime (`scoring_runtime`: device kind, dtype,
    torch version). It names the shards and is recorded in the plan's manifest.

    Args:
        kind: "cpu" or "gpu", where the scorers run; default `device_kind(config)`.

    Raises:
        TfnasError: an unknown metric, or one not defined for a space.
    """
    for space in sorted(spaces):
        validate_metrics(space, config.metrics)
    identity = {
        "metrics": list(config.metrics),
        "seed": config.seed,
        "seeding": config.seeding,
        "batch": dict(sorted(config.batch_options.items())),
        "model": dict(sorted(config.model_options.items())),
        "versions": metric_versions(sorted(spaces), config.metrics),
    }
    runtime = scoring_runtime(kind or device_kind(config))
    if runtime is not None:
        identity["runtime"] = runtime
    return identity


def plan_shards(archs: pa.Table, config: ScoreConfig, *, kind: str | None = None) -> list[Shard]:
    """Cut the (deduplicated) architectures into shards and name each by its identity
    (`plan_identity`; `kind` as there)."""
    archs = tables.conform("archs", archs, what="archs table")
    seen: dict[str, tuple[str, str]] = {}
    for arch_id, space, spec in zip(
        archs.column("arch_id").to_pylist(), archs.column("space").to_pylist(), archs.column("spec").to_pylist()
    ):
        seen.setdefault(arch_id, (space, spec))  # the same architecture is scored once
    identity = json.dumps(plan_identity(config, {space for space, _ in seen.values()}, kind=kind), sort_keys=True)
    items = list(seen.items())
    size = config.shard_size or auto_shard_size(len(items))
    shards = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
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


class CorruptShard(TfnasError):
    """A shard file was read whole and is not a complete shard."""


def check_shard(where: Location, shard: Shard, metrics: Sequence[str]) -> None:
    """Raise CorruptShard saying why a shard file is not a complete shard of `shard`.

    The bytes are read first (retried on a transient error, `storage.READ_TRIES`), then
    parsed: only what was read whole and found wrong is corrupt.

    Raises:
        CorruptShard: the file is not Parquet, lacks columns, or has other rows.
        TfnasError: the file could not be read, after every try.
    """
    data = where.read_bytes()
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as err:
        raise CorruptShard(f"unreadable Parquet ({str(err).splitlines()[0]})") from None
    try:
        table = tables.conform("scores", table, what=where.url)
    except TfnasError as err:
        raise CorruptShard(str(err)) from None
    expected = {(a, m) for a in shard.arch_ids for m in metrics}
    found = set(zip(table.column("arch_id").to_pylist(), table.column("metric").to_pylist()))
    if table.num_rows != len(expected) or found != expected:
        raise CorruptShard(f"holds {table.num_rows} rows, expected {len(expected)} (one per arch and metric)")


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
    a hidden name, which readers skip) so that it is recomputed. Temporaries of writes
    that a killed run left behind are deleted first."""
    # Temporaries of writers killed mid-write (this run holds the lease). After taking over
    # the lease of a run that may still be alive (paused, cut off), only old ones: its
    # writes in progress are its own, and it stops before its next shard.
    held = lease_held(out)
    cleaned = out.clean_temporaries(older_than=held.stale_after if held is not None and held.predecessor_may_live else 0.0)
    if cleaned:
        log(f"removed {cleaned} temporary file(s) that an interrupted run left in {out.url}")
    existing = {f.name: f for f in out.files(".parquet") if f.name.startswith("shard-")}  # one listing, also on S3
    planned = {s.filename for s in shards}
    found = [s for s in shards if s.filename in existing]

    def problem(shard: Shard) -> str | None:
        try:
            check_shard(existing[shard.filename], shard, metrics)
        except CorruptShard as err:
            return str(err)
        return None  # a read that failed every try raises: unread is not corrupt

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        problems = list(pool.map(problem, found))
    state = ResumeState(finished=set(), corrupt=0, stale=sum(1 for name in existing if name not in planned))
    for shard, reason in zip(found, problems):
        if reason is None:
            state.finished.add(shard.shard_id)
            continue
        log(f"shard {shard.filename} is corrupt ({reason}); recomputing it")
        existing[shard.filename].move_aside(f"{QUARANTINE}{int(time.time())}")
        state.corrupt += 1
    drop_quarantined(out, [s for s in shards if s.shard_id in state.finished])
    return state


QUARANTINE = "corrupt-"  # a corrupt shard moved aside: `.<shard file>.corrupt-<time>`


def drop_quarantined(out: Location, shards: Sequence[Shard]) -> int:
    """Delete the corrupt copies moved aside of `shards`, whose files are whole now.
    Returns how many were deleted."""
    names = {f".{s.filename}.{QUARANTINE}" for s in shards}
    if not names:
        return 0
    dropped = 0
    for hidden in out.hidden_files():
        if any(hidden.name.startswith(prefix) for prefix in names):
            out.discard(hidden.path)
            dropped += 1
    return dropped


class _Pool(NamedTuple):
    kind: str  # "gpu" or "cpu"
    count: int  # scorer actors to start
    resources: dict  # Ray resources of each
    patient: bool  # they may wait for the autoscaler to add nodes (--wait-for-gpus)


def _actor_plan(config: ScoreConfig, n_shards: int, *, kind: str | None = None) -> _Pool:
    """The scorer pool for the cluster as it is now (`kind`: as the plan named it,
    default `device_kind(config)`)."""
    from tfnas_ray.distributed.cluster import GIB, cluster_cpus, cluster_gpus, cluster_memory

    gpus = cluster_gpus()
    waiting = config.wait_for_gpus > 0
    if config.device == "gpu" and gpus == 0 and not waiting:
        raise TfnasError(
            "--device gpu, but the Ray cluster has no GPUs; use --device cpu or auto "
            "(or --wait-for-gpus SECONDS on a cluster that autoscales GPU nodes)"
        )
    kind = kind or device_kind(config)
    if kind == "gpu":
        present = int(gpus * config.actors_per_gpu)
        # On an autoscaling cluster the actors beyond the present GPUs stay pending
        # until the autoscaler adds nodes for them; they join the pool when placed.
        count = max(present, config.workers or 1) if waiting else present
        resources = {"num_gpus": 1.0 / config.actors_per_gpu, "num_cpus": 0}
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
        count = cpus
        resources = {"num_cpus": 1}
    patient = kind == "gpu" and waiting
    if config.memory_per_worker > 0:
        need = int(config.memory_per_worker * GIB)
        resources = {**resources, "memory": need}
        if not patient:  # more scorers than fit would only wait to be given up
            room = cluster_memory()
            if room < need:
                raise TfnasError(
                    f"--memory-per-worker {config.memory_per_worker:g} GiB: the Ray cluster has "
                    f"{room / GIB:.1f} GiB of memory for tasks and actors in all; ask for less"
                )
            count = min(count, int(room // need))
    count = max(1, min(count, config.workers or count, n_shards))
    return _Pool(kind, count, resources, patient=patient)


@leased("out_dir")  # one driver per output directory
def run_scoring(
    archs: pa.Table,
    out_dir: str | os.PathLike | Location,
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
        TfnasError: another run holds the lease of `out_dir` (see `tfnas_ray.lease`).
        ScoringInterrupted: on Ctrl-C, after saying how much was saved.
    """
    out = locate(out_dir)  # a Location passes through: `pipeline` parsed it where it entered
    out.make_dirs()
    started = time.perf_counter()
    kind = device_kind(config)  # once: the shards' names and the pool agree on it
    shards = plan_shards(archs, config, kind=kind)
    identity = plan_identity(config, set(archs.column("space").to_pylist()), kind=kind)
    plans.write_manifest(out, identity, [s.filename for s in shards])
    metrics = list(config.metrics)
    summary = ScoreSummary(archs=sum(len(s.arch_ids) for s in shards), shards_total=len(shards))
    resume = resume_state(out, shards, metrics, log=log)
    summary.stale_files, summary.shards_skipped, summary.shards_recomputed = resume.stale, len(resume.finished), resume.corrupt
    planned = {s.filename for s in shards}
    work = [Work(shard, tuple(range(len(shard.arch_ids)))) for shard in shards if shard.shard_id not in resume.finished]
    prior: dict[str, dict[int, list[dict]]] = {}
    if config.retry_failed:
        retried, prior = _failed_work(out, [s for s in shards if s.shard_id in resume.finished])
        work += retried
        summary.shards_retried = len(retried)
        summary.shards_skipped -= len(retried)

    bar = Progress(
        sum(len(w.positions) for w in work), enabled=progress, note=log,
        cheaper=cheaper_settings(sorted(set(archs.column("space").to_pylist())), config.batch_options),
    )
    if work:
        pool = _actor_plan(config, len(work), kind=kind)
        reports = start_reports()  # each scorer tells it of every architecture it finishes
        bar.attach(reports, scorers=pool.count)
        options: dict[str, Any] = {"max_restarts": 0, **pool.resources}  # the scheduler replaces dead scorers
        if drills.forward_env():
            options["runtime_env"] = {"env_vars": drills.forward_env()}
        scheduler = Scheduler(
            pool=pool,
            actor_class=scorer_class().options(**options),
            actor_args=(
                pool.kind, dict(config.batch_options), dict(config.model_options), identity.get("runtime"),
                (int(config.actors_per_gpu), scorer_memory_need(archs.column("space").to_pylist(), config.batch_options)), reports,
            ),
            config=config,
            out=out,
            summary=summary,
            progress=bar,
            log=log,
        )
        try:
            scheduler.run(work, prior)
        except KeyboardInterrupt:
            bar.close()
            saved = len(planned & {f.name for f in out.files(".parquet")})
            raise ScoringInterrupted(
                f"interrupted: {saved} of {len(shards)} shards are saved in {out.url}; "
                "run the same command again to resume"
            ) from None
        finally:
            if reports is not None:
                import ray

                ray.kill(reports, no_restart=True)
    bar.close()
    summary.seconds = time.perf_counter() - started
    summary.table = tables.read_tables("scores", [out.child(s.filename) for s in shards])
    if summary.shards_recomputed:
        drop_quarantined(out, shards)  # every planned shard was just read whole
    return summary


def _failed_work(out: Location, finished: Sequence[Shard]) -> tuple[list[Work], dict[str, dict[int, list[dict]]]]:
    """For `--retry-failed`: the architectures of finished shards with a failed row, as
    work, and the rows of the others (written back with the new ones)."""
    work, prior = [], {}
    for shard in finished:
        rows = tables.read_table("scores", out.child(shard.filename)).to_pylist()
        failed = {row["arch_id"] for row in rows if row["error"] is not None}
        if not failed:
            continue
        positions = tuple(p for p, arch_id in enumerate(shard.arch_ids) if arch_id in failed)
        by_arch = collections.defaultdict(list)
        for row in rows:
            by_arch[row["arch_id"]].append(row)
        prior[shard.shard_id] = {p: by_arch[a] for p, a in enumerate(shard.arch_ids) if a not in failed}
        work.append(Work(shard, positions))
    return work, prior
