"""nb-bert metrics: known answers on hand-made inputs and on a tiny model.

Known answers are derived by hand in the comments, or recomputed by an independent route
(torch.autograd.grad on the plain forward, without the metric pass's hooks).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tfnas_ray.metrics import METRICS, MetricContext, MetricFailure
from tfnas_ray.metrics import transformer as tm
from tfnas_ray.spaces.nasbench_bert.benchmarks import DEFAULT_METRICS

SPEC = {
    "hidden_size": 128,
    "encoder_layers": [
        {"operation_type": "SA", "operation_parameter": "WMA", "num_operation_heads": 2, "feed_forward_dimension": 512, "num_feed_forward": 3},
        {"operation_type": "LT", "operation_parameter": "DCT", "num_operation_heads": 4, "feed_forward_dimension": 512, "num_feed_forward": 1},
        {"operation_type": "DSC", "operation_parameter": 5, "num_operation_heads": 4, "feed_forward_dimension": 512, "num_feed_forward": 1},
        {"operation_type": "LT", "operation_parameter": "DFT", "num_operation_heads": 2, "feed_forward_dimension": 512, "num_feed_forward": 3},
    ],
}
VOCAB = 40


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (6, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture()
def ctx(batch):
    from tfnas_ray.spaces.nasbench_bert import SPACE

    return MetricContext("nb-bert", SPACE.canonicalize(SPEC), seed=0, batch=batch, options={"vocab_size": VOCAB})


def value(name, ctx):
    return METRICS.get(name).impl("nb-bert").fn(ctx)


def test_every_listed_metric_is_registered_higher_is_better():
    for name in DEFAULT_METRICS:
        metric = METRICS.get(name)
        assert "nb-bert" in metric.impls
        assert metric.direction.value == "higher-is-better"


def test_agreement_kernel_known_answer():
    # c0 = 101, c1 = 110: agreement = 3 − Hamming = 3 − 2 = 1; with itself 3.
    codes = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(tm._agreement(codes).numpy(), [[3, 1], [1, 3]])


def test_jacobian_score_known_answers():
    k = 1e-5
    # orthogonal centred rows: corrcoef = I, eigenvalues 1, 1
    rows = np.array([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])
    assert tm.jacobian_covariance_score(rows) == pytest.approx(-2 * (math.log(1 + k) + 1 / (1 + k)), rel=1e-12)
    # perfectly correlated rows: corrcoef = [[1, 1], [1, 1]], eigenvalues 0 and 2
    rows = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])
    expected = -(math.log(k) + 1 / k + math.log(2 + k) + 1 / (2 + k))  # ≈ −99989.68
    assert tm.jacobian_covariance_score(rows) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(MetricFailure, match="constant row"):
        tm.jacobian_covariance_score(np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]]))


def test_all_metrics_finite_and_one_shared_pass(ctx):
    values = {name: value(name, ctx) for name in DEFAULT_METRICS}
    assert all(math.isfinite(v) for v in values.values()), values
    assert ctx.pass_counts == {"sum_output": 1, "synflow": 1}
    # normalised = total / number of modules (module counts of SPEC, by hand)
    n_proj = 4 + 1 + 4 + 1  # WMA: q, k, v, weight; LT: dense; DSC: q, k, v, conv_out; LT: dense
    assert values["head_importance_normalized"] == pytest.approx(values["head_importance"] / n_proj)
    assert values["head_confidence_normalized"] == pytest.approx(values["head_confidence"] / n_proj)
    assert values["softmax_confidence_normalized"] == pytest.approx(values["softmax_confidence"] / 4)
    n_act = 3 + 1 + 1 + 3  # Σ num_feed_forward
    assert values["activation_distance_normalized"] == pytest.approx(values["activation_distance"] / n_act)
    assert values["synaptic_saliency_normalized"] == pytest.approx(values["synaptic_saliency"] / (n_act + 4))
    # a second call recomputes nothing and gives the same numbers (metrics are pure)
    assert {name: value(name, ctx) for name in DEFAULT_METRICS} == values


def test_paper_columns_recomputed_independently(ctx, batch):
    """R = Σ output; gradients by torch.autograd.grad on the plain forward."""
    model = ctx.model().eval()
    out = model(batch["input_ids"], batch["attention_mask"], output_attentions=True)
    projections = [getattr(l.operation, n) for l in model.layers for n in l.operation.projections]
    ffn = [m for l in model.layers for part in (l.intermediate, l.output) for m in part.modules() if isinstance(m, torch.nn.Linear)]
    position = model.embeddings.position_embeddings.weight
    grads = torch.autograd.grad(out.last_hidden_state.sum(), [p.weight for p in projections + ffn] + [position])
    hi = sum(float((p.weight.detach() * g).abs().sum()) for p, g in zip(projections, grads))
    ss = sum(float((p.weight.detach() * g).abs().sum()) for p, g in zip(ffn, grads[len(projections):]))
    assert value("head_importance", ctx) == pytest.approx(hi, rel=1e-5)
    assert value("synaptic_saliency", ctx) == pytest.approx(ss, rel=1e-5)
    T = batch["input_ids"].shape[1]
    jac = grads[-1][:T].double().numpy().T  # (E, T)
    assert value("jacob_cov", ctx) == pytest.approx(tm.jacobian_covariance_score(jac), rel=1e-6)
    # softmax confidence: max over axis 1 (heads), mean, summed over layers
    sc = sum(float(s.detach().max(dim=1).values.mean()) for s in out.attentions)
    assert value("softmax_confidence", ctx) == pytest.approx(sc, rel=1e-5)
    # head confidence of layer 0's query: mean over (B, D) of max over T
    with torch.no_grad():
        embedded = model.embeddings(batch["input_ids"])
        q = model.layers[0].operation.query(embedded)
    hc0 = float(q.max(dim=1).values.mean())
    assert ctx.run_pass("sum_output").head_confidence[0] == pytest.approx(hc0, rel=1e-5)


def test_params_is_a_hand_count(ctx):
    # embeddings 40·128 + 512·128 + 2·128 + LN 256 (hidden 128: no projection); per layer
    # operation + output block (128² + 128 + 256) + FFN stack + down-projection (512·128 + 128 + 256)
    emb = VOCAB * 128 + 512 * 128 + 256 + 256
    block = 128 * 128 + 128 + 256
    down = 512 * 128 + 128 + 256
    ffn1, ffn3 = 128 * 512 + 512, 128 * 512 + 512 + 2 * (512 * 512 + 512)
    wma = 3 * (128 * 128 + 128) + 128 * 128
    lt = 128 * 128 + 128
    dsc = 3 * (64 * 128 + 64) + (128 * 5 + 128 * 64 + 64) + (64 * 10 + 10) + (128 * 64 + 64)
    hand = emb + (wma + block + ffn3 + down) + (lt + block + ffn1 + down) + (dsc + block + ffn1 + down) + (lt + block + ffn3 + down)
    assert value("params", ctx) == hand


def test_synflow_depends_on_magnitudes_only(ctx):
    """|θ| is used, so flipping the sign of every parameter leaves synflow unchanged."""
    reference = value("synflow", ctx)
    flipped = MetricContext(ctx.space, ctx.spec, seed=0, batch=ctx.batch, options=ctx.options)
    pristine = flipped.model()
    with torch.no_grad():
        for p in pristine.parameters():
            p.neg_()
    flipped._pristine = pristine
    assert value("synflow", flipped) == pytest.approx(reference, rel=1e-12)
    assert reference > 0


def test_naswot_fails_on_identical_sequences(batch):
    from tfnas_ray.spaces.nasbench_bert import SPACE

    same = {k: v[:1].repeat(6, 1) for k, v in batch.items()}
    ctx = MetricContext("nb-bert", SPACE.canonicalize(SPEC), seed=0, batch=same, options={"vocab_size": VOCAB})
    with pytest.raises(MetricFailure, match="singular"):
        value("naswot", ctx)


def test_as_trained_option_reaches_the_model(batch):
    from tfnas_ray.spaces.nasbench_bert import SPACE

    ctx = MetricContext("nb-bert", SPACE.canonicalize(SPEC), seed=0, batch=batch,
                        options={"vocab_size": VOCAB, "as_trained": True})
    assert all(layer.operation_type == "SA" for layer in ctx.model().layers)
    assert math.isfinite(value("softmax_confidence", ctx))
