"""`tfnas evaluate-search` and `tfnas ensemble` as a user runs them: on a reproduce
directory (scores reused) and on a shipped benchmark (scored through Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tfnas_ray import tables
from tfnas_ray.cli import app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A reproduce-like directory: 40 architectures, GLUE truth, two metrics (one a noisy
    view of GLUE, one noise) in a shard file."""
    out = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    glue = rng.normal(80, 3, size=40)
    ids = [f"arch{i:02d}" for i in range(40)]
    tables.write_table("truth", tables.from_rows("truth", [{"arch_id": a, "target": "glue", "value": float(v)} for a, v in zip(ids, glue)]), out / "truth.parquet")
    rows = [{"arch_id": a, "metric": "params", "value": float(v + rng.normal(0, 2)), "seed": 0} for a, v in zip(ids, glue)]
    rows += [{"arch_id": a, "metric": "head_confidence", "value": float(rng.normal()), "seed": 0} for a in ids]
    (out / "scores").mkdir()
    tables.write_table("scores", tables.from_rows("scores", rows), out / "scores" / "shard-x.parquet")
    return out


def test_evaluate_search_on_a_directory_writes_the_table_beside_the_scores(run_dir):
    result = CliRunner().invoke(app, ["evaluate-search", str(run_dir), "--pools", "200", "-m", "params", "-m", "ensemble:params+head_confidence"])
    assert result.exit_code == 0, result.output
    assert "target glue, pool size P = 40, keep K = 1" in result.output and "random" in result.output
    table = tables.read_table("search_eval", run_dir / "search_eval.parquet")
    assert {r["method"] for r in table.to_pylist()} == {"oracle", "params", "ensemble:params+head_confidence", "random"}
    assert {(r["pool_size"], r["keep"]) for r in table.to_pylist()} == {(40, 1), (40, 10)}
    assert pq.read_schema(run_dir / "search_eval.parquet").names[:9] == [
        "method", "pool_size", "keep", "regret", "regret_lo", "regret_hi", "percentile", "top10_overlap", "target"
    ]


def test_ensemble_on_a_directory_prints_out_of_fold_figures_only(run_dir):
    result = CliRunner().invoke(app, ["ensemble", str(run_dir), "--folds", "4", "--method", "ensemble:params+head_confidence"])
    assert result.exit_code == 0, result.output
    assert "out-of-fold" in result.output and "best single metric" in result.output
    assert "ensemble:params+head_confidence (fixed)" in result.output


def test_bad_sources_and_options_are_one_line_errors(run_dir, tmp_path):
    result = CliRunner().invoke(app, ["evaluate-search", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "is neither a shipped benchmark (" in result.output and "nb-nlp-ptb" in result.output
    result = CliRunner().invoke(app, ["evaluate-search", str(run_dir), "--pool-size", "41"])
    assert result.exit_code == 1 and "--pool-size 41 exceeds the 40 architectures" in result.output
    result = CliRunner().invoke(app, ["evaluate-search", str(run_dir), "--target", "num_params"])
    assert result.exit_code == 1 and "target 'num_params' has no known direction" in result.output
    result = CliRunner().invoke(app, ["evaluate-search", str(run_dir), "--replicates", "0"])
    assert result.exit_code == 1 and "--replicates must be >= 1, got 0" in result.output


def test_evaluate_search_on_a_benchmark_scores_it_then_reuses_the_scores(ray_cluster, tmp_path):
    args = ["evaluate-search", "nb-nlp-ptb", "-m", "params", "--limit", "30", "--dir", str(tmp_path / "ptb"), "--pools", "100", "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "target test_loss, pool size P =" in first.output
    assert (tmp_path / "ptb" / "archs.parquet").exists() and (tmp_path / "ptb" / "search_eval.parquet").exists()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.output.split("target test_loss")[1] == first.output.split("target test_loss")[1]


def test_ensemble_refuses_an_ensemble_to_choose_from_in_one_line_before_work(run_dir):
    result = CliRunner().invoke(app, ["ensemble", str(run_dir), "-m", "ensemble:params+head_confidence"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --metric 'ensemble:params+head_confidence': the metrics to choose from must be single metrics")


def test_ensemble_and_evaluate_search_compare_with_params_as_the_baseline(run_dir):
    result = CliRunner().invoke(app, ["ensemble", str(run_dir), "--folds", "4"])
    assert result.exit_code == 0, result.output
    assert "Δτ vs best baseline" in result.output and "best baseline" in result.output
    result = CliRunner().invoke(app, ["evaluate-search", str(run_dir), "--pools", "200", "--pool-size", "20", "--keep", "1"])
    assert result.exit_code == 0, result.output
    assert "Δ regret vs params [95% paired bootstrap over architectures]" in result.output
    assert "do not beat the best baseline params (paired interval not below 0): head_confidence" in result.output


def test_evaluate_search_takes_a_reference_and_evaluates_it_too(run_dir, tmp_path):
    out = tmp_path / "eval.parquet"
    result = CliRunner().invoke(app, ["evaluate-search", str(run_dir), "-m", "params", "--reference", "head_confidence", "--pools", "100", "--pool-size", "20", "--keep", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = tables.read_table("search_eval", out).to_pylist()
    assert {r["method"] for r in rows} == {"oracle", "params", "head_confidence", "random"}
    assert {r["reference"] for r in rows} == {"head_confidence"}
    assert "Δ regret vs head_confidence [95% paired bootstrap over architectures]" in result.output
