"""`tfnas search`: constraints, the Pareto front, ranking, and the command end to end
through Ray (resume, chosen.parquet, an ensemble)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tfnas_ray import tables
from tfnas_ray.analysis.ranking import parse_method
from tfnas_ray.analysis.search import Constraints, pareto_front, rank_candidates
from tfnas_ray.cli import app
from tfnas_ray.errors import TfnasError
from tfnas_ray.search_pipeline import SearchConfig, draw_candidates, parameter_count
from tfnas_ray.spaces import get_space

# ---- the Pareto front ------------------------------------------------------------------


def brute_force_front(merit: np.ndarray, params: np.ndarray) -> set[int]:
    """The definition: i is on the front when no j has merit >= and params <=, one strictly."""
    front = set()
    for i in range(merit.size):
        if not np.isfinite(merit[i]):
            continue
        dominated = any(
            np.isfinite(merit[j]) and merit[j] >= merit[i] and params[j] <= params[i] and (merit[j] > merit[i] or params[j] < params[i])
            for j in range(merit.size)
        )
        if not dominated:
            front.add(i)
    return front


def test_pareto_front_of_a_known_small_set():
    # (params, merit): A(1, 1) B(2, 3) C(2, 2) D(3, 3) E(4, 5) F(5, NaN) G(4, 5)
    # B beats C at equal params; D ties B's merit with more params (dominated); E and G
    # tie on both and are both kept; F failed.
    params = np.array([1, 2, 2, 3, 4, 5, 4])
    merit = np.array([1.0, 3.0, 2.0, 3.0, 5.0, math.nan, 5.0])
    assert pareto_front(merit, params).tolist() == [0, 1, 4, 6]


def test_pareto_front_equals_the_definition_on_random_sets():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        params = rng.integers(1, 10, n)  # few distinct values: many ties
        merit = rng.integers(0, 6, n).astype(float)
        merit[rng.random(n) < 0.1] = math.nan
        front = pareto_front(merit, params)
        assert set(front.tolist()) == brute_force_front(merit, params)
        assert np.all(np.diff(params[front]) >= 0)  # fewest parameters first


# ---- ranking and constraints -------------------------------------------------------------


def test_rank_candidates_orients_by_direction_and_never_keeps_a_failure():
    columns = {"a": np.array([3.0, math.nan, 1.0, 2.0]), "b": np.array([4.0, 3.0, 2.0, 1.0])}
    directions = {"a": "lower-is-better", "b": "higher-is-better"}
    params = np.array([10, 20, 30, 40])
    ranked = rank_candidates(parse_method("a"), columns, directions, params, keep=5)
    assert ranked.kept.tolist() == [2, 3, 0]  # lowest a first; the NaN is not kept
    assert ranked.score.tolist()[2] == 1.0 and ranked.merit.tolist()[2] == -1.0
    # Ensemble: both members ranked over the rows both scored (0, 2, 3): -a (0:1, 2:3, 3:2)
    # and b (0:3, 2:2, 3:1); index 1 has a NaN member, so no ensemble merit.
    ensemble = rank_candidates(parse_method("ensemble:a+b"), columns, directions, params, keep=2)
    assert ensemble.merit[[0, 2, 3]].tolist() == [2.0, 2.5, 1.5] and math.isnan(ensemble.merit[1])
    assert ensemble.kept.tolist() == [2, 0]


def test_constraints_check_their_bounds_and_the_space():
    with pytest.raises(TfnasError, match="--min-params 10 is above --max-params 5"):
        Constraints(min_params=10, max_params=5)
    with pytest.raises(TfnasError, match="--max-layers must be >= 1, got 0"):
        Constraints(max_layers=0)
    with pytest.raises(TfnasError, match="layer and hidden-size limits apply to nb-bert only, not to space 'nb-nlp'"):
        SearchConfig(space="nb-nlp", methods=("params",), keep=1, candidates=5, constraints=Constraints(max_hidden=128))
    limits = Constraints(max_params=100, min_layers=4)
    assert limits.admits(params=100, layers=4) and not limits.admits(params=101, layers=4)
    assert not limits.admits(params=50, layers=2)


def test_candidates_are_drawn_reproducibly_and_satisfy_the_constraints():
    space = get_space("nb-nlp")
    unconstrained = draw_candidates(SearchConfig(space="nb-nlp", methods=("params",), keep=1, candidates=30, seed=3))
    counts = unconstrained.column("params").to_pylist()
    assert counts == [space.count_parameters(s) for s in unconstrained.column("spec").to_pylist()]
    assert len(set(unconstrained.column("arch_id").to_pylist())) == 30
    limit = int(np.median(counts))
    config = SearchConfig(space="nb-nlp", methods=("params",), keep=1, candidates=20, seed=3, constraints=Constraints(max_params=limit))
    first, again = draw_candidates(config), draw_candidates(config)
    assert first.column("arch_id").to_pylist() == again.column("arch_id").to_pylist()
    assert first.num_rows == 20 and max(first.column("params").to_pylist()) <= limit
    # The admitted ones of the unconstrained draw come first, in the generator's order.
    admitted = [a for a, c in zip(unconstrained.column("arch_id").to_pylist(), counts) if c <= limit]
    assert first.column("arch_id").to_pylist()[: len(admitted)] == admitted


def test_nb_bert_shape_limits_hold_and_too_tight_limits_say_so():
    config = SearchConfig(space="nb-bert", methods=("params",), keep=1, candidates=6, seed=0, constraints=Constraints(max_layers=2, min_hidden=256))
    drawn = draw_candidates(config)
    for spec, params in zip(drawn.column("spec").to_pylist(), drawn.column("params").to_pylist()):
        parsed = json.loads(spec)
        assert len(parsed["encoder_layers"]) == 2 and parsed["hidden_size"] == 256
        assert params == parameter_count("nb-bert", spec)
    impossible = SearchConfig(space="nb-nlp", methods=("params",), keep=1, candidates=3, constraints=Constraints(max_params=10))
    with pytest.raises(TfnasError, match=r"only 0 of 150 drawn architectures .* satisfy the constraints \(max params 10\); loosen them"):
        draw_candidates(impossible)


# ---- the command, through Ray --------------------------------------------------------------


def run(args: list[str]):
    return CliRunner().invoke(app, ["search", *args, "--no-progress"])


def test_search_end_to_end_writes_chosen_pareto_and_report(ray_cluster, tmp_path):
    out = tmp_path / "search"
    result = run(["nb-nlp", "--metric", "hidden_cov", "--metric", "ensemble:hidden_cov+params", "--candidates", "8", "--keep", "3", "--shard-size", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report: {out}/report.html" in result.output and (out / "report.html").exists()
    candidates = tables.read_table("archs", out / "candidates.parquet")
    assert candidates.num_rows == 8 and set(candidates.column("source").to_pylist()) == {"search:seed=0"}
    scores = tables.read_table("scores", out / "scores")
    value = {(r["arch_id"], r["metric"]): r["value"] for r in scores.to_pylist()}
    params = dict(zip(candidates.column("arch_id").to_pylist(), candidates.column("params").to_pylist()))
    chosen = pq.read_table(out / "chosen.parquet").to_pylist()
    single = [r for r in chosen if r["method"] == "hidden_cov"]
    assert [r["rank"] for r in single] == [1, 2, 3]
    # The kept three are the three highest hidden_cov values of the candidates (higher is better).
    best = sorted((v for (a, m), v in value.items() if m == "hidden_cov" and v is not None), reverse=True)[:3]
    assert [r["score"] for r in single] == best
    for r in chosen:
        assert r["params"] == params[r["arch_id"]] == value[(r["arch_id"], "params")]
        assert get_space("nb-nlp").canonicalize(json.loads(r["spec"])) == r["spec"]  # the recipe as JSON
    ensemble = [r for r in chosen if r["method"] == "ensemble:hidden_cov+params"]
    assert len(ensemble) == 3 and all(a["merit"] >= b["merit"] for a, b in zip(ensemble, ensemble[1:]))
    pareto = pq.read_table(out / "pareto.parquet").to_pylist()
    for method in ("hidden_cov", "ensemble:hidden_cov+params"):
        front = {r["arch_id"] for r in pareto if r["method"] == method}
        on_front = {r["arch_id"] for r in chosen if r["method"] == method and r["on_pareto_front"]}
        assert on_front == front & {r["arch_id"] for r in chosen if r["method"] == method}
    # The best by hidden_cov is on its front: nothing has a higher score.
    assert single[0]["on_pareto_front"]
    assert (out / "figures" / "pareto-hidden_cov.png").exists()


def test_search_resumes_from_the_shards_it_left(ray_cluster, tmp_path):
    out = tmp_path / "search"
    args = ["nb-nlp", "--metric", "hidden_cov", "--candidates", "6", "--keep", "2", "--shard-size", "2", "--seed", "5", "--out", str(out)]
    first = run(args)
    assert first.exit_code == 0, first.output
    chosen = pq.read_table(out / "chosen.parquet").to_pylist()
    # An interrupted run: one of the three shards is missing.
    shards = sorted((out / "scores").glob("shard-*.parquet"))
    assert len(shards) == 3
    shards[1].unlink()
    (out / "chosen.parquet").unlink()
    again = run(args)
    assert again.exit_code == 0, again.output
    assert "scored now 2 (2 shards already done" in again.output
    assert pq.read_table(out / "chosen.parquet").to_pylist() == chosen
    # Another draw into the same directory is refused, not mixed in.
    other = run([*args[:-4], "--seed", "6", "--out", str(out)])
    assert other.exit_code == 2  # input refused before any work (README: exit codes)
    assert "holds 6 other candidates" in other.output and "use a new --out" in other.output


def test_search_takes_candidates_from_an_archs_table_under_a_parameter_limit(ray_cluster, tmp_path):
    from tfnas_ray.benchmarks import get_benchmark

    archs, _ = get_benchmark("nb-nlp-ptb").load()
    archs = archs.slice(0, 12)
    tables.write_table("archs", archs, tmp_path / "archs.parquet")
    counts = [get_space("nb-nlp").count_parameters(s) for s in archs.column("spec").to_pylist()]
    limit = sorted(counts)[6]
    out = tmp_path / "search"
    result = run(["nb-nlp", "--archs", str(tmp_path / "archs.parquet"), "--metric", "params", "--keep", "2", "--max-params", str(limit), "--out", str(out)])
    assert result.exit_code == 0, result.output
    candidates = tables.read_table("archs", out / "candidates.parquet")
    expected = {a for a, c in zip(archs.column("arch_id").to_pylist(), counts) if c <= limit}
    assert set(candidates.column("arch_id").to_pylist()) == expected
    chosen = pq.read_table(out / "chosen.parquet").to_pylist()
    # params is higher-is-better: the two largest that fit under the limit.
    assert [r["params"] for r in chosen] == sorted({c for c in counts if c <= limit}, reverse=True)[:2]


def test_search_errors_are_one_line(tmp_path):
    result = run(["nb-nlp", "--metric", "no_such_metric", "--candidates", "2", "--keep", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no_such_metric" in result.output
    result = run(["nb-nlp", "--metric", "params", "--keep", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "search needs --candidates N (how many to draw) or --archs FILE" in result.output
    result = run(["nb-nlp", "--metric", "params", "--candidates", "2", "--keep", "2", "--train", "3", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--train must be between 0 and --keep (2), got 3" in result.output


def test_search_trains_the_best_and_puts_their_loss_beside_the_rank(ray_cluster, tmp_path):
    out = tmp_path / "search"
    result = run(["nb-nlp", "--metric", "params", "--candidates", "4", "--keep", "2", "--train", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    chosen = pq.read_table(out / "chosen.parquet").to_pylist()
    trained = [r for r in chosen if r["trained_loss"] is not None]
    assert [r["rank"] for r in trained] == [1] and trained[0]["trained_target"] == "val_loss@100ktok"
    truth = {r["arch_id"]: r for r in tables.read_table("truth", out / "train" / "truth.parquet").to_pylist() if r["target"] == "val_loss@100ktok"}
    assert list(truth) == [trained[0]["arch_id"]] and truth[trained[0]["arch_id"]]["value"] == trained[0]["trained_loss"]
    # The default CPU budget (64 units, 100k tokens) lands between a trained LM and
    # the uniform guess over 10,000 words, ln(10,000) = 9.21.
    assert 4.0 < trained[0]["trained_loss"] < 9.3
    assert "val_loss@100ktok" in result.output
    assert (out / "figures" / "learning-curves.png").exists()
    # The training run's own directory is a `train` output: its report is the curves.
    report = CliRunner().invoke(app, ["report", str(out / "train")])
    assert report.exit_code == 0, report.output
    assert (out / "train" / "report.html").exists() and (out / "train" / "figures" / "learning-curves.png").exists()
