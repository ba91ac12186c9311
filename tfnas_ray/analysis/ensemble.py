"""Choosing a rank ensemble of metrics by k-fold cross-validation, reporting only
out-of-fold figures.

A choice made on the architectures one then reports on overfits: with enough candidate
ensembles, one of pure noise correlates with anything in-sample. Here the architectures
are split into k folds (seeded); for each fold the candidate with the highest Kendall τ
on the *other* folds is chosen, and only its τ and ρ on the held-out fold are reported.
Two procedures are cross-validated this way: "best ensemble" (among ensembles of 2 or
more metrics) and "best single metric"; which wins is a comparison of out-of-fold figures.
The mean over folds estimates how well the procedure ("choose the best ensemble") does
on architectures it has not seen. The ensemble the procedure picks on all architectures
is named, but its in-sample τ is never reported.

Candidates: every metric alone (in its declared direction), and every subset of 2 to
`max_members` metrics with weights from a small grid (`ranking`'s rank ensembles:
weighted mean of per-metric ranks). Ranks are taken within the architectures being
scored (the training folds when choosing, the held-out fold when reporting), as a user
ranks the candidates they have. τ is signed against quality oriented higher-is-better
(a loss negated), so a good predictor has τ > 0 on every target.

Only metrics with a value on at least `min_coverage` of the architectures take part,
and only architectures with a value of every such metric (NaN has no rank).

Comparisons are paired over the same held-out folds (`fold_difference`: per-fold τ
differences, corrected resampled t interval). The best ensemble wins over the best single
metric only when that interval excludes 0; where trivial baselines take part (metrics
flagged baseline, else `params`), "best baseline" is cross-validated like the others and
every outcome is set against it. Where training-free metrics take part too, two more
procedures restrict the same candidates: "best free ensemble" (every member a baseline,
a single baseline included) and "best with a training-free metric" (at least one member
not a baseline); the second set against the first answers whether any training-free
metric adds to what the baselines give for free.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from tfnas_ray.analysis.aligned import Aligned
from tfnas_ray.analysis.ranking import ENSEMBLE_PREFIX, Method, baseline_candidates, ensemble_name, merit, method_merit, parse_method, ranks
from tfnas_ray.errors import InputError, TfnasError
from tfnas_ray.metrics import Direction


@dataclass(frozen=True)
class EnsembleConfig:
    """Attributes:
        folds: k of the k-fold split over architectures.
        seed: seed of the split.
        max_members: largest ensemble tried.
        weights: the weight grid of each member (weight tuples equal up to a factor are
            tried once).
        min_coverage: share of architectures a metric needs a value on to take part.
    """

    folds: int = 5
    seed: int = 0
    max_members: int = 3
    weights: tuple[float, ...] = (1.0, 2.0)
    min_coverage: float = 0.9

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise TfnasError(f"--folds must be >= 2, got {self.folds}")
        if self.max_members < 1:
            raise TfnasError(f"--max-members must be >= 1, got {self.max_members}")
        if not self.weights or any(not w > 0 for w in self.weights):
            raise TfnasError(f"weights must be positive, got {self.weights}")
        if not 0 < self.min_coverage <= 1:
            raise TfnasError(f"min_coverage must be in (0, 1], got {self.min_coverage}")


def check_choice_metrics(metrics: Sequence[str] | None) -> None:
    """The metrics an ensemble is chosen from are single metrics; a rank ensemble among
    them has no column of its own (call before any scoring).

    Raises:
        InputError: an `ensemble:` name among `metrics`.
    """
    for name in metrics or ():
        if name.startswith(ENSEMBLE_PREFIX):
            raise InputError(
                f"--metric {name!r}: the metrics to choose from must be single metrics (the ensembles "
                f"are built from them); to evaluate this ensemble on the same folds, pass --method {name}"
            )


def candidates(metrics: Sequence[str], *, max_members: int = 3, weights: Sequence[float] = (1.0, 2.0)) -> list[Method]:
    """Every metric alone, then every ensemble of 2..max_members of them with weights
    from the grid, smallest first (so a tie in τ goes to the simpler candidate)."""
    out = [parse_method(m) for m in metrics]
    for size in range(2, max_members + 1):
        for members in itertools.combinations(metrics, size):
            seen = set()
            for ws in itertools.product(weights, repeat=size):
                key = tuple(round(w / min(ws), 9) for w in ws)  # equal up to a factor: once
                if key in seen:
                    continue
                seen.add(key)
                out.append(parse_method(ensemble_name(members, key)))
    return out


# Above this many architectures, `kendall_tau_b_many` calls scipy once per row (O(n log n)
# each, compiled) rather than sweeping pairs (O(n²) per row, vectorised over rows).
_PAIR_SWEEP_MAX_N = 1000
# Values held at once by the pair sweep (float64: 32 MiB), whatever n and the row count.
_SWEEP_VALUES = 1 << 22


def kendall_tau_b_many(x: np.ndarray, y: np.ndarray, *, method: str = "auto") -> np.ndarray:
    """Kendall's τ-b of each row of `x` (c, n) against `y` (n,), exactly as
    scipy.stats.kendalltau(row, y, variant="b"): Σ sign(Δx)·sign(Δy) over pairs divided
    by √(pairs untied in x · pairs untied in y). NaN where a side is constant.

    Exact for any n: pair counts are accumulated in int64 (each partial sum is an
    integer of at most n in float64, exact below 2⁵³). Memory is bounded by
    `_SWEEP_VALUES` values, not by the n²/2 pairs.

    Args:
        method: "sweep" (for each i, the pairs (i, j > i) of a block of rows at once:
            O(c·n²) work, fast for small n), "scipy" (one scipy call per row: O(c·n log n)),
            or "auto" (sweep up to `_PAIR_SWEEP_MAX_N` architectures, scipy above).
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    if method not in ("auto", "sweep", "scipy"):
        raise ValueError(f"method {method!r}: allowed auto, sweep, scipy")
    if x.shape[1] != n:
        raise ValueError(f"x has {x.shape[1]} columns, y has {n} values")
    if method == "scipy" or (method == "auto" and n > _PAIR_SWEEP_MAX_N):
        out = np.array([stats.kendalltau(row, y, variant="b").statistic for row in x], dtype=np.float64)
        out[~np.isfinite(out)] = math.nan
        return out
    untied_y = 0
    out = np.empty(x.shape[0])
    rows_at_once = max(1, _SWEEP_VALUES // max(n, 1))
    for start in range(0, x.shape[0], rows_at_once):
        block = x[start : start + rows_at_once]
        concordance = np.zeros(block.shape[0], dtype=np.int64)
        untied_x = np.zeros(block.shape[0], dtype=np.int64)
        untied_y = 0
        for i in range(n - 1):
            sy = np.sign(y[i + 1 :] - y[i])  # (n − i − 1,)
            sx = np.sign(block[:, i + 1 :] - block[:, i : i + 1])  # (rows, n − i − 1)
            concordance += np.rint(sx @ sy).astype(np.int64)
            untied_x += np.count_nonzero(sx, axis=1)
            untied_y += int(np.count_nonzero(sy))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + rows_at_once] = concordance / np.sqrt(untied_x.astype(np.float64) * float(untied_y))
    out[~np.isfinite(out)] = math.nan
    return out


class _Scorer:
    """The merits of every candidate over a subset of architectures, ranked within it."""

    def __init__(self, methods: Sequence[Method], columns: Mapping[str, np.ndarray], directions: Mapping[str, Direction | str]):
        self.methods = list(methods)
        self.metrics = list(columns)
        self.columns = columns
        self.directions = directions
        position = {m: i for i, m in enumerate(self.metrics)}
        self.singles = np.array([not m.is_ensemble for m in self.methods])
        self.weights = np.zeros((len(self.methods), len(self.metrics)))
        for row, method in enumerate(self.methods):
            total = sum(method.weights)
            for member, weight in zip(method.members, method.weights):
                self.weights[row, position[member]] = weight / total

    def merits(self, rows: np.ndarray) -> np.ndarray:
        """(candidates, len(rows)): a single metric's oriented value, or the weighted
        mean of ranks within `rows` (ranking.method_merit on that subset)."""
        oriented = np.stack([merit(self.columns[m][rows], self.directions[m]) for m in self.metrics])
        ranked = np.stack([ranks(v) for v in oriented])
        out = self.weights @ ranked
        # A single metric keeps its values (the same order as its ranks; τ is identical).
        single_rows = np.flatnonzero(self.singles)
        out[single_rows] = self.weights[single_rows] @ oriented
        return out


@dataclass
class CvOutcome:
    """One selection procedure, cross-validated.

    Attributes:
        name: "best ensemble" or "best single metric" (or a fixed method's name).
        chosen: per fold, the method chosen on the other folds.
        tau / rho: per fold, Kendall τ-b / Spearman ρ of the chosen method on the held-out
            fold (the only figures reported).
        final: the method the procedure picks on all architectures (no figure of its own).
    """

    name: str
    chosen: list[str]
    tau: list[float]
    rho: list[float]
    final: str

    @property
    def tau_mean(self) -> float:
        return float(np.mean(self.tau))

    @property
    def rho_mean(self) -> float:
        return float(np.mean(self.rho))


@dataclass
class EnsembleResult:
    target: str
    n: int  # architectures taking part
    metrics: list[str]  # metrics taking part
    dropped: dict[str, float] = field(default_factory=dict)  # metric -> coverage, too low
    candidates: int = 0
    folds: list[np.ndarray] = field(default_factory=list)  # held-out indices into the aligned arrays
    kept: np.ndarray | None = None  # indices into Aligned of the architectures taking part
    outcomes: list[CvOutcome] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)  # baseline metrics taking part
    reference: CvOutcome | None = None  # "best baseline", chosen on the training folds like the others
    # Where baselines and training-free metrics both take part: "best free ensemble" (every
    # member a baseline) and "best with a training-free metric" (some member not one),
    # chosen on the training folds like the others.
    free: CvOutcome | None = None
    with_metric: CvOutcome | None = None

    @property
    def metric_over_free(self) -> FoldDifference | None:
        """τ of "best with a training-free metric" minus "best free ensemble", fold by fold
        (`fold_difference`): a metric adds to the free baselines when `.positive`."""
        if self.free is None or self.with_metric is None:
            return None
        return fold_difference(self.with_metric, self.free, self.folds)


def _held_out(method: Method, data: Aligned, rows: np.ndarray, directions) -> tuple[float, float]:
    """τ-b and ρ of `method` on `rows` alone, ranks within them: the reported figures."""
    rows = rows[np.all([np.isfinite(data.columns[m][rows]) for m in method.members], axis=0)]  # a fixed method's failures
    columns = {m: data.columns[m][rows] for m in method.members}
    values = method_merit(method, columns, directions)
    quality = data.quality[rows]
    return float(stats.kendalltau(values, quality, variant="b").statistic), float(stats.spearmanr(values, quality).statistic)


def cross_validate(
    data: Aligned,
    directions: Mapping[str, Direction | str],
    config: EnsembleConfig = EnsembleConfig(),
    *,
    fixed: Sequence[str] = (),
    baselines: Sequence[str] | None = None,
) -> EnsembleResult:
    """Cross-validate "choose the best ensemble" and "choose the best single metric" (and
    evaluate each `fixed` method, which involves no choice, on the same held-out folds).

    Where baseline metrics take part, "choose the best baseline" is cross-validated the
    same way (chosen among the baselines on the training folds) and every outcome is
    compared with it fold by fold (`fold_difference`). Where training-free metrics take
    part too, "best free ensemble" (members all baselines) and "best with a training-free
    metric" (some member not a baseline) are cross-validated the same way
    (`EnsembleResult.free`, `.with_metric`, `.metric_over_free`).

    Args:
        baselines: the trivial baselines (default `ranking.baseline_candidates`: metrics
            flagged baseline in the registry, else `params`); those taking part are used.

    Raises:
        TfnasError: fewer than 2 usable metrics, or fewer architectures than 3 per fold.
    """
    n_all = len(data.arch_ids)
    coverage = {m: float(np.isfinite(v).mean()) for m, v in data.columns.items()}
    metrics = [m for m, c in coverage.items() if c >= config.min_coverage and m in directions]
    dropped = {m: c for m, c in coverage.items() if m not in metrics}
    if not metrics:
        raise TfnasError(f"no metric has values on {config.min_coverage:.0%} of the {n_all} architectures; coverage: {coverage}")
    kept = np.flatnonzero(np.all([np.isfinite(data.columns[m]) for m in metrics], axis=0))
    if kept.size < 3 * config.folds:
        raise TfnasError(f"--folds {config.folds} needs at least {3 * config.folds} architectures with every metric, have {kept.size}")
    methods = candidates(metrics, max_members=min(config.max_members, len(metrics)), weights=config.weights)
    scorer = _Scorer(methods, {m: data.columns[m] for m in metrics}, directions)
    order = kept[np.random.default_rng(config.seed).permutation(kept.size)]
    folds = [np.sort(f) for f in np.array_split(order, config.folds)]

    # "Best ensemble" chooses among ensembles of 2+ metrics (among all candidates when
    # there is one metric), "best single metric" among single metrics: which wins is
    # then a comparison of two out-of-fold figures.
    ensembles = ~scorer.singles if (~scorer.singles).any() else np.ones(len(methods), dtype=bool)

    found = baseline_candidates(metrics) if baselines is None else list(baselines)
    baseline_rows = np.array([m.name in found and not m.is_ensemble for m in methods])
    free_rows = np.array([all(member in found for member in m.members) for m in methods])  # singles included
    size = min(config.max_members, len(metrics))
    ensemble_label = f"best ensemble (2..{size} metrics)" if size >= 2 else "best ensemble (one metric only)"
    procedures = [(ensemble_label, ensembles), ("best single metric", scorer.singles)]
    if baseline_rows.any():
        procedures.append(("best baseline", baseline_rows))
    free_vs_metric = bool(free_rows.any() and not free_rows.all())  # baselines and training-free metrics both take part
    if free_vs_metric:
        free_size = min(size, int(baseline_rows.sum()))
        procedures += [(f"best free ensemble (1..{free_size} baselines)", free_rows), (f"best with a training-free metric (1..{size})", ~free_rows)]

    def best_per_procedure(rows: np.ndarray) -> list[Method]:
        """Per procedure, the candidate it allows with the highest τ on `rows`, the first
        of equals (the simplest; NaN never wins). One τ per candidate serves every
        procedure: each only restricts the candidates."""
        allowed_any = np.any([allowed for _, allowed in procedures], axis=0)
        taus = np.full(len(methods), -np.inf)
        computed = kendall_tau_b_many(scorer.merits(rows)[allowed_any], data.quality[rows])
        taus[allowed_any] = np.where(np.isnan(computed), -np.inf, computed)
        out = []
        for _, allowed in procedures:
            index = np.flatnonzero(allowed)
            out.append(methods[int(index[np.argmax(taus[index])])])
        return out

    per_fold = []
    for f in range(len(folds)):
        train = np.sort(np.concatenate([g for h, g in enumerate(folds) if h != f]))
        per_fold.append(best_per_procedure(train))
    finals = best_per_procedure(kept)
    outcomes = []
    for p, (name, _) in enumerate(procedures):
        chosen, taus, rhos = [], [], []
        for f, test in enumerate(folds):
            method = per_fold[f][p]
            tau, rho = _held_out(method, data, test, directions)
            chosen.append(method.name)
            taus.append(tau)
            rhos.append(rho)
        outcomes.append(CvOutcome(name, chosen, taus, rhos, final=finals[p].name))
    free = with_metric = None
    if free_vs_metric:  # the last two procedures
        with_metric, free = outcomes.pop(), outcomes.pop()
    reference = outcomes.pop() if baseline_rows.any() else None
    outcomes += evaluate_fixed(data, directions, folds, fixed)
    return EnsembleResult(
        target=data.target, n=int(kept.size), metrics=metrics, dropped=dropped, candidates=len(methods), folds=folds, kept=kept,
        outcomes=outcomes, baselines=[m.name for m, b in zip(methods, baseline_rows) if b], reference=reference,
        free=free, with_metric=with_metric,
    )


def evaluate_fixed(data: Aligned, directions: Mapping[str, Direction | str], folds: Sequence[np.ndarray], names: Sequence[str]) -> list[CvOutcome]:
    """Methods that involve no choice (`ensemble:params+head_confidence`), on the same
    held-out folds, so that their figures compare with the procedures'. Architectures
    where a member failed are left out of that fold's figure."""
    outcomes = []
    for name in names:
        method = parse_method(name)
        figures = [_held_out(method, data, test, directions) for test in folds]
        outcomes.append(CvOutcome(f"{name} (fixed)", [name] * len(folds), [t for t, _ in figures], [r for _, r in figures], final=name))
    return outcomes


@dataclass(frozen=True)
class FoldDifference:
    """Per-fold τ differences of two outcomes on the same held-out folds, and a paired
    interval of their mean.

    The interval is the corrected resampled t of Nadeau & Bengio (2003, Machine Learning
    52:239): the folds' training sets overlap, so their differences are correlated and the
    plain paired t (sd/√k) is too narrow; the variance of the mean is taken as
    sd²·(1/k + n_test/n_train), with k − 1 degrees of freedom.
    """

    diffs: tuple[float, ...]
    mean: float
    lo: float
    hi: float

    @property
    def positive(self) -> bool:
        """The first outcome's τ is higher: the whole interval lies above 0."""
        return self.lo > 0

    @property
    def negative(self) -> bool:
        return self.hi < 0


def fold_difference(a: CvOutcome, b: CvOutcome, folds: Sequence[np.ndarray], confidence: float = 0.95) -> FoldDifference:
    """τ of `a` minus τ of `b`, fold by fold, with the corrected paired t interval."""
    diffs = np.asarray(a.tau, dtype=np.float64) - np.asarray(b.tau, dtype=np.float64)
    k = diffs.size
    mean = float(diffs.mean())
    n_test = float(np.mean([f.size for f in folds]))
    n_train = float(sum(f.size for f in folds)) - n_test
    if k < 2 or not np.isfinite(diffs).all():
        return FoldDifference(tuple(diffs.tolist()), mean, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + confidence / 2, k - 1) * diffs.std(ddof=1) * math.sqrt(1 / k + n_test / n_train))
    return FoldDifference(tuple(diffs.tolist()), mean, mean - half, mean + half)


def format_ensemble(result: EnsembleResult) -> str:
    k = len(result.folds)
    reference = result.reference
    lines = [
        f"target {result.target}: {result.n} architectures, {len(result.metrics)} metrics, {result.candidates} candidates, "
        f"{k}-fold cross-validation; every τ and ρ below is out-of-fold (mean over the {k} held-out folds, ± sd)",
    ]
    if result.dropped:
        lines.append("left out (values on too few architectures): " + ", ".join(f"{m} ({c:.0%})" for m, c in result.dropped.items()))
    if reference is not None:
        lines.append(
            f"baselines: {', '.join(result.baselines)}; Δτ: per-fold τ minus the best baseline's (chosen among them on the "
            "training folds), mean [95% corrected paired t interval, Nadeau & Bengio 2003]"
        )
    free_pair = [result.free, result.with_metric] if result.free is not None and result.with_metric is not None else []
    rows = result.outcomes + free_pair + ([reference] if reference is not None else [])
    header = f"{'procedure / method':40s} {'τ out-of-fold':>18s} {'ρ out-of-fold':>18s}  " + (f"{'Δτ vs best baseline':>28s}  " if reference else "") + "picked on all architectures"
    lines += [header, "-" * len(header)]
    behind = []
    for o in rows:
        tau_sd, rho_sd = float(np.std(o.tau, ddof=1)), float(np.std(o.rho, ddof=1))
        vs = ""
        if reference is not None:
            if o is reference:
                vs = f"{'(the reference)':>28s}  "
            else:
                d = fold_difference(o, reference, result.folds)
                vs = f"{d.mean:+8.3f} [{d.lo:+7.3f}, {d.hi:+7.3f}]{'':3s}  "
                if not d.positive and not any(o is p for p in free_pair):  # these two answer their own question, below
                    behind.append(o.name)
        lines.append(f"{o.name:40s} {o.tau_mean:+8.3f} ± {tau_sd:6.3f}  {o.rho_mean:+8.3f} ± {rho_sd:6.3f}  {vs}{o.final}")
    lines.append("")
    lines.append("chosen per fold (on the other folds):")
    for o in result.outcomes[:2] + free_pair + ([reference] if reference is not None else []):
        lines.append(f"  {o.name}: " + "; ".join(f"{c} (τ {t:+.3f})" for c, t in zip(o.chosen, o.tau)))
    ensemble, single = result.outcomes[:2]
    d = fold_difference(ensemble, single, result.folds)
    interval = f"Δτ {d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}], corrected paired t over the {k} folds"
    if d.positive or d.negative:
        best, other = (ensemble, single) if d.positive else (single, ensemble)
        lines.append(f"winner, out-of-fold τ: {best.name} ({best.tau_mean:+.3f} vs {other.tau_mean:+.3f}; {interval})")
    else:
        lines.append(f"no clear winner between {ensemble.name} ({ensemble.tau_mean:+.3f}) and {single.name} ({single.tau_mean:+.3f}): {interval} includes 0")
    added = result.metric_over_free
    if added is not None:
        free, with_metric = free_pair
        versus = (
            f"{with_metric.name} ({with_metric.tau_mean:+.3f}; {with_metric.final} on all architectures) vs {free.name} "
            f"({free.tau_mean:+.3f}; {free.final}): Δτ {added.mean:+.3f} [{added.lo:+.3f}, {added.hi:+.3f}], corrected paired t over the {k} folds"
        )
        if added.positive:
            lines.append(f"a training-free metric adds to the free baselines: {versus}")
        else:
            lines.append(f"no training-free metric adds to the free baselines (Δτ interval not above 0): {versus}")
    if reference is not None:
        if behind:
            lines.append(f"do not beat the best baseline ({reference.final} on all architectures; Δτ interval not above 0): {', '.join(behind)}")
        else:
            lines.append("every procedure and method beats the best baseline (Δτ interval above 0)")
    return "\n".join(lines)
