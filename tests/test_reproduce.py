"""`tfnas reproduce` end to end through the CLI, on the session's Ray cluster."""

from __future__ import annotations

import pyarrow.parquet as pq
from typer.testing import CliRunner

from tfnas_ray import tables
from tfnas_ray.cli import app


def test_reproduce_writes_the_four_tables_and_prints_the_correlations(ray_cluster, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["reproduce", "nb-nlp-ptb", "--out", str(out), "--limit", "12", "-m", "hidden_cov", "-m", "params", "--resamples", "50", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    archs = tables.read_table("archs", out / "archs.parquet")
    truth = tables.read_table("truth", out / "truth.parquet")
    assert archs.num_rows == 12 and archs.column("benchmark_id").null_count == 0
    assert set(truth.column("target").to_pylist()) == {"test_loss", "num_params"}
    scores = tables.read_table("scores", out / "scores")
    assert set(scores.column("metric").to_pylist()) == {"hidden_cov", "params"}
    assert scores.column("seed").to_pylist() == [0] * scores.num_rows  # the paper's fixed seed
    correlations = pq.read_table(out / "correlations.parquet").to_pylist()
    by_pair = {(r["metric"], r["target"]): r for r in correlations}
    # params against the published num_params: the same numbers, so τ = ρ = r = 1.
    assert by_pair[("params", "num_params")]["kendall_tau"] == 1.0
    assert by_pair[("params", "num_params")]["pearson_r"] == 1.0
    assert by_pair[("hidden_cov", "test_loss")]["n"] == 12
    assert "hidden_cov" in result.output and "test_loss" in result.output
    # The trivial baselines beside the metrics, computed from the specs (never scored),
    # and hidden_cov set against the best of them.
    assert {"cell_nodes", "linear_nodes", "cell_depth", "flops_per_token"} <= {m for m, _ in by_pair}
    assert by_pair[("cell_depth", "test_loss")]["is_baseline"] and not by_pair[("hidden_cov", "test_loss")]["is_baseline"]
    assert by_pair[("hidden_cov", "test_loss")]["baseline"] in {"cell_nodes", "linear_nodes", "cell_depth", "flops_per_token", "params"}
    assert by_pair[("hidden_cov", "test_loss")]["verdict"] in {"beats", "does not beat", "indistinguishable"}
    assert "test_loss: best baseline " in result.output


def test_reproduce_refuses_as_trained_outside_nb_bert(ray_cluster, tmp_path):
    result = CliRunner().invoke(app, ["reproduce", "nb-nlp-ptb", "--out", str(tmp_path), "--as-trained", "--limit", "2"])
    assert result.exit_code == 2 and "--as-trained applies to nb-bert only" in result.output


def test_reproduce_with_short_training_runs(ray_cluster, tmp_path):
    """`--train N`: N of the benchmark's cells trained with the default CPU budget through
    Ray Tune, then τ of the short-run loss against the published loss and of every
    metric against the short runs."""
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["reproduce", "nb-nlp-ptb", "--out", str(out), "--limit", "3", "-m", "params", "--train", "2", "--resamples", "20", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    short = tables.read_table("truth", out / "truth_short.parquet").to_pylist()
    assert sorted({r["target"] for r in short}) == ["train_loss@100ktok", "val_loss@100ktok"]
    assert len(short) == 4 and all(r["status"] == "ok" and 4.0 < r["value"] < 9.3 for r in short)
    published = {r["arch_id"] for r in tables.read_table("truth", out / "truth.parquet").to_pylist()}
    assert {r["arch_id"] for r in short} <= published
    report = result.output.split("short training runs (Ray Tune):", 1)[1]
    assert "val_loss@100ktok                 test_loss                             2" in report
    assert "params                           val_loss@100ktok" in report
