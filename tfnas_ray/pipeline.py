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
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.distributed.scoring import ScoreConfig, ScoreSummary, plan_identity, run_scoring
from tfnas_ray.errors import TfnasError, checking_input
from tfnas_ray.lease import hold
from tfnas_ray.metrics import load_metrics
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


def protocol_options(protocol: str) -> dict[str, str]:
    """The batch options that select `protocol` (none for the default, so that released
    runs keep their shard identity)."""
    from tfnas_ray.metrics import PROTOCOLS, RELEASED

    if protocol not in PROTOCOLS:
        raise TfnasError(f"--protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    return {} if protocol == RELEASED else {"protocol": protocol}


def check_protocol(config: ScoreConfig, spaces) -> None:
    """A non-default protocol applies only to spaces with metrics computed under it."""
    protocol = config.batch_options.get("protocol")
    if protocol is None:
        return
    supported = {space for _, m in load_metrics().items() for space, impl in m.impls.items() if protocol in impl.variants}
    for space in sorted(set(spaces) - supported):
        raise TfnasError(f"--protocol {protocol} applies to {', '.join(sorted(supported))} only; the archs include space {space!r}")


def protocol_report(metrics, space: str, protocol: str) -> str:
    """Which columns differ between the protocols, and how — for the reproduce report."""
    registry = load_metrics()
    differs, same = [], []
    for name in metrics:
        impl = registry.get(name).impls.get(space)
        if impl is None or not impl.variants:
            continue
        variant = impl.variants.get("published")
        if variant is None:
            continue
        (differs if variant.differs else same).append((name, variant.summary))
    if not differs and not same:
        return ""
    if protocol == "published":
        lines = [f"protocol published: {len(differs)} column(s) computed as the authors' published table was, not as their released code:"]
        lines += [f"  {name}: {summary}" for name, summary in differs]
        if same:
            lines.append("still the released computation, which already gives the published values:")
            lines += [f"  {name}: {summary}" for name, summary in same]
    else:
        lines = [
            f"protocol released (the authors' released code): {len(differs)} column(s) differ from their "
            f"published table ({', '.join(n for n, _ in differs)}); --protocol published computes them as published"
        ]
    return "\n".join(lines)


def score_table(
    archs_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: ScoreConfig,
    *,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ScoreSummary:
    """Read an archs table, check it and the config, and score it through Ray into
    `out_dir`.

    Raises:
        InputError: bad input, found before Ray starts or anything is written.
        TfnasError: a problem met while scoring.
    """
    from tfnas_ray.distributed.cluster import connect

    archs = check_score_inputs(archs_path, out_dir, config)
    with hold(out_dir, log=log):  # a second run on this --out stops before starting Ray
        connect(address)
        return run_scoring(archs, out_dir, config, progress=progress, log=log)


def check_score_inputs(archs_path: str | os.PathLike, out_dir: str | os.PathLike, config: ScoreConfig) -> pa.Table:
    """Every check of a scoring run that needs no cluster, in order of cost: the
    output location, the archs table and its specs, the metrics for its spaces, the
    metric batch options. Returns the archs table.

    Raises:
        InputError: the first problem, in one line.
    """
    with checking_input():
        check_output(out_dir)
        archs = tables.read_table("archs", archs_path)
        if archs.num_rows == 0:
            raise TfnasError(f"archs table {str(archs_path)!r} has no rows")
        check_specs(archs, what=str(archs_path))
        spaces = sorted(set(archs.column("space").to_pylist()))
        plan_identity(config, spaces)  # every metric known and defined for every space
        check_protocol(config, spaces)
        check_batch_options(spaces, config.batch_options)
    return archs


def check_output(where: str | os.PathLike) -> Location:
    """The location of an output directory: a known scheme, and not an existing file."""
    import pyarrow.fs as pafs

    out = locate(where)
    if out.file_type() == pafs.FileType.File:
        raise TfnasError(f"--out {out.url!r} is a file; it must be a directory (new or of an earlier run)")
    return out


def check_batch_options(spaces, options) -> None:
    """Build each space's metric batch once with `options`: an unknown corpus, split or
    option fails here, in one line, not in every scorer actor after Ray started."""
    from tfnas_ray.metrics import BATCHES

    load_metrics()
    for space in spaces:
        BATCHES.get(space)(dict(options))


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
    protocol_note: str = ""  # nb-nlp: which columns the protocol computes as published

    def report(self) -> str:
        from tfnas_ray.analysis.correlation import format_correlations

        text = format_correlations(self.correlations)
        if self.protocol_note:
            text += "\n\n" + self.protocol_note
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
    `as_trained` builds nb-bert models as the authors' pretraining did (every layer
    scaled-dot-product attention). `train` > 0 also trains that many of the benchmark's
    architectures briefly with Ray Tune (DIR/train/) and reports τ of the short-run loss
    against the published result, and of every metric against the short-run loss.
    """
    with checking_input():  # every check before a file is written or Ray starts
        bench = get_benchmark(benchmark_name)
        out = check_output(out_dir)
        if limit is not None and limit < 1:
            raise TfnasError(f"--limit must be >= 1, got {limit}")
        if as_trained and bench.space != "nb-bert":
            raise TfnasError(f"--as-trained applies to nb-bert only, not to {benchmark_name!r} ({bench.space})")
        if train < 0:
            raise TfnasError(f"--train must be >= 0, got {train}")
        config = dataclasses.replace(
            config,
            metrics=tuple(config.metrics or bench.default_metrics),
            model_options={**config.model_options, **({"as_trained": True} if as_trained else {})},
        )
        plan_identity(config, [bench.space])
        check_protocol(config, [bench.space])
        check_batch_options([bench.space], config.batch_options)
        archs, truth = bench.load()
    with hold(out, log=log):  # one run per output directory, taken before anything is written
        return _reproduce_into(out, bench, archs, truth, config, limit=limit, address=address, resamples=resamples, train=train, progress=progress, log=log)


def _reproduce_into(out: Location, bench, archs: pa.Table, truth: pa.Table, config: ScoreConfig, *, limit, address, resamples, train, progress, log) -> ReproduceResult:
    """`reproduce` after its checks, holding the lease of `out`."""
    from tfnas_ray.analysis.correlation import CorrelationConfig, correlate  # scipy: only here
    from tfnas_ray.distributed.cluster import connect

    if limit is not None:
        archs = archs.slice(0, limit)
        # The truth rows of exactly those benchmark entries (a cell trained twice has two).
        keep = set(zip(archs.column("arch_id").to_pylist(), archs.column("benchmark_id").to_pylist()))
        pairs = zip(truth.column("arch_id").to_pylist(), truth.column("benchmark_id").to_pylist())
        truth = truth.filter(pa.array([pair in keep for pair in pairs]))
    tables.write_table("archs", archs, out.child("archs.parquet"))
    tables.write_table("truth", truth, out.child("truth.parquet"))
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
    tables.write_table("correlations", correlations, out.child("correlations.parquet"))
    short_runs = _train_short_runs(archs, truth, summary.table, out, train, seed=config.seed, log=log) if train else None
    note = protocol_report(config.metrics, bench.space, config.batch_options.get("protocol", "released"))
    return ReproduceResult(out_dir=out, summary=summary, correlations=correlations, short_runs=short_runs, protocol_note=note)


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
