"""Which shards of a scores directory belong together: one manifest per scoring plan.

A scoring run writes `_plan-<id>.json` into its output directory before it scores: the
plan's identity (metrics, seed, seeding, metric batch and model options, each metric's
implementation version), the names of its shard files, and when it was last run (`run`,
a counter over the directory's plans, and `last_run`, the time). The leading `_` makes
Arrow, pandas, Spark, DuckDB and polars skip the manifests, so the directory opens as a
Parquet dataset; manifests named `plan-<id>.json` / `study-<id>.json` by earlier
versions are still read, and renamed when a run next writes into the directory. A directory may hold the
shards of several plans (a rerun with another seed, corpus or shard size into the same
`--out`); readers take the shards of one plan only, never an average over plans:

    read_scores("runs/x/scores")                # the plan run last, saying which and what else is there
    read_scores("runs/x/scores", plan="3fa2…")  # a chosen one

A directory without any manifest (written before manifests existed, or by hand) is
read whole, as before. A stability run (`--init-seeds`, `--batches`) scores one plan per
(seed, minibatch) on purpose; it also writes `study-<id>.json` naming those plans, and
a reader that picks one of them reads the whole study: the rows stay apart by their
`seed` and `batch` columns, never averaged into an unrelated plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.fs as pafs

from tfnas_ray import tables
from tfnas_ray.errors import TfnasError
from tfnas_ray.storage import Location, locate

PREFIX = "_plan-"
STUDY_PREFIX = "_study-"
OLD_PREFIXES = {"plan-": PREFIX, "study-": STUDY_PREFIX}  # names of earlier versions, still read
SUFFIX = ".json"


def _kind(name: str) -> str | None:
    """PREFIX or STUDY_PREFIX for a manifest's file name (new or old), else None."""
    if not name.endswith(SUFFIX):
        return None
    for prefix in (PREFIX, STUDY_PREFIX):
        if name.startswith(prefix):
            return prefix
    for old, prefix in OLD_PREFIXES.items():
        if name.startswith(old):
            return prefix
    return None


@dataclass(frozen=True)
class Plan:
    """One scoring plan of a directory, as its manifest describes it."""

    plan_id: str
    identity: Mapping[str, Any]  # metrics, seed, seeding, batch, model, versions; runtime off the CPU
    shards: tuple[str, ...]  # shard file names, in plan order
    created: float  # seconds since the epoch when the run that wrote it started
    run: int = 0  # which run of the directory ran it last (1, 2, …; 0: never recorded)
    last_run: float | None = None  # seconds since the epoch when it was last run

    def describe(self) -> str:
        ident = self.identity
        batch = ", ".join(f"{k}={v}" for k, v in sorted((ident.get("batch") or {}).items())) or "default batch"
        runtime = ident.get("runtime")  # absent: the CPU in float32 (scoring.scoring_runtime)
        device = f"{runtime['device']} {runtime['dtype']} torch {runtime['torch']}" if runtime else "cpu"
        return (
            f"plan {self.plan_id} (metrics {','.join(ident.get('metrics', []))}; seed {ident.get('seed')} "
            f"{ident.get('seeding')}; {batch}; {device}; {len(self.shards)} shards)"
        )


def plan_id(identity: Mapping[str, Any], shard_names: Sequence[str]) -> str:
    text = json.dumps({"identity": identity, "shards": list(shard_names)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _migrate(out: Location) -> None:
    """Rename the manifests of earlier versions (`plan-*.json`, `study-*.json`) to the
    names dataset readers skip (the caller holds the directory's lease)."""
    for file in out.files(SUFFIX):
        for old, prefix in OLD_PREFIXES.items():
            if file.name.startswith(old):
                target = out.child(prefix + file.name[len(old) :])
                if not target.exists():
                    target.write_bytes(file.read_bytes())
                out.discard(file.path)


def write_manifest(out: Location, identity: Mapping[str, Any], shard_names: Sequence[str]) -> Plan:
    """Record the plan in `out` and that it is being run now: a rerun of the same plan
    keeps its manifest and `created`, and becomes the directory's plan run last."""
    _migrate(out)
    known = plans_in(out)
    pid = plan_id(identity, shard_names)
    before = next((p for p in known if p.plan_id == pid), None)
    plan = Plan(
        pid, dict(identity), tuple(shard_names),
        created=before.created if before else time.time(),
        run=max((p.run for p in known), default=0) + 1,
        last_run=time.time(),
    )
    body = {
        "plan": plan.plan_id, "identity": plan.identity, "shards": list(plan.shards),
        "created": plan.created, "run": plan.run, "last_run": plan.last_run,
    }
    out.child(f"{PREFIX}{plan.plan_id}{SUFFIX}").write_bytes(json.dumps(body, indent=1, sort_keys=True).encode())
    return plan


def write_study(out: Location, plan_ids: Sequence[str]) -> str:
    """Record that `plan_ids` are the (seed, minibatch) runs of one stability study."""
    study = hashlib.sha256(json.dumps(sorted(plan_ids)).encode()).hexdigest()[:16]
    where = out.child(f"{STUDY_PREFIX}{study}{SUFFIX}")
    if not where.exists() and not out.child(f"study-{study}{SUFFIX}").exists():
        where.write_bytes(json.dumps({"study": study, "plans": list(plan_ids)}, indent=1).encode())
    return study


def studies_in(directory: Location) -> list[tuple[str, ...]]:
    """The plan ids of every stability study recorded in `directory`."""
    found = []
    for file in directory.files(SUFFIX):
        if _kind(file.name) != STUDY_PREFIX:
            continue
        try:
            found.append(tuple(str(p) for p in json.loads(file.read_bytes())["plans"]))
        except (ValueError, KeyError, TypeError) as err:
            raise TfnasError(f"{file.url} is not a study manifest ({type(err).__name__}: {err})".splitlines()[0]) from None
    return found


def plans_in(directory: Location) -> list[Plan]:
    """Every plan whose manifest is in `directory`, the one run last at the end
    (manifests of earlier versions, which record no run, by creation)."""
    found: dict[str, Plan] = {}
    for file in directory.files(SUFFIX):
        if _kind(file.name) != PREFIX:
            continue
        try:
            body = json.loads(file.read_bytes())
            last_run = body.get("last_run")
            plan = Plan(
                str(body["plan"]), body["identity"], tuple(body["shards"]), float(body["created"]),
                run=int(body.get("run", 0)), last_run=None if last_run is None else float(last_run),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise TfnasError(f"{file.url} is not a plan manifest ({type(err).__name__}: {err})".splitlines()[0]) from None
        if plan.plan_id not in found or plan.run > found[plan.plan_id].run:  # old and new name of one plan
            found[plan.plan_id] = plan
    return sorted(found.values(), key=lambda p: (p.run, p.created, p.plan_id))


def read_scores(path: str | os.PathLike | Location, *, plan: str | None = None, log: Callable[[str], None] = print) -> pa.Table:
    """The scores table at `path`: a Parquet file, or a directory of shards of which
    only one plan's are read (`plan`, a plan id or a unique prefix of one; default the
    plan run last), saying so in `log` when the directory holds others.

    Raises:
        TfnasError: what `tables.read_table` raises; an unknown `plan`; none of the
            chosen plan's shards present.
    """
    where = locate(path)
    if where.file_type() != pafs.FileType.Directory:
        if plan is not None:
            raise TfnasError(f"--plan {plan!r} applies to a directory of shards; {where.url} is a file")
        return tables.read_table("scores", where)
    plans = plans_in(where)
    if not plans:
        if plan is not None:
            raise TfnasError(f"--plan {plan!r}: {where.url} holds no plan manifest ({PREFIX}*{SUFFIX})")
        return tables.read_table("scores", where)
    if plan is None:
        chosen = plans[-1]
    else:
        matches = [p for p in plans if p.plan_id.startswith(plan)]
        if len(matches) != 1:
            known = ", ".join(p.plan_id for p in plans)
            raise TfnasError(f"--plan {plan!r} {'matches no' if not matches else 'matches several'} plan of {where.url}; its plans: {known}")
        chosen = matches[0]
    group = [chosen]
    if plan is None:  # the plan run last, of a stability study, brings its sibling runs
        for study in studies_in(where):
            if chosen.plan_id in study:
                group = [p for p in plans if p.plan_id in study]
    wanted = [name for p in group for name in p.shards]
    present = {f.name for f in where.files(".parquet")}
    files = [where.child(name) for name in wanted if name in present]
    if not files:
        raise TfnasError(f"{where.url}: none of the {len(chosen.shards)} shards of {chosen.describe()} is there yet")
    others = [p for p in plans if p not in group]
    strays = present - {name for p in plans for name in p.shards}
    if others or strays or len(files) < len(wanted):
        what = chosen.describe() if len(group) == 1 else f"the {len(group)} plans of one stability study"
        notes = [f"{where.url}: reading only {what}"]
        if len(files) < len(wanted):
            notes.append(f"{len(wanted) - len(files)} of its shards are missing (an unfinished run)")
        if others:
            notes.append(f"ignoring {len(others)} other plan(s): " + "; ".join(p.describe() for p in others) + " (choose one with --plan ID)")
        if strays:
            notes.append(f"ignoring {len(strays)} Parquet file(s) of no plan")
        log("note: " + "; ".join(notes))
    return tables.read_tables("scores", files)
