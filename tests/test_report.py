"""`tfnas report`: figures with labelled axes and the promised sizes, and report.html as a
person sees it, rendered by a real headless browser (Debian's chromium)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tfnas_ray import tables
from tfnas_ray.analysis.correlation import CorrelationConfig, correlate
from tfnas_ray.analysis.report import DPI, FIGSIZE, build_sections, write_report
from tfnas_ray.analysis.search import metric_columns
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.cli import app
from tfnas_ray.metrics import directions
from tfnas_ray.search_pipeline import parameter_count

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk (PNG spec, section 11.2.2)."""
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def search_eval_table(scores: pa.Table, truth: pa.Table, target: str, metrics: list[str], pools: list[int], *, draws: int = 200) -> pa.Table:
    """The search_eval table exactly as `tfnas evaluate-search` writes it (the real code:
    per-pool regret, its 2.5–97.5% spread over pools, paired differences to the best
    baseline), on this run's scores, keep 1."""
    from tfnas_ray.analysis.aligned import align
    from tfnas_ray.analysis.search_eval import SearchEvalConfig, evaluate_search

    data = align(scores, truth, target, metrics=metrics)
    return evaluate_search(data, metrics, directions(), SearchEvalConfig(pools=draws, pool_sizes=tuple(pools), keeps=(1,), seed=0))


@pytest.fixture(scope="module")
def reproduce_dir(ray_cluster, tmp_path_factory) -> Path:
    """`tfnas reproduce` on 16 PTB cells (hidden_cov, params), then a search_eval table
    beside it, as `evaluate-search` would leave it."""
    out = tmp_path_factory.mktemp("reproduce") / "run"
    result = CliRunner().invoke(
        app, ["reproduce", "nb-nlp-ptb", "--out", str(out), "--limit", "16", "-m", "hidden_cov", "-m", "params", "--resamples", "50", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert f"report: {out}/report.html" in result.output
    scores = tables.read_table("scores", out / "scores")
    truth = tables.read_table("truth", out / "truth.parquet")
    tables.write_table("search_eval", search_eval_table(scores, truth, "test_loss", ["hidden_cov", "params"], [4, 8, 16]), out / "search_eval.parquet")
    write_report(out)  # again, now with the regret curves
    return out


@pytest.fixture(scope="module")
def search_dir(ray_cluster, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search") / "run"
    result = CliRunner().invoke(app, ["search", "nb-nlp", "-m", "hidden_cov", "-m", "ensemble:hidden_cov+params", "--candidates", "8", "--keep", "3", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A reproduce-shaped nb-bert directory: 12 published encoders, their parameter
    counts as the scores (the `params` metric's own count), correlations."""
    out = tmp_path_factory.mktemp("bert")
    archs, truth = get_benchmark("nb-bert").load()
    archs = archs.slice(0, 12)
    keep = set(archs.column("arch_id").to_pylist())
    truth = truth.filter(pa.array([a in keep for a in truth.column("arch_id").to_pylist()]))
    scores = tables.from_rows(
        "scores", [{"arch_id": a, "metric": "params", "value": float(parameter_count("nb-bert", s)), "seed": 0} for a, s in zip(archs.column("arch_id").to_pylist(), archs.column("spec").to_pylist())]
    )
    tables.write_table("archs", archs, out / "archs.parquet")
    tables.write_table("truth", truth, out / "truth.parquet")
    tables.write_table("scores", scores, out / "scores" / "shard-0.parquet")
    targets = ["glue"] + sorted(set(truth.column("target").to_pylist()) - {"glue"})
    tables.write_table("correlations", correlate(scores, truth, config=CorrelationConfig(resamples=50), directions=directions(), targets=targets), out / "correlations.parquet")
    return out


# A pixel is "drawn data" when it is coloured: chroma (max − min of R, G, B) above 0.15.
# Text, spines, ticks and grid lines are black or grey (chroma 0); every figure draws its
# data in colour (matplotlib's tab palette). 200 such pixels are a few markers or one
# short line segment at 100 dpi.
CHROMA = 0.15
MIN_DATA_PIXELS = 200


def data_pixels(png: bytes, figure) -> list[int]:
    """Per axes of `figure` (drawn at DPI, as `png` was), the coloured pixels inside the
    axes area, its spines and the legend left out."""
    from matplotlib.image import imread

    image = imread(io.BytesIO(png), format="png")[..., :3]  # (H, W, 3) floats in [0, 1]
    height = image.shape[0]
    chroma = image.max(axis=2) - image.min(axis=2)
    figure.canvas.draw()  # the layout of the figure as saved
    counts = []
    for axes in figure.axes:
        box = axes.get_window_extent()
        mask = np.zeros(chroma.shape, dtype=bool)
        # Display coordinates start bottom-left, image rows top-left; 2 px in from the spines.
        mask[int(height - box.y1) + 2 : int(height - box.y0) - 2, int(box.x0) + 2 : int(box.x1) - 2] = True
        legend = axes.get_legend()
        if legend is not None:
            lb = legend.get_window_extent()
            mask[int(height - lb.y1) : int(height - lb.y0) + 1, int(lb.x0) : int(lb.x1) + 1] = False
        counts.append(int(np.count_nonzero(mask & (chroma > CHROMA))))
    return counts


def check_drawn(png: bytes, figure, name: str) -> None:
    counts = data_pixels(png, figure)
    assert counts and min(counts) >= MIN_DATA_PIXELS, f"{name}: no plotted data in the axes area ({counts} coloured pixels)"


def embedded_pngs(page: Path) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page.read_text(encoding="utf-8"))]


def check_page_shows_the_figures(run: Path) -> None:
    """report.html embeds exactly the PNGs on disk, and each shows plotted data."""
    sections = build_sections(run)
    figures = [fig for section in sections for fig in section.figures]
    on_disk = {fig.name: (run / "figures" / f"{fig.name}.png").read_bytes() for fig in figures}
    assert embedded_pngs(run / "report.html") == [on_disk[fig.name] for fig in figures]
    for fig in figures:
        check_drawn(on_disk[fig.name], fig.figure, fig.name)


def check_figures(run: Path, expected: set[str]) -> None:
    """Every figure: labelled axes and a title, 640 px wide, the PNG on disk as drawn."""
    sections = build_sections(run)
    figures = {fig.name: fig for section in sections for fig in section.figures}
    assert expected <= set(figures), sorted(figures)
    for name, fig in figures.items():
        for axes in fig.figure.axes:
            assert axes.get_xlabel() and axes.get_ylabel() and axes.get_title(), name
        data = fig.png()
        width, height = png_size(data)
        assert width == FIGSIZE[0] * DPI and height >= 240, (name, width, height)
        if fig.figure.get_size_inches()[1] == FIGSIZE[1]:
            assert height == FIGSIZE[1] * DPI
        on_disk = run / "figures" / f"{name}.png"
        assert png_size(on_disk.read_bytes()) == (width, height)


def test_reproduce_report_figures(reproduce_dir):
    check_figures(reproduce_dir, {"tau-test_loss", "scatter-hidden_cov-test_loss", "scatter-params-test_loss", "regret-top1"})
    check_page_shows_the_figures(reproduce_dir)
    scatter = next(f for s in build_sections(reproduce_dir) for f in s.figures if f.name == "scatter-hidden_cov-test_loss")
    correlations = {r["metric"]: r for r in pq.read_table(reproduce_dir / "correlations.parquet").to_pylist() if r["target"] == "test_loss"}
    tau = correlations["hidden_cov"]
    assert scatter.figure.axes[0].get_title() == (
        f"hidden_cov vs test_loss: τ {tau['kendall_tau']:+.3f} [{tau['kendall_lo']:+.3f}, {tau['kendall_hi']:+.3f}], n = 16"
    )


def test_search_report_figures(search_dir):
    check_figures(search_dir, {"pareto-hidden_cov", "pareto-ensemble_hidden_cov_params"})
    check_page_shows_the_figures(search_dir)


def test_nb_bert_report_has_the_space_analysis(bert_dir):
    write_report(bert_dir)
    check_figures(bert_dir, {"space-effects-glue", "space-tau-glue", "scatter-params-glue", "tau-glue"})
    check_page_shows_the_figures(bert_dir)


def test_report_of_a_directory_without_a_run_says_what_it_expects(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "holds no run to report on; expected the output of reproduce" in result.output


# ---- in a real browser -------------------------------------------------------------------

# Injected first into <head>: records load errors of any resource and console errors,
# then, once everything has loaded, writes what it saw into the DOM for --dump-dom.
CHECKER = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(e.message || ("failed to load " + (e.target.src || "").slice(0, 60))), true);
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push("console.error: " + args.join(" ")); __consoleError(...args); };
window.addEventListener("load", () => {
  const images = [...document.images];
  const seen = {images: images.length, loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
                widths: images.map(i => i.naturalWidth), errors: window.__errors};
  const out = document.createElement("pre"); out.id = "tfnas-check"; out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script>"""


def render_in_chromium(page: Path, tmp_path: Path) -> tuple[dict, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; .ci/run installs it when run as root), so report.html cannot be rendered")
    checked = tmp_path / "checked.html"
    text = page.read_text(encoding="utf-8")
    assert text.count("<head>") == 1
    checked.write_text(text.replace("<head>", "<head>" + CHECKER), encoding="utf-8")
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    marker = result.stdout.split('<pre id="tfnas-check">', 1)
    assert len(marker) == 2, "the page never finished loading:\n" + result.stdout[-1000:]
    seen = json.loads(marker[1].split("</pre>", 1)[0].replace("&quot;", '"').replace("&amp;", "&"))
    return seen, result.stderr


@pytest.mark.parametrize("which", ["reproduce_dir", "search_dir"])
def test_report_html_renders_in_a_real_browser(which, request, tmp_path):
    run: Path = request.getfixturevalue(which)
    page = run / "report.html"
    html = page.read_text(encoding="utf-8")
    # Self-contained: every image is embedded, nothing is fetched from elsewhere.
    assert "src=\"http" not in html and "href=\"http" not in html and "<link" not in html
    seen, console = render_in_chromium(page, tmp_path)
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert seen["images"] == len(figures) > 0
    assert seen["loaded"] == seen["images"], seen
    assert seen["widths"] == [FIGSIZE[0] * DPI] * len(figures)
    assert seen["errors"] == []
    check_page_shows_the_figures(run)  # what loaded is what is on disk, and it shows data
    # Chromium logs every console message of the page as INFO:CONSOLE; the page has none.
    assert "CONSOLE" not in console, [line for line in console.splitlines() if "CONSOLE" in line]


def test_the_browser_check_catches_a_broken_image(tmp_path):
    """The check above can fail: a page with a missing image and a console error."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><title>x</title></head><body><img src="missing.png"><script>console.error("boom")</script></body></html>')
    seen, console = render_in_chromium(page, tmp_path)
    assert seen["images"] == 1 and seen["loaded"] == 0
    assert "console.error: boom" in seen["errors"] and "CONSOLE" in console


# ---- issue 19: blank figures, the plan the run used, axes, labels, baselines ---------------


def test_the_drawn_data_check_rejects_blank_figures(reproduce_dir, tmp_path):
    """Controls: a figure with every label, a title and a grid but no data; a blank white
    PNG of the right size; and a page whose embedded image differs from the file on disk."""
    from tfnas_ray.analysis.report import ReportFigure, _figure

    figure, axes = _figure()
    axes.set_xlabel("hidden_cov")
    axes.set_ylabel("test_loss")
    axes.set_title("hidden_cov vs test_loss")
    axes.grid(alpha=0.3)
    blank = ReportFigure("blank", "blank", figure)
    with pytest.raises(AssertionError, match="no plotted data in the axes area"):
        check_drawn(blank.png(), figure, "blank")
    real = next(f for s in build_sections(reproduce_dir) for f in s.figures if f.name == "scatter-hidden_cov-test_loss")
    real_png = real.png()
    check_drawn(real_png, real.figure, real.name)  # the same check passes the real figure
    buffer = io.BytesIO()
    from matplotlib.figure import Figure

    white = Figure(figsize=FIGSIZE, dpi=DPI)
    white.savefig(buffer, format="png", dpi=DPI)
    assert png_size(buffer.getvalue()) == png_size(real_png)  # what the old check looked at
    with pytest.raises(AssertionError, match="no plotted data"):
        check_drawn(buffer.getvalue(), real.figure, real.name)
    # A page showing a blank image where the figure on disk has data.
    run = tmp_path / "run"
    shutil.copytree(reproduce_dir, run)
    page = run / "report.html"
    text = page.read_text(encoding="utf-8")
    first = re.search(r'data:image/png;base64,([A-Za-z0-9+/=]+)', text).group(1)
    page.write_text(text.replace(first, base64.b64encode(buffer.getvalue()).decode()), encoding="utf-8")
    with pytest.raises(AssertionError):
        check_page_shows_the_figures(run)


def test_metric_values_spanning_orders_of_magnitude_get_a_symlog_axis(shared_data):
    """The authors' published hidden covariance of 25 PTB cells (-5.0e3 … -2.4e7,
    published_values_sample.json): on a linear axis 19 of 25 points fall in the 5% of the
    axis nearest 0. Drawn, they must spread: no 5% column of the axes holds half of them."""
    from tfnas_ray.analysis.report import scatter_figure

    published = json.loads((shared_data / "nas-bench-nlp/published_values_sample.json").read_text())["values"]
    x = np.array([v["hidden_cov"] for v in published.values()])
    y = np.arange(x.size, dtype=float)
    fig = scatter_figure("hidden_cov", "test_loss", x, y, {"kendall_tau": 0.1, "kendall_lo": 0.0, "kendall_hi": 0.2})
    axes = fig.figure.axes[0]
    assert axes.get_xscale() == "symlog" and "symmetric-log" in axes.get_xlabel()
    fig.figure.canvas.draw()
    box = axes.get_window_extent()
    pixels = axes.transData.transform(np.column_stack([x, y]))[:, 0]
    columns = np.floor((pixels - box.x0) / (0.05 * box.width)).astype(int)
    assert np.bincount(columns).max() < x.size / 2
    # A metric of one order of magnitude keeps its linear axis.
    narrow = scatter_figure("params", "test_loss", np.linspace(2e6, 9e6, 25), y, {})
    assert narrow.figure.axes[0].get_xscale() == "linear"


def test_the_regret_section_says_what_its_spread_is_and_who_does_not_beat_the_baseline(reproduce_dir):
    section = next(s for s in build_sections(reproduce_dir) if s.heading.startswith("Search evaluation"))
    assert "regret, mean [2.5–97.5% of pools]" in section.table_html and "[95%]" not in section.table_html
    assert "Δ regret vs reference [95% paired bootstrap over architectures]" in section.table_html and "scored" in section.table_html
    table = tables.read_table("search_eval", reproduce_dir / "search_eval.parquet")
    rows = [r for r in table.to_pylist() if r["method"] == "hidden_cov"]
    assert {r["reference"] for r in rows} == {"params"}
    behind = [r["pool_size"] for r in rows if r["regret_diff_hi"] >= 0]
    figure = next(f for f in section.figures if f.name == "regret-top1")
    labels = [t.get_text() for t in figure.figure.legends[0].get_texts()]  # below the axes
    assert "params (best baseline)" in labels
    if behind:
        assert "hidden_cov (does not beat the baseline)" in labels
        assert f"do not beat the best baseline (params): hidden_cov (pool size {', '.join(map(str, behind))})" in section.text
    else:
        assert "hidden_cov" in labels and "every method beats the best baseline (params)" in section.text
    assert "2.5–97.5% of pools" in figure.caption


def test_the_tau_chart_marks_metrics_that_do_not_beat_the_best_baseline():
    from tfnas_ray.analysis.report import tau_bar_figure

    def row(metric, tau, verdict=None, is_baseline=False):
        return {"metric": metric, "kendall_tau": tau, "kendall_lo": tau - 0.05, "kendall_hi": tau + 0.05, "is_baseline": is_baseline,
                "baseline": "layers", "verdict": verdict}

    fig = tau_bar_figure([row("layers", 0.68, is_baseline=True), row("params", 0.40, is_baseline=True),
                          row("head_confidence", 0.52, "does not beat"), row("ensemble:a+b", 0.70, "indistinguishable")], "glue")
    axes = fig.figure.axes[0]
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert labels == ["best baseline: layers", "does not beat layers", "trivial baseline"]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["params (baseline)", "head_confidence", "layers (baseline)", "ensemble:a+b"]
    assert any(line.get_xdata()[0] == 0.68 and line.get_linestyle() == "--" for line in axes.get_lines())


def _second_plan(run: Path, *, metric: str, scale: float) -> None:
    """Add to run/scores a newer plan holding the same architectures with other values
    (what a metric version bump or a rerun with another seed leaves beside the first)."""
    import time

    from tfnas_ray.plans import plans_in, write_manifest
    from tfnas_ray.storage import locate

    scores_dir = run / "scores"
    first = plans_in(locate(str(scores_dir)))[-1]
    old = tables.read_tables("scores", [scores_dir / name for name in first.shards if (scores_dir / name).exists()])
    values = [v * scale + 1.0 if (m == metric and v is not None) else v for m, v in zip(old.column("metric").to_pylist(), old.column("value").to_pylist())]
    new = old.set_column(old.schema.get_field_index("value"), "value", pa.array(values, pa.float64()))
    identity = {**first.identity, "seed": 1}
    time.sleep(0.01)  # a later `created`
    tables.write_table("scores", new, scores_dir / "shard-seed1-0.parquet")
    write_manifest(locate(str(scores_dir)), identity, ["shard-seed1-0.parquet"])


def test_the_report_draws_the_plan_the_reproduce_used_not_a_mix(reproduce_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reproduce_dir, run)
    _second_plan(run, metric="hidden_cov", scale=-3.0)
    write_report(run)
    truth = [r for r in tables.read_table("truth", run / "truth.parquet").to_pylist() if r["target"] == "test_loss"]
    original = metric_columns(tables.read_table("scores", reproduce_dir / "scores"), [r["arch_id"] for r in truth], ["hidden_cov"])["hidden_cov"]
    sections = build_sections(run)
    scatter = next(f for s in sections for f in s.figures if f.name == "scatter-hidden_cov-test_loss")
    drawn = scatter.figure.axes[0].collections[0].get_offsets()[:, 0]
    np.testing.assert_array_equal(np.sort(np.asarray(drawn)), np.sort(original[np.isfinite(original)]))
    assert "the one that reproduces the run's tables" in next(s for s in sections if s.heading == "Metrics against the truth").text


def test_the_search_report_draws_the_plan_chosen_parquet_came_from(search_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(search_dir, run)
    _second_plan(run, metric="hidden_cov", scale=-3.0)
    chosen = pq.read_table(run / "chosen.parquet").to_pylist()
    sections = build_sections(run)
    for fig in (f for s in sections for f in s.figures if f.name.startswith("pareto-")):
        method = fig.title.removeprefix("Pareto front: ")
        points = {tuple(p) for c in fig.figure.axes[0].collections[:1] for p in np.asarray(c.get_offsets())}
        scores = {r["score"] for r in chosen if r["method"] == method}
        assert scores <= {y for _, y in points}, method  # every kept score is a drawn point
