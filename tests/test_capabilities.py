"""Metrics matched to spaces by capability: every implementation declares what it reads,
every space what its models offer, and the engine scores a metric on a space through
the space's own implementation or, lacking one, the generic (probe) one when the space
offers what it reads. So the hardware metrics score on nb-nlp and nb-bert too."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from tfnas_ray import tables
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.cli import app
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import ANY_SPACE, BATCHES, Direction, MetricContext, load_metrics, register_metric
from tfnas_ray.metrics.capability import CAPABILITY_METRICS, PROBED, Probe
from tfnas_ray.metrics.scoring import score_architecture, validate_metrics
from tfnas_ray.pipeline import sample_archs
from tfnas_ray.spaces import CAPABILITIES, get_space, load_spaces

HARDWARE = ["latency_ms", "peak_memory_mb", "peak_memory_forward_mb"]


def run(*args):
    return CliRunner().invoke(app, list(args))


# ---- the declarations ----------------------------------------------------------------


def test_every_implementation_reads_only_what_its_space_offers():
    registry, spaces = load_metrics(), load_spaces()
    for name, space in spaces.items():
        assert space.capabilities and set(space.capabilities) <= set(CAPABILITIES), name
    for name, metric in registry.items():
        for space, impl in metric.impls.items():
            offered = spaces.get(space).capabilities
            assert impl.reads and set(impl.reads) <= offered, (name, space, impl.reads)
            for protocol in impl.variants:
                assert set(impl.reads_for(protocol)) <= offered, (name, space, protocol)
        if metric.generic is not None:
            assert set(metric.generic.reads) <= set(PROBED), name  # a probe can check each one
            assert name in CAPABILITY_METRICS
    # the declarations say what the brief's examples say
    assert registry.get("head_confidence").impls["nb-bert"].reads == ("attentions",)
    assert registry.get("hidden_cov").impls["nb-nlp"].reads == ("recurrent_steps", "hidden_states")
    assert {registry.get(n).impls["nb-nlp"].reads for n in ("grad_norm", "snip")} == {("lm_loss",)}
    assert registry.get("naswot").generic.reads == ("module", "activations")
    assert registry.get("cell_depth").impls["nb-nlp"].reads == ("spec",)
    # the published jacob_cov reads the embedding over the steps, not the cell
    assert registry.get("jacob_cov").impls["nb-nlp"].reads_for("published") == ("input_embeddings",)


def test_a_registration_must_say_what_it_reads_in_the_vocabulary():
    fn = lambda ctx: 0.0  # noqa: E731
    with pytest.raises(TfnasError, match=r"^metric 'capengine_x' for space 'nb-nlp' declares no capability it reads; give reads= from: spec, module"):
        register_metric("capengine_x", space="nb-nlp", direction=Direction.HIGHER, summary="x")(fn)
    with pytest.raises(TfnasError, match=r"^metric 'capengine_y' for space 'nb-nlp': unknown capability 'gradients'; known: spec, module, .*lm_loss$"):
        register_metric("capengine_y", space="nb-nlp", direction=Direction.HIGHER, summary="x", reads=("module", "gradients"))(fn)


# ---- the matching ----------------------------------------------------------------------


def test_a_spaces_own_implementation_wins_and_the_generic_one_fills_in():
    registry = load_metrics()
    grad_norm = registry.get("grad_norm")
    assert grad_norm.impl("nb-nlp") is grad_norm.impls["nb-nlp"]  # fidelity: the published computation
    assert grad_norm.impl("nb-bert") is grad_norm.impls["nb-bert"]
    assert grad_norm.impl("hf") is grad_norm.generic
    for name in HARDWARE:
        metric = registry.get(name)
        assert not metric.impls and all(metric.impl(space) is metric.generic for space in ("nb-nlp", "nb-bert", "hf"))
    # nb-nlp and nb-bert offer hidden states, so the generic last-hidden-state covariance applies to nb-bert
    assert registry.get("hidden_cov").impl("nb-bert") is registry.get("hidden_cov").generic
    assert validate_metrics("nb-bert", ["latency_ms", "params", "latency_ms"]) == ["latency_ms", "params"]


def test_a_metric_reading_what_a_space_lacks_is_refused_in_one_line():
    expected = (
        "metric 'head_confidence' reads attentions, which space 'nb-nlp' does not offer "
        "(it offers: spec, module, activations, input_embeddings, recurrent_steps, hidden_states, lm_loss)"
    )
    with pytest.raises(TfnasError) as caught:
        validate_metrics("nb-nlp", ["params", "head_confidence"])
    assert str(caught.value) == expected
    assert not load_metrics().get("head_importance").applies_to("nb-nlp")
    # a metric with no generic implementation names where it is defined
    with pytest.raises(TfnasError, match=r"^metric 'hidden_cov_l2' is not defined for space 'nb-bert'; it is defined for: nb-nlp$"):
        validate_metrics("nb-bert", ["hidden_cov_l2"])


def test_the_cli_refuses_an_inapplicable_metric_before_ray_starts(tmp_path):
    import ray

    archs = tmp_path / "archs.parquet"
    tables.write_table("archs", sample_archs("nb-nlp", 2, seed=0), archs)
    was_running = ray.is_initialized()
    result = run("score", str(archs), "-m", "latency_ms", "-m", "head_confidence", "--out", str(tmp_path / "scores"), "--no-progress")
    assert result.exit_code == 2  # bad input, as every input error of `score`
    assert result.output.splitlines() == [
        "error: metric 'head_confidence' reads attentions, which space 'nb-nlp' does not offer "
        "(it offers: spec, module, activations, input_embeddings, recurrent_steps, hidden_states, lm_loss)"
    ]
    assert ray.is_initialized() == was_running and not (tmp_path / "scores").exists()


def test_tfnas_metrics_shows_what_each_implementation_reads():
    result = run("metrics")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    hidden_cov_l2 = next(l for l in lines if l.startswith("hidden_cov_l2 "))
    assert hidden_cov_l2.split()[1:3] == ["nb-nlp", "recurrent_steps+hidden_states"]
    latency = [l.split() for l in lines if l.startswith("latency_ms ")]
    assert [l[1:3] for l in latency] == [[ANY_SPACE, "module"]]
    head_confidence = {l.split()[2]: l.split()[3] for l in lines if l.startswith("head_confidence ")}
    assert head_confidence == {"nb-bert": "attentions", ANY_SPACE: "attentions"}


def test_hf_shard_ids_are_those_of_earlier_runs():
    # hf's capability metrics moved from an `hf` registration to the generic one: the
    # shard identity (metric versions per space) must not change, or runs would rescore.
    # The ids were computed by main 17aa38b (before the move).
    from tfnas_ray.distributed.scoring import ScoreConfig, plan_shards

    archs = sample_archs("hf", 3, seed=0, space_file="tiny-gpt2")
    config = ScoreConfig(metrics=("params", "head_confidence", "latency_ms", "num_layers", "grad_norm"), shard_size=2)
    assert [s.shard_id for s in plan_shards(archs, config, kind="cpu")] == ["3d858abf266b9821f7cb", "990aeaa4fd8e8b937e42"]


# ---- the probes of nb-nlp and nb-bert ----------------------------------------------------


def _first(space: str):
    archs = get_benchmark("nb-bert").load()[0] if space == "nb-bert" else sample_archs("nb-nlp", 1, seed=0)
    row = archs.slice(0, 1).to_pylist()[0]
    return row["arch_id"], row["spec"]


def test_generic_metrics_score_nb_bert_architectures():
    # main 17aa38b: "metric 'latency_ms' is not defined for space 'nb-bert'"
    arch_id, spec = _first("nb-bert")
    batch = BATCHES.get("nb-bert")({"seq_len": 32, "mode": "eval", "batch_size": 8})
    rows = score_architecture(arch_id=arch_id, space="nb-bert", spec=spec, metrics=[*HARDWARE, "hidden_cov", "grad_norm"], seed=3, batch=batch)
    values = {r["metric"]: r["value"] for r in rows}
    assert [r["error"] for r in rows] == [None] * len(rows)
    assert all(math.isfinite(v) for v in values.values())
    assert all(values[m] > 0 for m in HARDWARE)
    # a training step holds activations and gradients that a no-grad forward never does
    assert values["peak_memory_mb"] > values["peak_memory_forward_mb"]
    # The probe's model is the encoder with the generator head that nb-bert's own MLM
    # columns use, on the same masked batch: the generic grad_norm (probe) equals nb-bert's
    # own (its `mlm` pass), up to float32 summation order.
    ctx = MetricContext("nb-bert", spec, seed=3, batch=batch, wanted=["grad_norm"])
    probe = ctx.run_pass("probe")
    assert probe.task == "masked-lm" and probe.capabilities >= {"module", "hidden_states", "lm_loss", "input_embeddings"}
    assert CAPABILITY_METRICS.get("grad_norm").fn(probe) == pytest.approx(values["grad_norm"], rel=1e-5)
    # The generator head is no part of the architecture: a forward that reads no logits
    # (latency, forward memory) never runs it, so it never holds the (B, T, V) float32
    # logits (8 × 32 × 30,522 × 4 bytes = 31.3 MiB; the encoder's own tensors are smaller).
    B, T, V = probe.forward().output_shape
    assert values["peak_memory_forward_mb"] < B * T * V * 4 / 2**20 < values["peak_memory_mb"]


def test_the_nb_nlp_probe_reads_the_lm_batch_major():
    # main 17aa38b: no nb-nlp/probe pass ("unknown pass"), latency_ms not defined for nb-nlp
    arch_id, spec = _first("nb-nlp")
    batch = BATCHES.get("nb-nlp")({"bptt": 12, "batch_size": 6})
    ctx = MetricContext("nb-nlp", spec, seed=5, batch=batch)
    probe: Probe = ctx.run_pass("probe")
    assert tuple(probe.input_ids.shape) == (6, 12) and probe.task == "causal-lm"
    # The causal LM loss of the probe equals the LM's own: time-major tokens, tied decoder,
    # targets the next tokens (the probe scores steps 1..T−1, whose targets the batch holds).
    lm = ctx.model().eval()
    with torch.no_grad():
        output, _ = lm(batch.tokens)  # (T·B, E)
        logits = lm.decode(output).reshape(12, 6, -1)  # (T, B, V)
        expected = F.cross_entropy(logits[:-1].reshape(-1, logits.shape[-1]), batch.targets[:-1].reshape(-1))
        loss, out = probe.lm_loss(probe.model())
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert tuple(out.hidden_states[-1].shape) == (6, 12, lm.config.layer_sizes()[-1][1])
    rows = score_architecture(arch_id=arch_id, space="nb-nlp", spec=spec, metrics=[*HARDWARE, "params"], seed=5, batch=batch)
    assert [r["error"] for r in rows] == [None] * len(rows)
    assert all(r["value"] > 0 and math.isfinite(r["value"]) for r in rows)


# ---- end to end: the CLI ------------------------------------------------------------------


def _score(tmp_path, archs: pa.Table, *extra: str) -> list[dict]:
    path, out = tmp_path / "archs.parquet", tmp_path / "scores"
    tables.write_table("archs", archs, path)
    result = run("score", str(path), "-m", "latency_ms", "-m", "peak_memory_mb", "-m", "params", "--out", str(out), "--no-progress", *extra)
    assert result.exit_code == 0, result.output
    assert "failures: none" in result.output
    return tables.read_table("scores", out).to_pylist()


def test_tfnas_score_measures_hardware_on_nb_nlp_and_nb_bert(ray_cluster, tmp_path):
    # main 17aa38b: exit 1, "metric 'latency_ms' is not defined for space 'nb-nlp'"
    nlp = sample_archs("nb-nlp", 2, seed=0)
    rows = _score(tmp_path / "nlp", nlp)
    assert len(rows) == 6 and all(r["error"] is None and r["value"] > 0 and math.isfinite(r["value"]) for r in rows)
    specs = dict(zip(nlp.column("arch_id").to_pylist(), nlp.column("spec").to_pylist()))
    for r in rows:
        if r["metric"] == "params":  # nb-nlp's own params (counted from the recipe), as before
            assert r["value"] == get_space("nb-nlp").count_parameters(specs[r["arch_id"]], ntoken=10_000)
    bert = get_benchmark("nb-bert").load()[0].slice(0, 2)
    rows = _score(tmp_path / "bert", bert, "--seq-len", "32", "--mode", "eval")
    assert len(rows) == 6 and all(r["error"] is None and r["value"] > 0 and math.isfinite(r["value"]) for r in rows)
    assert {r["device"] for r in rows} == {rows[0]["device"]} and rows[0]["device"].startswith("cpu")
