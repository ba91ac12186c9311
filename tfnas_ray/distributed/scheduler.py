"""The scheduler of a scoring run: hands work to scorer actors, survives their deaths,
writes each shard when its last architecture is in.

Why a scorer died decides who pays for it. Ray reports the cause (`classify`):
- the environment (the node was lost or preempted, the scorer was killed with
  `ray.kill`, or could not be reached): the work is retried as it was, on another
  scorer, and no architecture is charged;
- the scorer process itself died (a segfault, an abort, the host's OOM killer): the
  work's architectures are suspects. A shard is retried one architecture at a time,
  uncharged; an architecture is charged only for deaths while it was alone on its
  scorer, and recorded as failed after `max_tries` of those;
- its constructor failed: no scorer can work, and the run stops with that cause.
A full GPU kills no scorer: the scorer frees the cache and tries again
(`scorer.score_fitting`), then reports the architecture, which is retried alone (from a
shard: uncharged) and recorded as failed, reason `cuda-oom`, after `max_tries` attempts
alone that did not fit.

Scorers are started with `max_restarts=0`: the scheduler starts a replacement itself,
so that every death reaches it with Ray's cause attached (a restarting actor only says
"unavailable"). Work goes to a scorer as soon as it answers; a scorer the cluster cannot
place within `PLACEMENT_WAIT_S` is given up with the resources it lacked, and the run
goes on with those placed (or stops if there are none); a slot given up comes back when
the cluster has room for a scorer again (looked at every `_RETURN_CHECK_S`). Under
`--wait-for-gpus` every scorer, the replacement of a dead one included, waits for the
autoscaler as long as the first did.
"""

from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from tfnas_ray import tables
from tfnas_ray.distributed.cluster import GIB
from tfnas_ray.distributed.scorer import OUT_OF_MEMORY_TRIES
from tfnas_ray.errors import TfnasError
from tfnas_ray.lease import check_held
from tfnas_ray.metrics.scoring import arch_seed
from tfnas_ray.storage import Location

# How long a scorer may wait for the cluster to place it (resources held by other work,
# more actors than fit) before it is given up; a placed scorer that is still starting
# (importing torch on a busy node) gets up to `_STARTING_PATIENCE` times this.
PLACEMENT_WAIT_S = 60.0
_STARTING_PATIENCE = 5
# Environment faults (lost nodes) tolerated on one architecture before the run stops:
# a cluster that loses every scorer it places would otherwise retry for ever.
MAX_ENVIRONMENT_FAULTS = 10
# Deaths before a scorer answers its first call, per scorer slot, before the slot is
# given up (a node that kills every process it starts).
_MAX_FAILED_STARTS = 3
# How often the scheduler looks whether the cluster has room again for slots it gave up
# (a node that joined, other work that finished).
_RETURN_CHECK_S = 5.0


class Fault(NamedTuple):
    """Why a scorer died: `kind` is "environment", "crash" or "constructor"."""

    kind: str
    cause: str  # one line, for the log and the failure rows


def classify(error: BaseException) -> Fault:
    """Ray's account of a scorer's death, as a Fault.

    Example:
        >>> from ray.exceptions import WorkerCrashedError
        >>> classify(WorkerCrashedError())
        Fault(kind='crash', cause='worker process died')
    """
    from ray.exceptions import ActorUnavailableError, NodeDiedError, OutOfMemoryError, RayActorError

    text = str(error)
    if isinstance(error, RayActorError) and error.actor_init_failed:
        return Fault("constructor", _exception_line(text))
    if isinstance(error, RayActorError) and error.preempted or "node was preempted" in text:
        return Fault("environment", "node preempted")
    if isinstance(error, NodeDiedError) or "node has died" in text:
        return Fault("environment", "node lost")
    if "killed by `ray.kill`" in text:
        return Fault("environment", "scorer killed with ray.kill")
    if isinstance(error, ActorUnavailableError):
        return Fault("environment", "scorer unreachable")
    if isinstance(error, OutOfMemoryError) or "low on memory" in text:
        return Fault("crash", "host out of memory")
    return Fault("crash", "worker process died")


def _exception_line(text: str) -> str:
    """The last `SomeError: message` line of a remote traceback (ANSI colours removed)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [line.strip() for line in text.splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b:?", lines[i]):
            return lines[i]
    return next((line for line in reversed(lines) if line), "unknown error")


@dataclass
class Work:
    """Architectures of one shard to score in one call: `positions` index the shard."""

    shard: Any  # scoring.Shard
    positions: tuple[int, ...]


@dataclass
class _Scorer:
    slot: int  # index in the pool; a replacement takes its predecessor's slot
    actor: Any
    since: float  # monotonic time it was started
    patient: bool  # may wait for the autoscaler (`--wait-for-gpus`), not PLACEMENT_WAIT_S
    failed_starts: int = 0  # predecessors in this slot that died before answering
    check_at: float = 0.0  # when to look whether it is placed, if it has not answered

    def __post_init__(self) -> None:
        self.check_at = self.check_at or self.since + PLACEMENT_WAIT_S


class Scheduler:
    """Scores `Work` on a pool of scorer actors and writes finished shards to `out`.

    Args:
        pool: the pool to start (`scoring._actor_plan`): kind, count, resources, patient.
        actor_class: the Ray actor class with its options (resources, runtime env).
        actor_args: the scorers' constructor arguments.
        config: the run's ScoreConfig (metrics, seed, seeding, max_tries, wait_for_gpus).
        out: the directory of shard files.
        summary: the run's ScoreSummary, filled in.
        progress: `Progress` of the run.
        log: one-line messages.

    Example (see `scoring.run_scoring`):
        Scheduler(pool=pool, actor_class=cls, actor_args=args, config=config, out=out,
                  summary=summary, progress=progress, log=print).run(work, prior={})
    """

    def __init__(self, *, pool, actor_class, actor_args: tuple, config, out: Location, summary, progress, log: Callable[[str], None]):
        self._pool, self._actor_class, self._actor_args = pool, actor_class, actor_args
        self._config, self._out, self._summary, self._progress, self._log = config, out, summary, progress, log
        self._metrics = list(config.metrics)
        self.pending: collections.deque[Work] = collections.deque()  # not handed out yet, in order
        self.in_flight: dict[Any, tuple[_Scorer, Work]] = {}  # score() call -> who, what
        self.attempts: collections.Counter = collections.Counter()  # (shard, position) -> deaths while alone
        self.environment_faults: collections.Counter = collections.Counter()  # (shard, position) -> uncharged deaths
        self.placed: dict[int, _Scorer] = {}  # slot -> scorer that answered (idle or busy)
        self.idle: list[_Scorer] = []  # placed scorers without work
        self.starting: dict[Any, _Scorer] = {}  # describe() call -> scorer not yet up
        self._results: dict[str, dict[int, list[dict]]] = {}  # shard -> position -> rows
        self._written_by_scorer: set[str] = set()
        # Scorers write whole shards themselves to an object store every node reaches, so
        # the driver is not held up by uploads; otherwise (and for shards put together
        # from retries) the driver writes.
        self._scorers_write = out.is_object_store
        self.dropped: list[int] = []  # slots given up for lack of room: restarted when room returns
        self._next_return_check = 0.0

    # ---- the loop ------------------------------------------------------------------

    def run(self, work: list[Work], prior: dict[str, dict[int, list[dict]]]) -> None:
        """Score `work`; `prior` holds rows already known of those shards (rescoring
        recorded failures), written back with the new ones."""
        import ray

        for item in work:
            self._results.setdefault(item.shard.shard_id, dict(prior.get(item.shard.shard_id, {})))
        self.pending.extend(work)
        for slot in range(self._pool.count):
            self._start(slot, patient=self._pool.patient)
        try:
            while self.pending or self.in_flight:
                check_held()  # another run took this output's lease over: stop before the next shard
                self._restart_dropped()
                self._dispatch()
                if not self.in_flight and not self.starting:
                    raise TfnasError("every scorer died and none could be started again; see the Ray logs")
                ready, _ = ray.wait([*self.in_flight, *self.starting], num_returns=1, timeout=_soonest(self._wait_timeout(), self._progress.seconds_to_tick()))
                self._progress.tick()  # per-architecture reports, heartbeats in logs
                if not ready:
                    self._check_placement()
                for ref in ready:
                    if ref in self.starting:
                        self._on_started(ref)
                    else:
                        self._on_finished(ref)
        finally:
            for scorer in [*self.placed.values(), *self.starting.values()]:
                ray.kill(scorer.actor, no_restart=True)

    def _dispatch(self) -> None:
        while self.idle and self.pending:
            scorer, work = self.idle.pop(), self.pending.popleft()
            shard = work.shard
            items = [
                (shard.arch_ids[i], shard.spaces[i], shard.specs[i], arch_seed(shard.arch_ids[i], self._config.seed, self._config.seeding))
                for i in work.positions
            ]
            whole = len(work.positions) == len(shard.arch_ids)
            destination = self._out.child(shard.filename).url if self._scorers_write and whole else None
            self.in_flight[scorer.actor.score.remote(items, self._metrics, destination)] = (scorer, work)

    # ---- scorers coming up -------------------------------------------------------

    def _start(self, slot: int, *, patient: bool, failed_starts: int = 0) -> None:
        actor = self._actor_class.remote(*self._actor_args)
        scorer = _Scorer(slot, actor, time.monotonic(), patient, failed_starts)
        # A scorer gets work only once it answers: placement can take long (autoscaler,
        # busy cluster), and a call queued meanwhile could not be moved to another one.
        self.starting[actor.describe.remote()] = scorer

    def _on_started(self, ref) -> None:
        import ray
        from ray.exceptions import RayActorError

        scorer = self.starting.pop(ref)
        try:
            info = ray.get(ref)
        except RayActorError as err:
            fault = classify(err)
            if fault.kind == "constructor":
                raise TfnasError(f"a scorer actor failed to start: {fault.cause}") from None
            if fault.kind == "environment" and scorer.patient:
                # Its node went away while it was starting: wait for the next one, as the
                # first scorers did; a dying node is not the scorer's failure to start.
                self._start(scorer.slot, patient=True, failed_starts=scorer.failed_starts)
            elif scorer.failed_starts + 1 < _MAX_FAILED_STARTS:
                self._start(scorer.slot, patient=scorer.patient, failed_starts=scorer.failed_starts + 1)
            else:
                self._log(f"scorer {scorer.slot} died {_MAX_FAILED_STARTS} times before it could start ({fault.cause}); going on without it")
            return
        if info["problem"]:
            raise TfnasError(info["problem"])
        self.placed[scorer.slot] = scorer
        self._summary.scorers[scorer.slot] = (info["device"], info["node"][:12])
        self.idle.append(scorer)

    def _wait_timeout(self) -> float | None:
        """Seconds until the next placement deadline or look for room (None: no scorer
        is waiting and no slot is given up)."""
        deadlines = [self._placement_deadline(s) for s in self.starting.values()]
        deadlines = [d for d in deadlines if d is not None]
        if self.dropped and self.pending:
            deadlines.append(self._next_return_check)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _placement_deadline(self, scorer: _Scorer) -> float | None:
        if scorer.patient:
            # Waiting for the autoscaler: bounded (from when this scorer was asked for)
            # while no scorer is up, so a run whose GPU node was lost waits for a new one
            # as long as it waited for the first; while others work, it joins whenever
            # its node arrives.
            return scorer.since + self._config.wait_for_gpus if not self.placed else None
        return scorer.check_at

    def _restart_dropped(self) -> None:
        """Start the slots given up for lack of room again, once the cluster has room for
        one scorer (a node joined, other work ended) and there is work for them."""
        if not self.dropped or not self.pending or time.monotonic() < self._next_return_check:
            return
        self._next_return_check = time.monotonic() + _RETURN_CHECK_S
        free = _free_scorers(self._pool.resources)
        if free < 1:
            return
        back, self.dropped = self.dropped[:free], self.dropped[free:]
        for slot in back:
            self._start(slot, patient=self._pool.patient)
        self._log(f"the cluster has room again: {len(back)} scorer(s) given up before are starting again")

    def _check_placement(self) -> None:
        """Scorers past their deadline: still starting (wait on), or unplaceable."""
        import ray

        now = time.monotonic()
        late = [(ref, s) for ref, s in self.starting.items() if (d := self._placement_deadline(s)) is not None and d <= now]
        if any(s.patient for _, s in late):
            raise TfnasError(
                f"no GPU scorer was placed within --wait-for-gpus {self._config.wait_for_gpus:g} s "
                f"(the cluster has {ray.cluster_resources().get('GPU', 0):g} GPUs); does it have an "
                "autoscaling GPU worker group with room to grow?"
            )
        unplaced = []
        for ref, scorer in late:
            if _has_process(scorer.actor) and now - scorer.since < PLACEMENT_WAIT_S * _STARTING_PATIENCE:
                continue  # placed, its process still starting: wait on
            unplaced.append((ref, scorer))
        if not unplaced:
            for _, scorer in late:
                scorer.check_at = now + 1.0  # look again in a second, not in a busy loop
            return
        for ref, scorer in unplaced:
            del self.starting[ref]
            ray.kill(scorer.actor, no_restart=True)
            self.dropped.append(scorer.slot)
        self._next_return_check = now + _RETURN_CHECK_S
        lacking = _lacking(self._pool.resources)
        if not self.placed and not self.starting:
            raise TfnasError(
                f"no scorer could be placed within {PLACEMENT_WAIT_S:g} s: {lacking}; free them, "
                "or ask for fewer scorers (--workers, --device)"
            )
        self._log(
            f"{len(unplaced)} scorer(s) could not be placed within {PLACEMENT_WAIT_S:g} s ({lacking}); "
            f"going on with {len(self.placed) + len(self.starting)}"
        )

    # ---- work coming back ----------------------------------------------------------

    def _on_finished(self, ref) -> None:
        import ray
        from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

        scorer, work = self.in_flight.pop(ref)
        try:
            reply = ray.get(ref)
        except (RayActorError, WorkerCrashedError, NodeDiedError, OutOfMemoryError) as death:
            self._on_death(scorer, work, classify(death))
            return
        self.idle.append(scorer)
        shard = work.shard
        if reply["written"]:
            self._written_by_scorer.add(shard.shard_id)
        elif reply["write_error"] and self._scorers_write:
            self._scorers_write = False
            self._log(f"a scorer could not write its shard ({reply['write_error']}); the driver writes the shards instead")
        full = reply["out_of_memory"]  # arch_id -> last error: the GPU was full on every try
        done = tuple(p for p in work.positions if shard.arch_ids[p] not in full)
        if done:  # first: recording a full one as failed may complete the shard
            self._record(shard, done, reply["rows"])
        if len(work.positions) > 1:
            # The shard's other architectures may have left the GPU fragmented: each full
            # one again alone on a scorer, uncharged.
            self.pending.extendleft(Work(shard, (p,)) for p in reversed(work.positions) if p not in done)
        elif not done:
            self._suspect(work, full[shard.arch_ids[work.positions[0]]], out_of_memory=True)

    def _on_death(self, scorer: _Scorer, work: Work, fault: Fault) -> None:
        import ray

        self._summary.worker_deaths += 1
        self.placed.pop(scorer.slot, None)
        ray.kill(scorer.actor, no_restart=True)  # an unreachable one may still live and hold its resources
        if fault.kind == "constructor":
            raise TfnasError(f"a scorer actor failed to start: {fault.cause}")
        self._blame(work, fault)
        if self.pending:  # a replacement in the same slot, placed wherever the cluster has room
            # as patient as the first: under --wait-for-gpus a lost GPU node's scorer
            # waits for the node the autoscaler brings instead of the placement limit
            self._start(scorer.slot, patient=self._pool.patient)
        else:
            self.dropped.append(scorer.slot)  # back if its work (or other) returns to the queue

    def _blame(self, work: Work, fault: Fault) -> None:
        """Queue `work` again after its scorer died of `fault`, charging whom it may."""
        if fault.kind == "environment":
            # Not the architectures' doing: the same work again, nobody charged.
            self._summary.uncharged_deaths[fault.cause] += 1
            for position in work.positions:
                key = (work.shard.shard_id, position)
                self.environment_faults[key] += 1
                if self.environment_faults[key] > MAX_ENVIRONMENT_FAULTS:
                    raise TfnasError(
                        f"scorers died {self.environment_faults[key]} times ({fault.cause}) while scoring "
                        f"architecture {work.shard.arch_ids[position]}; the cluster loses scorers faster than "
                        "they work; run the same command again to resume"
                    )
            self.pending.appendleft(work)
            return
        if len(work.positions) > 1:
            # One of them may have killed the scorer: retry one at a time, uncharged, so
            # that only the one that kills a scorer alone is charged.
            self._summary.uncharged_deaths[f"{fault.cause} (shard retried one architecture at a time)"] += 1
            self.pending.extendleft(Work(work.shard, (p,)) for p in reversed(work.positions))
            return
        self._suspect(work, fault.cause)

    def _suspect(self, work: Work, cause: str, *, out_of_memory: bool = False) -> None:
        """Charge a death (or, `out_of_memory`, a full GPU: `cause` the last error) to the
        one architecture of `work`, scored alone."""
        (position,) = work.positions
        key = (work.shard.shard_id, position)
        self.attempts[key] += 1
        if self.attempts[key] < self._config.max_tries:
            self.pending.appendleft(work)
            return
        arch_id = work.shard.arch_ids[position]
        reason = f"worker died {self.attempts[key]} times scoring this architecture alone ({cause})"
        if out_of_memory:
            reason = (
                f"cuda-oom: does not fit on its scorer's GPU alone: {self.attempts[key]} times alone, "
                f"{OUT_OF_MEMORY_TRIES} tries each with the cache freed between (last: {cause})"
            )
        self._record(work.shard, work.positions, failed_rows(arch_id, work.shard.spaces[position], self._metrics, reason, self._config))

    def _record(self, shard, positions: tuple[int, ...], rows: list[dict]) -> None:
        by_arch = collections.defaultdict(list)
        for row in rows:
            by_arch[row["arch_id"]].append(row)
        results = self._results[shard.shard_id]
        for position in positions:
            results[position] = by_arch[shard.arch_ids[position]]
        for position in positions:  # counted once, also when a scorer reported it already
            seconds = [row["seconds"] for row in by_arch[shard.arch_ids[position]] if row["seconds"] is not None]
            self._progress.finished(shard.arch_ids[position], sum(seconds) if seconds else None)
        self._summary.scored += len(positions)
        if len(results) < len(shard.arch_ids):
            return
        del self._results[shard.shard_id]
        ordered = [row for p in range(len(shard.arch_ids)) for row in results[p]]
        for row in ordered:
            if row["error"] is not None:
                self._summary.failures[f"{row['metric']}: {failure_reason(row['error'])}"] += 1
        if shard.shard_id in self._written_by_scorer:
            self._summary.shards_written_by_scorers += 1
        else:
            check_held()  # the directory is another run's now: write nothing more into it
            tables.write_table("scores", tables.from_rows("scores", ordered), self._out.child(shard.filename))


def _soonest(*timeouts: float | None) -> float | None:
    """The smallest of the timeouts given (None: no timeout)."""
    given = [t for t in timeouts if t is not None]
    return min(given) if given else None


def _has_process(actor) -> bool:
    """Whether Ray has placed `actor` on a node and started its process (it may still be
    importing). Best effort: Ray's actor table is the only place that says so without
    the dashboard; when it cannot be read, a late scorer counts as unplaced."""
    try:
        from ray._private import state

        return bool(state.actors(actor._actor_id.hex()).get("Pid"))
    except Exception:  # noqa: BLE001 — private API: any change in it means "unknown"
        return False


def _free_scorers(resources: dict) -> int:
    """How many scorers needing `resources` (actor options: num_gpus, num_cpus, memory)
    the cluster's free resources hold now. Summed over nodes, so it may count room split
    between nodes: a scorer started on that is given up again after the placement wait."""
    import ray

    free = ray.available_resources()
    counts = [
        int(free.get(name, 0) / resources[key] + 1e-9)  # 1/3 GPU: 1.0 // (1/3) is 2.0 in floats
        for key, name in (("num_gpus", "GPU"), ("num_cpus", "CPU"), ("memory", "memory"))
        if resources.get(key)
    ]
    return min(counts) if counts else len(ray.nodes())  # needs nothing: fits anywhere


def _lacking(resources: dict) -> str:
    """What one scorer needs and what the cluster has free, in words."""
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    parts = []
    for key, name in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
        need = resources.get(key, 0)
        if need:
            parts.append(f"each needs {need:g} {name}, the cluster has {free.get(name, 0):g} of {total.get(name, 0):g} free")
    if resources.get("memory"):
        parts.append(
            f"each needs {resources['memory'] / GIB:.1f} GiB of memory, the cluster has "
            f"{free.get('memory', 0) / GIB:.1f} of {total.get('memory', 0) / GIB:.1f} GiB free"
        )
    return "; ".join(parts) + " (other work holds the rest)"


def failure_reason(error: str) -> str:
    """Failures grouped by kind, not numbers: "layer-1 hidden covariance: 3 of 600
    variables are constant" and "… 7 of 600 …" are one reason."""
    text = error.split(" (first:")[0].split(" (at ")[0].split(" (last:")[0]
    return "".join("N" if ch.isdigit() else ch for ch in text)[:120]


def failed_rows(arch_id: str, space: str, metrics, reason: str, config) -> list[dict]:
    """Rows recording that no metric could be computed for `arch_id`; each row's version
    is its metric's implementation version, like a computed value's."""
    from tfnas_ray.metrics import get_metric, score_version

    seed = arch_seed(arch_id, config.seed, config.seeding)
    return [
        {
            "arch_id": arch_id, "metric": m, "value": None, "error": reason, "seconds": None,
            "seed": seed, "device": None, "version": score_version(get_metric(m).impl(space)),
            "batch": int(config.batch_options.get("index", 0)),
        }
        for m in metrics
    ]
