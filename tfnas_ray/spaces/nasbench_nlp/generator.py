"""Random NAS-Bench-NLP cells, drawn with the benchmark's own distribution.

Following the generator NAS-Bench-NLP describes (../shared/data/README.md):
k ∈ {1, 2, 3} hidden-tuple size and V ∈ {7, 14, 21} intermediate vertices, uniform; ops
drawn linear 3 : blend 1 : prod 1 : sum 1; a linear node takes 2 inputs with p = 0.8
(else 3) from the base nodes and the activation nodes so far, and is always followed by
an activation (tanh / sigm / leaky_relu, uniform); blend/prod/sum take 3/2 inputs from
the base nodes except `x` and every node so far; k nodes become `h_new_0..k-1`;
unreachable nodes are dropped; a cell that leaves `x` or an `h_prev_i` unused, or whose
`h_new_i` reads an `h_prev_j` directly, is drawn again.
"""

from __future__ import annotations

import random

from tfnas_ray.spaces.nasbench_nlp.recipe import ACTIVATIONS

HIDDEN_TUPLE_SIZES = (1, 2, 3)
INTERMEDIATE_VERTICES = (7, 14, 21)
OP_WEIGHTS = {"linear": 3, "blend": 1, "elementwise_prod": 1, "elementwise_sum": 1}
_ARITY = {"blend": 3, "elementwise_prod": 2, "elementwise_sum": 2}


def _draw_once(rng: random.Random) -> dict | None:
    k = rng.choice(HIDDEN_TUPLE_SIZES)
    vertices = rng.choice(INTERMEDIATE_VERTICES)
    base = ["x"] + [f"h_prev_{i}" for i in range(k)]
    made: dict[str, dict] = {}  # name -> {"op", "input"}, in creation order
    activations: list[str] = []

    def new_name() -> str:
        return f"node_{len(made)}"

    ops, weights = list(OP_WEIGHTS), list(OP_WEIGHTS.values())
    while len(base) + len(made) < k + vertices:
        op = rng.choices(ops, weights)[0]
        if op == "linear":
            candidates = base + activations
            n_inputs = min(2 if rng.random() < 0.8 else 3, len(candidates))
            linear = new_name()
            made[linear] = {"op": "linear", "input": rng.sample(candidates, n_inputs)}
            activation = new_name()
            made[activation] = {"op": rng.choice(ACTIVATIONS), "input": [linear]}
            activations.append(activation)
        else:
            candidates = base[1:] + list(made)
            if len(candidates) < _ARITY[op]:
                continue
            made[new_name()] = {"op": op, "input": rng.sample(candidates, _ARITY[op])}
    if len(made) < k:
        return None

    outputs = rng.sample(list(made), k)
    rename = {old: f"h_new_{i}" for i, old in enumerate(outputs)}
    recipe = {
        rename.get(name, name): {"op": body["op"], "input": [rename.get(i, i) for i in body["input"]]}
        for name, body in made.items()
    }

    reachable: set[str] = set()
    stack = [f"h_new_{i}" for i in range(k)]
    while stack:
        name = stack.pop()
        if name in reachable or name not in recipe:
            continue
        reachable.add(name)
        stack.extend(recipe[name]["input"])
    recipe = {name: body for name, body in recipe.items() if name in reachable}

    used = {i for body in recipe.values() for i in body["input"]}
    if any(b not in used for b in base):
        return None
    for i in range(k):
        if any(inp.startswith("h_prev_") for inp in recipe[f"h_new_{i}"]["input"]):
            return None
    return recipe


def generate_recipe(rng: random.Random) -> dict:
    """Draw recipes until one passes the benchmark's filter; return it."""
    while True:
        recipe = _draw_once(rng)
        if recipe is not None:
            return recipe
