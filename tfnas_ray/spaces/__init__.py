"""Search spaces: sample, validate, canonicalise, and build a torch model.

A space knows nothing of metrics or Ray. Each space registers one `Space` instance in
`SPACES` under the name that the `space` column of the archs table carries.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from tfnas_ray.errors import TfnasError
from tfnas_ray.registry import Registry

# What a metric may read, and a space's models may offer: the one vocabulary both sides
# name (a space declares `capabilities`, a metric implementation `reads`, and the engine
# scores a metric on a space when the first holds the second).
CAPABILITIES: dict[str, str] = {
    "spec": "the architecture's spec alone, no model (counts, shapes, FLOPs from the config)",
    "module": "any torch module mapping token ids (B, T) to a tensor: params, FLOPs, latency, memory, synflow",
    "activations": "activation functions inside the model (GELU, ReLU, a cell's tanh nodes)",
    "input_embeddings": "an embedding the token ids go through, differentiable at its output",
    "recurrent_steps": "a recurrent cell stepped token by token (its per-step states and nodes)",
    "hidden_states": "per-layer hidden states of the tokens",
    "attentions": "attention probabilities (or an operation's attention scores) per layer and head",
    "lm_loss": "language-model logits (B, T, V), so a causal or masked LM loss",
}


def check_capabilities(names, *, what: str) -> tuple[str, ...]:
    """`names` as a tuple, each a known capability.

    Raises:
        TfnasError: an unknown one; the message names `what` and lists the known ones.
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in names if n not in CAPABILITIES]
    if unknown:
        raise TfnasError(f"{what}: unknown capabilit{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; known: {', '.join(CAPABILITIES)}")
    return names


@runtime_checkable
class Space(Protocol):
    """What every search space provides (see nasbench_nlp and nasbench_bert)."""

    name: str
    # What its models offer to metrics (`CAPABILITIES`): a metric without this space's own
    # implementation is scored through the generic one when it reads only these.
    capabilities: frozenset[str]

    def canonicalize(self, spec: Any) -> str:
        """Validate `spec` (a dict or JSON string) and return its canonical JSON.

        Raises:
            TfnasError: the spec is malformed; the message names the part and the rule.
        """

    def sample(self, n: int, *, seed: int) -> list[str]:
        """`n` distinct canonical specs drawn with the space's own distribution,
        reproducibly (`draw_distinct`)."""

    def build(self, spec: str, **options: Any) -> torch.nn.Module:
        """A freshly initialised model (draws from torch's global generator)."""


SPACES: Registry[Space] = Registry("space")

# `draw_distinct` gives up after this many draws per architecture asked for (plus a
# floor): nb-nlp's generator repeats its small cells often (5,000 draws, seed 3: 3,448
# distinct), and a space smaller than `n` must end with a message, not loop forever.
DRAWS_PER_ARCH = 20
MIN_DRAWS = 1000


def draw_distinct(n: int, draw: Callable[[], str], identity: Callable[[str], str], *, space: str, seed: int) -> list[str]:
    """The first `n` specs of the sequence `draw()` yields whose `identity` (the arch
    id) was not drawn before, in draw order: so `sample(n)[:m] == sample(m)`.

    Raises:
        TfnasError: `n` < 0, or fewer than `n` distinct specs within
            `DRAWS_PER_ARCH * n + MIN_DRAWS` draws; the message says how many were found.
    """
    if n < 0:
        raise TfnasError(f"number of samples must be >= 0, got {n}")
    limit = DRAWS_PER_ARCH * n + MIN_DRAWS
    seen: set[str] = set()
    specs: list[str] = []
    draws = 0
    while len(specs) < n:
        if draws == limit:
            raise TfnasError(
                f"{space}: only {len(specs):,} distinct architectures in {draws:,} draws with seed {seed}; "
                f"asked for {n:,}; ask for at most {len(specs):,} (or another --seed gives others)"
            )
        spec = draw()
        draws += 1
        key = identity(spec)
        if key not in seen:
            seen.add(key)
            specs.append(spec)
    return specs

# Modules that register spaces; imported on first use so `import tfnas_ray` stays light.
_SPACE_MODULES: Sequence[str] = (
    "tfnas_ray.spaces.nasbench_nlp",
    "tfnas_ray.spaces.nasbench_bert",
    "tfnas_ray.spaces.hf",
)


def load_spaces() -> Registry[Space]:
    """Import every space module (idempotent) and return the registry."""
    for module in _SPACE_MODULES:
        importlib.import_module(module)
    return SPACES


def get_space(name: str) -> Space:
    return load_spaces().get(name)


def content_id(space: str, canonical_spec: str) -> str:
    """A stable arch_id: the first 16 hex digits of sha256("space\\ncanonical JSON").

    The same architecture gets the same id on every machine and in every run, and the
    space name keeps ids of different spaces apart.
    """
    digest = hashlib.sha256(f"{space}\n{canonical_spec}".encode("utf-8")).hexdigest()
    return digest[:16]
