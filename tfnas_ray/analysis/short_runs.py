"""How well short training runs stand in for the published, fully trained results.

Three kinds of rows, all Kendall's τ-b (scipy.stats.kendalltau, variant "b": ties
adjusted; nan_policy "omit": a pair with NaN on either side is dropped; n counts the
pairs used), signed, over the architectures that have both values:

- `val_loss@…` (short run) vs the published `test_loss` — does a short run rank
  architectures like 50 epochs do?
- every metric vs the short-run loss — does a training-free metric predict the short run?
- every metric vs the published `test_loss`, on the same trained architectures — the
  baseline to compare the previous row with.

Only truth rows with status "ok" and a value count (diverged and early-stopped runs have
no value at the budget). A metric scored with several seeds enters as its mean.

Example:
    >>> table = short_run_report(truth_short, truth_published, scores)   # doctest: +SKIP
    >>> print(format_short_run_report(table))                            # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pyarrow as pa
from scipy import stats

from tfnas_ray import tables
from tfnas_ray.errors import TfnasError

SHORT_RUN_PREFIX = "val_loss@"
PUBLISHED_TARGET = "test_loss"

REPORT = pa.schema(
    [
        pa.field("x", pa.string(), nullable=False),  # a metric name or a short-run target
        pa.field("y", pa.string(), nullable=False),  # the target it is ranked against
        pa.field("n", pa.int64(), nullable=False),  # architectures with both values
        pa.field("kendall_tau", pa.float64()),  # τ-b; null when n < 2 or an input is constant
        pa.field("pvalue", pa.float64()),
    ]
)
CONVENTIONS = {"kendall": "scipy.stats.kendalltau(variant='b', nan_policy='omit')", "sign": "signed, never abs()"}


def _truth_values(truth: pa.Table, target: str) -> dict[str, float]:
    """arch_id -> value of `target` (mean if an architecture has several ok rows)."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in truth.select(["arch_id", "target", "value", "status"]).to_pylist():
        if row["target"] == target and row["value"] is not None and row["status"] in (None, "ok"):
            values[row["arch_id"]].append(row["value"])
    return {arch: float(np.mean(v)) for arch, v in values.items()}


def _metric_values(scores: pa.Table) -> dict[str, dict[str, float]]:
    """metric -> arch_id -> mean value over seeds (nulls skipped)."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in scores.select(["arch_id", "metric", "value"]).to_pylist():
        if row["value"] is not None:
            values[row["metric"]][row["arch_id"]].append(row["value"])
    return {m: {a: float(np.mean(v)) for a, v in by_arch.items()} for m, by_arch in values.items()}


def _tau(x: dict[str, float], y: dict[str, float]) -> tuple[int, float | None, float | None]:
    common = sorted(set(x) & set(y))
    a = np.array([x[k] for k in common], dtype=float)
    b = np.array([y[k] for k in common], dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    n = int(keep.sum())
    if n < 2:
        return n, None, None
    result = stats.kendalltau(a, b, variant="b", nan_policy="omit")
    tau, p = float(result.statistic), float(result.pvalue)
    return n, (None if math.isnan(tau) else tau), (None if math.isnan(p) else p)


def short_run_report(truth_short: pa.Table, truth_published: pa.Table, scores: pa.Table | None = None) -> pa.Table:
    """τ of short-run loss vs published test loss, and of each metric vs both.

    Args:
        truth_short: truth rows from `tfnas train` (targets `val_loss@<budget>`).
        truth_published: the benchmark's truth (target `test_loss`).
        scores: a scores table (optional); each metric gets two rows.

    Returns:
        A table with columns x, y, n, kendall_tau, pvalue (conventions in its metadata).

    Raises:
        TfnasError: truth_short has no `val_loss@…` target with a value.
    """
    truth_short = tables.conform("truth", truth_short, what="short-run truth")
    truth_published = tables.conform("truth", truth_published, what="published truth")
    short_targets = sorted({t for t in truth_short.column("target").to_pylist() if t.startswith(SHORT_RUN_PREFIX)})
    if not short_targets:
        found = ", ".join(sorted(set(truth_short.column("target").to_pylist()))) or "none"
        raise TfnasError(f"short-run truth has no {SHORT_RUN_PREFIX}… target (found: {found}); train with `tfnas train` first")
    published = _truth_values(truth_published, PUBLISHED_TARGET)
    metrics = _metric_values(tables.conform("scores", scores, what="scores")) if scores is not None else {}
    rows = []
    for target in short_targets:
        short = _truth_values(truth_short, target)
        n, tau, p = _tau(short, published)
        rows.append({"x": target, "y": PUBLISHED_TARGET, "n": n, "kendall_tau": tau, "pvalue": p})
        for metric in sorted(metrics):
            n, tau, p = _tau(metrics[metric], short)
            rows.append({"x": metric, "y": target, "n": n, "kendall_tau": tau, "pvalue": p})
            trained = {arch: v for arch, v in published.items() if arch in short}
            n, tau, p = _tau(metrics[metric], trained)
            rows.append({"x": metric, "y": f"{PUBLISHED_TARGET} (trained archs)", "n": n, "kendall_tau": tau, "pvalue": p})
    table = pa.Table.from_pylist(rows, schema=REPORT)
    return table.replace_schema_metadata({"tfnas.conventions": json.dumps(CONVENTIONS)})


def format_short_run_report(table: pa.Table) -> str:
    """The report as aligned text, one row per line."""
    lines = [f"{'x':32s} {'y':34s} {'n':>4s} {'tau':>7s} {'p':>8s}"]
    for row in table.to_pylist():
        tau = "-" if row["kendall_tau"] is None else f"{row['kendall_tau']:+.3f}"
        p = "-" if row["pvalue"] is None else f"{row['pvalue']:.2g}"
        lines.append(f"{row['x']:32s} {row['y']:34s} {row['n']:4d} {tau:>7s} {p:>8s}")
    return "\n".join(lines)
