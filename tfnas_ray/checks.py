"""Checks of config fields shared by the frozen config dataclasses.

Each raises one `TfnasError` that names the field as `Class.field`, its value and what
is allowed, so the CLI prints it as a single line.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, TypeVar

from tfnas_ray.errors import TfnasError

Config = TypeVar("Config")


def _label(config: Any, name: str) -> str:
    return f"{type(config).__name__}.{name}"


def at_least(config: Any, names: Iterable[str], low: int) -> None:
    """Every field in `names` is >= `low`."""
    for name in names:
        value = getattr(config, name)
        if value < low:
            raise TfnasError(f"{_label(config, name)} must be >= {low}, got {value}")


def fractions(config: Any, names: Iterable[str]) -> None:
    """Every field in `names` is a rate in [0, 1) (dropout, warm-up share, …)."""
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise TfnasError(f"{_label(config, name)} must be in [0, 1), got {value}")


def finite_nonnegative(config: Any, names: Iterable[str]) -> None:
    """Every field in `names` is finite and >= 0 (learning rates, weights, clipping)."""
    for name in names:
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise TfnasError(f"{_label(config, name)} must be finite and >= 0, got {value}")


def from_fields(cls: type[Config], fields: Mapping[str, Any]) -> Config:
    """`cls(**fields)`, refusing names that are not fields of `cls` (a JSON round trip
    from another version, or a typo) with one line that lists the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TfnasError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**fields)


# A spec is a few kilobytes (the largest shipped recipe is under 2 KB, an nb-bert config
# under 1 KB); these limits reject a huge or deeply nested document before the JSON
# parser, which recurses once per nesting level, raises RecursionError on it.
MAX_SPEC_BYTES = 256 * 1024
MAX_SPEC_DEPTH = 32


def load_spec_json(text: str | bytes, *, what: str = "spec") -> Any:
    """`json.loads(text)` for a spec, refusing one over `MAX_SPEC_BYTES` or nested
    deeper than `MAX_SPEC_DEPTH` by a scan that does not recurse.

    Raises:
        TfnasError: too large, too deep, or not valid JSON (one line each).
    """
    import json

    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if len(text) > MAX_SPEC_BYTES:
        raise TfnasError(f"{what} is {len(text):,} characters long; at most {MAX_SPEC_BYTES:,} are allowed")
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_SPEC_DEPTH:
                raise TfnasError(f"{what} nests JSON deeper than {MAX_SPEC_DEPTH} levels; specs are shallow objects")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise TfnasError(f"{what} is not valid JSON: {err}") from None
