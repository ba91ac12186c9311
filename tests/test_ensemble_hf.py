"""`tfnas ensemble` on an `hf` run, made by the product end to end: 6 configurations of the
shipped tiny GPT-2 family sampled, scored (two training-free metrics) and trained by
`tfnas train` (2 steps of 8 × 32 WikiText-2 tokens each: a real, if very short, truth
table), then cross-validated as on nb-nlp and nb-bert runs.

The figures are checked against a recomputation by hand with scipy from the run's own
tables: which metric each fold chooses on its training folds only (nested), its τ on the
held-out fold, a fixed rank ensemble of a metric and an hf baseline, and every outcome's
Δτ against the best baseline. The hf baselines (layers, width, decoder parameters, …)
come from the specs (archs.parquet beside scores/, as `reproduce` lays a run out), and
two of them are set against the specs' own numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats
from typer.testing import CliRunner

from tfnas_ray.cli import app

N_ARCHS, FOLDS = 6, 2  # ensemble needs 3 architectures per fold
TARGET = "val_loss@2st"
SCORED = ("naswot", "head_confidence")  # one forward each: cheap on a CPU
FIXED = "ensemble:head_confidence+decoder_params*2"


def _run(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def hf_run(ray_cluster, tmp_path_factory):
    """A run directory as `reproduce` lays it out: archs.parquet, scores/, truth.parquet."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: threads would wait on each other
    run = tmp_path_factory.mktemp("hf-run")
    _run("sample", "hf", "--space", "tiny-gpt2", "-n", N_ARCHS, "--seed", 0, "--out", run / "archs.parquet")
    _run("score", run / "archs.parquet", *(a for m in SCORED for a in ("-m", m)), "--out", run / "scores", "--no-progress")
    small = ["--steps", 2, "--iterations", 1, "--batch-size", 8, "--seq-len", 32, "--train-tokens", 4000, "--valid-tokens", 1024]
    assert f"trials: {N_ARCHS} ({N_ARCHS} ok)" in _run("train", run / "archs.parquet", "--out", run, *small)
    torch.set_num_threads(before)
    return run


@pytest.fixture(scope="module")
def ensemble_result(hf_run):
    from tfnas_ray.analysis.ensemble import EnsembleConfig
    from tfnas_ray.pipeline import ensemble_run

    return ensemble_run(str(hf_run), fixed=[FIXED], cv=EnsembleConfig(folds=FOLDS, max_members=2), log=lambda _: None)


def _by_hand(run):
    """(arch ids in truth order, quality = −val loss, {metric: oriented values}) from the
    run's tables; the baselines' values computed from the specs."""
    from tfnas_ray.metrics import directions
    from tfnas_ray.metrics.baselines import baseline_scores

    truth = [r for r in pq.read_table(run / "truth.parquet").to_pylist() if r["target"] == TARGET]
    ids = list(dict.fromkeys(r["arch_id"] for r in truth))
    loss = {r["arch_id"]: r["value"] for r in truth}
    archs = pq.read_table(run / "archs.parquet")
    rows = pq.read_table(run / "scores").to_pylist() + baseline_scores(archs).to_pylist()
    declared = directions()
    columns: dict[str, np.ndarray] = {}
    for metric in dict.fromkeys(r["metric"] for r in rows):
        value = {r["arch_id"]: r["value"] for r in rows if r["metric"] == metric}
        sign = 1.0 if declared[metric] == "higher-is-better" else -1.0
        columns[metric] = sign * np.array([value[a] for a in ids], dtype=np.float64)
    specs = {a: json.loads(s) for a, s in zip(archs.column("arch_id").to_pylist(), archs.column("spec").to_pylist())}
    return ids, -np.array([loss[a] for a in ids]), columns, specs


def _tau(x, y) -> float:
    return float(stats.kendalltau(x, y, variant="b").statistic)


def _first_best(names, columns, rows, quality) -> str:
    """The candidate with the highest τ on `rows`, the first of equals (NaN never wins)."""
    taus = [_tau(columns[m][rows], quality[rows]) for m in names]
    taus = [-math.inf if math.isnan(t) else t for t in taus]
    return names[int(np.argmax(taus))]


def test_ensemble_takes_an_hf_run_with_its_baselines_nested(hf_run, ensemble_result):
    from tfnas_ray.analysis.ensemble import fold_difference
    from tfnas_ray.metrics.baselines import baseline_names

    result = ensemble_result
    ids, quality, columns, specs = _by_hand(hf_run)

    # The hf baselines take part beside the two scored metrics; their values are the specs'.
    hf_baselines = baseline_names("hf")
    assert {"num_layers", "hidden_size", "decoder_params", "params", "flops_per_token"} <= set(hf_baselines)
    assert result.target == TARGET and result.n == N_ARCHS and not result.dropped
    assert set(result.metrics) == {*SCORED, *hf_baselines}
    assert result.baselines == [m for m in result.metrics if m in hf_baselines]
    assert columns["num_layers"].tolist() == [specs[a]["config"]["n_layer"] for a in ids]
    assert columns["hidden_size"].tolist() == [specs[a]["config"]["n_embd"] for a in ids]

    # Folds: a seeded partition of every architecture, 3 + 3.
    assert [f.size for f in result.folds] == [N_ARCHS // FOLDS] * FOLDS
    assert sorted(np.concatenate(result.folds).tolist()) == list(range(N_ARCHS))

    # Nested: each fold's choice is the best on the other folds only, its τ the held-out one.
    outcomes = {o.name: o for o in [*result.outcomes, result.reference]}
    for name, pool in (("best single metric", result.metrics), ("best baseline", result.baselines)):
        outcome = outcomes[name]
        for f, test in enumerate(result.folds):
            train = np.sort(np.concatenate([g for h, g in enumerate(result.folds) if h != f]))
            assert outcome.chosen[f] == _first_best(pool, columns, train, quality), (name, f)
            assert outcome.tau[f] == pytest.approx(_tau(columns[outcome.chosen[f]][test], quality[test]), abs=1e-12)
        assert outcome.final == _first_best(pool, columns, np.arange(N_ARCHS), quality)

    # The fixed ensemble: weighted mean of the members' ranks within each held-out fold.
    fixed = outcomes[f"{FIXED} (fixed)"]
    for f, test in enumerate(result.folds):
        merit = (stats.rankdata(columns["head_confidence"][test]) + 2 * stats.rankdata(columns["decoder_params"][test])) / 3
        assert fixed.tau[f] == pytest.approx(_tau(merit, quality[test]), abs=1e-12)

    # Free: every member a baseline; with a training-free metric: some member scored.
    from tfnas_ray.analysis.ranking import parse_method

    assert all(set(parse_method(name).members) <= set(hf_baselines) for name in result.free.chosen)
    assert all(set(parse_method(name).members) & set(SCORED) for name in result.with_metric.chosen)
    assert result.metric_over_free == fold_difference(result.with_metric, result.free, result.folds)

    # Every outcome is set against the best baseline, fold by fold.
    assert result.reference is not None and result.reference.name == "best baseline"
    for outcome in result.outcomes:
        diffs = fold_difference(outcome, result.reference, result.folds).diffs
        assert diffs == pytest.approx([a - b for a, b in zip(outcome.tau, result.reference.tau)], abs=1e-15)


def test_the_ensemble_command_prints_the_hf_run(hf_run, ensemble_result):
    from tfnas_ray.analysis.ensemble import format_ensemble

    output = _run("ensemble", hf_run, "--folds", FOLDS, "--max-members", 2, "--method", FIXED, "--no-progress")
    result = ensemble_result
    assert format_ensemble(result) in output  # the command prints what the pipeline returns
    lines = output.splitlines()
    assert lines[0].startswith(f"target {TARGET}: {N_ARCHS} architectures, {len(result.metrics)} metrics")
    (baselines,) = [line for line in lines if line.startswith("baselines: ")]
    assert all(b in baselines for b in ("num_layers", "hidden_size", "decoder_params"))
    assert "Δτ vs best baseline" in output
    rows = {line.split("  ")[0].strip(): line for line in lines if line.startswith(("best ", FIXED))}
    assert set(rows) == {
        "best ensemble (2..2 metrics)", "best single metric", "best free ensemble (1..2 baselines)", "best with a training-free metric (1..2)",
        "best baseline", f"{FIXED} (fixed)",
    }
    assert "(the reference)" in rows["best baseline"]
    assert all("[" in rows[name] and "]" in rows[name] for name in rows if name != "best baseline")  # a Δτ interval each
    assert lines[-1].startswith(("do not beat the best baseline (", "every procedure and method beats the best baseline"))
    assert lines[-2].startswith(("a training-free metric adds to the free baselines: ", "no training-free metric adds to the free baselines ("))

    # Too few architectures for the default 5 folds: one line, exit 1.
    refused = CliRunner().invoke(app, ["ensemble", str(hf_run), "--no-progress"])
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines()[-1] == f"error: --folds 5 needs at least 15 architectures with every metric, have {N_ARCHS}"
