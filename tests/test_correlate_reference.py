"""`correlate --reference M`: every metric set against a method of one's choosing (e.g.
`decoder_params`, Lightweight Transformer Search's proxy) instead of the best baseline,
by the same paired bootstrap of the τ difference (analysis.correlation)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from typer.testing import CliRunner

from tfnas_ray import tables
from tfnas_ray.analysis.correlation import (
    CorrelationConfig,
    correlate,
    format_correlations,
    kendall_tau_b_resampled,
    paired_tau_difference,
    resample_counts,
)
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics.baselines import baseline_scores
from tfnas_ray.metrics import baseline_metrics, directions

RESAMPLES = 300


def _noisy_tables(n: int = 30):
    """A loss and rankers of it: `width` (a baseline, noisy), its exact copy, its negation
    declared lower-is-better (the same ranking), its negation declared higher-is-better
    (the opposite ranking), and `depth`, a perfect ranker."""
    rng = np.random.default_rng(3)
    loss = rng.normal(size=n)
    width = -loss + rng.normal(size=n)  # higher-is-better: a lower loss, a larger width
    values = {"width": width, "width_copy": width, "negated_lower": -width, "negated_higher": -width, "depth": -loss}
    scores = tables.from_rows(
        "scores", [{"arch_id": f"a{i}", "metric": m, "value": float(v[i])} for m, v in values.items() for i in range(n)]
    )
    truth = tables.from_rows("truth", [{"arch_id": f"a{i}", "target": "test_loss", "value": float(loss[i])} for i in range(n)])
    dirs = {m: "higher-is-better" for m in values} | {"negated_lower": "lower-is-better"}
    return scores, truth, dirs, width, loss


def _rows(table) -> dict[str, dict]:
    return {r["metric"]: r for r in table.to_pylist()}


def test_a_ranker_identical_to_the_reference_differs_by_exactly_zero():
    # Known answer: on every resample both τs are the same number, so the difference and
    # both ends of its interval are 0.0 exactly, and 0 lies in [0, 0]: indistinguishable.
    # The negation declared lower-is-better is the same ranker (τ(−x, y) = −τ(x, y),
    # and its orientation flips too).
    scores, truth, dirs, _, _ = _noisy_tables()
    table = correlate(scores, truth, config=CorrelationConfig(resamples=RESAMPLES), directions=dirs, baselines=["width", "depth"], reference="width")
    rows = _rows(table)
    for same in ("width_copy", "negated_lower"):
        assert (rows[same]["tau_minus_baseline"], rows[same]["diff_lo"], rows[same]["diff_hi"]) == (0.0, 0.0, 0.0), same
        assert rows[same]["verdict"] == "indistinguishable"
    assert {r["reference"] for r in rows.values()} == {"width"}
    assert {r["baseline"] for r in rows.values()} == {"depth"}  # the best baseline is still named
    assert rows["width"]["tau_minus_baseline"] is None and rows["width"]["verdict"] is None  # the reference itself


def test_the_opposite_ranker_differs_by_twice_the_oriented_tau_on_every_resample():
    # Known answer: the negation declared higher-is-better ranks the other way round, so
    # Δτ = −2 × width's oriented τ, on the data and on each resample; the interval is the
    # percentiles of −2 × width's resampled τ on the resamples the table's metadata names
    # (default_rng([seed, 1])).
    scores, truth, dirs, width, loss = _noisy_tables()
    table = correlate(scores, truth, config=CorrelationConfig(resamples=RESAMPLES), directions=dirs, baselines=["width"], reference="width")
    row = _rows(table)["negated_higher"]
    oriented = -stats.kendalltau(width, loss, variant="b").statistic  # width ranks a loss: sign −1
    assert row["tau_minus_baseline"] == pytest.approx(-2 * oriented, abs=1e-12)
    resampled = -kendall_tau_b_resampled(width, loss, resample_counts(width.size, RESAMPLES, np.random.default_rng([0, 1])))
    lo, hi = np.nanquantile(-2 * resampled, [0.025, 0.975])
    assert row["diff_lo"] == pytest.approx(lo, abs=1e-12) and row["diff_hi"] == pytest.approx(hi, abs=1e-12)
    assert row["verdict"] == "does not beat"  # width's τ is well above 0 (oriented +0.47)
    assert oriented > 0.3


def test_a_perfect_ranker_against_its_inversion_beats_it_by_two():
    # τ = +1 against −1 on the data and on every resample (duplicated rows tie on both
    # sides and leave τ-b at ±1): Δτ +2, interval [+2, +2], "beats".
    scores, truth, dirs, _, _ = _noisy_tables()
    inverted = tables.from_rows(
        "scores", [{"arch_id": r["arch_id"], "metric": "inverted", "value": -r["value"]} for r in scores.to_pylist() if r["metric"] == "depth"]
    )
    table = correlate(
        pa.concat_tables([scores, inverted]), truth, config=CorrelationConfig(resamples=RESAMPLES),
        directions=dirs | {"inverted": "higher-is-better"}, metrics=["depth"], reference="inverted",
    )
    row = _rows(table)["depth"]
    assert (row["tau_minus_baseline"], row["diff_lo"], row["diff_hi"], row["verdict"]) == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0), "beats")
    assert set(_rows(table)) == {"depth", "inverted"}  # the reference joins the metrics asked for


def test_an_ensemble_may_be_the_reference():
    scores, truth, dirs, width, loss = _noisy_tables()
    table = correlate(scores, truth, config=CorrelationConfig(resamples=50), directions=dirs, metrics=["width"], reference="ensemble:width+depth")
    rows = _rows(table)
    assert rows["width"]["reference"] == "ensemble:width+depth" and rows["width"]["verdict"] is not None
    text = format_correlations(table)
    assert "Δτ vs ensemble:width+depth [95% CI], verdict" in text
    assert "test_loss: reference ensemble:width+depth" in text and "no training-free metric beats" not in text


@pytest.mark.parametrize(
    "reference, message",
    [
        ("decoder_params", r"^--reference 'decoder_params' is not among the scored metrics and baselines; available: depth, negated_higher, negated_lower, width, width_copy \(or ensemble:a\+b of them\)$"),
        ("ensemble:width+nope", r"^--reference 'ensemble:width\+nope': member 'nope' is not among the scored metrics and baselines; available: depth, "),
        ("ensemble:width", r"needs at least two members"),
    ],
)
def test_an_unknown_reference_is_refused_with_what_is_available(reference, message):
    scores, truth, dirs, _, _ = _noisy_tables()
    with pytest.raises(TfnasError, match=message):
        correlate(scores, truth, directions=dirs, reference=reference)


def test_default_rows_name_the_best_baseline_as_their_reference():
    scores, truth, dirs, _, _ = _noisy_tables()
    table = correlate(scores, truth, config=CorrelationConfig(resamples=50), directions=dirs, baselines=["width", "depth"])
    assert {(r["baseline"], r["reference"]) for r in table.to_pylist()} == {("depth", "depth")}
    assert "Δτ vs best baseline [95% CI], verdict" in format_correlations(table)


def test_against_params_on_the_shipped_nb_bert_truth():
    # Real data, no model: the nb-bert baselines from the 500 shipped configurations
    # against GLUE. Known answer: Δτ of num_layers vs params is the difference of their
    # τ-b against GLUE on the same runs (scipy; both higher-is-better, as GLUE is), and the
    # row is the paired bootstrap on those runs.
    archs, truth = get_benchmark("nb-bert").load()
    scores = baseline_scores(archs, batch_options={"seq_len": 128, "batch_size": 2})
    table = correlate(scores, truth, config=CorrelationConfig(resamples=200), directions=directions(), targets=["glue"], baselines=baseline_metrics(), reference="params")
    rows = _rows(table)
    value = {m: {r["arch_id"]: r["value"] for r in scores.to_pylist() if r["metric"] == m} for m in ("num_layers", "params")}
    glue = [(r["arch_id"], r["value"]) for r in truth.to_pylist() if r["target"] == "glue"]
    y = np.array([v for _, v in glue])
    layers, params = (np.array([value[m][a] for a, _ in glue]) for m in ("num_layers", "params"))
    expected = stats.kendalltau(layers, y, variant="b").statistic - stats.kendalltau(params, y, variant="b").statistic
    row = rows["num_layers"]
    assert row["n"] == 500 and row["reference"] == "params"
    assert row["tau_minus_baseline"] == pytest.approx(expected, abs=1e-12)
    paired = paired_tau_difference(layers, params, y, config=CorrelationConfig(resamples=200))
    assert (row["diff_lo"], row["diff_hi"], row["verdict"]) == (pytest.approx(paired["diff_lo"], abs=1e-12), pytest.approx(paired["diff_hi"], abs=1e-12), paired["verdict"])
    assert rows["num_layers"]["kendall_tau"] == pytest.approx(0.682, abs=5e-4)  # issue 19's measurement
    # The best baseline is still named, and params is compared with nothing.
    assert {r["baseline"] for r in rows.values()} == {max((r["kendall_tau"], m) for m, r in rows.items() if r["is_baseline"])[1]}
    assert rows["params"]["verdict"] is None and math.isnan(rows["params"]["tau_minus_baseline"] or math.nan)


def _ptb_run(tmp_path, benchmark_run):
    """40 published PTB cells beside a scores directory of one noise metric, as
    `reproduce` lays them out (the baselines come from archs.parquet)."""
    archs, _ = benchmark_run("nb-nlp-ptb", 40)
    noise = np.random.default_rng(0).normal(size=archs.num_rows)
    scored = tables.from_rows("scores", [{"arch_id": a, "metric": "hidden_cov", "value": float(v)} for a, v in zip(archs.column("arch_id").to_pylist(), noise)])
    tables.write_table("scores", scored, tmp_path / "scores" / "part-0.parquet")


def test_correlate_cli_sets_every_metric_against_the_reference(tmp_path, benchmark_run):
    from tfnas_ray.cli import app

    _ptb_run(tmp_path, benchmark_run)
    out = tmp_path / "correlations.parquet"
    args = ["correlate", str(tmp_path / "scores"), str(tmp_path / "truth.parquet"), "--out", str(out), "--resamples", "100"]
    result = CliRunner().invoke(app, args + ["-m", "hidden_cov", "--reference", "cell_depth"])
    assert result.exit_code == 0, result.output
    rows = {(r["metric"], r["target"]): r for r in pq.read_table(out).to_pylist()}
    assert {r["reference"] for r in rows.values() if r["target"] == "test_loss"} == {"cell_depth"}
    assert rows["hidden_cov", "test_loss"]["verdict"] in {"beats", "does not beat", "indistinguishable"}
    assert "Δτ vs cell_depth [95% CI], verdict" in result.output and "test_loss: reference cell_depth" in result.output


def test_correlate_cli_refuses_an_unknown_reference_in_one_line_before_any_work(tmp_path, benchmark_run):
    from tfnas_ray.cli import app

    _ptb_run(tmp_path, benchmark_run)
    out = tmp_path / "correlations.parquet"
    result = CliRunner().invoke(app, ["correlate", str(tmp_path / "scores"), str(tmp_path / "truth.parquet"), "--out", str(out), "--reference", "decoder_params"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [
        "error: --reference 'decoder_params' is not among the scored metrics and baselines; available: "
        "cell_depth, cell_nodes, flops_per_token, hidden_cov, linear_nodes, params (or ensemble:a+b of them)"
    ]
    assert not out.exists()


def test_reproduce_refuses_an_unknown_reference_before_ray_starts(tmp_path):
    from tfnas_ray.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["reproduce", "nb-nlp-ptb", "--out", str(out), "-m", "hidden_cov", "--reference", "num_layers", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: --reference 'num_layers' is not among the scored metrics and baselines; available: cell_depth, cell_nodes, ")
    assert "hidden_cov" in result.output and not out.exists()


def test_the_report_tau_chart_names_the_reference():
    from tfnas_ray.analysis.report import tau_bar_figure

    scores, truth, dirs, _, _ = _noisy_tables()
    table = correlate(scores, truth, config=CorrelationConfig(resamples=RESAMPLES), directions=dirs, baselines=["width", "depth"], reference="negated_higher")
    fig = tau_bar_figure(table.to_pylist(), "test_loss")
    labels = [t.get_text() for t in fig.figure.axes[0].get_legend().get_texts()]
    # width_copy and negated_lower rank like width: better than its inversion.
    assert labels == ["reference: negated_higher", "beats negated_higher (paired interval above 0)", "trivial baseline"]
    assert "set against the reference (negated_higher)" in fig.caption


def test_reproduce_sets_every_metric_against_the_reference(ray_cluster, tmp_path):
    from tfnas_ray.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["reproduce", "nb-nlp-ptb", "--out", str(out), "--limit", "8", "-m", "params", "--reference", "cell_depth", "--resamples", "20", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    rows = [r for r in pq.read_table(out / "correlations.parquet").to_pylist() if r["target"] == "test_loss"]
    assert {r["reference"] for r in rows} == {"cell_depth"}
    assert next(r for r in rows if r["metric"] == "params")["tau_minus_baseline"] is not None
    assert "test_loss: reference cell_depth" in result.output
