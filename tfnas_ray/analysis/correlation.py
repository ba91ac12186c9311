"""Rank correlations between metrics and trained quality, with bootstrap intervals.

Conventions (recorded in the correlations table's metadata, as scipy.stats would state
them): Kendall's τ-b (ties adjusted), Spearman's ρ (average ranks for ties), Pearson's
r; all signed, never abs(). A pair with a null or NaN on either side is dropped before
anything is computed. Intervals are percentile bootstrap intervals over resampled
architectures, with a seeded generator, so the same inputs give the same table.
When a score exists several times for one architecture (several seeds), its mean is used;
a rank ensemble `ensemble:a+b` (analysis.ranking) is correlated through its merit, which
is oriented so that higher predicts better (a single metric keeps its raw values);
each truth row is one observation (a benchmark that trained one cell twice contributes
both runs, as the published per-run results do).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from tfnas_ray import tables
from tfnas_ray.errors import TfnasError


@dataclass(frozen=True)
class CorrelationConfig:
    """Attributes:
        resamples: bootstrap resamples per interval (0 disables intervals).
        confidence: interval coverage, in (0, 1).
        seed: seed of the bootstrap generator.
    """

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 0:
            raise TfnasError(f"resamples must be >= 0, got {self.resamples}")
        if not 0 < self.confidence < 1:
            raise TfnasError(f"confidence must be in (0, 1), got {self.confidence}")


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.kendalltau(x, y, variant="b").statistic)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.spearmanr(x, y).statistic)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.pearsonr(x, y).statistic)


def correlate_pair(x, y, config: CorrelationConfig = CorrelationConfig()) -> dict:
    """Every statistic of one (metric, target) pair; NaN where undefined (n < 3, or a
    constant side)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    row = {"n": n}
    names = ("kendall_tau", "kendall_lo", "kendall_hi", "spearman_rho", "spearman_lo", "spearman_hi", "pearson_r")
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return row | {name: math.nan for name in names}
    row["kendall_tau"] = _kendall(x, y)
    row["spearman_rho"] = _spearman(x, y)
    row["pearson_r"] = _pearson(x, y)
    lo_q, hi_q = (1 - config.confidence) / 2, 1 - (1 - config.confidence) / 2
    if config.resamples:
        rng = np.random.default_rng(config.seed)
        taus, rhos = np.empty(config.resamples), np.empty(config.resamples)
        for b in range(config.resamples):
            idx = rng.integers(0, n, size=n)
            xb, yb = x[idx], y[idx]
            if np.ptp(xb) == 0 or np.ptp(yb) == 0:
                taus[b] = rhos[b] = math.nan
                continue
            taus[b] = _kendall(xb, yb)
            rhos[b] = _spearman(xb, yb)
        row["kendall_lo"], row["kendall_hi"] = np.nanquantile(taus, [lo_q, hi_q]).tolist()
        row["spearman_lo"], row["spearman_hi"] = np.nanquantile(rhos, [lo_q, hi_q]).tolist()
    else:
        row |= {"kendall_lo": math.nan, "kendall_hi": math.nan, "spearman_lo": math.nan, "spearman_hi": math.nan}
    return row


def _mean_scores(scores: pa.Table) -> dict[str, dict[str, float]]:
    """metric -> arch_id -> mean of its non-null values."""
    grouped = (
        scores.select(["arch_id", "metric", "value"])
        .filter(pc.is_valid(scores.column("value")))
        .group_by(["metric", "arch_id"])
        .aggregate([("value", "mean")])
    )
    out: dict[str, dict[str, float]] = {}
    for metric, arch_id, value in zip(
        grouped.column("metric").to_pylist(), grouped.column("arch_id").to_pylist(), grouped.column("value_mean").to_pylist()
    ):
        out.setdefault(metric, {})[arch_id] = value
    return out


def device_kinds(scores: pa.Table) -> dict[str, int]:
    """Rows with a value per device kind of a scores table's `device` column: "cpu" for
    "cpu" and "cpu (simulated gpu 0)", "cuda" for "cuda (gpu 0)" and "cuda:1"; rows
    without a device (recorded failures) are not counted."""
    kinds: dict[str, int] = {}
    for device, value in zip(scores.column("device").to_pylist(), scores.column("value").to_pylist()):
        if device is not None and value is not None:
            kind = device.split(" ")[0].split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _check_one_device(scores: pa.Table) -> None:
    """Refuse values from several device kinds: a CPU's and a GPU's values of one
    architecture differ in their low digits (other kernels, other reduction orders), so
    averaging or ranking them together mixes two measurements — as mixing plans would."""
    kinds = device_kinds(scores)
    if len(kinds) > 1:
        counted = " and ".join(f"{kind} ({n} rows)" for kind, n in sorted(kinds.items()))
        raise TfnasError(
            f"the scores table mixes values computed on {counted}; correlate one device's values "
            "(a scores directory names each device's run as its own plan: choose one with --plan)"
        )


def _ensemble_values(name: str, per_metric: dict[str, dict[str, float]], directions: dict[str, str]) -> dict[str, float]:
    """arch_id -> merit of a rank ensemble (`ranking`: higher predicts better), over the
    architectures where every member has a value."""
    from tfnas_ray.analysis.ranking import method_merit, parse_method

    method = parse_method(name)
    for member in method.members:
        if member not in per_metric:
            raise TfnasError(f"ensemble {name!r}: no scores for metric {member!r}; have: {', '.join(sorted(per_metric))}")
    archs = sorted(set.intersection(*(set(per_metric[m]) for m in method.members)))
    columns = {m: np.array([per_metric[m][a] for a in archs]) for m in method.members}
    return dict(zip(archs, method_merit(method, columns, directions).tolist()))


def _stability(scores: pa.Table) -> dict[str, dict]:
    """Per metric, how much its ranking of architectures depends on the seed and on the
    minibatch (`--init-seeds`, `--batches`):

    - tau_between_seeds: Kendall τ-b between two seeds' values over the architectures,
      averaged over every pair of seeds and every minibatch (None with one seed);
    - tau_between_batches: likewise between minibatches, at the same seed (None with one);
    - seed_averaged: arch_id -> mean over the seeds at minibatch 0 (None with one seed).

    Seeds are paired across architectures by their order within each architecture (with
    `fixed` seeding they are the same numbers; with `derived` ones independent draws, so
    any consistent pairing is as good). A null batch is minibatch 0.
    """
    values: dict[str, dict[tuple[str, int], dict[int, float]]] = {}
    for arch_id, metric, value, seed, batch in zip(
        *(scores.column(c).to_pylist() for c in ("arch_id", "metric", "value", "seed", "batch"))
    ):
        if value is not None:
            values.setdefault(metric, {}).setdefault((arch_id, batch or 0), {})[seed if seed is not None else 0] = value
    out = {}
    for metric, cells in values.items():
        seeds_of: dict[str, set[int]] = {}
        for (arch_id, _), by_seed in cells.items():
            seeds_of.setdefault(arch_id, set()).update(by_seed)
        replicate = {arch_id: {seed: r for r, seed in enumerate(sorted(seeds))} for arch_id, seeds in seeds_of.items()}
        n_seeds = max(len(s) for s in seeds_of.values())
        batches = sorted({b for _, b in cells})
        archs = sorted(seeds_of)

        def column(rep: int, batch: int) -> np.ndarray:
            col = np.full(len(archs), math.nan)
            for i, arch_id in enumerate(archs):
                for seed, value in cells.get((arch_id, batch), {}).items():
                    if replicate[arch_id][seed] == rep:
                        col[i] = value
            return col

        def mean_tau(pairs) -> float | None:
            taus = []
            for x, y in pairs:
                keep = np.isfinite(x) & np.isfinite(y)
                if keep.sum() >= 3 and np.ptp(x[keep]) > 0 and np.ptp(y[keep]) > 0:
                    taus.append(_kendall(x[keep], y[keep]))
            return float(np.mean(taus)) if taus else math.nan

        row: dict = {"tau_between_seeds": None, "tau_between_batches": None, "seed_averaged": None}
        if n_seeds > 1:
            cols = {(r, b): column(r, b) for r in range(n_seeds) for b in batches}
            row["tau_between_seeds"] = mean_tau(
                (cols[r1, b], cols[r2, b]) for b in batches for r1 in range(n_seeds) for r2 in range(r1 + 1, n_seeds)
            )
            with np.errstate(all="ignore"):
                stacked = np.stack([cols[r, batches[0]] for r in range(n_seeds)])
                means = np.nanmean(stacked, axis=0) if np.isfinite(stacked).any() else stacked[0]
            row["seed_averaged"] = {a: float(v) for a, v in zip(archs, means) if np.isfinite(v)}
        if len(batches) > 1:
            cols_b = {(r, b): column(r, b) for r in range(n_seeds) for b in batches}
            row["tau_between_batches"] = mean_tau(
                (cols_b[r, b1], cols_b[r, b2]) for r in range(n_seeds) for i, b1 in enumerate(batches) for b2 in batches[i + 1 :]
            )
        out[metric] = row
    return out


def correlate(
    scores: pa.Table,
    truth: pa.Table,
    *,
    config: CorrelationConfig = CorrelationConfig(),
    directions: dict[str, str] | None = None,
    metrics: list[str] | None = None,
    targets: list[str] | None = None,
) -> pa.Table:
    """The correlations table: one row per (metric, target).

    Args:
        scores: a scores table (several seeds per architecture are averaged).
        truth: a truth table; null values (diverged runs) are dropped.
        directions: metric -> declared direction, copied into the table.
        metrics / targets: restrict (and order) what is correlated; default: all present.

    Raises:
        TfnasError: no architecture appears in both tables; values computed on more than
            one device kind (CPU and GPU).
    """
    scores = tables.conform("scores", scores, what="scores table")
    truth = tables.conform("truth", truth, what="truth table")
    _check_one_device(scores)
    per_metric = _mean_scores(scores)
    metric_names = metrics or sorted(per_metric)
    for name in metric_names:
        if name.startswith("ensemble:") and name not in per_metric:
            per_metric[name] = _ensemble_values(name, per_metric, directions or {})
    target_names = targets or list(dict.fromkeys(truth.column("target").to_pylist()))
    truth_ids = truth.column("arch_id").to_pylist()
    truth_targets = truth.column("target").to_pylist()
    truth_values = truth.column("value").to_pylist()
    if per_metric and not set(truth_ids) & {a for m in per_metric.values() for a in m}:
        raise TfnasError("the scores and truth tables share no arch_id: were they made from the same archs table?")
    stability = _stability(scores)

    def pairs_of(values: dict[str, float], target: str) -> tuple[list[float], list[float]]:
        pairs = [
            (values.get(arch_id, math.nan), v if v is not None else math.nan)
            for arch_id, t, v in zip(truth_ids, truth_targets, truth_values)
            if t == target
        ]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    rows = []
    for metric in metric_names:
        values = per_metric.get(metric, {})
        steady = stability.get(metric, {})
        for target in target_names:
            stats_row = correlate_pair(*pairs_of(values, target), config)
            averaged = steady.get("seed_averaged")
            rows.append(
                {
                    "metric": metric,
                    "target": target,
                    **stats_row,
                    "direction": (directions or {}).get(metric),
                    "tau_between_seeds": steady.get("tau_between_seeds"),
                    "tau_between_batches": steady.get("tau_between_batches"),
                    "tau_seed_averaged": correlate_pair(*pairs_of(averaged, target), CorrelationConfig(resamples=0))["kendall_tau"]
                    if averaged is not None
                    else None,
                }
            )
    table = tables.from_rows("correlations", rows)
    table = table.replace_schema_metadata(
        {
            b"tfnas.conventions": json.dumps(
                {
                    "kendall": "tau-b: scipy.stats.kendalltau(x, y, variant='b')",
                    "spearman": "scipy.stats.spearmanr(x, y), average ranks for ties",
                    "pearson": "scipy.stats.pearsonr(x, y)",
                    "nan_policy": "pairs with a null or NaN on either side are dropped (omit)",
                    "undefined": "n < 3 or a constant side gives NaN",
                    "interval": f"percentile bootstrap over architectures, {config.resamples} resamples, "
                    f"{config.confidence:.0%} coverage, numpy default_rng({config.seed})",
                    "scores": "mean over the seeds (and minibatches) of an architecture",
                    "stability": "tau_between_seeds / tau_between_batches: mean Kendall tau-b over pairs of seeds "
                    "(same minibatch) / of minibatches (same seed); tau_seed_averaged: tau-b vs the target of the "
                    "mean over seeds at minibatch 0; null with one seed / one minibatch",
                    "truth": "one observation per truth row",
                    "sign": "signed; never abs()",
                }
            ).encode()
        }
    )
    return table


def format_correlations(table: pa.Table, *, sort_by_abs_tau: bool = True) -> str:
    """A plain-text table, targets in table order, by |τ| (largest first) within each."""
    rows = table.to_pylist()
    target_order = {t: i for i, t in enumerate(dict.fromkeys(r["target"] for r in rows))}  # primary first

    def strength(row) -> float:
        tau = row["kendall_tau"]
        return abs(tau) if tau is not None and tau == tau else -1.0  # NaN last

    if sort_by_abs_tau:
        rows.sort(key=lambda r: (target_order[r["target"]], -strength(r)))

    def num(v, width=6):
        return f"{v:+.{width - 3}f}" if v is not None and v == v else "nan".rjust(width)

    header = f"{'metric':28s} {'target':16s} {'n':>5s}  {'τ':>6s} [{'95% CI':^15s}]  {'ρ':>6s} [{'95% CI':^15s}]  {'r':>6s}  direction"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['metric']:28s} {r['target']:16s} {r['n']:5d}  {num(r['kendall_tau'])} [{num(r['kendall_lo'])}, {num(r['kendall_hi'])}]"
            f"  {num(r['spearman_rho'])} [{num(r['spearman_lo'])}, {num(r['spearman_hi'])}]  {num(r['pearson_r'])}  {r.get('direction') or ''}"
        )
    stable = [r for r in rows if r.get("tau_between_seeds") is not None or r.get("tau_between_batches") is not None]
    if stable:
        header = f"{'metric':28s} {'target':16s}  {'τ seed↔seed':>11s}  {'τ batch↔batch':>13s}  {'τ seed-averaged':>15s}"
        lines += ["", "stability (--init-seeds / --batches):", header, "-" * len(header)]
        def cell(v, width):
            return (f"{v:+.3f}" if v is not None and v == v else "-").rjust(width)

        for r in stable:
            lines.append(
                f"{r['metric']:28s} {r['target']:16s}  {cell(r.get('tau_between_seeds'), 11)}  {cell(r.get('tau_between_batches'), 13)}  {cell(r.get('tau_seed_averaged'), 15)}"
            )
    return "\n".join(lines)
