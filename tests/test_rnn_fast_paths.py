"""The fast paths of the nb-nlp metrics compute what the slow, literal ones compute.

* `initial_layers` (hidden_cov alone) leaves torch's generator, the embedding and the
  first layers exactly as building the whole model does;
* `paper_passes` (one forward for passes 1, 2 and 4, gradients only to inputs, pass 4's
  weight gradients from hooks, K from chunked codes) equals the protocol written pass by
  pass as the authors' code runs it (`literal_paper_passes` below: five backwards into
  every parameter's .grad), on a small float64 model whose cell has every case the fast
  path treats apart: `x` read at a later input position, a node fed only by h_prev (so
  non-zero at step 0 without depending on the input), two hidden outputs, blend,
  product, and all three activations;
* the batched layout (every pass a column block of one forward, for GPUs) equals the
  per-graph layout the CPU runs.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tfnas_ray.metrics.common import hamming_kernel_update
from tfnas_ray.metrics.rnn_paper import NOISE_SCALES, paper_passes
from tfnas_ray.spaces.nasbench_nlp.model import LMConfig, NasBenchNlpLM, initial_layers
from tfnas_ray.spaces.nasbench_nlp.recipe import parse_recipe


def linear(*inputs):
    return {"op": "linear", "input": list(inputs)}


CELL = {
    "node_0": linear("h_prev_0", "x"),  # x at position 1: its weight counts in synaptic saliency
    "node_1": linear("h_prev_1"),  # from h_prev only: sigmoid(bias) ≠ 0 at step 0
    "node_2": {"op": "activation_sigm", "input": ["node_1"]},
    "node_3": linear("x", "node_2", "h_prev_0"),  # node_2 at position 1 counts
    "node_4": {"op": "activation_tanh", "input": ["node_3"]},
    "h_new_0": {"op": "blend", "input": ["node_2", "node_4", "h_prev_0"]},
    "node_5": {"op": "activation_leaky_relu", "input": ["node_0"]},
    "h_new_1": {"op": "elementwise_prod", "input": ["node_5", "node_2"]},
}
TOKENS = torch.tensor([[1, 4, 2], [2, 0, 2], [6, 3, 5], [1, 1, 0], [5, 2, 4]])  # (T, B) = (5, 3)


def small_model() -> NasBenchNlpLM:
    """ntoken 7, emsize 3, nhid 4, 3 layers, float64, parameters re-drawn N(0, 1) so that
    every nonlinearity works away from zero (the reference init is tiny)."""
    config = LMConfig(ntoken=7, emsize=3, nhid=4, dropout=0, dropouth=0, dropouti=0, dropoute=0, wdrop=0)
    torch.manual_seed(0)
    model = NasBenchNlpLM(parse_recipe(CELL), config).double().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    return model


class _Literal:
    """The authors' recorder: h_prev_0 retains its gradient; codes go into K."""

    def __init__(self, kernel=None):
        self.kernel, self.states = kernel, []

    def hidden(self, layer, step, h):
        if torch.is_grad_enabled():
            h = h.detach().requires_grad_() if not h.requires_grad else h
            h.retain_grad()
        self.states.append((layer, h))
        return h

    def activation(self, layer, step, node, output):
        if self.kernel is not None:
            hamming_kernel_update(self.kernel, output)

    def saliency(self):
        return sum(float((h.detach() * h.grad).abs().sum()) for _, h in self.states if h.grad is not None)


def literal_paper_passes(model, tokens, seed):
    """PAPER_METRICS.md's passes 1–4 one after the other, each backward into .grad."""
    model = copy.deepcopy(model)
    B = tokens.shape[1]
    kernel = torch.zeros(B, B, dtype=torch.float64)
    first = _Literal(kernel)
    embedded = model.embed(tokens)
    embedded.retain_grad()
    y, _ = model.forward_embedded(embedded, recorder=first)
    y.backward(torch.ones_like(y))
    jacobian = embedded.grad.numpy()
    saliency = first.saliency()
    states = {
        layer + 1: torch.stack([h.detach() for l, h in first.states if l == layer], dim=-1).numpy()
        for layer in range(len(model.layers))
    }
    with torch.no_grad():
        clean = model.embed(tokens)
        model.forward_embedded(clean, recorder=_Literal(kernel))
    clean_np = clean.numpy()
    variance = np.var(clean_np, axis=1, keepdims=True)
    noise = np.random.RandomState(seed).normal(size=clean_np.shape)
    noisy = {}
    for scale in NOISE_SCALES:
        inputs = torch.tensor(clean_np + scale * variance * noise, requires_grad=True)
        recorder = _Literal()
        y, _ = model.forward_embedded(inputs, recorder=recorder)
        y.backward(torch.ones_like(y))
        noisy[scale] = inputs.grad.numpy()
        saliency += recorder.saliency()
    model.zero_grad(set_to_none=True)
    fourth = _Literal()
    y, _ = model(tokens, recorder=fourth)
    y.backward(y.detach())
    saliency += fourth.saliency()
    synaptic = sum(
        float((w.detach() * w.grad).abs().sum())
        for layer in model.layers
        for linear in layer.linears.values()
        for w in list(linear.weights)[1:]
        if w.grad is not None
    )
    decoder = model.decoder.weight
    synaptic += float((decoder.detach() * decoder.grad).abs().sum())
    return states, jacobian, noisy, kernel.numpy(), synaptic, saliency


@pytest.mark.parametrize("batched", [False, True], ids=["per-graph", "batched"])
def test_paper_passes_equal_the_protocol_run_pass_by_pass(batched):
    model = small_model()
    states, jacobian, noisy, kernel, synaptic, saliency = literal_paper_passes(model, TOKENS, seed=0)
    fast = paper_passes(copy.deepcopy(model), TOKENS, 0, batched=batched)
    # float64 throughout: only the summation order differs.
    for layer in states:
        np.testing.assert_allclose(fast.states[layer], states[layer], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fast.jacobian, jacobian, rtol=1e-10, atol=1e-12)
    for scale in NOISE_SCALES:
        np.testing.assert_allclose(fast.noisy_jacobians[scale], noisy[scale], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(fast.kernel, kernel)  # integer counts: exact
    assert fast.synaptic_saliency == pytest.approx(synaptic, rel=1e-12)
    assert fast.hidden_saliency == pytest.approx(saliency, rel=1e-12)
    assert synaptic > 0 and saliency > 0


def test_paper_passes_leave_the_given_model_usable_and_values_repeat():
    model = small_model()
    one = paper_passes(copy.deepcopy(model), TOKENS, 0, batched=False)
    two = paper_passes(copy.deepcopy(model), TOKENS, 0, batched=False)
    assert one.synaptic_saliency == two.synaptic_saliency and one.hidden_saliency == two.hidden_saliency
    np.testing.assert_array_equal(one.jacobian, two.jacobian)


@pytest.mark.parametrize("config", [LMConfig(ntoken=10_000), LMConfig(ntoken=37, emsize=5, nhid=7)], ids=["ptb", "odd-sizes"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_initial_layers_replay_the_whole_models_draws(config, num_layers):
    recipe = parse_recipe(CELL)
    torch.manual_seed(3)
    model = NasBenchNlpLM(recipe, config)
    after_model = torch.get_rng_state()
    torch.manual_seed(3)
    embedding, layers = initial_layers(recipe, config, num_layers)
    assert torch.equal(torch.get_rng_state(), after_model)  # later draws stay the same
    assert torch.equal(embedding, model.encoder.weight)
    assert len(layers) == num_layers
    for fast, built in zip(layers, model.layers):
        for (name, a), (_, b) in zip(fast.named_parameters(), built.named_parameters()):
            assert torch.equal(a, b), name


class _Everything:
    def __init__(self):
        self.seen = []

    def hidden(self, layer, step, h):
        self.seen.append(("h", layer, step, h.clone()))
        return h

    def activation(self, layer, step, node, output):
        self.seen.append((node, layer, step, output.clone()))


def test_a_captured_step_replayed_gives_the_loops_values():
    # On CUDA the step is a CUDA graph; here the same static buffers are refilled by
    # re-running the step eagerly, which checks everything but the graph itself.
    model = small_model()
    x = model.embed(TOKENS)
    results = []
    for capture in (False, True):
        recorder = _Everything()
        with torch.no_grad():
            hidden = model.init_hidden(TOKENS.shape[1])
            outputs, state = model.layers[0](x, hidden[0], recorder=recorder, capture=capture)
        results.append((outputs, state, recorder.seen))
    (loop_out, loop_state, loop_seen), (cap_out, cap_state, cap_seen) = results
    assert torch.equal(loop_out, cap_out)
    assert all(torch.equal(a, b) for a, b in zip(loop_state, cap_state))
    assert [key[:3] for key in loop_seen] == [key[:3] for key in cap_seen]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(loop_seen, cap_seen))


class _FailingCapture:
    """A step recorder that fails as a CUDA graph capture can (e.g. an op that is not
    allowed while a stream is capturing)."""

    captures = 0

    def capture(self, step):
        _FailingCapture.captures += 1
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    def replay(self):
        raise AssertionError("never replayed: the capture failed")


def test_a_failed_capture_falls_back_to_the_loop_with_one_warning(monkeypatch):
    from tfnas_ray.spaces.nasbench_nlp import cell

    monkeypatch.setattr(cell, "_capture_failed", [])
    monkeypatch.setattr(cell, "_step_graph", lambda like: _FailingCapture())
    _FailingCapture.captures = 0
    model = small_model()
    x = model.embed(TOKENS)
    with torch.no_grad():
        hidden = model.init_hidden(TOKENS.shape[1])
        loop_recorder = _Everything()
        loop_out, loop_state = model.layers[0](x, hidden[0], recorder=loop_recorder, capture=False)
        with pytest.warns(RuntimeWarning, match="recording the recurrent step as a graph failed .*operation not permitted") as caught:
            results = []
            for _ in range(3):  # three windows: one failed capture, one warning, then the loop
                recorder = _Everything()
                results.append((*model.layers[0](x, hidden[0], recorder=recorder, capture=True), recorder.seen))
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert _FailingCapture.captures == 1
    for out, state, seen in results:
        assert torch.equal(out, loop_out)
        assert all(torch.equal(a, b) for a, b in zip(state, loop_state))
        assert [key[:3] for key in seen] == [key[:3] for key in loop_recorder.seen]
        assert all(torch.equal(a[3], b[3]) for a, b in zip(seen, loop_recorder.seen))


def test_cuda_graphs_are_opt_in(monkeypatch):
    from tfnas_ray.spaces.nasbench_nlp import cell

    monkeypatch.delenv(cell.CUDA_GRAPHS_ENV, raising=False)
    assert not cell.cuda_graphs_enabled()
    for value, expected in (("1", True), ("on", True), ("0", False), ("", False)):
        monkeypatch.setenv(cell.CUDA_GRAPHS_ENV, value)
        assert cell.cuda_graphs_enabled() is expected


def test_out_of_memory_while_capturing_is_not_a_capture_fault(monkeypatch):
    from tfnas_ray.spaces.nasbench_nlp import cell

    class _OutOfMemory(_FailingCapture):
        def capture(self, step):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cell, "_capture_failed", [])
    monkeypatch.setattr(cell, "_step_graph", lambda like: _OutOfMemory())
    model = small_model()
    with torch.no_grad(), pytest.raises(torch.OutOfMemoryError, match="Tried to allocate"):
        model.layers[0](model.embed(TOKENS), model.init_hidden(TOKENS.shape[1])[0], capture=True)
    assert cell._capture_failed == []  # the next call still tries to capture
