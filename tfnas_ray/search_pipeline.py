"""`tfnas search`, end to end: draw candidates, score them through Ray, keep the best.

The pure parts (constraints, ranking, the Pareto front) are `analysis.search`; this
module draws or reads the candidates, counts their parameters, scores them with the
engine of `distributed.scoring` (resumable by shard), optionally trains the best with
Ray Tune, and writes

    DIR/candidates.parquet   archs table of the candidates (+ a `params` column)
    DIR/scores/              score shards (rerunning the same command resumes here)
    DIR/chosen.parquet       per method the kept architectures, best first
    DIR/pareto.parquet       per method the Pareto front of merit vs parameter count
    DIR/train/               with train > 0: the Tune experiment and its truth table
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tfnas_ray import tables
from tfnas_ray.analysis.ranking import parse_method
from tfnas_ray.analysis.search import (
    CHOSEN,
    PARETO,
    Constraints,
    bert_shape,
    chosen_rows,
    metric_columns,
    pareto_rows,
    rank_candidates,
)
from tfnas_ray.distributed.scoring import ScoreConfig, ScoreSummary, plan_identity, run_scoring
from tfnas_ray.errors import TfnasError, checking_input
from tfnas_ray.lease import hold
from tfnas_ray.metrics import directions
from tfnas_ray.metrics.scoring import validate_metrics
from tfnas_ray.pipeline import check_batch_options, check_output, check_specs
from tfnas_ray.spaces import content_id, get_space
from tfnas_ray.storage import Location

# Rejection sampling under constraints gives up after this many draws per candidate
# asked for: limits that admit fewer than 1 in 50 draws need a narrower generator.
MAX_DRAWS_PER_CANDIDATE = 50


@dataclass(frozen=True)
class SearchConfig:
    """What to search.

    Attributes:
        space: the search space (nb-nlp, nb-bert, hf).
        methods: metric names or rank ensembles (`ensemble:a+b`); each keeps its own best.
        keep: architectures kept per method.
        candidates: how many to draw (or, with `archs`, the first N admitted; None: all).
        seed: the generator's seed (the scoring seed is the ScoreConfig's).
        archs: an archs table to take the candidates from instead of drawing.
        constraints: limits on parameter count (and nb-bert shape).
        train: train the best this many of each method's kept with Ray Tune (0: none).
        reading: nb-bert: the reading whose parameter count the constraints and the
            Pareto front use (None for nb-nlp; the CLI's default "described").
    """

    space: str
    methods: tuple[str, ...]
    keep: int
    candidates: int | None = None
    seed: int = 0
    archs: str | None = None
    constraints: Constraints = field(default_factory=Constraints)
    train: int = 0
    reading: str | None = None
    space_file: str | None = None  # hf: the family to draw from (a .toml file or a shipped name)
    max_latency_ms: float | None = None  # keep only candidates measured this fast (latency_ms)
    max_memory_mb: float | None = None  # keep only candidates whose training step peaks below (peak_memory_mb)

    def __post_init__(self) -> None:
        for option, value in (("--max-latency-ms", self.max_latency_ms), ("--max-memory-mb", self.max_memory_mb)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise TfnasError(f"{option} must be a positive number, got {value}")
        if self.space_file is not None and self.space != "hf":
            raise TfnasError(f"--space {self.space_file!r} applies to space hf only, not to {self.space!r}")
        if self.space == "hf" and self.space_file is None and self.archs is None:
            raise TfnasError("search over space hf draws from a family: give --space FILE (or --archs)")
        if not self.methods:
            raise TfnasError("search needs at least one --metric (a metric name or ensemble:a+b)")
        if self.keep < 1:
            raise TfnasError(f"--keep must be >= 1, got {self.keep}")
        if self.candidates is None and self.archs is None:
            raise TfnasError("search needs --candidates N (how many to draw) or --archs FILE")
        if self.candidates is not None and self.candidates < 1:
            raise TfnasError(f"--candidates must be >= 1, got {self.candidates}")
        if not 0 <= self.train <= self.keep:
            raise TfnasError(f"--train must be between 0 and --keep ({self.keep}), got {self.train}")
        self.constraints.check_space(self.space)

    def identity(self) -> dict:
        """What decides the candidates (a rerun must match it to resume)."""
        return {
            "space": self.space,
            "candidates": self.candidates,
            "seed": self.seed,
            "archs": self.archs,
            "constraints": dataclasses.asdict(self.constraints),
            **({"reading": self.reading} if self.reading else {}),
            **({"space_file": self.space_file} if self.space_file else {}),
        }


@dataclass
class SearchResult:
    out_dir: Location
    summary: ScoreSummary
    candidates: pa.Table
    chosen: pa.Table
    pareto: pa.Table
    trained_target: str | None = None
    hardware_note: str = ""  # with --max-latency-ms / --max-memory-mb: how many the limits admitted
    pareto_latency: pa.Table | None = None  # per method the front of merit vs measured latency

    def lines(self) -> list[str]:
        """Per method its kept architectures: rank, id, score, parameters (and trained loss)."""
        out = [f"candidates: {self.candidates.num_rows}"]
        if self.hardware_note:
            out.append(self.hardware_note)
        rows = self.chosen.to_pylist()
        for method in dict.fromkeys(r["method"] for r in rows):
            front = sum(1 for r in self.pareto.to_pylist() if r["method"] == method)
            title = f"{method}: kept {sum(1 for r in rows if r['method'] == method)}; Pareto front (merit vs params) {front}"
            if self.pareto_latency is not None:
                title += f", (merit vs latency) {sum(1 for r in self.pareto_latency.to_pylist() if r['method'] == method)}"
            out += ["", title]
            measured = [m for m in ("latency_ms", "peak_memory_mb") if m in self.chosen.column_names]
            header = f"  {'rank':>4}  {'arch_id':<16}  {'score':>12}  {'params':>11}" + "".join(f"  {m:>14}" for m in measured)
            if self.trained_target:
                header += f"  {self.trained_target:>18}"
            out.append(header)
            for r in rows:
                if r["method"] != method:
                    continue
                score = f"{r['score']:12.5g}" if r["score"] is not None else f"{'failed':>12}"
                line = f"  {r['rank']:>4}  {r['arch_id']:<16}  {score}  {r['params']:>11,}"
                line += "".join(f"  {r[m]:>14.4g}" if r[m] is not None else f"  {'-':>14}" for m in measured)
                if self.trained_target:
                    loss = r.get("trained_loss")
                    line += f"  {loss:>18.4f}" if loss is not None else f"  {'-':>18}"
                out.append(line)
        return out


def parameter_count(space_name: str, spec: str, *, reading: str | None = None) -> int:
    """The parameter count of an architecture, as the `params` metric reports it,
    counted from the spec (no model is built); nb-bert under `reading`."""
    space = get_space(space_name)
    options = {"reading": reading} if reading else {}
    return int(space.count_parameters(spec, **options))


def _admitted(space: str, spec: str, constraints: Constraints, params: int) -> bool:
    layers = hidden = None
    if constraints.shape_limits:
        layers, hidden = bert_shape(spec)
    return constraints.admits(params=params, layers=layers, hidden=hidden)


def draw_candidates(config: SearchConfig, *, log: Callable[[str], None] = print) -> pa.Table:
    """The candidates: distinct architectures satisfying the constraints, reproducibly.

    Drawn: the space's generator with `seed`, first come first kept, drawing more (the
    generator's sequence is prefix-stable, so the result depends on nothing else) until
    `candidates` are admitted. From `archs`: its rows in order, admitted ones, the first
    `candidates` of them.

    Raises:
        TfnasError: the constraints admit too few (names the counts and the limits).
    """
    from tfnas_ray.spaces.hf import drawing_space

    space = drawing_space(config.space, config.space_file) if config.archs is None else get_space(config.space)
    counts: dict[str, int] = {}
    rows: list[dict] = []

    def consider(arch_id: str, spec: str, source: str, benchmark_id: str | None) -> None:
        if arch_id in counts or (config.candidates is not None and len(rows) >= config.candidates):
            return
        counts[arch_id] = params = parameter_count(config.space, spec, reading=config.reading)
        if _admitted(config.space, spec, config.constraints, params):
            rows.append({"arch_id": arch_id, "space": config.space, "spec": spec, "source": source, "benchmark_id": benchmark_id, "params": params})

    if config.archs is not None:
        archs = tables.read_table("archs", config.archs)
        check_specs(archs, what=config.archs)
        other = sorted(set(archs.column("space").to_pylist()) - {config.space})
        if other:
            raise TfnasError(f"--archs {config.archs!r} holds {', '.join(other)} architectures; the search is over {config.space}")
        for r in archs.to_pylist():
            consider(r["arch_id"], space.canonicalize(r["spec"]), r["source"], r["benchmark_id"])
        drawn = archs.num_rows
    else:
        drawn = 0
        batch = config.candidates
        limit = MAX_DRAWS_PER_CANDIDATE * config.candidates
        while len(rows) < config.candidates and drawn < limit:
            # space.sample(n, seed)[:m] == space.sample(m, seed): only the new tail is new.
            specs = space.sample(min(drawn + batch, limit), seed=config.seed)[drawn:]
            for spec in specs:
                arch_id = space.arch_id(spec) if hasattr(space, "arch_id") else content_id(space.name, spec)
                consider(arch_id, spec, f"search:seed={config.seed}", None)
            drawn += len(specs)
            batch *= 2
    wanted = config.candidates if config.candidates is not None else 1
    if len(rows) < wanted or not rows:
        raise TfnasError(
            f"only {len(rows)} of {drawn} {'listed' if config.archs else 'drawn'} architectures "
            f"({len(counts)} distinct) satisfy the constraints ({config.constraints.describe()}); "
            f"{'loosen them' if config.archs is None else 'loosen them or lower --candidates'}"
        )
    if config.constraints.describe() != "none":
        log(f"constraints ({config.constraints.describe()}): {len(rows)} admitted of {len(counts)} distinct architectures")
    table = tables.conform("archs", pa.Table.from_pylist(rows), what="candidates")
    return table.replace_schema_metadata({b"tfnas.search": json.dumps(config.identity(), sort_keys=True).encode()})


def _check_resume(path: Location, candidates: pa.Table) -> None:
    """A rerun into the same directory must search the same candidates."""
    if not path.exists():
        return
    previous = tables.read_table("archs", path)
    if previous.column("arch_id").to_pylist() != candidates.column("arch_id").to_pylist():
        raise TfnasError(
            f"{path.url} holds {previous.num_rows} other candidates (another space, --seed, --candidates, "
            f"--archs or constraints); rerun with the same options to resume, or use a new --out"
        )


def _write(table: pa.Table, where: Location) -> None:
    where.write_atomic(lambda stream: pq.write_table(table, stream, compression="zstd"))


def search(
    config: SearchConfig,
    out_dir: str | os.PathLike,
    score: ScoreConfig,
    *,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> SearchResult:
    """Draw, score, rank, (train), and write the search's tables into `out_dir`.

    `score.metrics` is ignored: the metrics scored are the members of `config.methods`.
    Rerunning the same call resumes: the candidates are drawn again and must equal those
    in DIR/candidates.parquet, finished score shards are kept.

    Raises:
        TfnasError: an unknown metric or space, constraints that admit too few, a
            directory holding another search (an `InputError`: found before any work).
    """
    with checking_input():  # every check before Ray starts or a file is written
        out = check_output(out_dir)
        methods = [parse_method(name) for name in config.methods]
        metrics = validate_metrics(config.space, [m for method in methods for m in method.members] + hardware_metrics(config))
        score = dataclasses.replace(score, metrics=tuple(metrics))
        plan_identity(score, [config.space])
        check_batch_options([config.space], score.batch_options)
        candidates = draw_candidates(config, log=log)
        _check_resume(out.child("candidates.parquet"), candidates)
    with hold(out, log=log):  # one search per output directory
        return _search_into(out, config, candidates, methods, metrics, score, address=address, progress=progress, log=log)


def _search_into(out: Location, config: SearchConfig, candidates: pa.Table, methods, metrics, score: ScoreConfig, *, address, progress, log) -> SearchResult:
    """`search` after its checks, holding the lease of `out`."""
    from tfnas_ray.distributed.cluster import connect

    out.make_dirs()
    tables.write_table("archs", candidates, out.child("candidates.parquet"))
    connect(address)
    summary = run_scoring(candidates, out.child("scores"), score, progress=progress, log=log)
    arch_ids = candidates.column("arch_id").to_pylist()
    columns = metric_columns(summary.table, arch_ids, metrics)
    params = np.asarray(candidates.column("params").to_pylist(), dtype=np.int64)
    hardware = hardware_metrics(config)
    note = ""
    if hardware:
        columns, note = _within_hardware_limits(columns, config, methods)
    ranked = [rank_candidates(m, columns, directions(), params, config.keep) for m in methods]
    chosen = pa.Table.from_pylist([row for r in ranked for row in chosen_rows(r, candidates, params)], schema=CHOSEN)
    pareto = pa.Table.from_pylist([row for r in ranked for row in pareto_rows(r, candidates, params)], schema=PARETO)
    pareto_latency = None
    if hardware:
        index = {a: i for i, a in enumerate(arch_ids)}
        for metric in hardware:  # the measured cost beside each kept architecture
            values = [_finite(columns[metric][index[a]]) for a in chosen.column("arch_id").to_pylist()]
            chosen = chosen.append_column(metric, pa.array(values, pa.float64()))
        pareto_latency = latency_front(ranked, arch_ids, columns["latency_ms"], params)
        _write(pareto_latency, out.child("pareto_latency.parquet"))
    target = None
    if config.train:
        chosen, target = _train_best(chosen, candidates, out, config.train, seed=score.seed, log=log)
    _write(pareto, out.child("pareto.parquet"))
    _write(chosen, out.child("chosen.parquet"))
    return SearchResult(
        out_dir=out, summary=summary, candidates=candidates, chosen=chosen, pareto=pareto, trained_target=target,
        hardware_note=note, pareto_latency=pareto_latency,
    )


# ---- hardware limits (measured on the scorers' devices) -------------------------------

PARETO_LATENCY = pa.schema(
    [
        pa.field("method", pa.string(), nullable=False),
        pa.field("arch_id", pa.string(), nullable=False),
        pa.field("merit", pa.float64()),
        pa.field("score", pa.float64()),
        pa.field("latency_ms", pa.float64()),
        pa.field("params", pa.int64()),
    ]
)


def hardware_metrics(config: SearchConfig) -> list[str]:
    """The measured metrics a search scores besides its methods': latency whenever a
    hardware limit is given (the Pareto front against latency needs it), memory with
    --max-memory-mb."""
    if config.max_latency_ms is None and config.max_memory_mb is None:
        return []
    return ["latency_ms"] + (["peak_memory_mb"] if config.max_memory_mb is not None else [])


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _within_hardware_limits(columns: dict[str, np.ndarray], config: SearchConfig, methods) -> tuple[dict[str, np.ndarray], str]:
    """The methods' columns with NaN where a candidate breaks a hardware limit (or its
    measurement failed): such a candidate is never kept nor on a front. Returns the
    columns and a line saying how many the limits admitted."""
    n = len(next(iter(columns.values())))
    admitted = np.ones(n, dtype=bool)
    limits = []
    for metric, limit, unit in (("latency_ms", config.max_latency_ms, "ms"), ("peak_memory_mb", config.max_memory_mb, "MiB")):
        if limit is not None:
            values = columns[metric]
            admitted &= np.isfinite(values) & (values <= limit)
            limits.append(f"{metric} ≤ {limit:g} {unit}")
    members = {m for method in methods for m in method.members}
    masked = {m: (np.where(admitted, v, math.nan) if m in members else v) for m, v in columns.items()}
    return masked, f"hardware limits ({', '.join(limits)}, measured on the scorers): {int(admitted.sum())} of {n} candidates admitted"


def latency_front(ranked, arch_ids: Sequence[str], latency: np.ndarray, params: np.ndarray) -> pa.Table:
    """Per method the Pareto front of merit (higher better) against measured latency
    (lower better), fastest first (`analysis.search.pareto_front` on latency)."""
    from tfnas_ray.analysis.search import pareto_front

    rows = []
    for r in ranked:
        for i in pareto_front(r.merit, latency).tolist():
            rows.append({
                "method": r.method, "arch_id": arch_ids[i], "merit": _finite(r.merit[i]), "score": _finite(r.score[i]),
                "latency_ms": float(latency[i]), "params": int(params[i]),
            })
    return pa.Table.from_pylist(rows, schema=PARETO_LATENCY)


def _train_best(chosen: pa.Table, candidates: pa.Table, out: Location, n: int, *, seed: int, log) -> tuple[pa.Table, str]:
    """Train the best `n` of every method's kept architectures (each once) with the
    default short budget; add `trained_target` and `trained_loss` to `chosen`."""
    from tfnas_ray.distributed.cluster import cluster_gpus
    from tfnas_ray.distributed.tune import TuneOptions, default_train_config, train_architectures

    best = list(dict.fromkeys(r["arch_id"] for r in chosen.to_pylist() if r["rank"] <= n))
    ids = candidates.column("arch_id").to_pylist()
    subset = candidates.take([ids.index(a) for a in best]).select(tables.ARCHS.names)
    space = subset.column("space")[0].as_py()
    if space == "hf":
        from tfnas_ray.training.hf import default_hf_config, task_of

        train = default_hf_config(task=task_of(subset.column("spec").to_pylist()), gpus=cluster_gpus() > 0, seed=seed)
    elif space == "nb-bert":
        from tfnas_ray.training.mlm import default_mlm_config

        train = default_mlm_config(gpus=cluster_gpus() > 0)
    else:
        train = default_train_config(gpus=cluster_gpus() > 0, seed=seed)
    outcome = train_architectures(subset, out.child("train"), train=train, options=TuneOptions(), log=log)
    truth = [r for r in outcome.truth.to_pylist() if r["target"].startswith("val_")]
    target = truth[0]["target"]
    loss = {r["arch_id"]: r["value"] for r in truth}
    chosen = chosen.append_column("trained_target", pa.array([target if a in loss else None for a in chosen.column("arch_id").to_pylist()], pa.string()))
    chosen = chosen.append_column("trained_loss", pa.array([loss.get(a) for a in chosen.column("arch_id").to_pylist()], pa.float64()))
    return chosen, target


def parse_methods(metric: Sequence[str] | None) -> tuple[str, ...]:
    """`--metric a --metric b,c` → ("a", "b", "c"); an ensemble's `+` stays inside it."""
    return tuple(m.strip() for item in metric or () for m in item.split(",") if m.strip())
