"""τ of short-run loss against published test loss, and of metrics against both."""

from __future__ import annotations

import math

import pytest

from tfnas_ray import tables
from tfnas_ray.analysis.short_runs import format_short_run_report, short_run_report
from tfnas_ray.errors import TfnasError


def _truth(rows):
    return tables.from_rows("truth", [dict(arch_id=a, target=t, value=v, status=s) for a, t, v, s in rows])


SHORT = _truth(
    [("a", "val_loss@100ktok", 1.0, "ok"), ("b", "val_loss@100ktok", 2.0, "ok"), ("c", "val_loss@100ktok", 3.0, "ok"),
     ("d", "val_loss@100ktok", 4.0, "ok"), ("e", "val_loss@100ktok", None, "diverged"),
     ("a", "train_loss@100ktok", 9.0, "ok")]
)
PUBLISHED = _truth(
    [("a", "test_loss", 1.0, "ok"), ("b", "test_loss", 2.0, "ok"), ("c", "test_loss", 4.0, "ok"),
     ("d", "test_loss", 3.0, "ok"), ("e", "test_loss", 5.0, "ok"), ("f", "test_loss", 6.0, "ok")]
)


def test_short_run_tau_known_answers():
    scores = tables.from_rows(
        "scores",
        [{"arch_id": a, "metric": "m", "value": v} for a, v in (("a", 4.0), ("b", 3.0), ("c", math.nan), ("d", 1.0))],
    )
    rows = {(r["x"], r["y"]): r for r in short_run_report(SHORT, PUBLISHED, scores).to_pylist()}
    # a-d ranked 1,2,3,4 vs 1,2,4,3: 5 concordant and 1 discordant pair of 6, no ties,
    # so τ-b = (5 - 1) / 6 (counted by hand). The diverged `e` has no value: n = 4.
    short = rows[("val_loss@100ktok", "test_loss")]
    assert short["n"] == 4 and short["kendall_tau"] == pytest.approx(4 / 6)
    # m is NaN for c (omitted); on a, b, d it runs exactly against both: τ = -1.
    assert rows[("m", "val_loss@100ktok")]["n"] == 3
    assert rows[("m", "val_loss@100ktok")]["kendall_tau"] == pytest.approx(-1.0)
    assert rows[("m", "test_loss (trained archs)")]["kendall_tau"] == pytest.approx(-1.0)
    text = format_short_run_report(short_run_report(SHORT, PUBLISHED, scores))
    assert "val_loss@100ktok" in text and "+0.667" in text


def test_a_truth_without_short_runs_is_refused():
    with pytest.raises(TfnasError, match=r"short-run truth has no val_loss@… target \(found: test_loss\)"):
        short_run_report(PUBLISHED, PUBLISHED)
