"""The report's regret figure stays readable with many methods (the hf study evaluated
26): the reference, the best baseline, random, the oracle and the HIGHLIGHTED best
methods in colour with legend entries, the rest thin grey lines, every method still in
the report's table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tfnas_ray import tables
from tfnas_ray.analysis.aligned import align
from tfnas_ray.analysis.report import HIGHLIGHTED, build_sections, regret_figure, write_report
from tfnas_ray.analysis.search_eval import SearchEvalConfig, evaluate_search
from tfnas_ray.metrics import directions

from test_report import check_drawn, embedded_pngs

# The 24 metrics the hf study scored on tiny GPT-2 (README), baselines included.
HF_METHODS = (
    "hidden_cov,jacob_cov,activation_distance,params,grad_norm,snip,fisher,grasp,synflow,naswot,head_importance,"
    "head_confidence,head_confidence_normalized,softmax_confidence,softmax_confidence_normalized,flops_per_token,"
    "latency_ms,peak_memory_mb,peak_memory_forward_mb,num_layers,hidden_size,num_heads,ffn_width,decoder_params"
).split(",")
GREY = (0.6, 0.6, 0.6, 1.0)


def _evaluation(out: Path, reference: str | None) -> list[dict]:
    """An evaluate-search table of the 24 methods on 40 architectures (the real code),
    each method the truth plus its own amount of noise, oriented by its direction."""
    rng = np.random.default_rng(0)
    loss = rng.normal(size=40)
    dirs = directions()
    rows = []
    for i, metric in enumerate(HF_METHODS):
        sign = 1 if dirs[metric] == "higher-is-better" else -1
        values = sign * (-loss + (0.2 + 0.15 * i) * rng.normal(size=40))
        rows += [{"arch_id": f"a{j}", "metric": metric, "value": float(values[j])} for j in range(40)]
    scores = tables.from_rows("scores", rows)
    truth = tables.from_rows("truth", [{"arch_id": f"a{j}", "target": "val_loss", "value": float(loss[j])} for j in range(40)])
    table = evaluate_search(
        align(scores, truth, "val_loss", metrics=list(HF_METHODS)), list(HF_METHODS), dirs,
        SearchEvalConfig(pools=100, pool_sizes=(5, 10, 20, 40), keeps=(1,), seed=0), reference=reference,
    )
    out.mkdir(parents=True, exist_ok=True)
    tables.write_table("search_eval", table, out / "search_eval.parquet")
    return table.to_pylist()


def legend_labels(figure) -> list[str]:
    """Every legend entry of a figure, in its axes' legends and the figure's own."""
    legends = [a.get_legend() for a in figure.axes if a.get_legend() is not None] + list(figure.legends)
    return [t.get_text() for legend in legends for t in legend.get_texts()]


@pytest.mark.parametrize("reference", [None, "decoder_params"])
def test_a_26_method_regret_figure_has_a_short_legend_and_every_method_in_the_table(tmp_path, reference):
    rows = _evaluation(tmp_path, reference)
    write_report(tmp_path)
    section = next(s for s in build_sections(tmp_path) if s.heading.startswith("Search evaluation"))
    figure = next(f for f in section.figures if f.name == "regret-top1")
    labels = legend_labels(figure.figure)
    assert len(labels) <= HIGHLIGHTED + 4, labels
    assert "random" in labels and "oracle" in labels
    # The best baseline is the baseline of lowest regret at the largest pool (40).
    from tfnas_ray.analysis.ranking import baseline_candidates

    at_40 = {r["method"]: r["regret"] for r in rows if r["pool_size"] == 40}
    best = min(baseline_candidates(HF_METHODS), key=lambda m: (at_40[m], np.mean([r["regret"] for r in rows if r["method"] == m])))
    if reference is None:
        assert f"{best} (best baseline)" in labels
    else:
        assert f"{reference} (reference)" in labels and f"{best} (best baseline)" in labels
    # The coloured methods besides those: the HIGHLIGHTED of lowest regret at P = 40.
    named = {label.split(" (")[0] for label in labels} - {"random", "oracle"}
    others = [m for m in HF_METHODS if m not in named]
    assert len(named) == HIGHLIGHTED + (1 if reference is None else 2)
    assert max(at_40[m] for m in named - {best, reference}) <= min(at_40[m] for m in others)
    # Every other method is a thin grey line, and the caption counts them.
    axes = figure.figure.axes[0]
    grey = [line for line in axes.get_lines() if tuple(line.get_color()) == GREY or line.get_color() == "0.6"]
    assert len(grey) == len(others) == 24 - len(named)
    assert f"{len(others)} more methods in thin grey, unlabelled: their numbers are in the table" in figure.caption
    # Every method, random and the oracle are rows of the report's table.
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    in_table = set(re.findall(r"<tr><td>([^<]+)</td><td>40</td><td>1</td>", page))
    assert in_table == set(HF_METHODS) | {"random", "oracle"}
    # Drawn, and the page shows the very PNG on disk.
    png = (tmp_path / "figures" / "regret-top1.png").read_bytes()
    check_drawn(png, figure.figure, figure.name)
    assert png in embedded_pngs(tmp_path / "report.html")


def test_the_legend_check_fails_when_every_method_is_labelled(tmp_path):
    # The control: the same figure with every method in colour (the drawing before the
    # cap) has 26 legend entries, which the check above refuses.
    rows = _evaluation(tmp_path, None)
    labels = legend_labels(regret_figure(rows, 1, highlighted=len(HF_METHODS)).figure)
    assert len(labels) == len(HF_METHODS) + 2 > HIGHLIGHTED + 4
