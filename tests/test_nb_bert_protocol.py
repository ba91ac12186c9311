"""The nb-bert scoring protocol end to end: readings on the command line, the batch
options, the degeneracy flags, the published parameter counts and the published
activation-distance inflation (known answers from the authors' released results)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from tfnas_ray import tables
from tfnas_ray.cli import app
from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces.nasbench_bert import SPACE, resolve_reading
from tfnas_ray.spaces.nasbench_bert.benchmarks import authors_activation_distance_factor, records
from tfnas_ray.spaces.nasbench_bert.config import NasBertConfig
from tfnas_ray.spaces.nasbench_bert.params import count_parameters

# Transcribed from the authors' data/BERT_results_activation.csv (source in the file).
PUBLISHED = json.loads((Path(__file__).parent / "data" / "nb_bert_published.json").read_text())


def test_as_scored_parameter_counts_equal_all_500_published_ones():
    """The published "Number of Parameters" of every benchmark config is the as-scored
    model's count with ELECTRA's 30,522-entry vocabulary — exactly, for all 500."""
    recs = records()
    assert [r["id"] for r in recs] == list(range(500)) and len(PUBLISHED["params"]) == 500
    counts = [count_parameters(NasBertConfig.from_spec(r["spec"]), reading="as-scored", vocab_size=30522) for r in recs]
    assert counts == PUBLISHED["params"]
    # the described model is another one, except where the config already says hidden
    # 256, every FFN 1024 wide and no LT layer (whose output block as-scored drops)
    for r, published in zip(recs, PUBLISHED["params"]):
        config = NasBertConfig.from_spec(r["spec"])
        same = config.hidden_size == 256 and all(
            l.feed_forward_dimension == 1024 and l.operation_type != "LT" for l in config.encoder_layers
        )
        assert (count_parameters(config, vocab_size=30522) == published) == same, r["id"]


@pytest.mark.parametrize("reading", ["described", "as-scored", "as-trained"])
def test_count_from_the_config_equals_the_built_model(reading):
    for rec in records()[:8]:
        model = SPACE.build(rec["spec"], vocab_size=97, reading=reading)
        built = sum(p.numel() for p in model.parameters())
        assert SPACE.count_parameters(rec["spec"], reading=reading, vocab_size=97) == built, rec["id"]


def test_readings_by_name_and_by_flag():
    assert resolve_reading(None) == "described"
    assert resolve_reading("as-scored") == resolve_reading(None, as_scored=True) == "as-scored"
    with pytest.raises(TfnasError, match="reading 'scored' is not one of described, as-trained, as-scored"):
        resolve_reading("scored")
    with pytest.raises(TfnasError, match="as-scored and as-trained are different readings; pick one"):
        resolve_reading("as-scored", as_trained=True)


def test_published_activation_distance_is_the_normalised_value_times_the_hook_count():
    """The authors' hook sat on one GELU shared by every layer and was never removed, so
    config i's raw column is its normalised one times Σ num_feed_forward × (26 + the
    layers of configs 0..i) (PAPER_METRICS.md). Values are float32: ratio to 1e-7."""
    for key, published in PUBLISHED["activation_distance"].items():
        factor = authors_activation_distance_factor(records(), int(key))
        assert published["raw"] == pytest.approx(published["normalized"] * factor, rel=1e-7), key
    assert authors_activation_distance_factor(records(), 0) == 10 * (26 + 4)  # 4 layers, 3+3+3+1 FFNs


def test_score_records_the_reading_and_refuses_it_for_rnn_tables(ray_cluster, tmp_path):
    runner = CliRunner()
    bert = tmp_path / "bert.parquet"
    assert runner.invoke(app, ["sample", "nb-bert", "-n", "2", "--out", str(bert)]).exit_code == 0
    out = tmp_path / "scores"
    result = runner.invoke(app, ["score", str(bert), "-m", "params", "--reading", "as-scored", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    scores = tables.read_table("scores", out)
    assert scores.column("reading").to_pylist() == ["as-scored"] * 2
    specs = tables.read_table("archs", bert).column("spec").to_pylist()
    assert sorted(scores.column("value").to_pylist()) == sorted(
        float(SPACE.count_parameters(s, reading="as-scored")) for s in specs
    )
    rnn = tmp_path / "rnn.parquet"
    assert runner.invoke(app, ["sample", "nb-nlp", "-n", "1", "--out", str(rnn)]).exit_code == 0
    refused = runner.invoke(app, ["score", str(rnn), "-m", "params", "--seq-len", "64", "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "--seq-len applies to nb-bert only; the table has nb-nlp" in refused.output


def test_reproduce_nb_bert_flags_the_degenerate_columns(ray_cluster, tmp_path):
    out = tmp_path / "run"
    metrics = "params,head_importance,head_importance_mlm,head_confidence"
    result = CliRunner().invoke(
        app,
        ["reproduce", "nb-bert", "--out", str(out), "--limit", "3", "-m", metrics, "--seq-len", "12",
         "--resamples", "20", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "nb-bert reading: as-scored" in result.output  # the default: the published table's models
    assert "head_importance: float32" in result.output and "round-off" in result.output
    assert pq.read_schema(out / "archs.parquet").metadata[b"reading"] == b"as-scored"
    flags = {r["metric"]: r["flag"] for r in pq.read_table(out / "correlations.parquet").to_pylist()}
    assert flags["head_importance"].startswith("degenerate")
    assert flags["head_importance_mlm"] is None and flags["head_confidence"] is None
    scores = {r["metric"]: r for r in tables.read_table("scores", out / "scores").to_pylist() if r["metric"] == "params"}
    assert scores["params"]["reading"] == "as-scored"


def test_reproduce_all_readings_side_by_side(ray_cluster, tmp_path):
    result = CliRunner().invoke(
        app,
        ["reproduce", "nb-bert", "--out", str(tmp_path / "run"), "--limit", "3", "-m", "params",
         "--reading", "all", "--seq-len", "8", "--resamples", "20", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "Kendall τ vs glue, per reading" in result.output
    for reading in ("described", "as-scored", "as-trained"):
        assert f"==== reading {reading} ====" in result.output
        assert (tmp_path / "run" / reading / "correlations.parquet").exists()


def test_metrics_command_states_each_spaces_formula():
    output = CliRunner().invoke(app, ["metrics"]).output
    lines = [l for l in output.splitlines() if l.startswith("activation_distance ")]
    assert len(lines) == 3 and all("*" in l for l in lines)  # nb-nlp, nb-bert, hf
    nlp = next(l for l in lines if " nb-nlp " in l)
    bert = next(l for l in lines if " nb-bert " in l)
    assert "log|det K|" in nlp and "log" not in bert
    assert "Σ over FFN activations of Σ_ij" in bert
    assert "the same name computes a different formula per space" in output
    # a metric defined on one space only carries no mark
    assert next(l for l in output.splitlines() if l.startswith("head_importance_mlm ")).split()[1] == "nb-bert"
