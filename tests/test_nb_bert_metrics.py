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
    assert ctx.pass_counts == {"sum_output": 1, "synflow": 1, "mlm": 1}
    # normalised = total / number of modules (module counts of SPEC, by hand)
    n_proj = 4 + 1 + 4 + 1  # WMA: q, k, v, weight; LT: dense; DSC: q, k, v, conv_out; LT: dense
    assert values["head_importance_normalized"] == pytest.approx(values["head_importance"] / n_proj)
    assert values["head_confidence_normalized"] == pytest.approx(values["head_confidence"] / n_proj)
    assert values["softmax_confidence_normalized"] == pytest.approx(values["softmax_confidence"] / 4)
    n_act = 3 + 1 + 1 + 3  # Σ num_feed_forward
    assert values["activation_distance_normalized"] == pytest.approx(values["activation_distance"] / n_act)
    assert values["synaptic_saliency_normalized"] == pytest.approx(values["synaptic_saliency"] / (n_act + 4))
    assert values["head_importance_mlm_normalized"] == pytest.approx(values["head_importance_mlm"] / n_proj)
    assert values["synaptic_saliency_mlm_normalized"] == pytest.approx(values["synaptic_saliency_mlm"] / (n_act + 4))
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


def test_mlm_columns_recomputed_independently(ctx, batch):
    """L = MLM loss of the generator head on the masked batch; gradients by autograd.grad
    on a plain forward (no hooks), the head drawn as the pass draws it."""
    from tfnas_ray.training.mlm import MLMModel

    encoder = ctx.model().eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        mlm = MLMModel(encoder)
    inputs, labels = tm.mlm_inputs(batch["input_ids"], batch["attention_mask"], vocab_size=VOCAB)
    chosen = labels != -100
    assert 0 < int(chosen.sum()) and torch.all(inputs[~chosen] == batch["input_ids"][~chosen])
    hidden = mlm.encoder(inputs, batch["attention_mask"]).last_hidden_state
    loss = torch.nn.functional.cross_entropy(mlm.head(hidden[chosen]), labels[chosen])
    params = list(mlm.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    assert value("grad_norm", ctx) == pytest.approx(sum(float(g.norm()) for _, g in pairs), rel=1e-5)
    assert value("snip", ctx) == pytest.approx(sum(float((p.detach() * g).abs().sum()) for p, g in pairs), rel=1e-5)
    grad_of = {id(p): g for p, g in zip(params, grads)}
    projections = [getattr(l.operation, n) for l in mlm.encoder.layers for n in l.operation.projections]
    hi = sum(float((p.weight.detach() * grad_of[id(p.weight)]).abs().sum()) for p in projections)
    assert value("head_importance_mlm", ctx) == pytest.approx(hi, rel=1e-5)
    # the corrected column is a real gradient: orders of magnitude above R's round-off
    assert value("head_importance_mlm", ctx) > 1e3 * value("head_importance", ctx)


def test_gradient_degeneracy_of_the_papers_objective(ctx, batch):
    """R = Σ output: its float64 gradient below the last LayerNorm is zero up to round-off
    (PAPER_METRICS.md, "Why the gradient columns carry no signal"); with a non-unit γ in
    that LayerNorm R depends on the input, and nothing is flagged."""
    model = ctx.model()
    checks = tm.gradient_degeneracy(model, batch["input_ids"], batch["attention_mask"])
    assert [c.quantity for c in checks] == list(tm.GRADIENT_COLUMNS)
    for c in checks:
        assert c.degenerate and c.float64 < 1e-6 * c.float32, c
    with torch.no_grad():
        model.layers[-1].output.LayerNorm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(0))
    for c in tm.gradient_degeneracy(model, batch["input_ids"], batch["attention_mask"]):
        assert not c.degenerate and c.float64 == pytest.approx(c.float32, rel=1e-3), c


def test_train_mode_is_seeded_and_differs_from_eval(batch):
    from tfnas_ray.spaces.nasbench_bert import SPACE

    def run(mode, seed=0):
        c = MetricContext("nb-bert", SPACE.canonicalize(SPEC), seed=seed, batch={**batch, "mode": mode},
                          options={"vocab_size": VOCAB}, wanted=["head_confidence", "softmax_confidence"])
        return value("head_confidence", c), value("softmax_confidence", c)

    train = run("train")
    assert run("train") == train  # dropout drawn from the architecture's seed
    assert run("eval") != train


def test_head_confidence_by_hand_on_a_two_layer_toy_model():
    """Two LT layers, hidden = embedding = 128, fixed weights. Token 5's word embedding is
    +e₀, token 6's −e₀, positions and types zero: the embedding LayerNorm maps ±e₀ to ±u
    with u₀ = √127, u_d = −1/√127 (d > 0) — whatever the scale. Layer 0's projection is
    0.5·I + 0.25, so for each feature max over a sequence holding both tokens is
    0.5·|u_d| + 0.25 and its mean over features 0.5·(√127 + 127/√127)/128 + 0.25. Layer
    1's projection has weight 0 and bias b: its output is b everywhere, confidence mean(b)."""
    from tfnas_ray.spaces.nasbench_bert import SPACE

    lt = {"operation_type": "LT", "operation_parameter": "DFT", "num_operation_heads": 2,
          "feed_forward_dimension": 512, "num_feed_forward": 1}
    spec = SPACE.canonicalize({"hidden_size": 128, "encoder_layers": [lt, lt]})
    ids = torch.tensor([[5, 6, 5], [6, 5, 5]])
    ctx = MetricContext("nb-bert", spec, seed=0, batch={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                        options={"vocab_size": 8}, wanted=["head_confidence"])
    model = ctx.model()
    b1 = torch.linspace(-1.0, 2.0, 128)
    with torch.no_grad():
        emb = model.embeddings
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            table.weight.zero_()
        emb.word_embeddings.weight[5, 0], emb.word_embeddings.weight[6, 0] = 1.0, -1.0
        model.layers[0].operation.dense.weight.copy_(0.5 * torch.eye(128))
        model.layers[0].operation.dense.bias.fill_(0.25)
        model.layers[1].operation.dense.weight.zero_()
        model.layers[1].operation.dense.bias.copy_(b1)
    ctx._pristine = model
    layer0 = 0.5 * (math.sqrt(127) + 127 / math.sqrt(127)) / 128 + 0.25
    layer1 = float(b1.double().mean())  # 0.5
    assert ctx.run_pass("sum_output").head_confidence == pytest.approx((layer0, layer1), rel=1e-5)
    assert value("head_confidence", ctx) == pytest.approx(layer0 + layer1, rel=1e-5)
    assert value("head_confidence_normalized", ctx) == pytest.approx((layer0 + layer1) / 2, rel=1e-5)


def test_the_batch_options_are_checked():
    from tfnas_ray.errors import TfnasError

    with pytest.raises(TfnasError, match="--mode 'test' is not one of train, eval"):
        tm.nb_bert_batch({"mode": "test", "seq_len": 8})
    with pytest.raises(TfnasError, match=r"nb-bert batch option\(s\) \['corpus'\] unknown"):
        tm.nb_bert_batch({"corpus": "ptb"})


@pytest.mark.parametrize("space, phrase", [("nb-nlp", "log|det K|"), ("nb-bert", "Σ over FFN activations of Σ_ij")])
def test_activation_distance_formula_is_stated_per_space(space, phrase):
    from tfnas_ray.metrics import load_metrics

    metric = load_metrics().get("activation_distance")
    assert phrase in metric.formula(space)
    assert metric.differs_between_spaces
