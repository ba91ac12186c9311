"""The product's jobs, end to end: the functions the CLI's commands forward to.

Each takes plain arguments, connects to Ray only where it scores, writes the tables,
and returns what the CLI prints.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import pyarrow as pa

from tfnas_ray import tables
from tfnas_ray.analysis.nb_bert_checks import degeneracy_flags, with_flags
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.distributed.repeats import Repeats, run_repeated_scoring
from tfnas_ray.distributed.scoring import ScoreConfig, ScoreSummary, plan_identity, run_scoring
from tfnas_ray.errors import InputError, TfnasError, checking_input
from tfnas_ray.lease import hold
from tfnas_ray.metrics import baseline_metrics, directions, load_metrics
from tfnas_ray.spaces import content_id, get_space
from tfnas_ray.spaces.nasbench_bert.protocol import NB_BERT, NbBertOptions
from tfnas_ray.storage import Location, locate

if TYPE_CHECKING:
    from tfnas_ray.analysis.ensemble import EnsembleConfig, EnsembleResult
    from tfnas_ray.analysis.search_eval import SearchEvalConfig


def sample_archs(space_name: str, n: int, *, seed: int, space_file: str | None = None) -> pa.Table:
    """An archs table of `n` architectures drawn from a space's own distribution
    (`hf`: from the family of `space_file`, a space file or a shipped family's name)."""
    from tfnas_ray.spaces.hf import drawing_space

    space = drawing_space(space_name, space_file)
    family = getattr(space, "family", None)  # hf: the source says which family drew it
    source = f"sample:{family}:seed={seed}" if family else f"sample:seed={seed}"
    rows = []
    for spec in space.sample(n, seed=seed):
        arch_id = space.arch_id(spec) if hasattr(space, "arch_id") else content_id(space.name, spec)
        rows.append({"arch_id": arch_id, "space": space.name, "spec": spec, "source": source, "benchmark_id": None})
    return tables.from_rows("archs", rows)


def protocol_options(protocol: str) -> dict[str, str]:
    """The batch options that select `protocol` (none for the default, so that released
    runs keep their shard identity)."""
    from tfnas_ray.metrics import PROTOCOLS, RELEASED

    if protocol not in PROTOCOLS:
        raise InputError(f"--protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
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
    repeats: Repeats = Repeats(),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ScoreSummary:
    """Read an archs table, check it and the config, and score it through Ray into
    `out_dir` (under each seed and minibatch of `repeats`).

    Raises:
        InputError: bad input, found before Ray starts or anything is written.
        TfnasError: a problem met while scoring.
    """
    from tfnas_ray.distributed.cluster import connect

    with checking_input():
        out = check_output(out_dir)  # parsed here, once; passed down as a Location
    archs = check_score_inputs(archs_path, out, config)
    with hold(out, log=log):  # a second run on this --out stops before starting Ray
        connect(address)
        return run_repeated_scoring(archs, out, config, repeats, progress=progress, log=log)


def check_score_inputs(archs_path: str | os.PathLike, out_dir: str | os.PathLike | Location, config: ScoreConfig) -> pa.Table:
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


def check_output(where: str | os.PathLike | Location) -> Location:
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
    reading: str | None = None  # nb-bert: the reading scored
    gradient_checks: tuple = ()  # nb-bert: float64 check of the paper's objective (GradientCheck)

    def report(self) -> str:
        from tfnas_ray.analysis.correlation import format_correlations

        text = format_correlations(self.correlations)
        if self.protocol_note:
            text += "\n\n" + self.protocol_note
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
PAPER_PROTOCOL = ScoreConfig(metrics=(), seed=0, seeding="fixed")


def select_benchmark(archs: pa.Table, truth: pa.Table, limit: int | None) -> tuple[pa.Table, pa.Table]:
    """The first `limit` architectures of a benchmark (all with None) and the truth rows
    of exactly those benchmark entries (a cell trained twice has two)."""
    if limit is None:
        return archs, truth
    archs = archs.slice(0, limit)
    keep = set(zip(archs.column("arch_id").to_pylist(), archs.column("benchmark_id").to_pylist()))
    pairs = zip(truth.column("arch_id").to_pylist(), truth.column("benchmark_id").to_pylist())
    return archs, truth.filter(pa.array([pair in keep for pair in pairs]))


def write_benchmark(out: Location, archs: pa.Table, truth: pa.Table) -> None:
    """DIR/archs.parquet and DIR/truth.parquet, the layout `reproduce` writes."""
    tables.write_table("archs", archs, out.child("archs.parquet"))
    tables.write_table("truth", truth, out.child("truth.parquet"))


def export_benchmark(benchmark_name: str, out: Location, *, limit: int | None = None):
    """Write a shipped benchmark's DIR/archs.parquet and DIR/truth.parquet (the first
    `limit` architectures); return (benchmark, archs, truth)."""
    if limit is not None and limit < 1:
        raise TfnasError(f"--limit must be >= 1, got {limit}")
    bench = get_benchmark(benchmark_name)
    archs, truth = select_benchmark(*bench.load(), limit)
    write_benchmark(out, archs, truth)
    return bench, archs, truth


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
    repeats: Repeats = Repeats(),
    progress: bool = True,
    log: Callable[[str], None] = print,
    reference: str | None = None,
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
    `repeats` (`--init-seeds S --batches B`) scores under several seeds and minibatches;
    the correlations then say how stable each metric's ranking is. `reference` (a metric
    scored, a baseline of the space or `ensemble:a+b` of them) takes the best baseline's
    place in the correlations' paired comparison.
    """
    with checking_input():  # every check before a file is written or Ray starts
        bench = get_benchmark(benchmark_name)
        out = check_output(out_dir)
        if limit is not None and limit < 1:
            raise TfnasError(f"--limit must be >= 1, got {limit}")
        if train < 0:
            raise TfnasError(f"--train must be >= 0, got {train}")
        if (as_trained or nb_bert is not None) and bench.space != NB_BERT:
            what = "--as-trained" if as_trained else "--reading/--seq-len/--mode"
            raise TfnasError(f"{what} applies to nb-bert only, not to {benchmark_name!r} ({bench.space})")
        config = dataclasses.replace(config, metrics=tuple(config.metrics or bench.default_metrics))
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
        plan_identity(config, [bench.space])
        check_protocol(config, [bench.space])
        check_batch_options([bench.space], config.batch_options)
        if reference is not None:
            from tfnas_ray.analysis.correlation import check_reference
            from tfnas_ray.metrics.baselines import baseline_names

            check_reference(reference, [*config.metrics, *baseline_names(bench.space)])
        archs, truth = bench.load()
    with hold(out, log=log):  # one run per output directory, taken before anything is written
        return _reproduce_into(
            out, bench, archs, truth, config, nb,
            limit=limit, address=address, resamples=resamples, train=train, repeats=repeats, progress=progress, log=log,
            reference=reference,
        )


def _reproduce_into(
    out: Location, bench, archs: pa.Table, truth: pa.Table, config: ScoreConfig, nb: NbBertOptions | None,
    *, limit, address, resamples, train, repeats, progress, log, reference=None,
) -> ReproduceResult:
    """`reproduce` after its checks, holding the lease of `out`."""
    from tfnas_ray.analysis.correlation import CorrelationConfig, correlate  # scipy: only here
    from tfnas_ray.distributed.cluster import connect
    from tfnas_ray.metrics.baselines import with_baselines

    archs, truth = select_benchmark(archs, truth, limit)
    if nb is not None:
        archs = archs.replace_schema_metadata({**(archs.schema.metadata or {}), b"reading": nb.reading.encode()})
    write_benchmark(out, archs, truth)
    connect(address)
    summary = run_repeated_scoring(archs, out.child("scores"), config, repeats, progress=progress, log=log)
    targets = [bench.primary_target] + [t for t in dict.fromkeys(truth.column("target").to_pylist()) if t != bench.primary_target]
    # The trivial baselines beside every metric: free, computed from the specs, not scored.
    scores, added = with_baselines(summary.table, archs, batch_options=config.batch_options, model_options=config.model_options)
    correlations = correlate(
        scores,
        truth,
        config=CorrelationConfig(resamples=resamples, seed=config.seed),
        directions=directions(),
        metrics=list(config.metrics) + added,
        targets=targets,
        baselines=baseline_metrics(),
        reference=reference,
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
    note = protocol_report(config.metrics, bench.space, config.batch_options.get("protocol", "released"))
    return ReproduceResult(
        out_dir=out, summary=summary, correlations=correlations, short_runs=short_runs, protocol_note=note,
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


# ---- search evaluation and ensembles (issue 11) --------------------------------------


@dataclass
class EvaluationInputs:
    """Scores and truth of a benchmark run, for `evaluate-search` and `ensemble`."""

    out: Location  # the run's directory (archs.parquet, truth.parquet, scores/)
    scores: pa.Table
    truth: pa.Table
    primary_target: str
    metrics: list[str]  # the metrics to evaluate, in order
    summary: ScoreSummary | None = None  # when this call scored


def evaluation_inputs(
    source: str,
    config: ScoreConfig = PAPER_PROTOCOL,
    *,
    out_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> EvaluationInputs:
    """The scores and truth that `source` names.

    `source` is a shipped benchmark (exported and scored here into `out_dir`, default
    runs/BENCHMARK, in the layout of `reproduce`, resuming finished shards: rerun to
    continue; `config.metrics` empty: the benchmark's columns) or the directory of an
    earlier `reproduce` (its scores reused, nothing scored).

    Raises:
        TfnasError: `source` is neither a shipped benchmark nor a directory holding
            truth.parquet and scores/.
    """
    from tfnas_ray.analysis.baselines import run_baselines
    from tfnas_ray.benchmarks import load_benchmarks
    from tfnas_ray.distributed.cluster import connect
    from tfnas_ray.metrics.baselines import with_baselines

    benchmarks = load_benchmarks()
    if source in benchmarks:
        with checking_input():
            out = check_output(out_dir or os.path.join("runs", source))
            bench = get_benchmark(source)
            config = dataclasses.replace(config, metrics=tuple(config.metrics or bench.default_metrics))
            plan_identity(config, [bench.space])
            check_batch_options([bench.space], config.batch_options)
        with hold(out, log=log):  # one run per output directory
            bench, archs, truth = export_benchmark(source, out, limit=limit)
            connect(address)
            summary = run_scoring(archs, out.child("scores"), config, progress=progress, log=log)
        scores, added = with_baselines(summary.table, archs, batch_options=config.batch_options, model_options=config.model_options)
        return EvaluationInputs(out, scores, truth, bench.primary_target, list(config.metrics) + added, summary)
    where = locate(source)
    if not where.child("truth.parquet").exists() or not where.child("scores").exists():
        raise InputError(
            f"{source!r} is neither a shipped benchmark ({', '.join(benchmarks.names())}) nor a directory "
            "holding truth.parquet and scores/ (the output of `tfnas reproduce`)"
        )
    from tfnas_ray.plans import read_scores

    scores = read_scores(where.child("scores"), log=log)  # one plan (or stability study), never a mix
    truth = tables.read_table("truth", where.child("truth.parquet"))
    primary = truth.column("target")[0].as_py() if truth.num_rows else ""
    archs_path = where.child("archs.parquet")
    if archs_path.exists():
        sources = set(tables.read_table("archs", archs_path).column("source").to_pylist())
        named = [s for s in sources if s in benchmarks]
        if len(named) == 1:
            primary = benchmarks.get(named[0]).primary_target
    scores, _ = run_baselines(where.child("scores"), scores)  # baselines are candidates and comparisons too
    metrics = list(dict.fromkeys(scores.column("metric").to_pylist()))
    return EvaluationInputs(where, scores, truth, primary, metrics)


def _method_members(methods: list[str] | None) -> tuple[str, ...]:
    """The metrics that `methods` (metric names or ensembles) read, in order."""
    from tfnas_ray.analysis.ranking import parse_method

    return tuple(dict.fromkeys(m for name in methods or () for m in parse_method(name).members))


@dataclass
class SearchEvalResult:
    table: pa.Table
    path: Location
    inputs: EvaluationInputs

    def report(self) -> str:
        from tfnas_ray.analysis.search_eval import format_search_eval

        return format_search_eval(self.table)


def evaluate_search_run(
    source: str,
    methods: list[str] | None = None,
    *,
    target: str | None = None,
    search: SearchEvalConfig | None = None,
    config: ScoreConfig = PAPER_PROTOCOL,
    out: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    reference: str | None = None,
) -> SearchEvalResult:
    """`tfnas evaluate-search`: each method (metric or `ensemble:a+b`; default every
    metric of the run) as a search method over Monte-Carlo pools, against random and the
    oracle, and against `reference` (default the best baseline; evaluated too if not
    among the methods); writes the search_eval table to `out` (default DIR/search_eval.parquet)."""
    from tfnas_ray.analysis.aligned import align
    from tfnas_ray.analysis.search_eval import SearchEvalConfig, evaluate_search

    if methods and reference and reference not in methods:
        methods = [*methods, reference]
    config = dataclasses.replace(config, metrics=_method_members(methods) or config.metrics)
    inputs = evaluation_inputs(source, config, out_dir=out_dir, limit=limit, address=address, progress=progress, log=log)
    methods = methods or inputs.metrics
    if reference and reference not in methods:
        methods = [*methods, reference]
    data = align(inputs.scores, inputs.truth, target or inputs.primary_target, metrics=list(_method_members(methods)))
    table = evaluate_search(data, methods, directions(), search or SearchEvalConfig(), reference=reference)
    path = locate(out) if out is not None else inputs.out.child("search_eval.parquet")
    tables.write_table("search_eval", table, path)
    return SearchEvalResult(table, path, inputs)


def ensemble_run(
    source: str,
    *,
    metrics: list[str] | None = None,
    fixed: list[str] | None = None,
    target: str | None = None,
    cv: EnsembleConfig | None = None,
    config: ScoreConfig = PAPER_PROTOCOL,
    out_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> EnsembleResult:
    """`tfnas ensemble`: cross-validated choice of the best rank ensemble and the best
    single metric among `metrics` (default every metric of the run), plus each `fixed`
    method on the same held-out folds. Returns an `analysis.ensemble.EnsembleResult`."""
    from tfnas_ray.analysis.aligned import align
    from tfnas_ray.analysis.ensemble import EnsembleConfig, check_choice_metrics, cross_validate, evaluate_fixed

    check_choice_metrics(metrics)  # before any scoring
    config = dataclasses.replace(config, metrics=_method_members((metrics or []) + (fixed or [])) or config.metrics)
    inputs = evaluation_inputs(source, config, out_dir=out_dir, limit=limit, address=address, progress=progress, log=log)
    chosen_from = metrics or inputs.metrics
    data = align(inputs.scores, inputs.truth, target or inputs.primary_target, metrics=list(_method_members(chosen_from + (fixed or []))))
    columns = {m: data.columns[m] for m in chosen_from}
    pool = dataclasses.replace(data, columns=columns)
    result = cross_validate(pool, directions(), cv or EnsembleConfig())
    # Fixed methods involve no choice; evaluated on the very same held-out folds.
    result.outcomes += evaluate_fixed(data, directions(), result.folds, fixed or [])
    return result
