"""A scores directory is a Parquet dataset (issue 18): the directory of the main job
(`tfnas reproduce nb-nlp-ptb`, a few cells here) opens directly with pyarrow.dataset,
pandas, DuckDB and polars, whose readers skip names that start with `_` or `.`
(manifests, the lease, temporaries, quarantined shards)."""

from __future__ import annotations

import dataclasses

import pyarrow.dataset as ds
import pytest

from tfnas_ray import pipeline, plans
from tfnas_ray.distributed.repeats import Repeats
from tfnas_ray.distributed.scoring import ScoreConfig
from tfnas_ray.storage import locate

LIMIT = 6
METRICS = ("params", "hidden_cov")


@pytest.fixture(scope="module")
def scored(ray_cluster, tmp_path_factory):
    """`reproduce nb-nlp-ptb --limit 6 -m params -m hidden_cov` (the paper's protocol)."""
    out = tmp_path_factory.mktemp("nb-nlp-ptb")
    config = dataclasses.replace(pipeline.PAPER_PROTOCOL, metrics=METRICS)
    result = pipeline.reproduce("nb-nlp-ptb", out, config, limit=LIMIT, resamples=0, progress=False, log=print)
    scores = out / "scores"
    assert sorted(p.name for p in scores.iterdir() if not p.name.startswith("shard-")) == [
        f"_plan-{plans.plans_in(locate(scores))[0].plan_id}.json"
    ]
    return scores, result.summary.table


def _values(rows) -> dict:
    return {(r["arch_id"], r["metric"]): r["value"] for r in rows}


def test_the_scores_directory_opens_with_pyarrow_dataset(scored):
    scores, table = scored
    read = ds.dataset(scores, format="parquet").to_table()
    assert read.num_rows == LIMIT * len(METRICS) == table.num_rows
    assert _values(read.to_pylist()) == _values(table.to_pylist())


def test_the_scores_directory_opens_with_pandas(scored):
    import pandas as pd

    scores, table = scored
    frame = pd.read_parquet(scores)
    assert len(frame) == table.num_rows
    assert _values(frame.to_dict("records")) == _values(table.to_pylist())


def test_the_scores_directory_opens_with_duckdb(scored):
    duckdb = pytest.importorskip("duckdb")

    scores, table = scored
    rows = duckdb.sql(f"SELECT arch_id, metric, value FROM read_parquet('{scores}/*.parquet')").fetchall()
    assert len(rows) == table.num_rows
    assert {(a, m): v for a, m, v in rows} == _values(table.to_pylist())


def test_the_scores_directory_opens_with_polars(scored):
    pl = pytest.importorskip("polars")

    scores, table = scored
    frame = pl.read_parquet(f"{scores}/*.parquet")
    assert frame.height == table.num_rows
    assert _values(frame.to_dicts()) == _values(table.to_pylist())
    assert pl.scan_parquet(f"{scores}/*.parquet").select(pl.len()).collect().item() == table.num_rows


def test_a_stability_study_directory_opens_too(ray_cluster, tmp_path):
    """`--init-seeds 2`: two plans and a study manifest beside their shards."""
    import pandas as pd

    from tfnas_ray.benchmarks import get_benchmark
    from tfnas_ray.distributed.repeats import run_repeated_scoring

    archs = get_benchmark("nb-nlp-ptb").load()[0].slice(0, 2)
    summary = run_repeated_scoring(archs, tmp_path, ScoreConfig(metrics=("params",)), Repeats(init_seeds=2), progress=False, log=print)
    assert ds.dataset(tmp_path, format="parquet").count_rows() == summary.table.num_rows == 4
    assert len(pd.read_parquet(tmp_path)) == 4
    assert sum(1 for p in tmp_path.iterdir() if p.name.startswith("_")) == 3  # two plans, one study
