"""NAS-Bench-NLP recipes: parse, validate, canonicalise, identify.

A recipe is a JSON object mapping node name → {"op": OP, "input": [node names]}. The
inputs of a step are `x` (the layer input) and `h_prev_0 … h_prev_{k-1}` (the hidden
tuple); the outputs are `h_new_0 … h_new_{k-1}`, and `h_new_0` is the layer's output.

Canonical form: intermediate nodes are renamed `node_0, node_1, …` in the order a
depth-first walk from `h_new_0, h_new_1, …` (inputs in their listed order) finishes them,
so the names no longer depend on how the author spelled them. The *spec* keeps the
recipe's node order, because the reference initialisation draws each linear node's
parameters in that order (DESIGN.md, Fidelity); the *arch_id* hashes the form with
sorted keys, so it depends neither on names nor on order.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from tfnas_ray.checks import load_spec_json
from tfnas_ray.errors import TfnasError

ARITY: Mapping[str, tuple[int, int | None]] = {  # op -> (min inputs, max inputs or None)
    "linear": (1, None),
    "blend": (3, 3),
    "elementwise_prod": (2, 2),
    "elementwise_sum": (2, 2),
    "activation_tanh": (1, 1),
    "activation_sigm": (1, 1),
    "activation_leaky_relu": (1, 1),
}
OPS = tuple(ARITY)
ACTIVATIONS = ("activation_tanh", "activation_sigm", "activation_leaky_relu")

_H_PREV = re.compile(r"h_prev_(0|[1-9][0-9]*)\Z")
_H_NEW = re.compile(r"h_new_(0|[1-9][0-9]*)\Z")


@dataclass(frozen=True)
class Node:
    """One node of a recipe: its op and its inputs, in order."""

    name: str
    op: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Recipe:
    """A validated recipe.

    Attributes:
        nodes: the computed nodes in the recipe's own order (the initialisation order).
        hidden_tuple_size: k, the number of `h_new_*` outputs (= `h_prev_*` inputs).
        order: node names in an order that computes every input before its use.
        live: names of the nodes that some `h_new_*` depends on (the others are kept,
            since they own parameters, but never need computing).
    """

    nodes: tuple[Node, ...]
    hidden_tuple_size: int
    order: tuple[str, ...]
    live: frozenset[str]

    def node(self, name: str) -> Node:
        return self._by_name[name]

    @property
    def _by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def to_json(self) -> str:
        """Compact JSON in the recipe's node order (inner keys sorted)."""
        return json.dumps(
            {n.name: {"input": list(n.inputs), "op": n.op} for n in self.nodes},
            separators=(",", ":"),
        )


def _load(spec: Any) -> dict:
    if isinstance(spec, (bytes, str)):
        spec = load_spec_json(spec, what="recipe")
    if not isinstance(spec, Mapping):
        raise TfnasError(f"recipe must be a JSON object of nodes, got {type(spec).__name__}")
    if not spec:
        raise TfnasError("recipe is empty: it needs at least the node 'h_new_0'")
    return dict(spec)


def parse_recipe(spec: Any) -> Recipe:
    """Parse and validate a recipe (a dict or its JSON text).

    Raises:
        TfnasError: naming the node and the rule broken — unknown op, wrong arity,
            undefined input, `x` feeding a non-linear node, a cycle, no `h_new_0`,
            gaps in `h_new_*`, `x` or an `h_prev_i` unused, …
    """
    raw = _load(spec)
    nodes: list[Node] = []
    for name, body in raw.items():
        if not isinstance(name, str) or not name:
            raise TfnasError(f"recipe node name {name!r} must be a non-empty string")
        if name == "x" or _H_PREV.match(name):
            raise TfnasError(f"recipe node {name!r}: {name!r} is a step input and cannot be defined")
        if not isinstance(body, Mapping):
            raise TfnasError(f"recipe node {name!r} must be an object with 'op' and 'input', got {body!r}")
        extra = set(body) - {"op", "input"}
        if extra:
            raise TfnasError(f"recipe node {name!r} has unknown field(s) {sorted(extra)}; allowed: 'op', 'input'")
        op, inputs = body.get("op"), body.get("input")
        if op not in ARITY:
            raise TfnasError(f"recipe node {name!r}: unknown op {op!r}; allowed: {', '.join(OPS)}")
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise TfnasError(f"recipe node {name!r}: 'input' must be a list of node names, got {inputs!r}")
        low, high = ARITY[op]
        if len(inputs) < low or (high is not None and len(inputs) > high):
            wanted = f"{low}" if low == high else f"at least {low}"
            raise TfnasError(
                f"recipe node {name!r}: op {op} takes {wanted} input(s), got {len(inputs)} {inputs}"
            )
        nodes.append(Node(name=name, op=op, inputs=tuple(inputs)))

    names = {n.name for n in nodes}
    outputs = sorted((int(_H_NEW.match(n).group(1)) for n in names if _H_NEW.match(n)))
    if not outputs or outputs[0] != 0:
        raise TfnasError("recipe has no node 'h_new_0' (the layer output)")
    if outputs != list(range(len(outputs))):
        missing = sorted(set(range(outputs[-1] + 1)) - set(outputs))
        raise TfnasError(
            f"recipe outputs must be h_new_0..h_new_{outputs[-1]} without gaps; "
            f"missing h_new_{missing[0]}"
        )
    k = len(outputs)

    for node in nodes:
        for inp in node.inputs:
            prev = _H_PREV.match(inp)
            if inp == "x":
                if node.op != "linear":
                    raise TfnasError(
                        f"recipe node {node.name!r}: op {node.op} cannot take 'x' "
                        "(only linear nodes read the layer input, whose size differs)"
                    )
            elif prev:
                if int(prev.group(1)) >= k:
                    raise TfnasError(
                        f"recipe node {node.name!r}: input {inp!r} does not exist "
                        f"(the recipe has {k} output(s), so h_prev_0..h_prev_{k - 1})"
                    )
            elif inp not in names:
                raise TfnasError(f"recipe node {node.name!r}: input {inp!r} is not defined")

    order = _topological_order(nodes)
    by_name = {n.name: n for n in nodes}
    live = _ancestors([f"h_new_{i}" for i in range(k)], by_name)
    used_inputs = {i for name in live for i in by_name[name].inputs}
    for base in ["x"] + [f"h_prev_{i}" for i in range(k)]:
        if base not in used_inputs:
            raise TfnasError(f"recipe never uses {base!r}: no h_new_* node depends on it")
    return Recipe(nodes=tuple(nodes), hidden_tuple_size=k, order=tuple(order), live=frozenset(live))


def _topological_order(nodes: list[Node]) -> list[str]:
    """Kahn's algorithm, ties broken by recipe order; a cycle names one of its nodes."""
    names = [n.name for n in nodes]
    deps = {n.name: [i for i in n.inputs if i in set(names)] for n in nodes}
    done: set[str] = set()
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = path[path.index(name):] + [name]
            raise TfnasError(f"recipe has a cycle through node {name!r}: {' -> '.join(reversed(cycle))}")
        visiting.add(name)
        for dep in deps[name]:
            visit(dep, path + [name])
        visiting.discard(name)
        done.add(name)
        order.append(name)

    for name in names:
        visit(name, [])
    return order


def _ancestors(targets: list[str], by_name: Mapping[str, Node]) -> set[str]:
    seen: set[str] = set()
    stack = list(targets)
    while stack:
        name = stack.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        stack.extend(by_name[name].inputs)
    return seen


def _is_fixed(name: str) -> bool:
    return name == "x" or bool(_H_PREV.match(name)) or bool(_H_NEW.match(name))


def _structure_hash(name: str, by_name: Mapping[str, Node], memo: dict[str, str]) -> str:
    """A name-independent hash of the computation that produces `name`."""
    if name in memo:
        return memo[name]
    if name not in by_name:  # x or h_prev_i
        memo[name] = name
        return name
    node = by_name[name]
    parts = [_structure_hash(i, by_name, memo) for i in node.inputs]
    label = name if _H_NEW.match(name) else ""
    digest = hashlib.sha256(f"{label}|{node.op}({','.join(parts)})".encode()).hexdigest()
    memo[name] = digest
    return digest


def canonical_names(recipe: Recipe) -> dict[str, str]:
    """Map each intermediate node's name to its canonical name `node_i`.

    Depth-first from `h_new_0, h_new_1, …`, inputs in order, post-order numbering.
    Nodes no output depends on (dead nodes) are numbered after, starting from the dead
    nodes nothing uses, in order of their structure hash.
    """
    by_name = {n.name: n for n in recipe.nodes}
    mapping: dict[str, str] = {}

    def visit(name: str) -> None:
        if name not in by_name or name in visited:
            return
        visited.add(name)
        for inp in by_name[name].inputs:
            visit(inp)
        if not _is_fixed(name):
            mapping[name] = f"node_{len(mapping)}"

    visited: set[str] = set()
    for i in range(recipe.hidden_tuple_size):
        visit(f"h_new_{i}")
    dead = [n.name for n in recipe.nodes if n.name not in recipe.live]
    if dead:
        used = {i for n in dead for i in by_name[n].inputs}
        memo: dict[str, str] = {}
        sinks = sorted((n for n in dead if n not in used), key=lambda n: _structure_hash(n, by_name, memo))
        for sink in sinks:
            visit(sink)
    return mapping


def canonical_spec(recipe: Recipe) -> str:
    """The recipe with canonical node names, in its own node order, as compact JSON."""
    mapping = canonical_names(recipe)
    rename = lambda name: mapping.get(name, name)  # noqa: E731 — fixed names map to themselves
    return json.dumps(
        {
            rename(n.name): {"input": [rename(i) for i in n.inputs], "op": n.op}
            for n in recipe.nodes
        },
        separators=(",", ":"),
    )


def identity_form(recipe: Recipe) -> str:
    """The canonical spec with sorted keys: independent of node names and order."""
    return json.dumps(json.loads(canonical_spec(recipe)), sort_keys=True, separators=(",", ":"))
