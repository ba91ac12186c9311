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

Against the baselines: for each target, the *best baseline* is the trivial baseline
(metrics/baselines.py, `params` included) with the highest oriented τ — τ times the
sign of its declared direction times the sign of the target's (a loss is lower-is-
better), so that > 0 always means "ranks like the truth". Every other metric is set
against it on the very same truth rows (those where the metric, the baseline and the
target all have a value) by `paired_tau_difference`: the difference of oriented τs
and its paired percentile bootstrap interval (both τs computed on the same resample of
architectures), with a verdict: "beats" (interval above 0), "does not beat" (below 0:
the baseline ranks better) or "indistinguishable" (the interval covers 0). Choosing
the best of several baselines on the same data favours the baselines, never the metric.

Against a reference of one's choosing (`correlate(..., reference=M)`, `tfnas correlate
--reference M`): the same paired comparison with M — any scored metric, baseline or
`ensemble:a+b` of them — in place of the best baseline (e.g. `decoder_params`, the proxy
of Lightweight Transformer Search, on a transformer family). The column `reference`
names what each row was set against; `baseline` still names the best baseline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

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


VERDICTS = ("beats", "does not beat", "indistinguishable")

# Above this many rows the (n, n) pair matrices of `kendall_tau_b_resampled` (3 × 8n²
# bytes) would not fit comfortably; scipy is called once per resample instead.
_PAIR_MATRIX_MAX_N = 3000


def _pair_matrices(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, Tx, Ty), (n, n) float64: S = sign(xi − xj)·sign(yi − yj), Tx = [xi = xj],
    Ty = [yi = yj] (the diagonal of Tx and Ty is 1, of S 0)."""
    dx, dy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    return dx * dy, (dx == 0).astype(np.float64), (dy == 0).astype(np.float64)


def kendall_tau_b_resampled(x, y, counts) -> np.ndarray:
    """Kendall τ-b of (x[idx], y[idx]) for every resample, given as `counts` (B, n): how
    many times each row was drawn. Equal to `scipy.stats.kendalltau(x[idx], y[idx],
    variant='b')` (a test checks it), computed from pair counts instead of sorting:
    with weights w (N = Σw rows drawn), C − D = ½ wᵀSw, the pairs tied in x are
    ½(wᵀ·Tx·w − N) (a row drawn twice is tied with itself), n₀ = N(N − 1)/2 and
    τ-b = (C − D) / √((n₀ − n₁)(n₀ − n₂)); NaN where a side is constant.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))  # (B, n)
    if x.size > _PAIR_MATRIX_MAX_N:
        out = np.empty(counts.shape[0])
        for b, w in enumerate(counts):
            idx = np.repeat(np.arange(x.size), w.astype(np.int64))
            out[b] = _kendall(x[idx], y[idx]) if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0 else math.nan
        return out
    S, Tx, Ty = _pair_matrices(x, y)
    N = counts.sum(axis=1)
    n0 = N * (N - 1) / 2
    concordance = 0.5 * np.einsum("bi,bi->b", counts @ S, counts)
    ties_x = 0.5 * (np.einsum("bi,bi->b", counts @ Tx, counts) - N)
    ties_y = 0.5 * (np.einsum("bi,bi->b", counts @ Ty, counts) - N)
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = np.sqrt((n0 - ties_x) * (n0 - ties_y))
        return np.where(denominator > 0, concordance / denominator, math.nan)


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) draw counts of `resamples` bootstrap resamples of n rows (each n
    rows drawn uniformly with replacement)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)


def check_reference(reference: str, available) -> None:
    """Refuse a reference that is not a metric of `available` (the scored metrics and the
    baselines added) or a rank ensemble `ensemble:a+b` of them — before any work.

    Raises:
        TfnasError: one line naming the reference and listing what is available.
    """
    from tfnas_ray.analysis.ranking import parse_method

    have = sorted(set(available))
    method = parse_method(reference)  # a malformed ensemble says why
    missing = [m for m in method.members if m not in have]
    if missing:
        what = f"--reference {reference!r}: member {missing[0]!r} is" if method.is_ensemble else f"--reference {reference!r} is"
        raise TfnasError(
            f"{what} not among the scored metrics and baselines; available: {', '.join(have) or '(none)'} (or ensemble:a+b of them)"
        )


def compared_with(row: Mapping) -> str | None:
    """What a correlations row was set against: the reference given to `correlate`, else
    the best baseline of its target (tables written before `reference` name only that)."""
    return row.get("reference") or row.get("baseline")


def given_reference(rows: Sequence[Mapping]) -> str | None:
    """The reference given to `correlate` (`--reference`), None where every row was set
    against the best baseline chosen per target."""
    return next((r["reference"] for r in rows if r.get("reference") and r["reference"] != r.get("baseline")), None)


def verdict(lo: float, hi: float) -> str | None:
    """The verdict of a difference interval: above 0, below 0, or covering it."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return VERDICTS[0] if lo > 0 else VERDICTS[1] if hi < 0 else VERDICTS[2]


def paired_tau_difference(
    x, baseline, y, *, sign_x: int = 1, sign_baseline: int = 1, config: CorrelationConfig = CorrelationConfig()
) -> dict:
    """Is metric `x` a better ranker of `y` than `baseline`? A paired bootstrap of the
    difference of their oriented Kendall τ-b over the same rows.

    Arguments:
        x, baseline, y: (n,) values per truth row; rows where any is NaN are dropped.
        sign_x, sign_baseline: +1 or −1, the orientation of each τ (the product of the
            metric's declared direction and the target's), so that > 0 means "agrees
            with the truth".
        config: resamples, confidence and seed of the bootstrap.

    Returns:
        {"n", "tau_minus_baseline", "diff_lo", "diff_hi", "verdict"}: the difference on
        the data, its percentile interval over `config.resamples` resamples of rows —
        each resample used for both τs (paired: what the two share cancels out) — and
        `verdict` (VERDICTS; None without resamples or with n < 3).
    """
    x, b, y = (np.asarray(v, dtype=np.float64) for v in (x, baseline, y))
    if not x.shape == b.shape == y.shape:
        raise TfnasError(f"x, baseline and y must have one shape, got {x.shape}, {b.shape}, {y.shape}")
    keep = np.isfinite(x) & np.isfinite(b) & np.isfinite(y)
    x, b, y = x[keep], b[keep], y[keep]
    n = int(x.size)
    row = {"n": n, "tau_minus_baseline": math.nan, "diff_lo": math.nan, "diff_hi": math.nan, "verdict": None}
    if n < 3 or np.ptp(y) == 0:
        return row
    tau_x = sign_x * _kendall(x, y) if np.ptp(x) > 0 else math.nan
    tau_b = sign_baseline * _kendall(b, y) if np.ptp(b) > 0 else math.nan
    row["tau_minus_baseline"] = tau_x - tau_b
    if config.resamples and math.isfinite(row["tau_minus_baseline"]):
        # Its own stream (seeded from the config's seed), so adding this test leaves the
        # per-metric intervals exactly as they were.
        counts = resample_counts(n, config.resamples, np.random.default_rng([config.seed, 1]))
        diffs = sign_x * kendall_tau_b_resampled(x, y, counts) - sign_baseline * kendall_tau_b_resampled(b, y, counts)
        lo_q, hi_q = (1 - config.confidence) / 2, 1 - (1 - config.confidence) / 2
        if np.isfinite(diffs).any():
            row["diff_lo"], row["diff_hi"] = np.nanquantile(diffs, [lo_q, hi_q]).tolist()
            row["verdict"] = verdict(row["diff_lo"], row["diff_hi"])
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
    without a device (recorded failures) and rows computed on none (the trivial
    baselines, read from the spec: `metrics.baselines.NO_DEVICE`) are not counted."""
    from tfnas_ray.metrics.baselines import NO_DEVICE

    kinds: dict[str, int] = {}
    for device, value in zip(scores.column("device").to_pylist(), scores.column("value").to_pylist()):
        if device is not None and device != NO_DEVICE and value is not None:
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
    baselines: Sequence[str] = (),
    reference: str | None = None,
) -> pa.Table:
    """The correlations table: one row per (metric, target).

    Args:
        scores: a scores table (several seeds per architecture are averaged).
        truth: a truth table; null values (diverged runs) are dropped.
        directions: metric -> declared direction, copied into the table.
        metrics / targets: restrict (and order) what is correlated; default: all present.
        baselines: the names of the trivial baselines (`Metric.baseline`); those among
            the correlated metrics are marked (`is_baseline`), and every metric is set
            against the best of them per target (module doc; `paired_tau_difference`).
        reference: set every metric against this method instead of the best baseline
            (a metric of `scores`, or `ensemble:a+b` of them; correlated too if not
            among `metrics`); the column `reference` names it.

    Raises:
        TfnasError: no architecture appears in both tables; values computed on more than
            one device kind (CPU and GPU); a reference that is not among the scores.
    """
    scores = tables.conform("scores", scores, what="scores table")
    truth = tables.conform("truth", truth, what="truth table")
    _check_one_device(scores)
    per_metric = _mean_scores(scores)
    metric_names = list(metrics or sorted(per_metric))
    if reference is not None:
        check_reference(reference, per_metric)
        metric_names += [reference] if reference not in metric_names else []
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
                    "is_baseline": metric in set(baselines),
                }
            )
    _against_baselines(rows, lambda metric, target: pairs_of(per_metric.get(metric, {}), target), config, reference=reference)
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
                    "baseline": "per target, the baseline (is_baseline) of highest oriented tau (tau x sign of its "
                    "direction x sign of the target's; > 0 agrees with the truth); tau_minus_baseline: oriented tau of "
                    "the metric - that of the baseline, on the truth rows where both and the target have a value; "
                    f"diff_lo/diff_hi: paired percentile bootstrap ({config.resamples} resamples of rows, the same "
                    f"resample for both taus, {config.confidence:.0%}, numpy default_rng([{config.seed}, 1])); verdict: "
                    "beats (interval > 0), does not beat (< 0), indistinguishable (covers 0)",
                    "reference": f"every metric set against the given reference {reference!r} instead of the best baseline "
                    "(tau_minus_baseline, diff_lo, diff_hi, verdict as above, with it in the baseline's place)"
                    if reference is not None
                    else "the best baseline (column reference = column baseline)",
                    "sign": "signed; never abs()",
                }
            ).encode()
        }
    )
    return table


def _orientation(row: dict) -> int | None:
    """+1 / −1: the sign that makes this row's τ say "agrees with the truth" (the
    metric's declared direction times the target's); None when either is unknown. An
    ensemble's merit is higher-is-better by construction."""
    from tfnas_ray.analysis.aligned import target_direction

    direction = "higher-is-better" if row["metric"].startswith("ensemble:") else row.get("direction")
    if direction not in ("higher-is-better", "lower-is-better"):
        return None
    try:
        target = target_direction(row["target"]).value
    except TfnasError:  # a target of no known direction (e.g. num_params): no verdict
        return None
    return 1 if direction == target else -1


def _against_baselines(rows: list[dict], pairs_of, config: CorrelationConfig, *, reference: str | None = None) -> None:
    """Fill each row's comparison with the best baseline of its target, or with
    `reference` where one is given (in place)."""
    for target in dict.fromkeys(r["target"] for r in rows):
        of_target = [r for r in rows if r["target"] == target]
        candidates = [
            (_orientation(r) * r["kendall_tau"], r["metric"])
            for r in of_target
            if r["is_baseline"] and _orientation(r) is not None and r["kendall_tau"] == r["kendall_tau"]
        ]
        best = max(candidates)[1] if candidates else None  # ties: the later name, deterministically
        against = reference if reference is not None else best
        if against is None:
            continue
        against_row = next(r for r in of_target if r["metric"] == against)
        against_sign = _orientation(against_row)
        against_values, truth = pairs_of(against, target)
        for row in of_target:
            row["baseline"], row["reference"] = best, against
            sign = _orientation(row)
            if row is against_row or sign is None or against_sign is None:  # no direction: no verdict
                continue
            values, _ = pairs_of(row["metric"], target)
            diff = paired_tau_difference(
                values, against_values, truth, sign_x=sign, sign_baseline=against_sign, config=config
            )
            row.update({k: diff[k] for k in ("tau_minus_baseline", "diff_lo", "diff_hi", "verdict")})


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

    given = given_reference(rows)

    def versus(r) -> str:
        if compared_with(r) is None:
            return ""
        if r["metric"] == compared_with(r):
            return "reference" if given else "best baseline"
        if r.get("tau_minus_baseline") is None or r["tau_minus_baseline"] != r["tau_minus_baseline"]:
            return "-"
        return f"{num(r['tau_minus_baseline'])} [{num(r.get('diff_lo'))}, {num(r.get('diff_hi'))}] {r.get('verdict') or ''}"

    compared = any(compared_with(r) is not None for r in rows)
    versus_header = f"Δτ vs {given} [95% CI], verdict" if given else "Δτ vs best baseline [95% CI], verdict"
    header = (
        f"{'B':1s} {'metric':28s} {'target':16s} {'n':>5s}  {'τ':>6s} [{'95% CI':^15s}]  {'ρ':>6s} [{'95% CI':^15s}]  {'r':>6s}  "
        + (f"{versus_header:53s}  " if compared else "")
        + "direction"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{'B' if r.get('is_baseline') else ' '} {r['metric']:28s} {r['target']:16s} {r['n']:5d}  {num(r['kendall_tau'])} [{num(r['kendall_lo'])}, {num(r['kendall_hi'])}]"
            f"  {num(r['spearman_rho'])} [{num(r['spearman_lo'])}, {num(r['spearman_hi'])}]  {num(r['pearson_r'])}  "
            + (f"{versus(r):53s}  " if compared else "")
            + f"{r.get('direction') or ''}"
        )
    if given:
        lines.append(f"B: a trivial baseline (tfnas metrics); Δτ: oriented τ (> 0 ranks like the truth) minus that of the reference {given}, same architectures, paired bootstrap")
    elif any(r.get("is_baseline") for r in rows):
        lines.append("B: a trivial baseline (tfnas metrics); Δτ: oriented τ (> 0 ranks like the truth) minus the best baseline's, same architectures, paired bootstrap")
    for target in target_order:
        of_target = [r for r in rows if r["target"] == target and compared_with(r) is not None]
        if not of_target:
            continue

        def tau_of(name) -> str:
            row = next((r for r in of_target if r["metric"] == name), None)
            return num(row["kendall_tau"]) if row is not None else "nan"

        best = of_target[0].get("baseline")
        if given:  # every other method, baselines included, against the reference
            others = [r for r in of_target if r["metric"] != given and r.get("verdict") is not None]
            summary = f"{target}: reference {given} (τ {tau_of(given)})"
        else:
            others = [r for r in of_target if not r.get("is_baseline") and r.get("verdict") is not None]
            summary = f"{target}: best baseline {best} (τ {tau_of(best)})"
        counts = {v: sum(r["verdict"] == v for r in others) for v in VERDICTS}
        if others:
            summary += f"; of {len(others)} other {'methods' if given else 'metrics'} {counts['beats']} beat it, {counts['does not beat']} do not, "
            summary += f"{counts['indistinguishable']} are indistinguishable from it"
        if given:
            summary += f"; best baseline {best} (τ {tau_of(best)})" if best is not None else ""
        elif others and not counts["beats"]:
            summary += " — no training-free metric beats the baseline"
        lines.append(summary)
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
