"""What shapes GLUE in NAS-Bench-BERT: design choices, a restricted space, the as-trained check.

From the benchmark alone (no metric needed):
1. `design_frame`: one row per published run — its design choices as numbers and its scores.
2. `choice_effects`: each design choice's effect on a target: Kendall τ-b of the choice
   against the target, and its coefficient in one least-squares regression of the target
   on all choices at once (GLUE points for going from the low level to the high one, or
   from no layer to every layer having it), with standard error, t and two-sided p.
   Ranked by |t|.
3. `operation_test`: an F-test of whether the layer operations (LT and DSC shares, and
   the SA/LT/DSC parameters) add anything to a regression on the other choices. The
   authors' TensorFlow pretraining built every layer as scaled-dot-product attention
   (model.py, AS_TRAINED): if so, the operations cannot matter and this test finds
   nothing; it also tests `feed_forward_dimension` where only one feed-forward layer is
   stacked — that run's only feed-forward layer was 4·hidden wide in their code.
4. `restricted_space`: how much a rule (e.g. hidden 256 and 4 layers) raises the median
   and top-k of what remains, and how many of the global top-k it keeps.
5. `metric_taus`: each metric's τ against the target on the whole space and inside the
   restricted one (given a scores table).

Conventions: τ-b via `scipy.stats.kendalltau(x, y, variant="b", nan_policy="omit")`,
signed. Each published run is one observation (nine architectures were run twice).
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

from tfnas_ray.errors import TfnasError

# choice name -> (what it measures, how it is computed from a parsed spec)
CHOICES: Mapping[str, str] = {
    "hidden_256": "hidden size 256 (vs 128)",
    "layers_4": "4 layers (vs 2)",
    "share_LT": "share of layers that are LT (vs SA)",
    "share_DSC": "share of layers that are DSC (vs SA)",
    "share_WMA": "share of layers that are SA-WMA (vs SA-SDP)",
    "share_DCT": "share of layers that are LT-DCT (vs LT-DFT)",
    "share_kernel_9": "share of layers that are DSC-9 (vs DSC-5)",
    "share_heads_4": "share of layers with 4 heads (vs 2)",
    "share_ffn_1024_x1": "share of layers with one 1024-wide FFN layer (vs 512)",
    "share_ffn_1024_x3": "share of layers with three 1024-wide FFN layers (vs 512)",
    "share_ffn_x3": "share of layers with 3 stacked FFN layers (vs 1)",
}
OPERATION_CHOICES = ("share_LT", "share_DSC", "share_WMA", "share_DCT", "share_kernel_9")
AS_TRAINED_NULL = OPERATION_CHOICES + ("share_ffn_1024_x1",)  # no effect if trained as-SDP


def design_choices(spec: str | Mapping) -> dict[str, float]:
    """The CHOICES of one canonical nb-bert spec, as numbers in [0, 1]."""
    spec = json.loads(spec) if isinstance(spec, str) else spec
    layers = spec["encoder_layers"]
    n = len(layers)

    def share(predicate) -> float:
        return sum(1 for l in layers if predicate(l)) / n

    return {
        "hidden_256": float(spec["hidden_size"] == 256),
        "layers_4": float(n == 4),
        "share_LT": share(lambda l: l["operation_type"] == "LT"),
        "share_DSC": share(lambda l: l["operation_type"] == "DSC"),
        "share_WMA": share(lambda l: l["operation_parameter"] == "WMA"),
        "share_DCT": share(lambda l: l["operation_parameter"] == "DCT"),
        "share_kernel_9": share(lambda l: l["operation_parameter"] == 9),
        "share_heads_4": share(lambda l: l["num_operation_heads"] == 4),
        "share_ffn_1024_x1": share(lambda l: l["feed_forward_dimension"] == 1024 and l["num_feed_forward"] == 1),
        "share_ffn_1024_x3": share(lambda l: l["feed_forward_dimension"] == 1024 and l["num_feed_forward"] == 3),
        "share_ffn_x3": share(lambda l: l["num_feed_forward"] == 3),
    }


def design_frame(records: Sequence[Mapping]) -> pa.Table:
    """One row per run: id, arch_id, hidden_size, num_layers, every choice, every score.

    `records` as `nasbench_bert.benchmarks.records()` gives them.
    """
    if not records:
        raise TfnasError("no benchmark records to analyse")
    rows = []
    for r in records:
        spec = json.loads(r["spec"])
        rows.append(
            {
                "id": r["id"],
                "arch_id": r["arch_id"],
                "hidden_size": spec["hidden_size"],
                "num_layers": len(spec["encoder_layers"]),
                **design_choices(spec),
                **r["scores"],
            }
        )
    return pa.Table.from_pylist(rows)


def _column(frame: pa.Table, name: str) -> np.ndarray:
    if name not in frame.column_names:
        raise TfnasError(f"column {name!r} is not in the design frame; it has {', '.join(frame.column_names)}")
    return np.asarray(frame.column(name).to_pylist(), dtype=np.float64)


@dataclass(frozen=True)
class Regression:
    """Ordinary least squares of a target on choices, with an intercept.

    Attributes:
        names: the regressors (intercept first).
        coef, se, t, p: per regressor; p two-sided from Student's t with n − k dof.
        r2: coefficient of determination. rss: residual sum of squares. n, k: sizes.
    """

    names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    t: np.ndarray
    p: np.ndarray
    r2: float
    rss: float
    n: int
    k: int


def regress(frame: pa.Table, target: str, choices: Sequence[str]) -> Regression:
    """OLS of `target` on `choices` (+ intercept), classical standard errors."""
    y = _column(frame, target)
    X = np.column_stack([np.ones_like(y)] + [_column(frame, c) for c in choices])
    n, k = X.shape
    if n <= k:
        raise TfnasError(f"{n} runs cannot fit {k} coefficients")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    rss = float(resid @ resid)
    sigma2 = rss / (n - k)
    se = np.sqrt(np.diag(sigma2 * np.linalg.pinv(X.T @ X)))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = coef / se
    p = 2 * stats.t.sf(np.abs(t), df=n - k)
    tss = float(((y - y.mean()) ** 2).sum())
    return Regression(("intercept", *choices), coef, se, t, p, 1 - rss / tss, rss, n, k)


def choice_effects(frame: pa.Table, target: str = "glue", choices: Sequence[str] = tuple(CHOICES)) -> pa.Table:
    """Per choice: τ-b against the target, regression coefficient (GLUE points), se, t, p;
    sorted by |t| (largest first)."""
    fit = regress(frame, target, choices)
    y = _column(frame, target)
    rows = []
    for i, name in enumerate(choices, start=1):
        tau = stats.kendalltau(_column(frame, name), y, variant="b", nan_policy="omit").statistic
        rows.append(
            {
                "choice": name,
                "meaning": CHOICES.get(name, name),
                "kendall_tau": float(tau),
                "effect": float(fit.coef[i]),
                "se": float(fit.se[i]),
                "t": float(fit.t[i]),
                "p": float(fit.p[i]),
            }
        )
    rows.sort(key=lambda r: -abs(r["t"]) if math.isfinite(r["t"]) else 0.0)
    return pa.Table.from_pylist(rows)


@dataclass(frozen=True)
class NestedTest:
    """F-test of whether `tested` choices add to a regression on `kept` choices.

    Attributes:
        tested, kept: the choices. f, p: the F statistic and its p-value.
        r2_full, r2_reduced: R² with and without the tested choices. n: runs.
    """

    tested: tuple[str, ...]
    kept: tuple[str, ...]
    f: float
    p: float
    r2_full: float
    r2_reduced: float
    n: int


def nested_test(frame: pa.Table, target: str, tested: Sequence[str], kept: Sequence[str]) -> NestedTest:
    full = regress(frame, target, tuple(kept) + tuple(tested))
    reduced = regress(frame, target, tuple(kept))
    q = len(tested)
    f = ((reduced.rss - full.rss) / q) / (full.rss / (full.n - full.k))
    p = float(stats.f.sf(f, q, full.n - full.k))
    return NestedTest(tuple(tested), tuple(kept), float(f), p, full.r2, reduced.r2, full.n)


def operation_test(frame: pa.Table, target: str = "glue") -> NestedTest:
    """Do the layer operations (and FFN width where one FFN layer is stacked) explain any
    of the target beyond hidden size, depth, heads and FFN stacking? (module doc, 3.)"""
    kept = tuple(c for c in CHOICES if c not in AS_TRAINED_NULL)
    return nested_test(frame, target, AS_TRAINED_NULL, kept)


def best_levels(frame: pa.Table, target: str = "glue", choices: Sequence[str] = ("hidden_256", "layers_4")) -> dict[str, float]:
    """For each whole-model choice, the level (0 or 1) with the higher median target."""
    y = _column(frame, target)
    rule = {}
    for name in choices:
        x = _column(frame, name)
        med = {level: float(np.median(y[x == level])) for level in (0.0, 1.0) if np.any(x == level)}
        rule[name] = max(med, key=med.get)
    return rule


def _inside(frame: pa.Table, rule: Mapping[str, float]) -> np.ndarray:
    mask = np.ones(frame.num_rows, dtype=bool)
    for name, level in rule.items():
        mask &= _column(frame, name) == level
    return mask


def restricted_space(frame: pa.Table, rule: Mapping[str, float], target: str = "glue", top_k: int = 100) -> dict:
    """Target statistics of the whole space and of the runs satisfying `rule`.

    Returns:
        {"rule", "n_all", "n_inside", "median_all", "median_inside", "top10_mean_all",
         "top10_mean_inside", "best_all", "best_inside", "top_k", "top_k_inside"}, where
        top_k_inside counts how many of the global top_k runs satisfy the rule.
    Raises:
        TfnasError: no run satisfies the rule.
    """
    y = _column(frame, target)
    inside = _inside(frame, rule)
    if not inside.any():
        raise TfnasError(f"no run satisfies the rule {dict(rule)}")
    order = np.argsort(-y, kind="stable")
    return {
        "rule": dict(rule),
        "n_all": int(y.size),
        "n_inside": int(inside.sum()),
        "median_all": float(np.median(y)),
        "median_inside": float(np.median(y[inside])),
        "top10_mean_all": float(np.sort(y)[-10:].mean()),
        "top10_mean_inside": float(np.sort(y[inside])[-10:].mean()),
        "best_all": float(y.max()),
        "best_inside": float(y[inside].max()),
        "top_k": int(min(top_k, y.size)),
        "top_k_inside": int(inside[order[:top_k]].sum()),
    }


def metric_taus(frame: pa.Table, scores: pa.Table, rule: Mapping[str, float], target: str = "glue") -> pa.Table:
    """Per metric: τ-b against the target over all runs and over the runs inside `rule`
    (a metric's value is the mean of its non-null scores for the architecture)."""
    valid = scores.filter(pc.is_valid(scores.column("value")))
    grouped = valid.group_by(["metric", "arch_id"]).aggregate([("value", "mean")])
    per_metric: dict[str, dict[str, float]] = {}
    for m, a, v in zip(*(grouped.column(c).to_pylist() for c in ("metric", "arch_id", "value_mean"))):
        per_metric.setdefault(m, {})[a] = v
    arch_ids = frame.column("arch_id").to_pylist()
    y = _column(frame, target)
    inside = _inside(frame, rule)
    rows = []
    for metric, values in sorted(per_metric.items()):
        x = np.array([values.get(a, math.nan) for a in arch_ids], dtype=np.float64)
        tau_all = stats.kendalltau(x, y, variant="b", nan_policy="omit").statistic
        tau_in = stats.kendalltau(x[inside], y[inside], variant="b", nan_policy="omit").statistic
        rows.append(
            {
                "metric": metric,
                "n_all": int(np.isfinite(x).sum()),
                "tau_all": float(tau_all),
                "n_inside": int(np.isfinite(x[inside]).sum()),
                "tau_inside": float(tau_in),
            }
        )
    return pa.Table.from_pylist(rows)


def analyze_space(records: Sequence[Mapping], *, target: str = "glue", scores: pa.Table | None = None, top_k: int = 100) -> dict:
    """Everything above for one target: {"effects", "operation_test", "rule",
    "restricted", "metric_taus" (None without scores), "n_runs"}."""
    frame = design_frame(records)
    rule = best_levels(frame, target)
    return {
        "n_runs": frame.num_rows,
        "target": target,
        "effects": choice_effects(frame, target),
        "operation_test": operation_test(frame, target),
        "rule": rule,
        "restricted": restricted_space(frame, rule, target, top_k),
        "metric_taus": metric_taus(frame, scores, rule, target) if scores is not None else None,
    }


def format_analysis(result: Mapping) -> str:
    """Plain-text report of `analyze_space`."""
    target = result["target"]
    lines = [f"NAS-Bench-BERT design choices vs {target} ({result['n_runs']} runs; regression on all choices at once)", ""]
    lines.append(f"{'choice':<20} {'tau':>7} {'effect':>8} {'se':>6} {'t':>7} {'p':>9}  meaning")
    for r in result["effects"].to_pylist():
        lines.append(
            f"{r['choice']:<20} {r['kendall_tau']:>+7.3f} {r['effect']:>+8.2f} {r['se']:>6.2f} {r['t']:>+7.2f} "
            f"{r['p']:>9.2g}  {r['meaning']}"
        )
    test: NestedTest = result["operation_test"]
    lines += [
        "",
        "As-trained check: do the layer operations (LT, DSC, WMA, DCT, kernel 9) and the FFN width of",
        "single-FFN layers explain anything beyond hidden size, depth, heads and FFN stacking?",
        f"  F = {test.f:.2f}, p = {test.p:.3g} (R² {test.r2_reduced:.3f} without them, {test.r2_full:.3f} with them)",
        "  " + (
            "No: consistent with every trained layer being scaled-dot-product attention (the authors' `is` bug)."
            if test.p >= 0.05
            else "Yes: the operations matter, which the as-trained reading does not predict."
        ),
    ]
    rs = result["restricted"]
    rule = " and ".join(f"{k}={int(v)}" for k, v in rs["rule"].items())
    lines += [
        "",
        f"Restricted space ({rule}): {rs['n_inside']} of {rs['n_all']} runs",
        f"  median {target}: {rs['median_all']:.2f} -> {rs['median_inside']:.2f}",
        f"  mean of the top 10: {rs['top10_mean_all']:.2f} -> {rs['top10_mean_inside']:.2f}; best {rs['best_all']:.2f} -> {rs['best_inside']:.2f}",
        f"  of the global top {rs['top_k']}, {rs['top_k_inside']} lie inside",
    ]
    taus = result.get("metric_taus")
    if taus is not None:
        lines += ["", f"{'metric':<32} {'tau (all)':>10} {'n':>5} {'tau (inside)':>13} {'n':>5}"]
        for r in sorted(taus.to_pylist(), key=lambda r: -abs(r["tau_all"]) if math.isfinite(r["tau_all"]) else 0):
            lines.append(f"{r['metric']:<32} {r['tau_all']:>+10.3f} {r['n_all']:>5} {r['tau_inside']:>+13.3f} {r['n_inside']:>5}")
    return "\n".join(lines)
