"""The stability ablation: --init-seeds S --batches B, minibatch indices, and the
correlations' stability columns."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from tfnas_ray import tables
from tfnas_ray.analysis.correlation import CorrelationConfig, correlate
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.distributed.repeats import Repeats, run_repeated_scoring
from tfnas_ray.distributed.scoring import ScoreConfig, plan_shards
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import BATCHES, load_metrics


def test_nb_nlp_minibatch_b_is_the_next_block_of_rows():
    load_metrics()
    build = BATCHES.get("nb-nlp")
    first = build({"bptt": 5, "batch_size": 4})
    assert first is build({"bptt": 5, "batch_size": 4, "index": 0})  # index 0 is today's batch
    second = build({"bptt": 5, "batch_size": 4, "index": 1})
    # Rows 5..9 of the batchified split: its first row is the target row after block 0,
    # and its targets continue the same columns.
    assert torch_equal(second.tokens[0], first.targets[-1])
    assert torch_equal(second.tokens[1:], second.targets[:-1])
    assert not torch_equal(second.tokens, first.tokens)
    with pytest.raises(TfnasError, match="minibatch 1000000 .* needs"):
        build({"bptt": 5, "batch_size": 4, "index": 1_000_000})


def test_nb_bert_minibatch_b_holds_the_next_articles():
    from tfnas_ray.data.tokenizer import document_batch

    both = document_batch(batch_size=4, seq_len=8)
    assert torch_equal(document_batch(batch_size=2, seq_len=8, index=0)["input_ids"], both["input_ids"][:2])
    # Minibatch 1 of size 2 holds articles 2 and 3.
    assert torch_equal(document_batch(batch_size=2, seq_len=8, index=1)["input_ids"], both["input_ids"][2:])
    with pytest.raises(TfnasError, match="minibatch 1000 .* needs"):
        document_batch(batch_size=2, seq_len=8, index=1000)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


@pytest.fixture(scope="module")
def archs() -> pa.Table:
    table, _ = get_benchmark("nb-nlp-ptb").load()
    return table.take([0, 1, 2, 3, 4])


def test_one_seed_one_batch_keeps_the_shard_identity(archs):
    config = ScoreConfig(metrics=("params",), seed=3, seeding="fixed", shard_size=2)
    assert Repeats().configs(config) == [config]
    configs = Repeats(init_seeds=2, batches=2).configs(config)
    assert configs[0] == config  # the (seed, batch 0) run is today's run: finished shards resume
    assert [(c.seed, c.batch_options.get("index", 0)) for c in configs] == [(3, 0), (3, 1), (4, 0), (4, 1)]
    ids = [tuple(s.shard_id for s in plan_shards(archs, c)) for c in configs]
    assert len(set(ids)) == 4 and len({i for group in ids for i in group}) == 4 * 3
    with pytest.raises(TfnasError, match="--init-seeds must be >= 1, got 0"):
        Repeats(init_seeds=0)


def _scores(cells) -> pa.Table:
    return tables.from_rows(
        "scores", [{"arch_id": a, "metric": "m", "value": v, "seed": s, "batch": b} for a, s, b, v in cells]
    )


def test_stability_columns_on_hand_checkable_values():
    archs = [f"a{i}" for i in range(5)]
    by_seed = {0: [1, 2, 3, 4, 5], 1: [1, 2, 3, 5, 4], 2: [5, 4, 3, 2, 1]}
    cells = [(a, s, b, float(v[i])) for s, v in by_seed.items() for b in (0, 1) for i, a in enumerate(archs)]
    truth = tables.from_rows("truth", [{"arch_id": a, "target": "glue", "value": float(i)} for i, a in enumerate(archs)])
    row = correlate(_scores(cells), truth, config=CorrelationConfig(resamples=0)).to_pylist()[0]
    # τ(s0, s1) = (9 − 1)/10 = 0.8, τ(s0, s2) = −1, τ(s1, s2) = −0.8: mean −1/3 (both batches alike).
    assert row["tau_between_seeds"] == pytest.approx(-1 / 3, abs=1e-12)
    assert row["tau_between_batches"] == pytest.approx(1.0, abs=1e-12)  # the batches agree at every seed
    # Mean over seeds: [7/3, 8/3, 3, 11/3, 10/3] ranks like [1, 2, 3, 5, 4]: τ 0.8 vs truth.
    assert row["tau_seed_averaged"] == pytest.approx(0.8, abs=1e-12)
    # Derived seeding: every architecture has its own seeds; they pair by their order.
    derived = [(a, 100 * i + s, b, v) for a, s, b, v in cells for i in [archs.index(a)]]
    again = correlate(_scores(derived), truth, config=CorrelationConfig(resamples=0)).to_pylist()[0]
    assert again["tau_between_seeds"] == pytest.approx(-1 / 3, abs=1e-12)
    # One seed, one batch: the columns are null, as before.
    single = correlate(_scores([c for c in cells if c[1] == 0 and c[2] == 0]), truth, config=CorrelationConfig(resamples=0)).to_pylist()[0]
    assert single["tau_between_seeds"] is None and single["tau_between_batches"] is None and single["tau_seed_averaged"] is None


def test_repeated_scoring_through_ray_resumes_and_feeds_the_correlations(ray_cluster, archs, tmp_path):
    # A small model and minibatch: this tests the bookkeeping, not the metric.
    config = ScoreConfig(
        metrics=("hidden_cov", "params"),
        seed=0,
        seeding="fixed",
        shard_size=3,
        batch_options={"bptt": 8, "batch_size": 8},
        model_options={"emsize": 16, "nhid": 16},
    )
    repeats = Repeats(init_seeds=2, batches=2)
    summary = run_repeated_scoring(archs, tmp_path, config, repeats, progress=False, log=lambda _: None)
    table = summary.table
    assert table.num_rows == 5 * 2 * 2 * 2 and summary.shards_total == 4 * 2 and summary.stale_files == 0
    combos = {(r["seed"], r["batch"]) for r in table.to_pylist()}
    assert combos == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # The (seed 0, batch 0) shards are exactly a plain run's.
    assert {s.filename for s in plan_shards(archs, config)} <= {p.name for p in tmp_path.glob("shard-*.parquet")}
    hidden = {(r["arch_id"], r["seed"], r["batch"]): r["value"] for r in table.to_pylist() if r["metric"] == "hidden_cov"}
    first = archs.column("arch_id")[0].as_py()
    assert hidden[first, 0, 0] != hidden[first, 1, 0] and hidden[first, 0, 0] != hidden[first, 0, 1]
    again = run_repeated_scoring(archs, tmp_path, config, repeats, progress=False, log=lambda _: None)
    assert again.shards_skipped == 8 and again.scored == 0
    _, truth = get_benchmark("nb-nlp-ptb").load()
    rows = {r["metric"]: r for r in correlate(table, truth, config=CorrelationConfig(resamples=0), targets=["test_loss"]).to_pylist()}
    assert rows["params"]["tau_between_seeds"] == pytest.approx(1.0, abs=1e-12)  # counted, not drawn
    assert rows["params"]["tau_between_batches"] == pytest.approx(1.0, abs=1e-12)
    assert -1.0 <= rows["hidden_cov"]["tau_between_seeds"] <= 1.0 and not math.isnan(rows["hidden_cov"]["tau_seed_averaged"])
