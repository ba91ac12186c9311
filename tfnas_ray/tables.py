"""The four Arrow tables that flow between stages, and their read/write helpers.

    archs ──score──▶ scores ─┐
      │                      ├──correlate──▶ correlations
      └──train/benchmark──▶ truth ─┘

Each schema is defined here once; every stage reads and writes through `read_table` and
`write_table`, which check the columns and raise a one-line `TfnasError` for a missing
file, a file that is not Parquet, or a table with the wrong columns.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tfnas_ray.errors import TfnasError
from tfnas_ray.storage import Location, locate

ARCHS = pa.schema(
    [
        pa.field("arch_id", pa.string(), nullable=False),  # content hash of `spec`
        pa.field("space", pa.string(), nullable=False),  # a key of spaces.SPACES
        pa.field("spec", pa.string(), nullable=False),  # canonical JSON
        pa.field("source", pa.string()),  # "nb-nlp-ptb", "sample:seed=0", …
        pa.field("benchmark_id", pa.string()),  # the benchmark's own id, if shipped
    ]
)

SCORES = pa.schema(
    [
        pa.field("arch_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),  # a key of metrics.METRICS
        pa.field("value", pa.float64()),  # null on failure
        pa.field("error", pa.string()),  # why value is null; null on success
        pa.field("seconds", pa.float64()),  # wall time of this metric's share of the work
        pa.field("seed", pa.int64()),  # the seed the model was initialised with
        pa.field("device", pa.string()),  # "cpu", "cuda:0", …
        pa.field("version", pa.string()),  # tfnas_ray.__version__
        pa.field("protocol", pa.string()),  # nb-nlp paper columns: "released" | "published"
        pa.field("batch", pa.int64()),  # index of the metric minibatch (`--batches`); null = 0
        pa.field("reading", pa.string()),  # nb-bert: the model reading scored (as-scored, …); null elsewhere
    ]
)

TRUTH = pa.schema(
    [
        pa.field("arch_id", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),  # "test_loss", "glue", "val_loss@3ep"
        pa.field("value", pa.float64()),  # null when the run diverged or failed
        pa.field("source", pa.string()),  # "nb-nlp-ptb", "tune:…"
        pa.field("benchmark_id", pa.string()),
        pa.field("curve", pa.list_(pa.float64())),  # per-epoch/iteration values, if any
        pa.field("seconds", pa.float64()),  # wall time of the run that produced it
        pa.field("status", pa.string()),  # "ok", "diverged", …
    ]
)

CORRELATIONS = pa.schema(
    [
        pa.field("metric", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("kendall_tau", pa.float64()),
        pa.field("kendall_lo", pa.float64()),
        pa.field("kendall_hi", pa.float64()),
        pa.field("spearman_rho", pa.float64()),
        pa.field("spearman_lo", pa.float64()),
        pa.field("spearman_hi", pa.float64()),
        pa.field("pearson_r", pa.float64()),
        pa.field("direction", pa.string()),  # the metric's declared direction, if known
        # Stability (`--init-seeds S --batches B`), null where S or B is 1:
        pa.field("tau_between_seeds", pa.float64()),  # mean Kendall τ between seeds, same batch
        pa.field("tau_between_batches", pa.float64()),  # mean Kendall τ between batches, same seed
        pa.field("tau_seed_averaged", pa.float64()),  # τ vs target of the mean over seeds (batch 0)
        # Against the trivial baselines (analysis.correlation.paired_tau_difference), oriented
        # so that > 0 means this metric ranks better than the reference (the best baseline
        # for this target unless `correlate --reference` names another method):
        pa.field("is_baseline", pa.bool_()),  # this metric is a trivial baseline (metrics/baselines.py)
        pa.field("baseline", pa.string()),  # the best baseline for this target (by oriented τ)
        pa.field("tau_minus_baseline", pa.float64()),  # oriented τ of the metric − that of `reference`, same rows
        pa.field("diff_lo", pa.float64()),  # paired bootstrap interval of that difference
        pa.field("diff_hi", pa.float64()),
        pa.field("verdict", pa.string()),  # "beats" | "does not beat" | "indistinguishable"
        # What the four columns above compare with: `baseline` by default, or the method
        # given as `correlate --reference` (null in tables written before it existed).
        pa.field("reference", pa.string()),
    ]
)

# `tfnas evaluate-search`: one row per (method, pool size, keep) of a Monte-Carlo over
# pools of architectures (analysis.search_eval states the conventions in the metadata).
SEARCH_EVAL = pa.schema(
    [
        pa.field("method", pa.string(), nullable=False),  # a metric, ensemble:a+b, "random" or "oracle"
        pa.field("pool_size", pa.int64(), nullable=False),  # P architectures per pool
        pa.field("keep", pa.int64(), nullable=False),  # K picked per pool; the best of them counts
        pa.field("regret", pa.float64()),  # mean over pools of (pool's best − best pick), target units, >= 0
        pa.field("regret_lo", pa.float64()),  # 2.5% quantile of the per-pool regret
        pa.field("regret_hi", pa.float64()),  # 97.5% quantile of the per-pool regret
        pa.field("percentile", pa.float64()),  # mean percentile of the best pick in its pool (100 = best)
        pa.field("top10_overlap", pa.float64()),  # mean share of the metric's top 10% in the truth's top 10%
        pa.field("target", pa.string(), nullable=False),
    ]
)

SCHEMAS: Mapping[str, pa.Schema] = {
    "archs": ARCHS,
    "scores": SCORES,
    "truth": TRUTH,
    "correlations": CORRELATIONS,
    "search_eval": SEARCH_EVAL,
}


def _schema(kind: str) -> pa.Schema:
    if kind not in SCHEMAS:
        raise TfnasError(f"unknown table kind {kind!r}; known: {', '.join(SCHEMAS)}")
    return SCHEMAS[kind]


def from_rows(kind: str, rows: Iterable[Mapping[str, object]]) -> pa.Table:
    """Build a table of `kind` from dict rows; missing optional columns become null."""
    schema = _schema(kind)
    rows = list(rows)
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.table(columns, schema=schema)


def conform(kind: str, table: pa.Table, *, what: str = "table") -> pa.Table:
    """Return `table` with exactly the schema of `kind` (extra columns kept at the end).

    Required columns must be present; optional ones that are missing are added as null.
    Raises:
        TfnasError: a required column is missing or cannot be cast to its type.
    """
    schema = _schema(kind)
    arrays, fields = [], []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            if column.type != field.type:
                try:
                    column = column.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                    raise TfnasError(
                        f"{what}: column {field.name!r} has type {column.type}, "
                        f"expected {field.type} ({err})"
                    ) from None
        elif not field.nullable:
            raise TfnasError(
                f"{what} is not a valid {kind} table: it lacks column {field.name!r} "
                f"(has {', '.join(table.column_names) or 'no columns'}; "
                f"needs {', '.join(f.name for f in schema if not f.nullable)})"
            )
        else:
            column = pa.nulls(table.num_rows, field.type)
        arrays.append(column)
        fields.append(field)
    for name in table.column_names:
        if name not in schema.names:
            arrays.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=table.schema.metadata))


def read_table(kind: str, path: str | os.PathLike | Location) -> pa.Table:
    """Read a table of `kind` from a Parquet file, or a directory of Parquet files; a
    local path or a URL (`s3://…`, `gs://…`, see `storage`).

    Raises:
        TfnasError: the path is missing, is not Parquet, or lacks a required column.
    """
    where = locate(path)
    found = where.file_type()  # one request per table: this reads every shard of a run
    if found == pafs.FileType.NotFound:
        raise TfnasError(f"{kind} table {where.url!r} does not exist")
    if found == pafs.FileType.Directory:
        files = where.files(".parquet", recursive=True)
        if not files:
            raise TfnasError(f"{kind} directory {where.url!r} holds no .parquet files")
        return read_tables(kind, files)
    try:
        table = pq.read_table(where.path, filesystem=where.filesystem)
    except (pa.ArrowInvalid, OSError) as err:
        raise TfnasError(f"{kind} table {where.url!r} is not a readable Parquet file: {err}".splitlines()[0]) from None
    return conform(kind, table, what=f"{kind} table {where.url!r}")


# Reading many small files waits on storage (an object store: tens of ms per file), so
# they are read in threads; pyarrow releases the GIL while it reads.
_READ_THREADS = 16


def read_tables(kind: str, paths: Sequence[str | os.PathLike | Location]) -> pa.Table:
    """The tables of `kind` in `paths`, read in parallel and concatenated in order."""
    if not paths:
        return from_rows(kind, [])
    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(paths))) as pool:
        parts = list(pool.map(lambda path: read_table(kind, path), paths))
    return pa.concat_tables(parts, promote_options="default")


def write_table(kind: str, table: pa.Table, path: str | os.PathLike | Location) -> Location:
    """Write `table` (conformed to `kind`) to `path` atomically (see `storage`).

    A reader never sees a half-written file, and a killed writer leaves at most a hidden
    temporary file behind, which readers ignore.
    """
    where = locate(path)
    table = conform(kind, table, what=f"{kind} table")
    where.write_atomic(lambda stream: pq.write_table(table, stream, compression="zstd"))
    return where
