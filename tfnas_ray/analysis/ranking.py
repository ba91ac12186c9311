"""Ranking architectures by a metric or by a rank ensemble of metrics.

One convention everywhere: a *merit* is oriented so that higher predicts a better trained
model (a metric declared lower-is-better is negated), and ranks are 1 = worst … n = best,
average ranks for ties (scipy.stats.rankdata, method="average"). A NaN value (a recorded
failure) has no rank: it stays NaN and is never picked.

A *method* is a metric name or a rank ensemble written `ensemble:a+b[+c…]`, optionally
weighted `ensemble:a*2+b`: the weighted mean of the members' ranks (each in its own
direction). Anywhere a metric name selects architectures, a method may be given.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import Direction

ENSEMBLE_PREFIX = "ensemble:"
_MEMBER = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)(\*(?P<weight>[0-9]*\.?[0-9]+))?$")


@dataclass(frozen=True)
class Method:
    """How architectures are ranked: one metric, or a weighted rank ensemble.

    Attributes:
        name: as written (`hidden_cov`, `ensemble:params+head_confidence`).
        members: the metric names it reads, in order.
        weights: one positive weight per member (1.0 for a single metric).
    """

    name: str
    members: tuple[str, ...]
    weights: tuple[float, ...]

    @property
    def is_ensemble(self) -> bool:
        return self.name.startswith(ENSEMBLE_PREFIX)


def parse_method(name: str) -> Method:
    """Parse a metric name or `ensemble:a+b*2+…` (member names are not checked here).

    Raises:
        TfnasError: an empty ensemble, a repeated member, or a malformed weight.
    """
    if not name.startswith(ENSEMBLE_PREFIX):
        if not name or "+" in name:
            raise TfnasError(f"method {name!r}: a metric name, or ensemble:a+b to combine metrics")
        return Method(name, (name,), (1.0,))
    members, weights = [], []
    for part in name[len(ENSEMBLE_PREFIX):].split("+"):
        match = _MEMBER.match(part.strip())
        if not match:
            raise TfnasError(f"ensemble {name!r}: member {part!r} is not `metric` or `metric*weight`")
        weight = float(match["weight"]) if match["weight"] else 1.0
        if weight <= 0:
            raise TfnasError(f"ensemble {name!r}: weight of {match['name']!r} is {weight}; weights must be > 0")
        if match["name"] in members:
            raise TfnasError(f"ensemble {name!r}: member {match['name']!r} is repeated")
        members.append(match["name"])
        weights.append(weight)
    if len(members) < 2:
        raise TfnasError(f"ensemble {name!r} needs at least two members, e.g. ensemble:params+hidden_cov")
    return Method(name, tuple(members), tuple(weights))


def ensemble_name(members: Sequence[str], weights: Sequence[float] | None = None) -> str:
    """The method name of a rank ensemble (weights of 1 are left out)."""
    weights = weights or [1.0] * len(members)
    parts = [m if w == 1.0 else f"{m}*{w:g}" for m, w in zip(members, weights)]
    return ENSEMBLE_PREFIX + "+".join(parts)


def merit(values: np.ndarray, direction: Direction | str) -> np.ndarray:
    """Values oriented so that higher predicts better (float64 copy; NaN stays NaN)."""
    values = np.asarray(values, dtype=np.float64)
    return values.copy() if Direction(direction) is Direction.HIGHER else -values


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks 1…n of the finite values (higher value, higher rank); NaN stays NaN."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, math.nan)
    finite = np.isfinite(values)
    if finite.any():
        out[finite] = stats.rankdata(values[finite], method="average")
    return out


def method_merit(
    method: Method,
    columns: Mapping[str, np.ndarray],
    directions: Mapping[str, Direction | str],
) -> np.ndarray:
    """Merit of each architecture under `method` (higher = predicted better).

    A single metric's merit is its oriented value; an ensemble's is the weighted mean of
    its members' ranks, NaN where any member is NaN. The members are ranked over the
    architectures every member scored (as `correlate` aligns them): ranking each member over
    its own scored architectures would give a member with fewer failures a wider range of
    ranks, hence more weight, than its declared weight.

    Args:
        columns: metric -> values, aligned over the same architectures.
        directions: metric -> declared direction.

    Raises:
        TfnasError: a member has no column or no direction.
    """
    for member in method.members:
        if member not in columns:
            raise TfnasError(f"method {method.name!r}: no scores for metric {member!r}; have: {', '.join(sorted(columns)) or '(none)'}")
        if member not in directions:
            raise TfnasError(f"method {method.name!r}: metric {member!r} has no declared direction")
    if not method.is_ensemble:
        return merit(columns[method.members[0]], directions[method.members[0]])
    oriented = np.stack([merit(columns[m], directions[m]) for m in method.members])
    shared = np.isfinite(oriented).all(axis=0)
    oriented[:, ~shared] = math.nan
    stacked = np.stack([ranks(v) for v in oriented])
    weights = np.asarray(method.weights)[:, None]
    return (stacked * weights).sum(axis=0) / weights.sum()


def top_k(merits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest finite merits, best first (ties: lower index first)."""
    merits = np.asarray(merits, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(merits))
    order = finite[np.argsort(-merits[finite], kind="stable")]
    return order[:k]


def baseline_candidates(names: Sequence[str]) -> list[str]:
    """The trivial baselines among the single metrics `names`: those whose registry entry
    is flagged `baseline=True` (read from the architecture alone, direction declared a
    priori); where none is flagged, `params` when present (the one baseline every space has).
    """
    from tfnas_ray.metrics import load_metrics  # the registry imports torch: only when asked

    registry = load_metrics()
    singles = [n for n in names if not n.startswith(ENSEMBLE_PREFIX)]
    flagged = [n for n in singles if n in registry and getattr(registry.get(n), "baseline", False)]
    if flagged:
        return flagged
    return ["params"] if "params" in singles else []


def rank_within_pools(method: Method, columns: Mapping[str, np.ndarray], directions: Mapping[str, Direction | str], pools: np.ndarray) -> np.ndarray:
    """(R, P) merit of `method` inside each pool of `pools` (R, P indices), as a search that
    drew that pool ranks it: a single metric by its oriented value, an ensemble by the
    weighted mean of its members' ranks among the pool's architectures every member scored
    (`method_merit` applied to each pool). NaN where a member failed.
    """
    merit_all = method_merit(method, columns, directions)  # checks members; NaN pattern
    if not method.is_ensemble:
        return merit_all[pools]
    failed = ~np.isfinite(merit_all[pools])  # (R, P): some member failed
    total = np.zeros(pools.shape)
    for member, weight in zip(method.members, method.weights):
        values = merit(columns[member], directions[member])[pools]
        # Failed entries ranked below all others take ranks 1..f of their pool, so the
        # rest hold their ranks among themselves plus f; f is subtracted below.
        values = np.where(failed, -np.inf, values)
        total += weight * stats.rankdata(values, method="average", axis=1)
    out = total / sum(method.weights) - failed.sum(axis=1, keepdims=True)
    out[failed] = math.nan
    return out
