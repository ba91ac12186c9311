"""Correlations: against scipy on known data, and the table's conventions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from tfnas_ray import tables
from tfnas_ray.analysis.correlation import CorrelationConfig, correlate, correlate_pair
from tfnas_ray.errors import TfnasError


def test_kendall_tau_b_with_ties_matches_a_textbook_value():
    # Ties on both sides; tau-b = (C − D) / sqrt((n0 − n1)(n0 − n2)):
    # x = [1,2,2,3], y = [1,3,2,2]: C = 3, D = 1, n0 = 6, n1 = 1, n2 = 1 -> 2/5 = 0.4.
    row = correlate_pair([1, 2, 2, 3], [1, 3, 2, 2], CorrelationConfig(resamples=0))
    assert row["kendall_tau"] == pytest.approx(0.4)


def test_statistics_equal_scipy_and_intervals_cover_them():
    rng = np.random.default_rng(1)
    x = rng.normal(size=60)
    y = -0.6 * x + rng.normal(size=60)
    row = correlate_pair(x, y, CorrelationConfig(resamples=300, seed=3))
    assert row["n"] == 60
    assert row["kendall_tau"] == pytest.approx(stats.kendalltau(x, y, variant="b").statistic, rel=1e-12)
    assert row["spearman_rho"] == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12)
    assert row["pearson_r"] == pytest.approx(stats.pearsonr(x, y).statistic, rel=1e-12)
    assert row["kendall_lo"] < row["kendall_tau"] < row["kendall_hi"] < 0  # signed, never abs()
    assert row["spearman_lo"] < row["spearman_rho"] < row["spearman_hi"] < 0
    assert row == correlate_pair(x, y, CorrelationConfig(resamples=300, seed=3))  # seeded


def test_nan_pairs_are_dropped_and_undefined_cases_are_nan():
    row = correlate_pair([1, 2, math.nan, 4, 5], [2, 1, 3, math.nan, 6], CorrelationConfig(resamples=0))
    assert row["n"] == 3
    assert row["kendall_tau"] == pytest.approx(stats.kendalltau([1, 2, 5], [2, 1, 6]).statistic)
    constant = correlate_pair([1, 1, 1, 1], [1, 2, 3, 4], CorrelationConfig(resamples=10))
    assert constant["n"] == 4 and math.isnan(constant["kendall_tau"]) and math.isnan(constant["pearson_r"])


def test_correlate_joins_on_arch_id_and_records_conventions():
    scores = tables.from_rows(
        "scores",
        [{"arch_id": f"a{i}", "metric": "m", "value": float(v)} for i, v in enumerate([1, 2, 3, 4, 5])]
        + [{"arch_id": "a0", "metric": "m", "value": 1.0}]  # a second seed: averaged
        + [{"arch_id": "a1", "metric": "broken", "value": None, "error": "NaN"}],
    )
    truth = tables.from_rows(
        "truth", [{"arch_id": f"a{i}", "target": "loss", "value": float(v)} for i, v in enumerate([5, 4, 3, 1, 2])]
    )
    table = correlate(scores, truth, config=CorrelationConfig(resamples=50))
    rows = {r["metric"]: r for r in table.to_pylist()}
    assert set(rows) == {"m"}
    assert rows["m"]["n"] == 5
    assert rows["m"]["kendall_tau"] == pytest.approx(stats.kendalltau([1, 2, 3, 4, 5], [5, 4, 3, 1, 2]).statistic)
    conventions = json.loads(table.schema.metadata[b"tfnas.conventions"])
    assert "variant='b'" in conventions["kendall"] and "omit" in conventions["nan_policy"]


def test_tables_that_share_no_architecture_are_an_error():
    scores = tables.from_rows("scores", [{"arch_id": "a", "metric": "m", "value": 1.0}])
    truth = tables.from_rows("truth", [{"arch_id": "b", "target": "loss", "value": 1.0}])
    with pytest.raises(TfnasError, match="share no arch_id"):
        correlate(scores, truth)


def test_reading_malformed_tables_gives_one_clear_line(tmp_path):
    not_parquet = tmp_path / "archs.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(TfnasError, match="is not a readable Parquet file"):
        tables.read_table("archs", not_parquet)
    with pytest.raises(TfnasError, match="does not exist"):
        tables.read_table("archs", tmp_path / "missing.parquet")
    wrong = tmp_path / "wrong.parquet"
    tables.write_table("truth", tables.from_rows("truth", [{"arch_id": "a", "target": "t", "value": 1.0}]), wrong)
    with pytest.raises(TfnasError, match="is not a valid archs table: it lacks column 'space'"):
        tables.read_table("archs", wrong)
