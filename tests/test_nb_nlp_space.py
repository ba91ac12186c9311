"""The NAS-Bench-NLP space: validation, canonical ids, generator, model, parameter counts."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tfnas_ray.benchmarks import read_packaged_json
from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces import get_space
from tfnas_ray.spaces.nasbench_nlp.generator import generate_recipe
from tfnas_ray.spaces.nasbench_nlp.model import LMConfig, NasBenchNlpLM, count_parameters
from tfnas_ray.spaces.nasbench_nlp.recipe import parse_recipe

SPACE = get_space("nb-nlp")
RNN = {"f": {"op": "linear", "input": ["x", "h_prev_0"]}, "h_new_0": {"op": "activation_tanh", "input": ["f"]}}


def lin(*inputs):
    return {"op": "linear", "input": list(inputs)}


def act(op, source):
    return {"op": f"activation_{op}", "input": [source]}


MALFORMED = [
    ("[1, 2]", "recipe must be a JSON object of nodes, got list"),
    ("{not json", "recipe is not valid JSON"),
    ({}, "recipe is empty"),
    ({"a": lin("x", "h_prev_0"), "b": act("tanh", "a")}, "recipe has no node 'h_new_0'"),
    ({"a": {"op": "conv", "input": ["x"]}, "h_new_0": act("tanh", "a")}, "recipe node 'a': unknown op 'conv'; allowed: linear, blend"),
    ({"a": lin("x", "h_prev_0"), "h_new_0": {"op": "blend", "input": ["a", "h_prev_0"]}}, r"recipe node 'h_new_0': op blend takes 3 input\(s\), got 2"),
    ({"a": {"op": "linear", "input": []}, "h_new_0": act("tanh", "a")}, r"recipe node 'a': op linear takes at least 1 input\(s\), got 0"),
    ({"a": lin("x", "h_prev_0"), "h_new_0": act("tanh", "b")}, "recipe node 'h_new_0': input 'b' is not defined"),
    ({"a": lin("x", "h_prev_1"), "h_new_0": act("tanh", "a")}, r"recipe node 'a': input 'h_prev_1' does not exist \(the recipe has 1 output"),
    (
        {"a": lin("x", "c"), "b": act("tanh", "a"), "c": lin("b", "h_prev_0"), "h_new_0": act("sigm", "c")},
        "recipe has a cycle through node",
    ),
    ({"a": lin("h_prev_0"), "h_new_0": act("tanh", "a")}, "recipe never uses 'x'"),
    ({"a": lin("x"), "h_new_0": act("tanh", "a")}, "recipe never uses 'h_prev_0'"),
    ({"a": lin("x", "h_prev_0"), "h_new_0": act("tanh", "a"), "h_new_2": act("sigm", "a")}, "missing h_new_1"),
    ({"a": lin("x", "h_prev_0"), "h_new_0": {"op": "elementwise_sum", "input": ["a", "x"]}}, "op elementwise_sum cannot take 'x'"),
    ({"x": lin("h_prev_0"), "h_new_0": act("tanh", "x")}, "'x' is a step input and cannot be defined"),
    ({"a": {"op": "linear", "inputs": ["x"]}, "h_new_0": act("tanh", "a")}, r"unknown field\(s\) \['inputs'\]"),
    ({"a": {"op": "linear", "input": "x"}, "h_new_0": act("tanh", "a")}, "'input' must be a list of node names"),
]


@pytest.mark.parametrize("recipe, message", MALFORMED)
def test_malformed_recipes_get_a_clear_message(recipe, message):
    with pytest.raises(TfnasError, match=message):
        parse_recipe(recipe)


def test_arch_id_ignores_intermediate_names_and_key_order():
    renamed = {"gate": {"op": "linear", "input": ["x", "h_prev_0"]}, "h_new_0": {"op": "activation_tanh", "input": ["gate"]}}
    reordered = dict(reversed(list(RNN.items())))
    assert SPACE.arch_id(RNN) == SPACE.arch_id(renamed) == SPACE.arch_id(reordered) == SPACE.arch_id(json.dumps(RNN))
    assert SPACE.canonicalize(RNN) == SPACE.canonicalize(renamed)
    other = {"f": lin("h_prev_0", "x"), "h_new_0": act("tanh", "f")}  # input order matters
    assert SPACE.arch_id(other) != SPACE.arch_id(RNN)


def test_arch_id_distinguishes_symmetric_gates_by_their_use():
    # LSTM-like: four gates with the same inputs, told apart only by where they are used.
    lstm = json.loads(json.dumps(read_packaged_json("nb-nlp-examples.json.xz")[1]))
    names = [n for n in lstm if not n.startswith("h_new")]
    shuffled_names = dict(zip(names, [f"v{i}" for i in random.Random(3).sample(range(len(names)), len(names))]))
    renamed = {
        shuffled_names.get(k, k): {"op": v["op"], "input": [shuffled_names.get(i, i) for i in v["input"]]}
        for k, v in reversed(list(lstm.items()))
    }
    assert SPACE.arch_id(renamed) == SPACE.arch_id(lstm)
    swapped = json.loads(json.dumps(lstm))
    swapped["i_act"]["op"], swapped["j_act"]["op"] = swapped["j_act"]["op"], swapped["i_act"]["op"]
    assert SPACE.arch_id(swapped) != SPACE.arch_id(lstm)


def test_generator_draws_valid_recipes_with_the_benchmark_distribution():
    rng = random.Random(0)
    sizes, ops = [], {}
    for _ in range(1000):
        recipe = parse_recipe(generate_recipe(rng))  # raises if invalid
        sizes.append(recipe.hidden_tuple_size)
        for node in recipe.nodes:
            ops[node.op] = ops.get(node.op, 0) + 1
            if node.op == "linear":
                assert len(node.inputs) in (2, 3) or len(node.inputs) == 1
                assert all(i == "x" or i.startswith("h_prev_") or recipe.node(i).op.startswith("activation") for i in node.inputs)
    assert set(sizes) == {1, 2, 3}
    assert set(ops) == {"linear", "blend", "elementwise_prod", "elementwise_sum", "activation_tanh", "activation_sigm", "activation_leaky_relu"}


def test_sample_is_reproducible_and_canonical():
    first = SPACE.sample(20, seed=7)
    assert first == SPACE.sample(20, seed=7) and first != SPACE.sample(20, seed=8)
    assert all(SPACE.canonicalize(spec) == spec for spec in first)


@pytest.mark.parametrize(
    "source, filename, ntoken, recipe_key",
    [("ptb", "nb-nlp-ptb.jsonl.xz", 10_000, "recepie"), ("wt2", "nb-nlp-wt2.jsonl.xz", 33_278, "recepie")],
)
def test_parameter_count_equals_published_num_params_for_every_architecture(source, filename, ntoken, recipe_key):
    entries = read_packaged_json(filename)
    mismatches = []
    for entry in entries:
        recipe = entry[recipe_key]
        with torch.device("meta"):  # the real module tree, without allocating 10M floats
            model = SPACE.build(recipe, ntoken=ntoken)
        counted = count_parameters(model)
        if counted != entry["num_params"] or SPACE.count_parameters(recipe, ntoken=ntoken) != counted:
            mismatches.append((entry["recepie_id"], counted, entry["num_params"]))
    assert len(entries) == (312 if source == "ptb" else 345)
    assert mismatches == []


def _unrolled_rnn(model: NasBenchNlpLM, tokens: torch.Tensor) -> list[torch.Tensor]:
    """The RNN cell h' = tanh(W_x x + W_h h + b) written out with plain ops, unfused."""
    x = model.encoder.weight[tokens]
    outputs = []
    for layer in model.layers:
        linear = layer.linears["f"]
        h = torch.zeros(tokens.shape[1], layer.hidden_size)
        seq = []
        for t in range(tokens.shape[0]):
            h = torch.tanh(x[t] @ linear.weights[0].T + h @ linear.weights[1].T + linear.bias)
            seq.append(h)
        x = torch.stack(seq)
        outputs.append(x)
    return outputs


def test_fused_model_equals_an_unrolled_reference_cell():
    torch.manual_seed(0)
    model = NasBenchNlpLM(parse_recipe(RNN), LMConfig(ntoken=11, emsize=5, nhid=6, nlayers=3)).eval()
    tokens = torch.randint(0, 11, (4, 3))
    with torch.no_grad():
        output, hidden = model(tokens)
        expected = _unrolled_rnn(model, tokens)
    torch.testing.assert_close(output, expected[-1].reshape(12, 5))
    torch.testing.assert_close(hidden[0][0], expected[0][-1])


def test_num_layers_runs_only_the_first_layers():
    torch.manual_seed(0)
    model = NasBenchNlpLM(parse_recipe(RNN), LMConfig(ntoken=11, emsize=5, nhid=6, nlayers=3)).eval()
    tokens = torch.randint(0, 11, (4, 3))
    with torch.no_grad():
        output, hidden = model(tokens, num_layers=1)
    assert output.shape == (12, 6) and len(hidden) == 1


def test_model_options_are_checked():
    with pytest.raises(TfnasError, match=r"LMConfig.wdrop must be in \[0, 1\), got 1.5"):
        SPACE.build(RNN, ntoken=10, wdrop=1.5)
    with pytest.raises(TfnasError, match="unknown nb-nlp model option"):
        SPACE.build(RNN, ntoken=10, colour="red")
