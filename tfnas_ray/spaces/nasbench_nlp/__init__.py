"""The NAS-Bench-NLP search space (`nb-nlp`): recurrent cells as recipes.

Example:
    >>> from tfnas_ray.spaces import get_space
    >>> space = get_space("nb-nlp")
    >>> spec = space.canonicalize({"f": {"op": "linear", "input": ["x", "h_prev_0"]},
    ...                            "h_new_0": {"op": "activation_tanh", "input": ["f"]}})
    >>> spec
    '{"node_0":{"input":["x","h_prev_0"],"op":"linear"},"h_new_0":{"input":["node_0"],"op":"activation_tanh"}}'
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces import SPACES, content_id, draw_distinct
from tfnas_ray.spaces.nasbench_nlp.generator import generate_recipe
from tfnas_ray.spaces.nasbench_nlp.model import LMConfig, NasBenchNlpLM, count_parameters
from tfnas_ray.spaces.nasbench_nlp.recipe import Recipe, canonical_spec, identity_form, parse_recipe

SPACE_NAME = "nb-nlp"
PTB_VOCABULARY = 10_000


@dataclass(frozen=True)
class NasBenchNlpSpace:
    """NAS-Bench-NLP cells inside the AWD-style language model it trained."""

    name: str = SPACE_NAME
    # AWD-style LMs: a recurrent cell stepped token by token (its states, its tanh/sigmoid
    # nodes), a tied embedding/decoder, so next-token logits. No attention.
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"spec", "module", "recurrent_steps", "activations", "input_embeddings", "hidden_states", "lm_loss"}
    )

    def parse(self, spec: Any) -> Recipe:
        return parse_recipe(spec)

    def canonicalize(self, spec: Any) -> str:
        return canonical_spec(parse_recipe(spec))

    def arch_id(self, spec: Any) -> str:
        """Stable id: independent of intermediate node names and of key order."""
        return content_id(self.name, identity_form(parse_recipe(spec)))

    def sample(self, n: int, *, seed: int) -> list[str]:
        """`n` distinct cells (by `arch_id`) from NAS-Bench-NLP's generator, in the
        order drawn from `random.Random(seed)`.

        Raises:
            TfnasError: n < 0, or the generator repeats itself too often to give n.
        """
        rng = random.Random(seed)
        return draw_distinct(n, lambda: self.canonicalize(generate_recipe(rng)), self.arch_id, space=self.name, seed=seed)

    def build(self, spec: Any, *, ntoken: int = PTB_VOCABULARY, **config: Any) -> NasBenchNlpLM:
        """The language model for `spec`; `config` overrides `LMConfig` fields."""
        try:
            lm_config = LMConfig(ntoken=ntoken, **config)
        except TypeError as err:
            raise TfnasError(f"unknown nb-nlp model option: {err}") from None
        return NasBenchNlpLM(parse_recipe(spec), lm_config)

    def count_parameters(self, spec: Any, *, ntoken: int = PTB_VOCABULARY, **config: Any) -> int:
        """The published num_params, computed without allocating the model."""
        recipe = parse_recipe(spec)
        lm_config = LMConfig(ntoken=ntoken, **config)
        total = lm_config.ntoken * lm_config.emsize + lm_config.ntoken  # tied embedding + decoder bias
        for input_size, hidden_size in lm_config.layer_sizes():
            for node in recipe.nodes:
                if node.op == "linear":
                    total += hidden_size  # bias
                    total += sum(hidden_size * (input_size if i == "x" else hidden_size) for i in node.inputs)
        return total


SPACE = NasBenchNlpSpace()
SPACES.add(SPACE_NAME, SPACE)

__all__ = ["SPACE", "LMConfig", "NasBenchNlpLM", "count_parameters", "parse_recipe"]
