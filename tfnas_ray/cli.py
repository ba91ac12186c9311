"""The `tfnas` command line: parse, call one library function, print.

Errors become one line on stderr: malformed input, found before any work starts
(`InputError`, and click's own usage errors), exits 2; a domain error met while
working (`TfnasError`) exits 1.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from tfnas_ray.errors import InputError, TfnasError, checking_input


def exit_code(err: TfnasError) -> int:
    """2 for input rejected up front (a usage error), 1 for a domain error at work."""
    return 2 if isinstance(err, InputError) else 1


class _OneLineErrors(TyperGroup):
    """Every command's error becomes one line `error: …` on stderr: exit code 2 for
    malformed input (ours or click's), 1 for a domain error met while working."""

    def invoke(self, ctx):
        # typer carries its own copy of click: its usage errors are these classes.
        from typer._click.exceptions import NoArgsIsHelpError, UsageError

        try:
            return super().invoke(ctx)
        except TfnasError as err:
            typer.echo(f"error: {err}", err=True)
            ctx.exit(exit_code(err))
        except UsageError as err:
            if isinstance(err, NoArgsIsHelpError):  # `tfnas score` alone: its help
                raise
            where = f"{err.ctx.command_path}: " if err.ctx is not None else ""
            typer.echo(f"error: {where}{' '.join(err.format_message().split())}", err=True)
            ctx.exit(2)


app = typer.Typer(
    cls=_OneLineErrors,
    name="tfnas",
    help="Training-free neural architecture search for RNNs and transformers, on Ray.\n\n"
    "Exit codes: 0 success; 2 input rejected before any work; 1 a problem met while working "
    "(rerun to resume an interrupted run); 130 Ctrl-C outside a run; 143 SIGTERM (as Kubernetes "
    "sends): finished shards are kept, the resume line printed, the output's lease released.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def get_primary_target(benchmark: str) -> str:
    from tfnas_ray.benchmarks import get_benchmark

    return get_benchmark(benchmark).primary_target


def fail(message: str) -> None:
    """Print one line to stderr and exit 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


# ---- commands ------------------------------------------------------------------------


def _metric_names(metric: list[str] | None) -> list[str] | None:
    # `--metric a --metric b` and `--metric a,b` both work.
    if not metric:
        return None
    return [m.strip() for item in metric for m in item.split(",") if m.strip()]


def _resume_hint() -> str:
    return "resume with: " + " ".join(["tfnas"] + sys.argv[1:])


# Options that `score` and `reproduce` share: how the scorer pool is laid out on Ray.
Workers = Annotated[Optional[int], typer.Option(help="at most this many scorer actors")]
ShardSize = Annotated[Optional[int], typer.Option(help="architectures per shard, the unit of resume (default: ⌈archs / 32⌉, 1 to 8)")]
Device = Annotated[str, typer.Option(help="auto | cpu | gpu")]
ActorsPerGpu = Annotated[float, typer.Option(help="scorer actors sharing one GPU, a whole number N (each takes 1/N of it)")]
WaitForGpus = Annotated[
    float,
    typer.Option(
        help="with --device gpu on an autoscaling cluster: ask for --workers GPU scorers even if "
        "the GPUs do not exist yet, and wait up to this many seconds for the first"
    ),
]
MemoryPerWorker = Annotated[
    float,
    typer.Option(
        help="GiB of memory each scorer reserves, so a node runs only as many as its memory holds "
        "(nb-bert at 512 tokens: up to 13.4); 0: no reservation"
    ),
]
Address = Annotated[Optional[str], typer.Option(help="Ray cluster address; default: start a local one")]
Progress = Annotated[
    bool,
    typer.Option(help="show progress on stderr (a bar on a terminal; in logs a line every 30 s, a heartbeat at least every 60 s: TFNAS_HEARTBEAT_S)"),
]
RetryFailed = Annotated[bool, typer.Option(help="rescore the architectures that an earlier run recorded as failed")]
Protocol = Annotated[
    str,
    typer.Option(
        help="nb-nlp paper columns: released (as the authors' released code computes them) | "
        "published (as the computation behind their published table, where it differs)"
    ),
]
InitSeeds = Annotated[int, typer.Option(help="score under this many initialisation seeds (run seeds SEED … SEED+S−1)")]
Batches = Annotated[int, typer.Option(help="score on this many metric minibatches (minibatch b: the b-th consecutive block of the corpus)")]


# nb-bert options, shared by every command that builds nb-bert models (score, reproduce,
# train; search reuses them): which reading of a config, and how the metric batch is made.
class ReadingChoice(str, Enum):
    described = "described"
    as_scored = "as-scored"
    as_trained = "as-trained"


class ReadingOrAll(str, Enum):
    described = "described"
    as_scored = "as-scored"
    as_trained = "as-trained"
    all = "all"


class ModeChoice(str, Enum):
    train = "train"
    eval = "eval"


_READING_HELP = (
    "nb-bert: the model a config stands for — described (as written), as-scored (what the "
    "authors' metric script built: hidden 256, FFN 1024; the published table), as-trained "
    "(what their pretraining built: all SDP attention)"
)
Reading = Annotated[Optional[ReadingChoice], typer.Option(help=_READING_HELP + " [default: described]")]
SeqLen = Annotated[Optional[int], typer.Option(help="nb-bert: tokens per metric-batch sequence, documents cut or padded [default: 512, the authors']")]
Mode = Annotated[Optional[ModeChoice], typer.Option(help="nb-bert: train (the authors': dropout on, padding mask ignored) or eval [default: train]")]
MicroBatch = Annotated[Optional[int], typer.Option(help="nb-bert: rows per forward of the gradient passes, same values to 1e-6, less memory [default: the whole batch]")]


def _nb_bert_options(reading, seq_len, mode, *, default_reading: str = "described", micro_batch=None):
    """(NbBertOptions, names of the options given) from the shared nb-bert options."""
    from tfnas_ray.spaces.nasbench_bert.protocol import NbBertOptions

    given = [
        n for n, v in (("--reading", reading), ("--seq-len", seq_len), ("--mode", mode), ("--micro-batch", micro_batch))
        if v is not None
    ]
    options = NbBertOptions(
        reading=reading.value if reading is not None else default_reading,
        seq_len=seq_len,
        mode=mode.value if mode is not None else None,
        micro_batch=micro_batch,
    )
    return options, given


def _score_config(metric, seed, seeding, shard_size, workers, device, actors_per_gpu, wait_for_gpus, **more):
    """The ScoreConfig of the shared scoring options (`more`: further ScoreConfig fields)."""
    from tfnas_ray.distributed.scoring import ScoreConfig

    with checking_input():
        return ScoreConfig(
            metrics=tuple(_metric_names(metric) or ()),
            seed=seed,
            seeding=seeding,
            shard_size=shard_size,
            workers=workers,
            device=device,
            actors_per_gpu=actors_per_gpu,
            wait_for_gpus=wait_for_gpus,
            **more,
        )


SpaceFile = Annotated[
    Optional[str],
    typer.Option("--space", help="hf: the model family, a .toml space file or a shipped one (tiny-gpt2, tiny-bert)"),
]


@app.command()
def benchmarks() -> None:
    """List the shipped benchmarks."""
    from tfnas_ray.benchmarks import load_benchmarks

    for name, bench in load_benchmarks().items():
        typer.echo(f"{name:12s} space={bench.space:8s} target={bench.primary_target:10s} {bench.description}")


@app.command()
def metrics() -> None:
    """List the metrics: name, space, what the implementation reads from a model,
    declared direction, cost, and what it computes on that space. Space `any`: the
    generic implementation, scored on every space without its own that offers what it
    reads. A `*` marks a name whose formula differs between spaces; `B` a trivial
    baseline, which every comparison sets the other metrics against."""
    from tfnas_ray.metrics import ANY_SPACE, load_metrics

    for name, metric in load_metrics().items():
        mark = "*" if metric.differs_between_spaces else " "
        kind = "B" if metric.baseline else " "
        impls = [*metric.impls.items(), *([(ANY_SPACE, metric.generic)] if metric.generic is not None else [])]
        for space, impl in impls:
            reads = "+".join(impl.reads)
            typer.echo(f"{name:28s}{mark}{kind} {space:8s} {reads:36s} {metric.direction.value:17s} {impl.cost:40s} {impl.summary or metric.summary}")
            for protocol, variant in impl.variants.items():
                if variant.differs:
                    typer.echo(f"{'':28s}   {space:8s} --protocol {protocol} (reads {'+'.join(impl.reads_for(protocol))}): {variant.summary}")
    typer.echo("* the same name computes a different formula per space (each line gives its space's); do not compare its values across spaces")
    typer.echo("B a trivial baseline: read from the spec, direction declared a priori (bigger predicts better); `correlate` sets every metric against the best one")
    typer.echo("any: scored on every space without its own implementation whose models offer what it reads (`tfnas_ray.spaces.CAPABILITIES`)")


@app.command()
def sample(
    space: Annotated[str, typer.Argument(help="search space: nb-nlp, nb-bert or hf (with --space)")],
    n: Annotated[int, typer.Option("-n", help="number of architectures")] = 100,
    seed: Annotated[int, typer.Option(help="seed of the generator")] = 0,
    out: Annotated[str, typer.Option(help="archs table to write (.parquet; a path or a URL)")] = "archs.parquet",
    space_file: SpaceFile = None,
) -> None:
    """Draw N distinct architectures from a space's own distribution into an archs
    table (a repeat is drawn again; a space that cannot give N says how many it could;
    hf: configurations of the --space family)."""
    from tfnas_ray import tables
    from tfnas_ray.pipeline import sample_archs

    with checking_input():
        table = sample_archs(space, n, seed=seed, space_file=space_file)
    tables.write_table("archs", table, out)
    typer.echo(f"wrote {table.num_rows} distinct {space} architectures to {out}")


@app.command()
def score(
    archs: Annotated[str, typer.Argument(help="archs table (.parquet; a path or a URL)")],
    metric: Annotated[list[str], typer.Option("--metric", "-m", help="metric name (repeat, or comma-separate); see `tfnas metrics`")],
    out: Annotated[str, typer.Option(help="directory of score shards: a path, or a URL every node can reach (s3://, gs://, …)")] = "scores",
    seed: Annotated[int, typer.Option(help="the run's seed")] = 0,
    seeding: Annotated[str, typer.Option(help="derived: per-arch seed from arch_id and --seed; fixed: every model seeded with --seed (the paper's protocol)")] = "derived",
    shard_size: ShardSize = None,
    workers: Workers = None,
    device: Device = "auto",
    actors_per_gpu: ActorsPerGpu = 1.0,
    wait_for_gpus: WaitForGpus = 0.0,
    memory_per_worker: MemoryPerWorker = 0.0,
    corpus: Annotated[str, typer.Option(help="nb-nlp metric batch corpus: ptb | wikitext-2")] = "ptb",
    protocol: Protocol = "released",
    init_seeds: InitSeeds = 1,
    batches: Batches = 1,
    reading: Reading = None,
    seq_len: SeqLen = None,
    mode: Mode = None,
    micro_batch: MicroBatch = None,
    address: Address = None,
    progress: Progress = True,
    retry_failed: RetryFailed = False,
) -> None:
    """Score architectures with training-free metrics on a Ray cluster, in resumable shards.

    Ctrl-C or SIGTERM stops the run with its finished shards saved (exit 1, or 143 on
    SIGTERM); the same command resumes it."""
    from tfnas_ray import tables
    from tfnas_ray.distributed.repeats import Repeats
    from tfnas_ray.distributed.scoring import ScoringInterrupted
    from tfnas_ray.spaces.nasbench_bert.protocol import NB_BERT, check_applies
    from tfnas_ray.pipeline import protocol_options, score_table

    with checking_input():  # the archs table is read again, checked, by score_table
        batch_options = ({} if corpus == "ptb" else {"corpus": corpus}) | protocol_options(protocol)
        model_options = {}
        nb, given = _nb_bert_options(reading, seq_len, mode, micro_batch=micro_batch)
        spaces = set(tables.read_table("archs", archs).column("space").to_pylist())
        check_applies(spaces, given=given)
        if NB_BERT in spaces:  # the reading is always recorded (scores column `reading`)
            batch_options, model_options = {**batch_options, **nb.batch_options}, nb.model_options
    config = _score_config(
        metric, seed, seeding, shard_size, workers, device, actors_per_gpu, wait_for_gpus,
        memory_per_worker=memory_per_worker, batch_options=batch_options, model_options=model_options,
        retry_failed=retry_failed,
    )
    try:
        summary = score_table(archs, out, config, address=address, repeats=Repeats(init_seeds, batches), progress=progress, log=typer.echo)
    except ScoringInterrupted as stop:
        fail(f"{stop}; {_resume_hint()}")
    for line in summary.lines():
        typer.echo(line)
    typer.echo(f"scores: {out}")


@app.command()
def correlate(
    scores: Annotated[str, typer.Argument(help="scores table or directory of shards (a path or a URL)")],
    truth: Annotated[str, typer.Argument(help="truth table (.parquet; a path or a URL)")],
    out: Annotated[str, typer.Option(help="correlations table to write (.parquet; a path or a URL)")] = "correlations.parquet",
    resamples: Annotated[int, typer.Option(help="bootstrap resamples for the 95% intervals")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
    plan: Annotated[Optional[str], typer.Option(help="a directory holding several scoring plans: the plan id (or a prefix) to read; default the newest")] = None,
    metric: Annotated[Optional[list[str]], typer.Option("--metric", "-m", help="metrics or ensemble:a+b to correlate (default: every metric, and the baselines)")] = None,
    archs: Annotated[Optional[str], typer.Option(help="archs table the baselines are computed from (default: archs.parquet beside the scores directory, if there is one)")] = None,
    reference: Annotated[Optional[str], typer.Option(help="metric, baseline or ensemble:a+b every metric is set against (default: the best baseline of each target)")] = None,
) -> None:
    """Kendall τ, Spearman ρ (with bootstrap 95% intervals) and Pearson r of every metric
    against every target, signed, and each metric against the best trivial baseline, or
    --reference (paired bootstrap of the τ difference). A directory of shards is read one
    scoring plan at a time, never averaged over plans."""
    from tfnas_ray import tables
    from tfnas_ray.analysis.baselines import run_baselines
    from tfnas_ray.analysis.correlation import CorrelationConfig, correlate as correlate_tables, format_correlations
    from tfnas_ray.metrics import baseline_metrics, directions
    from tfnas_ray.plans import read_scores
    from tfnas_ray.storage import locate

    with checking_input():  # everything is input until the table is written
        locate(out)
        config = CorrelationConfig(resamples=resamples, seed=seed)
        scores_table, _ = run_baselines(
            scores, read_scores(scores, plan=plan, log=lambda line: typer.echo(line, err=True)), archs=archs, plan=plan
        )
        present = set(scores_table.column("metric").to_pylist())
        if not present & set(baseline_metrics()):
            typer.echo("note: no baseline to compare against: no archs.parquet beside the scores and none scored (give --archs)", err=True)
        names = _metric_names(metric)
        if names:  # the baselines at hand join the metrics asked for: they are the comparison
            names += [b for b in baseline_metrics() if b in present and b not in names]
        table = correlate_tables(
            scores_table,
            tables.read_table("truth", truth),
            config=config,
            directions=directions(),
            metrics=names,
            baselines=baseline_metrics(),
            reference=reference,  # checked against the scores and baselines before any τ
        )
    tables.write_table("correlations", table, out)
    typer.echo(format_correlations(table))
    typer.echo(f"wrote {out}")


@app.command()
def reproduce(
    benchmark: Annotated[str, typer.Argument(help="shipped benchmark: see `tfnas benchmarks`")],
    out: Annotated[str, typer.Option(help="output directory: a path, or a URL every node can reach (s3://, gs://, …)")] = "runs/reproduce",
    metric: Annotated[Optional[list[str]], typer.Option("--metric", "-m", help="metrics (default: the paper's columns)")] = None,
    seed: Annotated[int, typer.Option(help="model seed (0 and fixed seeding: the paper's values)")] = 0,
    seeding: Annotated[str, typer.Option(help="fixed (the paper's protocol) or derived")] = "fixed",
    shard_size: ShardSize = None,
    workers: Workers = None,
    device: Device = "auto",
    actors_per_gpu: ActorsPerGpu = 1.0,
    wait_for_gpus: WaitForGpus = 0.0,
    memory_per_worker: MemoryPerWorker = 0.0,
    limit: Annotated[Optional[int], typer.Option(help="score only the first N architectures")] = None,
    address: Address = None,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples for the 95% intervals")] = 1000,
    as_trained: Annotated[bool, typer.Option(help="nb-bert: same as --reading as-trained")] = False,
    reading: Annotated[
        Optional[ReadingOrAll], typer.Option(help=_READING_HELP + "; all: the three side by side [default: as-scored]")
    ] = None,
    seq_len: SeqLen = None,
    mode: Mode = None,
    micro_batch: MicroBatch = None,
    train: Annotated[int, typer.Option(help="also train N of the architectures briefly with Ray Tune and compare")] = 0,
    protocol: Protocol = "released",
    init_seeds: InitSeeds = 1,
    batches: Batches = 1,
    progress: Progress = True,
    retry_failed: RetryFailed = False,
    reference: Annotated[Optional[str], typer.Option(help="metric, baseline or ensemble:a+b every metric is set against (default: the best baseline of each target)")] = None,
) -> None:
    """Reproduce the paper's table on a shipped benchmark: export, score through Ray,
    correlate, print."""
    import dataclasses

    from tfnas_ray.analysis.report import write_report
    from tfnas_ray.distributed.repeats import Repeats
    from tfnas_ray.distributed.scoring import ScoringInterrupted
    from tfnas_ray.analysis.nb_bert_checks import side_by_side
    from tfnas_ray.spaces.nasbench_bert.protocol import READINGS
    from tfnas_ray.pipeline import protocol_options
    from tfnas_ray.pipeline import reproduce as reproduce_benchmark

    nb, given = None, []
    if reading is not None or seq_len is not None or mode is not None or micro_batch is not None:
        one = None if reading in (None, ReadingOrAll.all) else ReadingChoice(reading.value)
        nb, given = _nb_bert_options(one, seq_len, mode, default_reading="as-scored", micro_batch=micro_batch)
    readings = READINGS if reading is ReadingOrAll.all else (None,)
    results = {}
    try:
        for r in readings:
            results[r] = reproduce_benchmark(
                benchmark,
                f"{out.rstrip('/')}/{r}" if r is not None else out,
                _score_config(
                    metric, seed, seeding, shard_size, workers, device, actors_per_gpu, wait_for_gpus,
                    memory_per_worker=memory_per_worker,
                    batch_options=protocol_options(protocol), retry_failed=retry_failed,
                ),
                limit=limit,
                address=address,
                resamples=resamples,
                as_trained=as_trained,
                nb_bert=dataclasses.replace(nb, reading=r) if r is not None else nb,
                train=train,
                repeats=Repeats(init_seeds, batches),
                progress=progress,
                log=typer.echo,
                reference=reference,
            )
    except ScoringInterrupted as stop:
        fail(f"{stop}; {_resume_hint()}")
    for r, result in results.items():
        if r is not None:
            typer.echo(f"\n==== reading {r} ====")
        for line in result.summary.lines():
            typer.echo(line)
        typer.echo(result.report())
        typer.echo(f"tables in {result.out_dir.url}: archs.parquet truth.parquet scores/ correlations.parquet")
        typer.echo(f"report: {write_report(result.out_dir).url}")
    if len(results) > 1:
        target = get_primary_target(benchmark)
        typer.echo("\n" + side_by_side({r: res.correlations for r, res in results.items()}, target=target))


@app.command()
def search(
    space: Annotated[str, typer.Argument(help="search space: nb-nlp, nb-bert or hf (with --space)")],
    metric: Annotated[list[str], typer.Option("--metric", "-m", help="rank by this metric, or a rank ensemble ensemble:a+b (repeat: each method keeps its own best)")],
    keep: Annotated[int, typer.Option(help="architectures kept per method")] = 10,
    candidates: Annotated[Optional[int], typer.Option(help="architectures to draw (with --archs: the first N admitted; default all)")] = None,
    archs: Annotated[Optional[str], typer.Option(help="take the candidates from this archs table instead of drawing")] = None,
    out: Annotated[str, typer.Option(help="output directory: a path, or a URL every node can reach")] = "runs/search",
    seed: Annotated[int, typer.Option(help="seed of the generator and of the scoring")] = 0,
    seeding: Annotated[str, typer.Option(help="derived: per-arch seed from arch_id and --seed; fixed: every model seeded with --seed")] = "derived",
    shard_size: ShardSize = None,
    workers: Workers = None,
    device: Device = "auto",
    actors_per_gpu: ActorsPerGpu = 1.0,
    wait_for_gpus: WaitForGpus = 0.0,
    memory_per_worker: MemoryPerWorker = 0.0,
    min_params: Annotated[Optional[int], typer.Option(help="keep candidates with at least this many parameters")] = None,
    max_params: Annotated[Optional[int], typer.Option(help="keep candidates with at most this many parameters")] = None,
    min_layers: Annotated[Optional[int], typer.Option(help="nb-bert: at least this many encoder layers")] = None,
    max_layers: Annotated[Optional[int], typer.Option(help="nb-bert: at most this many encoder layers")] = None,
    min_hidden: Annotated[Optional[int], typer.Option(help="nb-bert: hidden size at least this")] = None,
    max_hidden: Annotated[Optional[int], typer.Option(help="nb-bert: hidden size at most this")] = None,
    train: Annotated[int, typer.Option(help="train the best N of each method's kept with Ray Tune and report their loss")] = 0,
    reading: Reading = None,
    seq_len: SeqLen = None,
    mode: Mode = None,
    address: Address = None,
    progress: Progress = True,
    space_file: SpaceFile = None,
    max_latency_ms: Annotated[Optional[float], typer.Option(help="keep candidates whose measured latency_ms (on the scorers' device) is at most this; adds the Pareto front against latency")] = None,
    max_memory_mb: Annotated[Optional[float], typer.Option(help="keep candidates whose measured peak_memory_mb (forward+backward) is at most this")] = None,
) -> None:
    """Search a space training-free: draw candidates, score them through Ray, keep the
    best by a metric or ensemble, write the Pareto front and a report. Rerun to resume."""
    from tfnas_ray.analysis.report import write_report
    from tfnas_ray.analysis.search import Constraints
    from tfnas_ray.distributed.scoring import ScoringInterrupted
    from tfnas_ray.spaces.nasbench_bert.protocol import NB_BERT, check_applies
    from tfnas_ray.search_pipeline import SearchConfig, parse_methods, search as run_search

    with checking_input():
        nb, given = _nb_bert_options(reading, seq_len, mode)
        check_applies({space}, given=given)
        nb_bert = space == NB_BERT
        config = SearchConfig(
            space=space,
            methods=parse_methods(metric),
            keep=keep,
            candidates=candidates,
            seed=seed,
            archs=archs,
            constraints=Constraints(min_params, max_params, min_layers, max_layers, min_hidden, max_hidden),
            train=train,
            reading=nb.reading if nb_bert else None,
            space_file=space_file,
            max_latency_ms=max_latency_ms,
            max_memory_mb=max_memory_mb,
        )
    score_config = _score_config(
        None, seed, seeding, shard_size, workers, device, actors_per_gpu, wait_for_gpus,
        memory_per_worker=memory_per_worker,
        batch_options=nb.batch_options if nb_bert else {}, model_options=nb.model_options if nb_bert else {},
    )
    try:
        result = run_search(config, out, score_config, address=address, progress=progress, log=typer.echo)
    except ScoringInterrupted as stop:
        fail(f"{stop}; {_resume_hint()}")
    for line in result.summary.lines() + result.lines():
        typer.echo(line)
    latency = " pareto_latency.parquet" if result.pareto_latency is not None else ""
    typer.echo(f"tables in {result.out_dir.url}: candidates.parquet scores/ chosen.parquet pareto.parquet{latency}")
    typer.echo(f"report: {write_report(result.out_dir).url}")


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="output directory of reproduce, search, evaluate-search or train (a path or a URL)")],
) -> None:
    """Draw a run's figures: DIR/figures/*.png and one self-contained DIR/report.html."""
    from tfnas_ray.analysis.report import write_report

    typer.echo(f"report: {write_report(run).url}")


# ---- search evaluation and ensembles ----------------------------------------------------

Source = Annotated[str, typer.Argument(help="a shipped benchmark (scored into --dir, resumable) or the directory of a `tfnas reproduce` (its scores reused)")]
Target = Annotated[Optional[str], typer.Option(help="truth target (default: the benchmark's primary target)")]
RunDir = Annotated[Optional[str], typer.Option("--dir", help="for a BENCHMARK: where its archs, truth and scores go (default runs/BENCHMARK)")]
Limit = Annotated[Optional[int], typer.Option(help="for a BENCHMARK: score only the first N architectures")]
BenchSeed = Annotated[int, typer.Option(help="for a BENCHMARK: model seed (0 and fixed seeding: the paper's values)")]
BenchSeeding = Annotated[str, typer.Option(help="for a BENCHMARK: fixed (the paper's protocol) or derived")]


@app.command("evaluate-search")
def evaluate_search(
    source: Source,
    metric: Annotated[Optional[list[str]], typer.Option("--metric", "-m", help="metric or ensemble:a+b (repeat; default: every metric of the run)")] = None,
    target: Target = None,
    pools: Annotated[int, typer.Option(help="Monte-Carlo pools per pool size")] = 1000,
    pool_size: Annotated[Optional[list[int]], typer.Option("--pool-size", help="architectures per pool (repeat; default: 100 and the whole benchmark)")] = None,
    keep: Annotated[Optional[list[int]], typer.Option("--keep", help="architectures kept per pool (repeat; default: 1 and 10)")] = None,
    pool_seed: Annotated[int, typer.Option(help="seed of the pools and of the bootstrap")] = 0,
    replicates: Annotated[int, typer.Option(help="bootstrap replicates over architectures behind each Δ regret interval")] = 200,
    reference: Annotated[Optional[str], typer.Option(help="method every other is compared with, pool by pool (default: the best baseline, e.g. params)")] = None,
    out: Annotated[Optional[str], typer.Option(help="search_eval table to write (default: search_eval.parquet beside the scores)")] = None,
    dir: RunDir = None,
    seed: BenchSeed = 0,
    seeding: BenchSeeding = "fixed",
    shard_size: ShardSize = None,
    workers: Workers = None,
    device: Device = "auto",
    actors_per_gpu: ActorsPerGpu = 1.0,
    wait_for_gpus: WaitForGpus = 0.0,
    memory_per_worker: MemoryPerWorker = 0.0,
    limit: Limit = None,
    address: Address = None,
    progress: Progress = True,
) -> None:
    """How good is each metric as a search method? Regret of its top-K picks in random
    pools of P architectures, against random picks and the oracle."""
    from tfnas_ray.analysis.search_eval import SearchEvalConfig
    from tfnas_ray.distributed.scoring import ScoringInterrupted
    from tfnas_ray.pipeline import evaluate_search_run

    search = SearchEvalConfig(pools=pools, pool_sizes=tuple(pool_size or ()), keeps=tuple(keep or (1, 10)), seed=pool_seed, replicates=replicates)
    try:
        result = evaluate_search_run(
            source,
            _metric_names(metric),
            target=target,
            search=search,
            config=_score_config(
                None, seed, seeding, shard_size, workers, device, actors_per_gpu, wait_for_gpus,
                memory_per_worker=memory_per_worker,
            ),
            out=out,
            out_dir=dir,
            limit=limit,
            address=address,
            progress=progress,
            log=typer.echo,
            reference=reference,
        )
    except ScoringInterrupted as stop:
        fail(f"{stop}; {_resume_hint()}")
    if result.inputs.summary is not None:
        for line in result.inputs.summary.lines():
            typer.echo(line)
    typer.echo(result.report())
    typer.echo(f"wrote {result.path.url}")


@app.command()
def ensemble(
    source: Source,
    metric: Annotated[Optional[list[str]], typer.Option("--metric", "-m", help="metrics to choose from (default: every metric of the run)")] = None,
    method: Annotated[Optional[list[str]], typer.Option("--method", help="also evaluate this fixed method on the same folds, e.g. ensemble:params+head_confidence (repeat)")] = None,
    target: Target = None,
    folds: Annotated[int, typer.Option(help="k of the k-fold cross-validation over architectures")] = 5,
    cv_seed: Annotated[int, typer.Option(help="seed of the fold split")] = 0,
    max_members: Annotated[int, typer.Option(help="largest ensemble tried")] = 3,
    dir: RunDir = None,
    seed: BenchSeed = 0,
    seeding: BenchSeeding = "fixed",
    shard_size: ShardSize = None,
    workers: Workers = None,
    device: Device = "auto",
    actors_per_gpu: ActorsPerGpu = 1.0,
    wait_for_gpus: WaitForGpus = 0.0,
    memory_per_worker: MemoryPerWorker = 0.0,
    limit: Limit = None,
    address: Address = None,
    progress: Progress = True,
) -> None:
    """Choose a rank ensemble of metrics (members and weights) by k-fold cross-validation
    over architectures; print out-of-fold Kendall τ and Spearman ρ only, for the best
    ensemble and the best single metric, and whether a training-free metric adds to the
    free baselines."""
    from tfnas_ray.analysis.ensemble import EnsembleConfig, format_ensemble
    from tfnas_ray.distributed.scoring import ScoringInterrupted
    from tfnas_ray.pipeline import ensemble_run

    try:
        result = ensemble_run(
            source,
            metrics=_metric_names(metric),
            fixed=_metric_names(method),
            target=target,
            cv=EnsembleConfig(folds=folds, seed=cv_seed, max_members=max_members),
            config=_score_config(
                None, seed, seeding, shard_size, workers, device, actors_per_gpu, wait_for_gpus,
                memory_per_worker=memory_per_worker,
            ),
            out_dir=dir,
            limit=limit,
            address=address,
            progress=progress,
            log=typer.echo,
        )
    except ScoringInterrupted as stop:
        fail(f"{stop}; {_resume_hint()}")
    typer.echo(format_ensemble(result))


# ---- cluster jobs ----------------------------------------------------------------------

_ADDRESS_HELP = (
    "Ray dashboard URL of the cluster, e.g. http://HEAD:8265 "
    "(default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, then http://127.0.0.1:8265)."
)

AllowInsecureToken = Annotated[
    bool,
    typer.Option(
        "--allow-insecure-token",
        help="Send the cluster's auth token over plain http to a host that is not loopback (readable on the way).",
    ),
]


@app.command()
def submit(
    command: Annotated[
        list[str],
        typer.Argument(
            help="The tfnas command to run on the cluster, after `--`, without `tfnas`.",
            show_default=False,
        ),
    ],
    address: Annotated[Optional[str], typer.Option(help=_ADDRESS_HELP)] = None,
    working_dir: Annotated[
        Path, typer.Option(help="Directory uploaded with the job; the command runs in it.")
    ] = Path("."),
    wait: Annotated[
        bool, typer.Option("--wait", help="Stream the job's output until it ends; exit 1 unless it succeeded.")
    ] = False,
    include: Annotated[
        Optional[list[str]], typer.Option(help="Also ship untracked files matching this glob (repeat); secrets never ship.")
    ] = None,
    allow_insecure_token: AllowInsecureToken = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be shipped, what is left out and why, and the job's command; submit nothing.")
    ] = False,
) -> None:
    """Run a tfnas command on a Ray cluster as a Ray job.

    Ships the git-tracked files of --working-dir (plus --include), never secrets (by
    name or content) or symlinks out of the repository. Example: tfnas submit --address http://HEAD:8265 --wait -- reproduce nb-nlp-ptb --out /results/ptb --address auto
    """
    import shlex

    from tfnas_ray.distributed import jobs

    url = jobs.resolve_address(address)
    if dry_run:
        args = jobs.check_entrypoint_args(command)
        for line in jobs.plan_shipment(working_dir, include or ()).lines():
            typer.echo(line)
        typer.echo(f"would run on {url}: tfnas {shlex.join(args)}")
        typer.echo("dry run: nothing submitted")
        return
    insecure = {"allow_insecure_token": allow_insecure_token}
    job_id = jobs.submit_job(
        command, address=url, working_dir=working_dir, include=include or (), log=lambda line: typer.echo(line, err=True), **insecure
    )
    typer.echo(f"submitted {job_id} to {url}")
    if not wait:
        typer.echo(f"follow it with: tfnas logs {job_id} --address {url} --follow")
        return
    for chunk in jobs.job_logs(url, job_id, follow=True, **insecure):
        typer.echo(chunk, nl=False)
    info = jobs.wait_for_job(job_id, address=url, **insecure)
    if info.status != "SUCCEEDED":
        fail(f"job {job_id} on {url} ended {info.status}: {info.reason}")
    typer.echo(f"job {job_id} {info.status}")


@app.command()
def jobs(address: Annotated[Optional[str], typer.Option(help=_ADDRESS_HELP)] = None, allow_insecure_token: AllowInsecureToken = False) -> None:
    """List the jobs of a Ray cluster, oldest first."""
    import datetime

    from tfnas_ray.distributed import jobs as cluster_jobs

    infos = cluster_jobs.list_jobs(address, allow_insecure_token=allow_insecure_token)
    if not infos:
        typer.echo(f"no jobs on {cluster_jobs.resolve_address(address)}")
        return
    typer.echo(f"{'JOB':<32} {'STATUS':<10} {'STARTED (UTC)':<20} ENTRYPOINT")
    for info in infos:
        started = (
            datetime.datetime.fromtimestamp(info.start_time, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            if info.start_time is not None
            else "-"
        )
        typer.echo(f"{info.job_id:<32} {info.status:<10} {started:<20} {cluster_jobs.entrypoint_command(info.entrypoint)}")


@app.command()
def logs(
    job: Annotated[str, typer.Argument(help="Job id that `tfnas submit` printed (raysubmit_...).", show_default=False)],
    address: Annotated[Optional[str], typer.Option(help=_ADDRESS_HELP)] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output until the job ends.")] = False,
    allow_insecure_token: AllowInsecureToken = False,
) -> None:
    """Print a Ray job's output."""
    from tfnas_ray.distributed import jobs

    for chunk in jobs.job_logs(address, job, follow=follow, allow_insecure_token=allow_insecure_token):
        typer.echo(chunk, nl=False)


# ---- transformers ----------------------------------------------------------------------


@app.command("analyze-space")
def analyze_space(
    benchmark: Annotated[str, typer.Argument(help="a benchmark whose space has design choices: nb-bert")],
    target: Annotated[str, typer.Option(help="glue or one GLUE task (cola, mnli, mrpc, qnli, qqp, rte, sst, sts)")] = "glue",
    scores: Annotated[Optional[str], typer.Option(help="scores table of the benchmark: adds each metric's τ inside the restricted space")] = None,
    top_k: Annotated[int, typer.Option(help="how many of the best runs the restricted space should keep")] = 100,
) -> None:
    """Rank NAS-Bench-BERT's design choices by their effect on GLUE, test whether the layer
    operations matter at all (the as-trained check), and show what a restricted space keeps."""
    from tfnas_ray import tables
    from tfnas_ray.analysis.space_analysis import analyze_space as analyze, format_analysis
    from tfnas_ray.spaces.nasbench_bert.benchmarks import NAME, TARGETS, records

    if benchmark != NAME:
        fail(f"analyze-space knows benchmark {NAME!r} only, got {benchmark!r}")
    if target not in TARGETS:
        fail(f"target {target!r} is not one of {', '.join(TARGETS)}")
    if top_k < 1:
        fail(f"--top-k must be >= 1, got {top_k}")
    scores_table = tables.read_table("scores", scores) if scores is not None else None
    typer.echo(format_analysis(analyze(records(), target=target, scores=scores_table, top_k=top_k)))


@app.command("build-tokenizer")
def build_tokenizer(
    vocab_size: Annotated[int, typer.Option(help="WordPiece vocabulary size (ELECTRA's: 30,522)")] = 30522,
) -> None:
    """Retrain the WikiText-2 WordPiece vocabulary shipped with the package (developers)."""
    from tfnas_ray.data.tokenizer import write_vocabulary

    typer.echo(f"wrote {write_vocabulary(vocab_size=vocab_size)}")


# ---- ground truth by Ray Tune ----------------------------------------------------------


class TrainScheduler(str, Enum):
    fifo = "fifo"
    asha = "asha"


class TrainCorpus(str, Enum):
    ptb = "ptb"
    wikitext2 = "wikitext-2"


@app.command()
def train(
    archs: Annotated[str, typer.Argument(help="archs table (.parquet) of one space; a path or a URL")],
    out: Annotated[str, typer.Option(help="output directory: truth.parquet, the Tune experiment; a path or a URL every node can reach")] = "runs/train",
    epochs: Annotated[Optional[int], typer.Option(help="budget per trial: epochs")] = None,
    steps: Annotated[Optional[int], typer.Option(help="budget per trial: optimizer steps")] = None,
    tokens: Annotated[Optional[int], typer.Option(help="budget per trial: training tokens")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="reports (and checkpoints) per trial for a step/token budget")] = None,
    corpus: Annotated[Optional[TrainCorpus], typer.Option(help="training corpus (nb-nlp: ptb default)")] = None,
    emsize: Annotated[Optional[int], typer.Option(help="nb-nlp embedding size (published 400; CPU default 64)")] = None,
    nhid: Annotated[Optional[int], typer.Option(help="nb-nlp hidden size (published 600; CPU default 64)")] = None,
    nlayers: Annotated[Optional[int], typer.Option(help="nb-nlp recurrent layers (published 3)")] = None,
    train_tokens: Annotated[Optional[int], typer.Option(help="train on the first N training tokens only")] = None,
    valid_tokens: Annotated[Optional[int], typer.Option(help="validate on the first N validation tokens only")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed of every trial's initialisation and dropout")] = None,
    reading: Reading = None,
    batch_size: Annotated[Optional[int], typer.Option(help="sequences (nb-nlp: stream columns) per step")] = None,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="hf and nb-bert: tokens per training sequence")] = None,
    scheduler: Annotated[TrainScheduler, typer.Option(help="fifo, or asha early stopping on the validation loss")] = TrainScheduler.fifo,
    gpus_per_trial: Annotated[Optional[float], typer.Option(help="GPUs per trial (fractions share one); default 1 with GPUs, else 0")] = None,
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs per trial")] = 1.0,
    address: Address = None,
    storage: Annotated[Optional[str], typer.Option(help="experiment storage every node can reach (shared path or s3://); default OUT/tune")] = None,
) -> None:
    """Train each architecture briefly, one Ray Tune trial each, into a truth table
    (val_loss@BUDGET, train_loss@BUDGET; masked LMs val_mlm_loss@BUDGET). hf archs train
    as causal or masked LMs on WikiText-2 with the shipped WordPiece tokenizer. Rerun the
    same command to resume."""
    from tfnas_ray.distributed.tune import TuneOptions, budget_from_options, train_table

    with checking_input():
        options = TuneOptions(scheduler=scheduler.value, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial, storage=storage, verbose=1)
        budget = budget_from_options(epochs=epochs, steps=steps, tokens=tokens)
    overrides = {
        "iterations": iterations,
        "corpus": corpus.value if corpus is not None else None,
        "emsize": emsize,
        "nhid": nhid,
        "nlayers": nlayers,
        "train_tokens": train_tokens,
        "valid_tokens": valid_tokens,
        "seed": seed,
        "reading": reading.value if reading is not None else None,  # nb-bert (MLMConfig) only
        "batch_size": batch_size,
        "seq_len": seq_len,  # hf and nb-bert
    }
    outcome = train_table(archs, out, budget=budget, overrides=overrides, options=options, address=address, log=typer.echo)
    for line in outcome.lines():
        typer.echo(line)
    typer.echo(f"truth: {outcome.path} (experiment: {outcome.experiment}; rerun the same command to resume)")


def main() -> None:
    """Console-script entry point: run the app, turning domain errors into one line.
    SIGTERM unwinds like Ctrl-C (saved work kept, resume line printed, lease released)
    and then exits 143, whatever the command's own exit code was."""
    from tfnas_ray import termination

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    termination.install()
    try:
        app()
    except TfnasError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(termination.EXIT_CODE if termination.received() else exit_code(err))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(termination.EXIT_CODE if termination.received() else 130)
    except SystemExit:
        if termination.received():
            sys.exit(termination.EXIT_CODE)
        raise


if __name__ == "__main__":
    main()
