"""analyze-space: design choices, regression, restricted space, metric τ inside it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from tfnas_ray import tables
from tfnas_ray.analysis import space_analysis as sa
from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces.nasbench_bert.benchmarks import records


@pytest.fixture(scope="module")
def frame():
    return sa.design_frame(records())


def test_design_choices_of_benchmark_id_0():
    # id 0: hidden 256; WMA(4 heads, 1024×3), LT-DCT(2, 512×3), SDP(4, 512×3), SDP(4, 1024×1)
    choices = sa.design_choices(records()[0]["spec"])
    assert choices == {
        "hidden_256": 1.0, "layers_4": 1.0, "share_LT": 0.25, "share_DSC": 0.0, "share_WMA": 0.25,
        "share_DCT": 0.25, "share_kernel_9": 0.0, "share_heads_4": 0.75, "share_ffn_1024_x1": 0.25,
        "share_ffn_1024_x3": 0.25, "share_ffn_x3": 0.75,
    }


def test_regression_recovers_an_exact_linear_law():
    rng = np.random.default_rng(0)
    a, b = rng.random(50), rng.random(50)
    toy = pa.table({"a": a, "b": b, "y": 2.0 + 3.0 * a - 1.5 * b})
    fit = sa.regress(toy, "y", ["a", "b"])
    np.testing.assert_allclose(fit.coef, [2.0, 3.0, -1.5], atol=1e-10)
    assert fit.r2 == pytest.approx(1.0)
    with pytest.raises(TfnasError, match="column 'c' is not in the design frame"):
        sa.regress(toy, "y", ["c"])


def test_the_papers_rule_keeps_the_top_100(frame):
    """In the shipped data the 100 best runs all have hidden 256 and 4 layers."""
    assert sa.best_levels(frame) == {"hidden_256": 1.0, "layers_4": 1.0}
    result = sa.restricted_space(frame, {"hidden_256": 1.0, "layers_4": 1.0}, top_k=100)
    assert result["n_all"] == 500 and result["n_inside"] == 133
    assert result["top_k_inside"] == 100
    assert result["median_inside"] > result["median_all"] + 3
    with pytest.raises(TfnasError, match="no run satisfies"):
        sa.restricted_space(frame, {"hidden_256": 2.0})


def test_depth_and_width_lead_and_operations_do_not_matter(frame):
    effects = sa.choice_effects(frame).to_pylist()
    assert [e["choice"] for e in effects[:2]] == ["layers_4", "hidden_256"]
    test = sa.operation_test(frame)
    assert test.p > 0.05 and test.n == 500  # the as-trained reading: all layers were SDP


def test_metric_taus_inside_and_outside(frame):
    ids = frame.column("arch_id").to_pylist()
    glue = frame.column("glue").to_pylist()
    per_arch = {}
    for a, g in zip(ids, glue):
        per_arch.setdefault(a, []).append(g)
    rows = [dict(arch_id=a, metric="oracle", value=float(np.mean(v)), seed=0) for a, v in per_arch.items()]
    rows += [dict(arch_id=a, metric="broken", value=None, error="NaN", seed=0) for a in per_arch]
    scores = tables.from_rows("scores", rows)
    taus = {r["metric"]: r for r in sa.metric_taus(frame, scores, {"hidden_256": 1.0, "layers_4": 1.0}).to_pylist()}
    assert taus["oracle"]["tau_all"] > 0.99 and taus["oracle"]["tau_inside"] > 0.99
    assert taus["oracle"]["n_inside"] == 133
    assert "broken" not in taus  # a metric with no value at all has no row


def test_report_mentions_each_part(frame):
    text = sa.format_analysis(sa.analyze_space(records()))
    assert "layers_4" in text and "As-trained check" in text and "of the global top 100, 100 lie inside" in text
