"""Reports people can look at: PNG figures and one self-contained HTML page per run.

`write_report(DIR)` looks at what a run left in DIR and draws what applies:

- reproduce (correlations.parquet, truth.parquet, scores/): per metric a scatter of the
  metric against the primary target with τ [95% interval] in its title; a bar chart of τ
  with its interval across metrics; for nb-bert, the design-choice effects of the space
  analysis (`space_analysis`) and each metric's τ on the whole and the restricted space.
- search (candidates.parquet, chosen.parquet, pareto.parquet): per method the Pareto
  front of score vs parameter count, the kept architectures marked.
- evaluate-search (search_eval.parquet): per keep K, regret against pool size for every
  method, random and the oracle, with the 2.5–97.5% spread of regret over pools; where
  the table compares methods with the best baseline, which ones do not beat it. With
  many methods only the reference, the best baseline, random, the oracle and the
  HIGHLIGHTED best are coloured and in the legend; the others are thin grey lines.

Scores come from the one scoring plan the run used (`_plan_scores`), never a mix of the
plans a directory of shards may hold. Where the correlations table sets metrics against
the best trivial baseline (or the reference `correlate --reference` was given), the τ
chart and the text say which metrics do not beat it.
- train (truth.parquet with learning curves; a search's train/): the learning curves.

It writes DIR/figures/NAME.png and DIR/report.html, the same figures embedded as base64
PNGs with the tables as HTML, so the page is one file that opens anywhere offline.
Figures are built as matplotlib `Figure` objects on the Agg canvas (no display, no
pyplot state), so they can be checked (labels, sizes) before they are saved.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tfnas_ray import tables
from tfnas_ray.analysis.search import metric_columns
from tfnas_ray.errors import TfnasError
from tfnas_ray.storage import Location, locate

DPI = 100
FIGSIZE = (6.4, 4.8)  # inches: 640 × 480 pixels at DPI
BASELINES = ("random", "oracle")


@dataclass
class ReportFigure:
    """One figure of a report: `name` is its file stem, `caption` says what it shows."""

    name: str
    title: str
    figure: Figure
    caption: str = ""

    def png(self) -> bytes:
        buffer = io.BytesIO()
        FigureCanvasAgg(self.figure)  # the Agg canvas: rendering without a display
        self.figure.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()


@dataclass
class Section:
    """A part of the page: a heading, figures, and an HTML table (already escaped)."""

    heading: str
    figures: list[ReportFigure]
    table_html: str = ""
    text: str = ""


def _figure(figsize: tuple[float, float] = FIGSIZE) -> tuple[Figure, object]:
    figure = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _fmt(value, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def _interval(value, lo, hi) -> str:
    return f"{_fmt(value, '+.3f')} [{_fmt(lo, '+.3f')}, {_fmt(hi, '+.3f')}]"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _spread_scale(axes, axis: str, values: np.ndarray) -> bool:
    """A symmetric-log axis where values span orders of magnitude (hidden covariance runs
    from -5e3 to -2e7 on the published PTB cells: on a linear axis most points sit in one
    column at zero); linear otherwise. Returns True where the axis is symmetric-log.

    Spread: the 5th and 95th percentiles of the nonzero |values| differ by a factor of
    100 or more, or the largest is over 100 times the median. The linear band around 0
    reaches the 5th percentile, so only the smallest values are drawn linearly.
    """
    values = np.abs(np.asarray(values, dtype=float))
    values = values[np.isfinite(values) & (values > 0)]
    if values.size < 2:
        return False
    low, high = np.quantile(values, [0.05, 0.95])
    if high >= 100 * low or values.max() > 100 * np.median(values):
        getattr(axes, f"set_{axis}scale")("symlog", linthresh=float(low))
        return True
    return False


def _html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---- figures ---------------------------------------------------------------------------


def scatter_figure(metric: str, target: str, x: np.ndarray, y: np.ndarray, correlation: dict) -> ReportFigure:
    """A metric against the truth, τ [95% interval] in the title."""
    figure, axes = _figure()
    finite = np.isfinite(x) & np.isfinite(y)
    axes.scatter(x[finite], y[finite], s=12, alpha=0.6, edgecolors="none")
    symlog = _spread_scale(axes, "x", x[finite])
    axes.set_xlabel(f"{metric} (symmetric-log axis)" if symlog else metric)
    axes.set_ylabel(target)
    tau = _interval(correlation.get("kendall_tau"), correlation.get("kendall_lo"), correlation.get("kendall_hi"))
    axes.set_title(f"{metric} vs {target}: τ {tau}, n = {int(finite.sum())}")
    axes.grid(alpha=0.3)
    return ReportFigure(f"scatter-{_safe(metric)}-{_safe(target)}", f"{metric} vs {target}", figure, f"Kendall τ with its 95% bootstrap interval; {int(finite.sum())} architectures.")


def tau_bar_figure(rows: Sequence[dict], target: str) -> ReportFigure:
    """Kendall τ of every metric against `target`, with the 95% interval as error bars.

    Where the correlations table compares each metric with the best trivial baseline, or
    the reference given to `correlate` (columns `is_baseline`, `baseline`, `reference`,
    `verdict`), baselines are drawn grey, metrics that beat it blue, the others hatched
    orange, and its τ as a line.
    """
    rows = sorted(rows, key=lambda r: r["kendall_tau"] if r["kendall_tau"] is not None and math.isfinite(r["kendall_tau"]) else -2)
    names = [r["metric"] + (" (baseline)" if r.get("is_baseline") else "") for r in rows]
    tau = np.array([r["kendall_tau"] if r["kendall_tau"] is not None else math.nan for r in rows], dtype=float)
    lo = np.array([r["kendall_lo"] if r["kendall_lo"] is not None else math.nan for r in rows], dtype=float)
    hi = np.array([r["kendall_hi"] if r["kendall_hi"] is not None else math.nan for r in rows], dtype=float)
    errors = np.nan_to_num(np.vstack([tau - lo, hi - tau]), nan=0.0)
    figure, axes = _figure((6.4, max(2.4, 0.35 * len(rows) + 1.2)))
    positions = np.arange(len(rows))
    from tfnas_ray.analysis.correlation import compared_with, given_reference

    best_baseline = next((compared_with(r) for r in rows if compared_with(r)), None)  # what the verdicts compare with
    given = given_reference(rows) is not None
    if best_baseline is None:
        axes.barh(positions, np.nan_to_num(tau), xerr=errors, capsize=3, color="tab:blue")
    else:
        kinds = [
            "baseline" if r.get("is_baseline") else "reference" if r["metric"] == best_baseline
            else "beats" if r.get("verdict") == "beats" else "not"
            for r in rows
        ]
        styles = {
            "reference": dict(color="0.3", label="_reference"),  # a metric given as the reference: the line names it
            "beats": dict(color="tab:blue", label=f"beats {best_baseline} (paired interval above 0)"),
            "not": dict(color="tab:orange", hatch="//", label=f"does not beat {best_baseline}"),
            "baseline": dict(color="0.6", label="trivial baseline"),
        }
        for kind, style in styles.items():
            chosen = [i for i, k in enumerate(kinds) if k == kind]
            if chosen:
                axes.barh(positions[chosen], np.nan_to_num(tau[chosen]), xerr=errors[:, chosen], capsize=3, **style)
        reference = next((r for r in rows if r["metric"] == best_baseline), None)
        if reference is not None and reference["kendall_tau"] is not None and math.isfinite(reference["kendall_tau"]):
            axes.axvline(reference["kendall_tau"], color="0.3", linestyle="--", linewidth=1, label=f"{'reference' if given else 'best baseline'}: {best_baseline}")
        axes.legend(loc="best", fontsize="x-small")
    axes.set_yticks(positions, names)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel(f"Kendall τ against {target} (95% interval)")
    axes.set_ylabel("metric")
    axes.set_title(f"Kendall τ against {target}")
    caption = "Signed τ: positive means the metric ranks architectures as the target does (its declared direction applied)."
    if best_baseline is not None:
        caption += f" Each metric is set against {'the reference' if given else 'the best trivial baseline'} ({best_baseline}) by a paired bootstrap of the τ difference on the same architectures."
    return ReportFigure(f"tau-{_safe(target)}", f"τ across metrics ({target})", figure, caption)


def pareto_figure(method: str, params: np.ndarray, score: np.ndarray, front: Sequence[int], kept: Sequence[int], *, ensemble: bool) -> ReportFigure:
    """Every candidate's score against its parameter count; the Pareto front as a line."""
    figure, axes = _figure()
    finite = np.isfinite(score)
    axes.scatter(params[finite], score[finite], s=10, color="0.6", label="candidates")
    front = list(front)
    if front:
        axes.plot(params[front], score[front], "-o", color="tab:red", markersize=4, label="Pareto front")
    if len(kept):
        axes.scatter(params[list(kept)], score[list(kept)], s=80, facecolors="none", edgecolors="tab:blue", linewidths=1.5, label="kept")
    if params.size and params.max() > 10 * max(params.min(), 1):
        axes.set_xscale("log")
    _spread_scale(axes, "y", score[finite])
    axes.set_xlabel("parameters")
    axes.set_ylabel("mean rank of the members (higher = better)" if ensemble else method)
    axes.set_title(f"{method}: Pareto front of {int(finite.sum())} scored candidates ({len(front)} on it)")
    axes.legend(loc="best", fontsize="small")
    axes.grid(alpha=0.3)
    return ReportFigure(f"pareto-{_safe(method)}", f"Pareto front: {method}", figure, "No architecture on the front is beaten on both the score and the parameter count.")


def not_beating(rows: Sequence[dict]) -> dict[str, list[int]]:
    """method -> the pool sizes at which its paired regret interval against the
    reference (the best baseline) does not lie below 0: it does not beat the baseline."""
    from tfnas_ray.analysis.search_eval import beats_reference

    out: dict[str, list[int]] = {}
    for r in rows:
        if r["method"] not in BASELINES and r.get("reference") not in (None, r["method"]) and beats_reference(r) is False:
            out.setdefault(r["method"], []).append(r["pool_size"])
    return out


# The regret figure draws in colour, with a legend entry, the reference, the best
# baseline, random, the oracle and this many other methods (those of lowest regret at
# the largest pool); every further method is a thin grey line without one. 26 methods
# (the hf study) in one legend covered the curves.
HIGHLIGHTED = 6


def _best_of(methods: Sequence[str], rows: Sequence[dict]) -> list[str]:
    """`methods` from lowest regret at the largest pool size to highest (ties: the mean
    regret over every pool size, then the name)."""
    largest = max(r["pool_size"] for r in rows)

    def key(method: str) -> tuple[float, float, str]:
        own = [r for r in rows if r["method"] == method and r["regret"] is not None and math.isfinite(r["regret"])]
        at_largest = [r["regret"] for r in own if r["pool_size"] == largest]
        return (at_largest[0] if at_largest else math.inf, float(np.mean([r["regret"] for r in own])) if own else math.inf, method)

    return sorted(methods, key=key)


def regret_figure(rows: Sequence[dict], keep: int, *, highlighted: int = HIGHLIGHTED) -> ReportFigure:
    """Regret against pool size for every method, random and the oracle (2.5–97.5% of
    pools). In colour and in the legend: the reference the table compares with (drawn
    thick), the best baseline, random, the oracle and the `highlighted` methods of lowest
    regret at the largest pool; the others are thin grey lines, named in the table. Methods
    that do not beat the reference are drawn dotted and say so in the legend."""
    from tfnas_ray.analysis.ranking import baseline_candidates

    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = [m for m in methods if m not in BASELINES]
    target = rows[0].get("target") or "target"
    references = {r.get("reference") for r in rows} - {None}
    behind = not_beating(rows)
    candidates = _best_of(baseline_candidates(metrics), rows)
    best_baseline = candidates[0] if candidates else None
    chosen = [m for m in (*sorted(references), best_baseline) if m in metrics]
    chosen += _best_of([m for m in metrics if m not in chosen], rows)[:highlighted]
    coloured = list(dict.fromkeys(chosen))
    grey = [m for m in metrics if m not in coloured]
    figure, axes = _figure()
    # Distinct colours and markers for the few coloured methods; bands only where they
    # stay readable: always for random, for the methods when at most four.
    palette = matplotlib.colormaps["tab10"].colors
    markers = "os^vD<>ph*"
    bands = len(metrics) <= 4
    handles = []
    for method in grey + coloured + [m for m in BASELINES if m in methods]:  # grey first: underneath
        own = sorted((r for r in rows if r["method"] == method), key=lambda r: r["pool_size"])
        x = np.array([r["pool_size"] for r in own], dtype=float)
        y = np.array([r["regret"] if r["regret"] is not None else math.nan for r in own], dtype=float)
        lo = np.array([r["regret_lo"] if r["regret_lo"] is not None else math.nan for r in own], dtype=float)
        hi = np.array([r["regret_hi"] if r["regret_hi"] is not None else math.nan for r in own], dtype=float)
        label = method
        if method in BASELINES:
            style = {"random": dict(color="black", linestyle="--", marker="o"), "oracle": dict(color="0.5", linestyle=":", marker="o")}[method]
        elif method in grey:
            style = dict(color="0.6", linewidth=0.8, alpha=0.7)
            label = "_" + method  # no legend entry: the table names it
        else:
            i = coloured.index(method)
            style = dict(color=palette[i % len(palette)], marker=markers[i % len(markers)])
            if method in references:
                style.update(linewidth=3)
                label = f"{method} (best baseline)" if method == best_baseline else f"{method} (reference)"
            elif method in behind:
                style.update(linestyle=":", alpha=0.8)
                label = f"{method} (does not beat the {'baseline' if best_baseline in references else 'reference'})"
            elif method == best_baseline:
                label = f"{method} (best baseline)"
        (line,) = axes.plot(x, y, markersize=4 if method not in grey else 0, label=label, **style)
        if not label.startswith("_"):
            handles.append(line)
        if np.isfinite(lo).any() and (bands or method == "random"):
            axes.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    pools = sorted({r["pool_size"] for r in rows})
    if len(pools) > 1 and pools[-1] > 10 * pools[0]:
        axes.set_xscale("log")
    axes.set_xlabel("pool size (architectures)")
    axes.set_ylabel(f"regret in {target} (gap to the pool's best)")
    axes.set_title(f"Regret of the top-{keep} pick against pool size")
    # Below the axes, so no curve is hidden behind it.
    figure.legend(handles=handles, loc="outside lower center", fontsize="x-small", ncols=2 if len(handles) > 3 else len(handles))
    figure.set_figheight(FIGSIZE[1] + 0.17 * math.ceil(len(handles) / 2))
    axes.grid(alpha=0.3)
    caption = (
        "Mean over random pools; shaded: 2.5–97.5% of pools, the spread of one search's outcome, not an interval of the mean "
        "(for every method when at most four, else for random). Lower is better; the oracle is 0 by definition."
    )
    if references:
        caption += " Dotted: no better than the reference (paired 95% interval of the per-pool regret difference not below 0)."
    if grey:
        caption += (
            f" In colour: the reference, the best baseline, random, the oracle and the {highlighted} methods of lowest regret "
            f"at the largest pool ({pools[-1]}); {len(grey)} more methods in thin grey, unlabelled: their numbers are in the table."
        )
    return ReportFigure(f"regret-top{keep}", f"Regret, keep {keep}", figure, caption)


def curves_figure(truth: pa.Table) -> ReportFigure | None:
    """Learning curves of trained architectures (one line per trial and target)."""
    rows = [r for r in truth.to_pylist() if r["curve"] and r["target"].startswith("val_")]
    if not rows:
        return None
    figure, axes = _figure()
    for r in rows:
        axes.plot(np.arange(1, len(r["curve"]) + 1), r["curve"], marker="o", markersize=3, alpha=0.8, label=r["arch_id"][:10])
    axes.set_xlabel("report (iteration of the budget)")
    axes.set_ylabel(rows[0]["target"])
    axes.set_title(f"Learning curves of {len(rows)} trained architectures")
    if len(rows) <= 10:
        axes.legend(loc="best", fontsize="x-small")
    axes.grid(alpha=0.3)
    return ReportFigure("learning-curves", "Learning curves", figure, "Validation loss at each report of the short-run budget (Ray Tune).")


def effects_figure(effects: pa.Table, target: str) -> ReportFigure:
    """NAS-Bench-BERT design choices: regression effect on the target ± 1.96 se."""
    rows = effects.to_pylist()[::-1]  # largest |t| on top
    figure, axes = _figure((6.4, 0.4 * len(rows) + 1.4))
    positions = np.arange(len(rows))
    axes.barh(positions, [r["effect"] for r in rows], xerr=[1.96 * r["se"] for r in rows], capsize=3, color="tab:green")
    axes.set_yticks(positions, [r["choice"] for r in rows])
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel(f"effect on {target} (points; 95% interval)")
    axes.set_ylabel("design choice")
    axes.set_title(f"NAS-Bench-BERT: what moves {target}")
    return ReportFigure(f"space-effects-{_safe(target)}", "Design choices", figure, "Coefficients of one least-squares regression of the target on all choices at once.")


def inside_tau_figure(taus: pa.Table, rule: dict, target: str) -> ReportFigure:
    """Each metric's τ on the whole space and inside the restricted space."""
    rows = sorted(taus.to_pylist(), key=lambda r: r["tau_all"] if math.isfinite(r["tau_all"]) else -2)
    figure, axes = _figure((6.4, max(2.4, 0.4 * len(rows) + 1.4)))
    positions = np.arange(len(rows))
    axes.barh(positions - 0.2, [r["tau_all"] for r in rows], height=0.4, label="whole space")
    rule_text = " and ".join(f"{k}={int(v)}" for k, v in rule.items())
    axes.barh(positions + 0.2, [r["tau_inside"] for r in rows], height=0.4, label=f"inside {rule_text}")
    axes.set_yticks(positions, [r["metric"] for r in rows])
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel(f"Kendall τ against {target}")
    axes.set_ylabel("metric")
    axes.set_title("τ on the whole and the restricted space")
    axes.legend(loc="best", fontsize="small")
    return ReportFigure(f"space-tau-{_safe(target)}", "τ inside the restricted space", figure, "A metric that only tells hidden sizes and depths apart loses its τ inside the restricted space.")


# ---- sections from the tables a run left ---------------------------------------------------


def _read(kind: str | None, where: Location) -> pa.Table | None:
    if not where.exists():
        return None
    if kind is not None:
        return tables.read_table(kind, where)
    try:
        return pq.read_table(where.path, filesystem=where.filesystem)
    except (pa.ArrowInvalid, OSError) as err:
        raise TfnasError(f"{where.url} is not a readable Parquet file: {err}".splitlines()[0]) from None


def _plan_scores(scores_dir: Location, agrees: Callable[[pa.Table], bool]) -> tuple[pa.Table, str]:
    """The scores of the plan a run used, and a note when that needed a choice.

    A directory of shards may hold several plans (a second seed, a metric version bump):
    mixing them would draw points that disagree with the run's own tables. The plan used
    is the one whose scores reproduce those tables (`agrees`), tried newest first (the
    newest with its stability study, then each plan alone); failing that, the newest,
    saying so. A directory without manifests is read whole.
    """
    from tfnas_ray.plans import plans_in, read_scores

    plans = plans_in(scores_dir)
    if len(plans) <= 1:
        return read_scores(scores_dir, log=lambda _: None), ""
    newest = read_scores(scores_dir, log=lambda _: None)
    if agrees(newest):
        return newest, f"Scores of the newest plan {plans[-1].plan_id} of {len(plans)} in scores/ (it reproduces the run's tables)."
    for plan in reversed(plans):
        try:
            table = read_scores(scores_dir, plan=plan.plan_id, log=lambda _: None)
        except TfnasError:  # none of its shards there
            continue
        if agrees(table):
            return table, f"Scores of plan {plan.plan_id}, the one that reproduces the run's tables, of {len(plans)} in scores/."
    return newest, f"No plan of the {len(plans)} in scores/ reproduces the run's tables; the figures use the newest, {plans[-1].plan_id}."


def _agrees_with_correlations(truth_rows: Sequence[dict], rows: Sequence[dict], target: str) -> Callable[[pa.Table], bool]:
    """Does a scores table give the Kendall τ the correlations table holds (the single
    metrics of `target`, on the truth rows where both have a value)?"""
    from scipy import stats

    # Baselines are read from the specs (the same in every plan), not from scores/.
    singles = [
        r for r in rows
        if r["target"] == target and not r["metric"].startswith("ensemble:") and not r.get("is_baseline")
        and r["kendall_tau"] is not None and math.isfinite(r["kendall_tau"])
    ]
    y = np.array([r["value"] if r["value"] is not None else math.nan for r in truth_rows], dtype=float)

    def agrees(scores: pa.Table) -> bool:
        columns = metric_columns(scores, [r["arch_id"] for r in truth_rows], [r["metric"] for r in singles])
        for r in singles:
            x = columns[r["metric"]]
            both = np.isfinite(x) & np.isfinite(y)
            if both.sum() < 2 or abs(stats.kendalltau(x[both], y[both], variant="b").statistic - r["kendall_tau"]) > 1e-9:
                return False
        return True

    return agrees


def _correlation_sections(out: Location) -> list[Section]:
    correlations = _read("correlations", out.child("correlations.parquet"))
    truth = _read("truth", out.child("truth.parquet"))
    if correlations is None or truth is None or not out.child("scores").exists():
        return []
    rows = correlations.to_pylist()
    target = rows[0]["target"]  # the pipeline writes the primary target first
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    truth_rows = [r for r in truth.to_pylist() if r["target"] == target]
    scores, note = _plan_scores(out.child("scores"), _agrees_with_correlations(truth_rows, rows, target))
    from tfnas_ray.analysis.baselines import run_baselines

    scores, _ = run_baselines(out.child("scores"), scores)  # as `correlate` added them: from the specs
    columns = _method_columns(scores, [r["arch_id"] for r in truth_rows], metrics)
    y = np.array([r["value"] if r["value"] is not None else math.nan for r in truth_rows], dtype=float)
    by_pair = {(r["metric"], r["target"]): r for r in rows}
    figures = [tau_bar_figure([r for r in rows if r["target"] == target], target)]
    figures += [scatter_figure(m, target, columns[m], y, by_pair[(m, target)]) for m in metrics]
    compared = any(r.get("verdict") is not None or r.get("is_baseline") for r in rows)
    header = ["metric", "target", "n", "Kendall τ [95%]", "Spearman ρ [95%]", "Pearson r"]

    from tfnas_ray.analysis.correlation import compared_with, given_reference

    given = given_reference(rows)
    if compared:
        header += [f"τ − {given}'s [paired 95%]", f"against {given}"] if given else ["τ − best baseline's [paired 95%]", "against the best baseline"]
    table = _html_table(
        header,
        [
            [r["metric"], r["target"], r["n"], _interval(r["kendall_tau"], r["kendall_lo"], r["kendall_hi"]), _interval(r["spearman_rho"], r["spearman_lo"], r["spearman_hi"]), _fmt(r["pearson_r"], "+.3f")]
            + ([("(baseline)" if r.get("is_baseline") else "") + (f" {compared_with(r)}: " if compared_with(r) else "") + _interval(r.get("tau_minus_baseline"), r.get("diff_lo"), r.get("diff_hi")), r.get("verdict") or "–"] if compared else [])
            for r in rows
        ],
    )
    sentences = [note] if note else []
    if compared:
        for t in dict.fromkeys(r["target"] for r in rows):
            baseline = next((compared_with(r) for r in rows if r["target"] == t and compared_with(r)), None)
            if baseline is None:
                continue
            mine = [r for r in rows if r["target"] == t and not r.get("is_baseline") and r["metric"] != baseline]
            behind = [r["metric"] for r in mine if r.get("verdict") != "beats"]
            what = "the reference" if given else "the best baseline"
            if behind:
                sentences.append(f"{t}: do not beat {what} {baseline} (paired bootstrap interval of the τ difference not above 0): {', '.join(behind)}.")
            elif mine:
                sentences.append(f"{t}: every metric beats {what} {baseline}.")
    sections = [Section("Metrics against the truth", figures, table, text=" ".join(sentences))]
    archs = _read("archs", out.child("archs.parquet"))
    if archs is not None and archs.num_rows and archs.column("space")[0].as_py() == "nb-bert" and "glue" in set(truth.column("target").to_pylist()):
        sections.append(_space_section(scores))
    return sections


def _method_columns(scores: pa.Table, arch_ids: Sequence[str], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per metric its mean values; per rank ensemble its merit (mean rank of its members
    on the architectures all of them scored), aligned with `arch_ids`."""
    from tfnas_ray.analysis.ranking import ENSEMBLE_PREFIX, method_merit, parse_method
    from tfnas_ray.metrics import directions

    singles = [n for n in names if not n.startswith(ENSEMBLE_PREFIX)]
    members = list(dict.fromkeys(m for n in names if n.startswith(ENSEMBLE_PREFIX) for m in parse_method(n).members))
    columns = metric_columns(scores, arch_ids, list(dict.fromkeys(singles + members)))
    out = {n: columns[n] for n in singles}
    for n in names:
        if n.startswith(ENSEMBLE_PREFIX):
            method = parse_method(n)
            out[n] = method_merit(method, {m: columns[m] for m in method.members}, directions())
    return out


def _space_section(scores: pa.Table) -> Section:
    from tfnas_ray.analysis.space_analysis import analyze_space
    from tfnas_ray.spaces.nasbench_bert.benchmarks import records

    result = analyze_space(records(), target="glue", scores=scores)
    figures = [effects_figure(result["effects"], "glue"), inside_tau_figure(result["metric_taus"], result["rule"], "glue")]
    test = result["operation_test"]
    text = (
        f"Do the layer operations explain GLUE beyond hidden size, depth, heads and FFN stacking? "
        f"F = {test.f:.2f}, p = {test.p:.3g}."
    )
    return Section("NAS-Bench-BERT space analysis", figures, text=text)


def _what_each_is(candidates: pa.Table) -> dict[str, str]:
    """hf candidates: arch_id -> its model type, task and the config settings that vary
    between candidates (what the search chose; settings every candidate shares, such as
    the vocabulary, are left out). Other spaces: {} (no column)."""
    import json

    rows = [r for r in candidates.select(["arch_id", "space", "spec"]).to_pylist() if r["space"] == "hf"]
    if not rows or len(rows) != candidates.num_rows:
        return {}
    specs = {r["arch_id"]: json.loads(r["spec"]) for r in rows}
    keys = sorted({k for spec in specs.values() for k in spec["config"]})
    varying = [k for k in keys if len({json.dumps(spec["config"].get(k)) for spec in specs.values()}) > 1]
    return {
        arch: f"{spec['model_type']} {spec['task']}: " + (", ".join(f"{k}={spec['config'].get(k)}" for k in varying) or "the only configuration")
        for arch, spec in specs.items()
    }


def _search_sections(out: Location) -> list[Section]:
    from tfnas_ray.analysis.ranking import method_merit, parse_method
    from tfnas_ray.metrics import directions

    candidates = _read("archs", out.child("candidates.parquet"))
    chosen = _read(None, out.child("chosen.parquet"))
    pareto = _read(None, out.child("pareto.parquet"))
    if candidates is None or chosen is None or pareto is None:
        return []
    ids = candidates.column("arch_id").to_pylist()
    index = {a: i for i, a in enumerate(ids)}
    params = np.asarray(candidates.column("params").to_pylist(), dtype=float)
    chosen_rows, pareto_rows = chosen.to_pylist(), pareto.to_pylist()

    def agrees(table: pa.Table) -> bool:  # the scores `search` ranked by give chosen.parquet's
        columns = _method_columns(table, ids, list(dict.fromkeys(r["method"] for r in chosen_rows)))
        return all(
            r["score"] is None or math.isclose(columns[r["method"]][index[r["arch_id"]]], r["score"], rel_tol=1e-9, abs_tol=1e-12)
            for r in chosen_rows
        )

    scores, note = _plan_scores(out.child("scores"), agrees)
    figures = []
    for method_name in dict.fromkeys(r["method"] for r in chosen_rows + pareto_rows):
        method = parse_method(method_name)
        if method.is_ensemble:  # its score is its merit, the mean rank of its members
            score = method_merit(method, metric_columns(scores, ids, method.members), directions())
        else:
            score = metric_columns(scores, ids, [method_name])[method_name]
        front = [index[r["arch_id"]] for r in pareto_rows if r["method"] == method_name]
        kept = [index[r["arch_id"]] for r in chosen_rows if r["method"] == method_name]
        figures.append(pareto_figure(method_name, params, score, front, kept, ensemble=method.is_ensemble))
    trained = "trained_loss" in chosen.column_names
    what = _what_each_is(candidates)
    measured = [(c, label) for c, label in (("latency_ms", "latency ms"), ("peak_memory_mb", "peak memory MiB")) if c in chosen.column_names]
    header = (
        ["method", "rank", "arch_id"] + (["architecture"] if what else []) + ["score", "params"]
        + [label for _, label in measured] + ["on Pareto front"] + (["trained loss"] if trained else [])
    )
    table = _html_table(
        header,
        [
            [r["method"], r["rank"], r["arch_id"]] + ([what[r["arch_id"]]] if what else [])
            + [_fmt(r["score"], ".5g"), f"{r['params']:,}"] + [_fmt(r[c], ".4g") for c, _ in measured]
            + ["yes" if r["on_pareto_front"] else ""]
            + ([f"{_fmt(r['trained_loss'], '.4f')} ({r['trained_target']})" if r["trained_loss"] is not None else "–"] if trained else [])
            for r in chosen_rows
        ],
    )
    sections = [Section(f"Search: the kept architectures of {len(ids)} candidates", figures, table, text=note)]
    train_truth = _read("truth", out.child("train").child("truth.parquet"))
    if train_truth is not None and (curves := curves_figure(train_truth)) is not None:
        sections.append(Section("Training the best", [curves]))
    return sections


def _regret_sections(out: Location) -> list[Section]:
    evaluation = _read(None, out.child("search_eval.parquet"))
    if evaluation is None:
        return []
    rows = evaluation.to_pylist()
    keeps = sorted({r["keep"] for r in rows})
    figures = [regret_figure([r for r in rows if r["keep"] == k], k) for k in keeps]
    compared = any(r.get("reference") for r in rows)

    def versus(r: dict) -> list[str]:
        if not compared:
            return []
        if r.get("reference") in (None, r["method"]) or r.get("regret_diff") is None:
            return ["–", "(reference)" if r.get("reference") == r["method"] else "–"]
        from tfnas_ray.analysis.search_eval import beats_reference

        verdict = {True: "yes", False: "no", None: "–"}[beats_reference(r)]
        return [f"{r['reference']}: {_interval(r['regret_diff'], r['regret_diff_lo'], r['regret_diff_hi'])}", verdict]

    table = _html_table(
        ["method", "pool size", "keep", "scored", "regret, mean [2.5–97.5% of pools]", "percentile", "top-10% overlap", "target"]
        + (["Δ regret vs reference [95% paired bootstrap over architectures]", "beats the reference"] if compared else []),
        [
            [r["method"], r["pool_size"], r["keep"], "–" if r.get("scored") is None else r["scored"],
             f"{_fmt(r['regret'], '.3f')} [{_fmt(r['regret_lo'], '.3f')}, {_fmt(r['regret_hi'], '.3f')}]",
             _fmt(r["percentile"], ".1f"), _fmt(r["top10_overlap"], ".3f"), r["target"]] + versus(r)
            for r in rows
        ],
    )
    text = ""
    if compared:
        sentences = []
        for k in keeps:
            behind = not_beating([r for r in rows if r["keep"] == k])
            references = sorted({r["reference"] for r in rows if r["keep"] == k and r.get("reference")})
            if behind:
                sentences.append(
                    f"Keep {k}: do not beat the best baseline ({', '.join(references)}): "
                    + "; ".join(f"{m} (pool size {', '.join(map(str, sizes))})" for m, sizes in behind.items()) + "."
                )
            else:
                sentences.append(f"Keep {k}: every method beats the best baseline ({', '.join(references)}) at every pool size.")
        text = " ".join(sentences)
    return [Section("Search evaluation: regret of the pick", figures, table, text=text)]


def _train_sections(out: Location) -> list[Section]:
    # A `train` output: truth.parquet with learning curves and no scores beside it.
    if out.child("scores").exists():
        return []
    truth = _read("truth", out.child("truth.parquet"))
    if truth is None or (curves := curves_figure(truth)) is None:
        return []
    rows = truth.to_pylist()
    table = _html_table(["arch_id", "target", "value", "status", "seconds"], [[r["arch_id"], r["target"], _fmt(r["value"], ".4f"), r["status"], _fmt(r["seconds"], ".1f")] for r in rows])
    return [Section("Short training runs", [curves], table)]


SECTION_BUILDERS: Sequence[Callable[[Location], list[Section]]] = (
    _correlation_sections,
    _search_sections,
    _regret_sections,
    _train_sections,
)


def build_sections(out_dir: str | Location) -> list[Section]:
    """Every section that applies to what `out_dir` holds.

    Raises:
        TfnasError: the directory holds none of the tables a report is made of.
    """
    out = locate(out_dir)
    if not out.exists():
        raise TfnasError(f"report: {out.url!r} does not exist")
    sections = [section for build in SECTION_BUILDERS for section in build(out)]
    if not sections:
        raise TfnasError(
            f"report: {out.url!r} holds no run to report on; expected the output of reproduce "
            f"(correlations.parquet), search (chosen.parquet), evaluate-search (search_eval.parquet) or train (truth.parquet)"
        )
    return sections


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 46%; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; }
th { background: #f4f4f4; }
"""


def render_html(title: str, sections: Sequence[Section], pngs: dict[str, bytes]) -> str:
    """The page: every figure as a base64 data URL, so it is one self-contained file."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        for fig in section.figures:
            data = base64.b64encode(pngs[fig.name]).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(fig.title)}">'
                f"<figcaption>{html.escape(fig.title)}. {html.escape(fig.caption)}</figcaption></figure>"
            )
        parts.append(section.table_html)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Location, *, title: str | None = None) -> Location:
    """Draw the figures of a run's directory; write DIR/figures/*.png and DIR/report.html.

    Returns:
        The location of report.html.
    Raises:
        TfnasError: the directory holds no run (see `build_sections`).
    """
    out = locate(out_dir)
    sections = build_sections(out)
    figures_dir = out.child("figures")
    figures_dir.make_dirs()
    pngs: dict[str, bytes] = {}
    for section in sections:
        for fig in section.figures:
            pngs[fig.name] = fig.png()
            figures_dir.child(f"{fig.name}.png").write_bytes(pngs[fig.name])
    page = render_html(title or f"tfnas report: {out.name}", sections, pngs)
    report = out.child("report.html")
    report.write_bytes(page.encode("utf-8"))
    return report


