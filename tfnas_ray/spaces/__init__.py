"""Search spaces: sample, validate, canonicalise, and build a torch model.

A space knows nothing of metrics or Ray. Each space registers one `Space` instance in
`SPACES` under the name that the `space` column of the archs table carries.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

from tfnas_ray.registry import Registry


@runtime_checkable
class Space(Protocol):
    """What every search space provides (see nasbench_nlp and nasbench_bert)."""

    name: str

    def canonicalize(self, spec: Any) -> str:
        """Validate `spec` (a dict or JSON string) and return its canonical JSON.

        Raises:
            TfnasError: the spec is malformed; the message names the part and the rule.
        """

    def sample(self, n: int, *, seed: int) -> list[str]:
        """`n` canonical specs drawn with the space's own distribution, reproducibly."""

    def build(self, spec: str, **options: Any) -> torch.nn.Module:
        """A freshly initialised model (draws from torch's global generator)."""


SPACES: Registry[Space] = Registry("space")

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
