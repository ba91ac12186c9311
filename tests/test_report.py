"""`tfnas report`: figures with labelled axes and the promised sizes, and report.html as a
person sees it, rendered by a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import math
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
from tfnas_ray.pipeline import directions
from tfnas_ray.search_pipeline import parameter_count

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk (PNG spec, section 11.2.2)."""
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def search_eval_table(scores: pa.Table, truth: pa.Table, target: str, metrics: list[str], pools: list[int], *, draws: int = 200) -> pa.Table:
    """A search_eval table in the schema `tfnas evaluate-search` writes, computed here by
    Monte Carlo on a small benchmark slice (lower truth is better): the pick's gap to the
    pool's best, mean and normal 95% interval over `draws` random pools, keep 1."""
    rows = [r for r in truth.to_pylist() if r["target"] == target and r["value"] is not None]
    arch_ids = [r["arch_id"] for r in rows]
    loss = np.array([r["value"] for r in rows])
    columns = metric_columns(scores, arch_ids, metrics)
    rng = np.random.default_rng(0)
    out = []
    for pool_size in pools:
        regrets: dict[str, list[float]] = {m: [] for m in [*metrics, "random", "oracle"]}
        for _ in range(draws):
            pool = rng.choice(len(rows), pool_size, replace=False)
            best = loss[pool].min()
            for m in metrics:  # every metric here is higher-is-better
                regrets[m].append(loss[pool[np.nanargmax(columns[m][pool])]] - best)
            regrets["random"].append(loss[rng.choice(pool)] - best)
            regrets["oracle"].append(0.0)
        for method, values in regrets.items():
            values = np.asarray(values)
            half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
            out.append({"method": method, "pool_size": pool_size, "keep": 1, "regret": values.mean(), "regret_lo": values.mean() - half,
                        "regret_hi": values.mean() + half, "percentile": math.nan, "top10_overlap": math.nan, "target": target})
    return pa.Table.from_pylist(out)


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
    pq.write_table(search_eval_table(scores, truth, "test_loss", ["hidden_cov", "params"], [4, 8, 16]), out / "search_eval.parquet")
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
    scatter = next(f for s in build_sections(reproduce_dir) for f in s.figures if f.name == "scatter-hidden_cov-test_loss")
    correlations = {r["metric"]: r for r in pq.read_table(reproduce_dir / "correlations.parquet").to_pylist() if r["target"] == "test_loss"}
    tau = correlations["hidden_cov"]
    assert scatter.figure.axes[0].get_title() == (
        f"hidden_cov vs test_loss: τ {tau['kendall_tau']:+.3f} [{tau['kendall_lo']:+.3f}, {tau['kendall_hi']:+.3f}], n = 16"
    )


def test_search_report_figures(search_dir):
    check_figures(search_dir, {"pareto-hidden_cov", "pareto-ensemble_hidden_cov_params"})


def test_nb_bert_report_has_the_space_analysis(bert_dir):
    write_report(bert_dir)
    check_figures(bert_dir, {"space-effects-glue", "space-tau-glue", "scatter-params-glue", "tau-glue"})


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
    # Chromium logs every console message of the page as INFO:CONSOLE; the page has none.
    assert "CONSOLE" not in console, [line for line in console.splitlines() if "CONSOLE" in line]


def test_the_browser_check_catches_a_broken_image(tmp_path):
    """The check above can fail: a page with a missing image and a console error."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><title>x</title></head><body><img src="missing.png"><script>console.error("boom")</script></body></html>')
    seen, console = render_in_chromium(page, tmp_path)
    assert seen["images"] == 1 and seen["loaded"] == 0
    assert "console.error: boom" in seen["errors"] and "CONSOLE" in console
