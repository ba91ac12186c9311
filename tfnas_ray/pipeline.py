"""The product's jobs, end to end: the functions the CLI's commands forward to.

Each takes plain arguments, connects to Ray only where it scores, writes the tables,
and returns what the CLI prints.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

from tfnas_ray import tables
from tfnas_ray.analysis.correlation import CorrelationConfig, correlate, format_correlations
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.distributed.scoring import ScoreConfig, ScoreSummary, run_scoring
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import load_metrics
from tfnas_ray.nb_bert_protocol import NB_BERT, NbBertOptions, degeneracy_flags, with_flags
from tfnas_ray.spaces import content_id, get_space
from tfnas_ray.storage import Location, locate


def sample_archs(space_name: str, n: int, *, seed: int) -> pa.Table:
    """An archs table of `n` architectures drawn from a space's own distribution."""
    space = get_space(space_name)
    rows = []
    for spec in space.sample(n, seed=seed):
        arch_id = space.arch_id(spec) if hasattr(space, "arch_id") else content_id(space.name, spec)
        rows.append({"arch_id": arch_id, "space": space.name, "spec": spec, "source": f"sample:seed={seed}", "benchmark_id": None})
    return tables.from_rows("archs", rows)


def directions() -> dict[str, str]:
    return {name: metric.direction.value for name, metric in load_metrics().items()}


def score_table(
    archs_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: ScoreConfig,
    *,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ScoreSummary:
    """Read an archs table, check its specs, and score it through Ray into `out_dir`."""
    from tfnas_ray.distributed.cluster import connect

    archs = tables.read_table("archs", archs_path)
    if archs.num_rows == 0:
        raise TfnasError(f"archs table {str(archs_path)!r} has no rows")
    check_specs(archs, what=str(archs_path))
    connect(address)
    return run_scoring(archs, out_dir, config, progress=progress, log=log)


def check_specs(archs: pa.Table, *, what: str) -> None:
    """Validate every spec before any work starts: one bad row stops the run up front."""
    for i, (arch_id, space_name, spec) in enumerate(
        zip(archs.column("arch_id").to_pylist(), archs.column("space").to_pylist(), archs.column("spec").to_pylist())
    ):
        space = get_space(space_name)
        try:
            space.canonicalize(spec)
        except TfnasError as err:
            raise TfnasError(f"{what}: row {i} (arch_id {arch_id}): {err}") from None


@dataclass
class ReproduceResult:
    out_dir: Location
    summary: ScoreSummary
    correlations: pa.Table
    short_runs: pa.Table | None = None  # with --train N: τ of short runs vs published, metrics vs short runs
    reading: str | None = None  # nb-bert: the reading scored
    gradient_checks: tuple = ()  # nb-bert: float64 check of the paper's objective (GradientCheck)

    def report(self) -> str:
        text = format_correlations(self.correlations)
        if self.reading is not None:
            text = f"nb-bert reading: {self.reading}\n" + text
        if self.gradient_checks:
            text += "\n\nthe paper's objective R = Σ output, recomputed in float64 on the first architecture:\n"
            text += "\n".join("  " + check.describe() for check in self.gradient_checks)
            flagged = [r for r in self.correlations.to_pylist() if r.get("flag")]
            if flagged:
                columns = sorted({r["metric"] for r in flagged})
                text += f"\nflagged degenerate in correlations.parquet (column `flag`): {', '.join(columns)}"
        if self.short_runs is not None:
            from tfnas_ray.analysis.short_runs import format_short_run_report

            text += "\n\nshort training runs (Ray Tune):\n" + format_short_run_report(self.short_runs)
        return text


# The paper's protocol: every model seeded with 0; metrics: the benchmark's columns.
PAPER_PROTOCOL = ScoreConfig(metrics=(), seed=0, seeding="fixed", shard_size=8)


def reproduce(
    benchmark_name: str,
    out_dir: str | os.PathLike,
    config: ScoreConfig = PAPER_PROTOCOL,
    *,
    limit: int | None = None,
    address: str | None = None,
    resamples: int = 1000,
    as_trained: bool = False,
    nb_bert: NbBertOptions | None = None,
    train: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ReproduceResult:
    """Export a shipped benchmark, score it through Ray, correlate, and write:
    DIR/archs.parquet, DIR/truth.parquet, DIR/scores/ (shards), DIR/correlations.parquet;
    DIR is a local path or a URL (`storage`).

    `config` says how to score; its empty `metrics` means the benchmark's default columns.
    With `PAPER_PROTOCOL` (fixed seeding, seed 0) our values equal the authors' published
    per-architecture values. `limit` keeps the first N archs.
    `nb_bert` says which reading to build and how to batch (default: as-scored, the
    models of the published table; 512 tokens, train mode — the authors' protocol);
    `as_trained` is the older spelling of `NbBertOptions(reading="as-trained")`. On
    nb-bert the paper's gradient columns are checked in float64 and flagged. `train` > 0 also trains that many of the benchmark's
    architectures briefly with Ray Tune (DIR/train/) and reports τ of the short-run loss
    against the published result, and of every metric against the short-run loss.
    """
    from tfnas_ray.distributed.cluster import connect

    bench = get_benchmark(benchmark_name)
    out = locate(out_dir)
    archs, truth = bench.load()
    if limit is not None:
        if limit < 1:
            raise TfnasError(f"--limit must be >= 1, got {limit}")
        archs = archs.slice(0, limit)
        # The truth rows of exactly those benchmark entries (a cell trained twice has two).
        keep = set(zip(archs.column("arch_id").to_pylist(), archs.column("benchmark_id").to_pylist()))
        pairs = zip(truth.column("arch_id").to_pylist(), truth.column("benchmark_id").to_pylist())
        truth = truth.filter(pa.array([pair in keep for pair in pairs]))
    tables.write_table("archs", archs, out.child("archs.parquet"))
    tables.write_table("truth", truth, out.child("truth.parquet"))
    config = dataclasses.replace(config, metrics=tuple(config.metrics or bench.default_metrics))
    if (as_trained or nb_bert is not None) and bench.space != NB_BERT:
        what = "--as-trained" if as_trained else "--reading/--seq-len/--mode"
        raise TfnasError(f"{what} applies to nb-bert only, not to {benchmark_name!r} ({bench.space})")
    nb = None
    if bench.space == NB_BERT:
        nb = nb_bert or NbBertOptions(reading="as-trained" if as_trained else "as-scored")
        if as_trained and nb.reading != "as-trained":
            raise TfnasError(f"--as-trained and --reading {nb.reading} are different readings; pick one")
        config = dataclasses.replace(
            config,
            model_options={**config.model_options, **nb.model_options},
            batch_options={**config.batch_options, **nb.batch_options},
        )
        archs = archs.replace_schema_metadata({**(archs.schema.metadata or {}), b"reading": nb.reading.encode()})
        tables.write_table("archs", archs, out.child("archs.parquet"))
    if train < 0:
        raise TfnasError(f"--train must be >= 0, got {train}")
    connect(address)
    summary = run_scoring(archs, out.child("scores"), config, progress=progress, log=log)
    targets = [bench.primary_target] + [t for t in dict.fromkeys(truth.column("target").to_pylist()) if t != bench.primary_target]
    correlations = correlate(
        summary.table,
        truth,
        config=CorrelationConfig(resamples=resamples, seed=config.seed),
        directions=directions(),
        metrics=list(config.metrics),
        targets=targets,
    )
    checks = ()
    if nb is not None:
        from tfnas_ray.metrics.scoring import arch_seed

        first_id, first_spec = archs.column("arch_id")[0].as_py(), archs.column("spec")[0].as_py()
        checks, flags = degeneracy_flags(
            first_spec, reading=nb.reading, seed=arch_seed(first_id, config.seed, config.seeding),
            batch_options=config.batch_options,
        )
        correlations = with_flags(correlations, flags)
    tables.write_table("correlations", correlations, out.child("correlations.parquet"))
    short_runs = _train_short_runs(archs, truth, summary.table, out, train, seed=config.seed, log=log) if train else None
    return ReproduceResult(
        out_dir=out, summary=summary, correlations=correlations, short_runs=short_runs,
        reading=nb.reading if nb is not None else None, gradient_checks=tuple(checks),
    )


def _train_short_runs(archs: pa.Table, truth: pa.Table, scores: pa.Table, out: Location, n: int, *, seed: int, log) -> pa.Table:
    """Train `n` of the benchmark's architectures (drawn with `seed`) with the default
    short budget, and compare: short-run loss vs published truth, metrics vs short runs."""
    import random

    from tfnas_ray.analysis.short_runs import short_run_report
    from tfnas_ray.distributed.cluster import cluster_gpus
    from tfnas_ray.distributed.tune import TuneOptions, default_train_config, train_architectures

    n = min(n, archs.num_rows)
    subset = archs.take(sorted(random.Random(seed).sample(range(archs.num_rows), n)))
    space = subset.column("space")[0].as_py()
    if space == "nb-bert":
        from tfnas_ray.training.mlm import default_mlm_config

        config = default_mlm_config(gpus=cluster_gpus() > 0)
    else:
        config = default_train_config(gpus=cluster_gpus() > 0)
    log(f"training {n} architectures: {config.describe()}")
    outcome = train_architectures(subset, out.child("train"), train=config, options=TuneOptions(), log=log)
    report = short_run_report(outcome.truth, truth, scores)
    tables.write_table("truth", outcome.truth, out.child("truth_short.parquet"))
    return report
