"""Standard zero-cost proxies on the nb-nlp space: known answers on tiny models, checked
against an independent computation, and the registered metrics end to end.

The independent computation (`unrolled`) is the cell written out by hand with plain
torch ops on the model's parameter tensors — no recorder, no fused matmuls, no
`NasBenchNlpLM.forward` — in float64; gradients and the Hessian of that function come
from torch.autograd (the Hessian as a full matrix by torch.autograd.functional.hessian),
the NASWOT kernel from explicit loops and numpy's slogdet. The tiny models run in
float64 too, so the two must agree to round-off.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from tfnas_ray.metrics import BATCHES, MetricContext, MetricFailure, load_metrics
from tfnas_ray.metrics.rnn_standard import (
    fisher_score,
    grad_norm_score,
    grasp_score,
    loss_gradients,
    naswot_score,
    snip_score,
    synflow_score,
)
from tfnas_ray.spaces.nasbench_nlp.model import LMConfig, NasBenchNlpLM
from tfnas_ray.spaces.nasbench_nlp.recipe import parse_recipe


def linear(*inputs):
    return {"op": "linear", "input": list(inputs)}


def act(op, source):
    return {"op": f"activation_{op}", "input": [source]}


TANH_RNN = {"node_0": linear("x", "h_prev_0"), "h_new_0": act("tanh", "node_0")}
# Two activation nodes per step and a blend: z = σ(·), c = tanh(·), h = z·c + (1−z)·h_prev.
GATED = {
    "node_0": linear("x", "h_prev_0"),
    "node_1": act("sigm", "node_0"),
    "node_2": linear("x", "h_prev_0"),
    "node_3": act("tanh", "node_2"),
    "h_new_0": {"op": "blend", "input": ["node_1", "node_3", "h_prev_0"]},
}
LEAKY_RNN = {"node_0": linear("x", "h_prev_0"), "h_new_0": act("leaky_relu", "node_0")}

TOKENS = torch.tensor([[1, 4], [2, 0], [6, 3]])  # (T, B) = (3, 2), ids < 7
TARGETS = torch.tensor([[2, 0], [6, 3], [5, 1]])


def tiny_model(recipe: dict, nlayers: int, *, seed: int = 0) -> NasBenchNlpLM:
    """ntoken 7, emsize 3, nhid 4, no dropout, float64; every parameter re-drawn N(0, 1)
    so that the nonlinearities and the decoder bias matter (the reference init is tiny)."""
    config = LMConfig(ntoken=7, emsize=3, nhid=4, nlayers=nlayers, dropout=0, dropouth=0, dropouti=0, dropoute=0, wdrop=0)
    torch.manual_seed(seed)
    model = NasBenchNlpLM(parse_recipe(recipe), config).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    return model


# ------------------------------------------------------------ the independent reference


def _step(recipe: dict, p: dict, layer: int, x: torch.Tensor, h: torch.Tensor):
    """One step of the hand-written cell: returns h_new and {activation node: output}."""
    def lin(node):
        prefix = f"layers.{layer}.linears.{node}"
        return x @ p[f"{prefix}.weights.0"].T + h @ p[f"{prefix}.weights.1"].T + p[f"{prefix}.bias"]

    if recipe is TANH_RNN:
        a = torch.tanh(lin("node_0"))
        return a, {"h_new_0": a}
    if recipe is LEAKY_RNN:
        a = torch.nn.functional.leaky_relu(lin("node_0"))
        return a, {"h_new_0": a}
    z, c = torch.sigmoid(lin("node_0")), torch.tanh(lin("node_2"))
    return z * c + (1 - z) * h, {"node_1": z, "node_3": c}


def unrolled(recipe: dict, p: dict, embedded: torch.Tensor, nlayers: int):
    """The language model unrolled by hand: embedded (T, B, E) → logits (T·B, V) through
    the tied decoder, and {(layer, node): [output at each step]}."""
    x = embedded
    activations = {}
    for layer in range(nlayers):
        hidden_size = p[f"layers.{layer}.linears.node_0.bias"].shape[0]
        h = torch.zeros(x.shape[1], hidden_size, dtype=x.dtype)
        outputs = []
        for t in range(x.shape[0]):
            h, acts = _step(recipe, p, layer, x[t], h)
            for node, value in acts.items():
                activations.setdefault((layer, node), []).append(value)
            outputs.append(h)
        x = torch.stack(outputs)
    output = x.reshape(-1, x.shape[2])
    return output @ p["encoder.weight"].T + p["decoder.bias"], activations


def flat_parameters(model):
    """Every parameter once, as (names, shapes, one flat float64 vector)."""
    names, params = zip(*model.named_parameters())
    flat = torch.cat([q.detach().reshape(-1) for q in params]).double()
    return list(names), [q.shape for q in params], flat


def unflatten(names, shapes, flat):
    out, start = {}, 0
    for name, shape in zip(names, shapes):
        size = math.prod(shape)
        out[name] = flat[start : start + size].reshape(shape)
        start += size
    return out


def reference_loss(recipe, nlayers, names, shapes):
    def loss(flat):
        p = unflatten(names, shapes, flat)
        logits, _ = unrolled(recipe, p, p["encoder.weight"][TOKENS], nlayers)
        return torch.nn.functional.cross_entropy(logits, TARGETS.reshape(-1))

    return loss


CASES = [(TANH_RNN, 1), (TANH_RNN, 2), (GATED, 2)]
CASE_IDS = ["tanh-1-layer", "tanh-2-layers", "gated-2-layers"]


@pytest.mark.parametrize("recipe,nlayers", CASES, ids=CASE_IDS)
def test_grad_norm_and_snip_sum_over_every_parameter(recipe, nlayers):
    model = tiny_model(recipe, nlayers)
    names, shapes, flat = flat_parameters(model)
    flat.requires_grad_()
    (grad,) = torch.autograd.grad(reference_loss(recipe, nlayers, names, shapes)(flat), flat)
    grads = unflatten(names, shapes, grad)
    weights = unflatten(names, shapes, flat.detach())
    # Every parameter tensor: embedding (= tied decoder), per-input weights, biases, decoder bias.
    expected_grad_norm = sum(float(g.norm()) for g in grads.values())
    expected_snip = sum(float((weights[n] * grads[n]).abs().sum()) for n in names)

    assert grad_norm_score(model, TOKENS, TARGETS) == pytest.approx(expected_grad_norm, rel=1e-10)
    assert snip_score(model, TOKENS, TARGETS) == pytest.approx(expected_snip, rel=1e-10)


def test_loss_gradients_cover_every_parameter_once():
    model = tiny_model(GATED, 2)
    result = loss_gradients(model, TOKENS, TARGETS)
    assert list(result.names) == [name for name, _ in model.named_parameters()]
    assert {"encoder.weight", "decoder.bias", "layers.1.linears.node_2.bias"} <= set(result.names)
    assert "decoder.weight" not in result.names  # tied: it is encoder.weight, counted once
    assert all(g is not None for g in result.gradients)


@pytest.mark.parametrize("recipe,nlayers", CASES, ids=CASE_IDS)
def test_grasp_equals_minus_theta_dot_full_hessian_times_gradient(recipe, nlayers):
    model = tiny_model(recipe, nlayers)
    names, shapes, flat = flat_parameters(model)
    loss = reference_loss(recipe, nlayers, names, shapes)
    point = flat.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(loss(point), point)
    hessian = torch.autograd.functional.hessian(loss, flat)  # (P, P), P = every parameter element
    expected = -float(flat @ (hessian @ gradient))

    assert grasp_score(model, TOKENS, TARGETS) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("recipe,nlayers", CASES, ids=CASE_IDS)
def test_fisher_from_the_activations_gradients(recipe, nlayers):
    model = tiny_model(recipe, nlayers)
    # Parameters that require grad, so that every activation output is in the graph of L.
    p = {name: q.detach().clone().requires_grad_() for name, q in model.named_parameters()}
    logits, activations = unrolled(recipe, p, p["encoder.weight"][TOKENS], nlayers)
    keys = list(activations)
    outputs = [a for key in keys for a in activations[key]]
    loss = torch.nn.functional.cross_entropy(logits, TARGETS.reshape(-1))
    grads = torch.autograd.grad(loss, outputs)

    expected, position = 0.0, 0
    B = TOKENS.shape[1]
    for key in keys:
        steps = activations[key]
        H = steps[0].shape[1]
        for unit in range(H):
            per_sample = [
                sum(float(steps[t][b, unit].detach() * grads[position + t][b, unit]) for t in range(len(steps)))
                for b in range(B)
            ]
            expected += 0.5 * sum(v * v for v in per_sample) / B
        position += len(steps)

    assert fisher_score(model, TOKENS, TARGETS) == pytest.approx(expected, rel=1e-10)
    assert len(keys) == nlayers * (2 if recipe is GATED else 1)  # every node of every layer


@pytest.mark.parametrize("recipe,nlayers", CASES, ids=CASE_IDS)
def test_synflow_on_absolute_parameters_with_all_ones_input(recipe, nlayers):
    model = tiny_model(recipe, nlayers)
    names, shapes, flat = flat_parameters(model)
    magnitudes = flat.abs().requires_grad_()
    p = unflatten(names, shapes, magnitudes)
    steps = 5
    logits, _ = unrolled(recipe, p, torch.ones(steps, 1, 3, dtype=torch.float64), nlayers)
    (grad,) = torch.autograd.grad(logits.sum(), magnitudes)
    # Every parameter: the embedding gets its gradient through the tied decoder only (the
    # lookup is bypassed), and the decoder bias (N(0, 1) here) adds |b|·T.
    expected = float((magnitudes.detach() * grad).abs().sum())

    assert synflow_score(model, steps=steps) == pytest.approx(expected, rel=1e-10)


def test_synflow_ignores_signs():
    model = tiny_model(GATED, 2)
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        for param in flipped.parameters():
            param.neg_()
    assert synflow_score(flipped, steps=4) == pytest.approx(synflow_score(model, steps=4), rel=1e-12)


@pytest.mark.parametrize("recipe,nlayers", CASES, ids=CASE_IDS)
def test_naswot_from_explicit_codes(recipe, nlayers):
    model = tiny_model(recipe, nlayers)
    p = {name: q.detach() for name, q in model.named_parameters()}
    _, activations = unrolled(recipe, p, p["encoder.weight"][TOKENS], nlayers)
    B = TOKENS.shape[1]
    kernel = np.zeros((B, B))
    for steps in activations.values():
        for output in steps:
            codes = (output.numpy() > 0).astype(int)
            for i in range(B):
                for j in range(B):
                    kernel[i, j] += np.sum(codes[i] == codes[j])  # units where i and j agree
    sign, expected = np.linalg.slogdet(kernel)
    assert sign != 0

    assert naswot_score(model, TOKENS) == pytest.approx(expected, rel=1e-12)


def test_scores_leave_the_model_untouched():
    model = tiny_model(GATED, 2).train()
    before = {name: q.detach().clone() for name, q in model.state_dict().items()}
    grad_norm_score(model, TOKENS, TARGETS)
    grasp_score(model, TOKENS, TARGETS)
    synflow_score(model, steps=3)
    naswot_score(model, TOKENS)
    assert model.training
    assert all(q.grad is None for q in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert after["encoder.weight"].dtype == torch.float64  # synflow's .double()/abs on a copy only


def test_a_nan_parameter_is_a_recorded_failure():
    model = tiny_model(TANH_RNN, 1)
    with torch.no_grad():
        model.layers[0].linears["node_0"].bias[0] = float("nan")
    with pytest.raises(MetricFailure, match="next-token cross-entropy is nan"):
        snip_score(model, TOKENS, TARGETS)
    with pytest.raises(MetricFailure, match="next-token cross-entropy is nan"):
        grasp_score(model, TOKENS, TARGETS)


def test_identical_samples_make_naswot_singular():
    model = tiny_model(TANH_RNN, 2)
    same = TOKENS[:, :1].repeat(1, 2)  # both columns the same sentence: identical codes
    with pytest.raises(MetricFailure, match="naswot: the kernel matrix is singular"):
        naswot_score(model, same)


def test_synflow_overflow_is_a_recorded_failure():
    # Leaky ReLU with |θ| = 1000: h grows ~3000× per step, past float64 by step ~90.
    model = tiny_model(LEAKY_RNN, 1)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(1000.0)
    with pytest.raises(MetricFailure, match="synflow: R = Σ logits is (inf|nan)"):
        synflow_score(model, steps=200)


# ------------------------------------------------------------------ end to end (PTB)

RNN_SPEC = json.dumps({"f": linear("x", "h_prev_0"), "h_new_0": act("tanh", "f")})
STANDARD = ["grad_norm", "snip", "fisher", "synflow", "naswot"]


def score(ctx, names):
    metrics = load_metrics()
    return {name: metrics.get(name).impl("nb-nlp").fn(ctx) for name in names}


@pytest.fixture
def one_thread():
    """One intra-op thread, as a CPU scorer runs (`scoring.pick_threads`): the same
    reductions on every run, and no oversubscription of a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_standard_metrics_on_the_ptb_batch_are_finite_and_share_passes(one_thread):
    batch = BATCHES.get("nb-nlp")({})  # the paper's batch: 70 × 50 PTB test tokens
    wanted = STANDARD + ["activation_distance"]
    ctx = MetricContext("nb-nlp", RNN_SPEC, seed=0, batch=batch, wanted=wanted)
    values = score(ctx, wanted)

    assert all(math.isfinite(v) for v in values.values()), values
    assert ctx.pass_counts["loss_grad"] == 1  # grad_norm, snip and fisher: one backward
    assert dict(ctx.pass_counts) == {"loss_grad": 1, "synflow": 1, "naswot": 1, "paper": 1}
    # The paper's K is twice naswot's (two identical eval passes): log|det 2K| = log|det K| + B·log 2.
    assert values["activation_distance"] == pytest.approx(values["naswot"] + 50 * math.log(2), rel=1e-9)
    # Scored alone, naswot runs its own forward; the kernel (integer counts) is the same.
    alone = score(MetricContext("nb-nlp", RNN_SPEC, seed=0, batch=batch, wanted=["naswot"]), ["naswot"])
    assert alone["naswot"] == values["naswot"]


def test_every_standard_metric_repeats_exactly_on_a_short_ptb_batch(one_thread):
    # The first 5 of the 70 PTB steps (50 columns): grasp's double backward through all
    # 70 steps takes 15-30 s on one core, too long for the test run (bench timings cover it).
    batch = BATCHES.get("nb-nlp")({"bptt": 5})
    names = STANDARD + ["grasp"]
    first = score(MetricContext("nb-nlp", RNN_SPEC, seed=0, batch=batch, wanted=names), names)
    second = score(MetricContext("nb-nlp", RNN_SPEC, seed=0, batch=batch, wanted=names), names)
    assert all(math.isfinite(v) and v != 0.0 for v in first.values()), first
    assert first == second
