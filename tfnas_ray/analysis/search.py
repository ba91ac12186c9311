"""Training-free search, the pure parts: constraints, ranking candidates, the Pareto front.

A search draws candidates, scores them (distributed/scoring.py), and keeps the best by a
*method* (a metric or a rank ensemble, `analysis.ranking`). Everything here works on
plain arrays and tables, so it is tested without Ray or torch; the orchestration
(drawing, scoring, training, writing) is `tfnas_ray.search_pipeline`.

Conventions: a merit is oriented higher = predicted better (`ranking.merit`); a NaN merit
(a failed metric) is never kept and never on the Pareto front. The Pareto front is over
two objectives, merit (higher is better) and parameter count (lower is better): an
architecture is on it when no other has a merit at least as high and at most as many
parameters, with one of the two strictly better. Ties on both are all kept.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from tfnas_ray.analysis.ranking import Method, method_merit, top_k
from tfnas_ray.errors import TfnasError

CHOSEN = pa.schema(
    [
        pa.field("method", pa.string(), nullable=False),  # a metric or ensemble:a+b
        pa.field("rank", pa.int64(), nullable=False),  # 1 = the best by the method
        pa.field("arch_id", pa.string(), nullable=False),
        pa.field("space", pa.string(), nullable=False),
        pa.field("score", pa.float64()),  # the metric's value; an ensemble's mean rank
        pa.field("merit", pa.float64()),  # oriented higher = predicted better
        pa.field("params", pa.int64()),
        pa.field("on_pareto_front", pa.bool_()),
        pa.field("spec", pa.string()),  # canonical JSON (nb-nlp: the recipe)
    ]
)

PARETO = pa.schema(
    [
        pa.field("method", pa.string(), nullable=False),
        pa.field("arch_id", pa.string(), nullable=False),
        pa.field("merit", pa.float64()),
        pa.field("score", pa.float64()),
        pa.field("params", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Constraints:
    """Limits on the candidates a search keeps (None: no limit); bounds are inclusive.

    Attributes:
        min_params, max_params: parameter count (any space).
        min_layers, max_layers: encoder layers (nb-bert).
        min_hidden, max_hidden: hidden size (nb-bert).
    """

    min_params: int | None = None
    max_params: int | None = None
    min_layers: int | None = None
    max_layers: int | None = None
    min_hidden: int | None = None
    max_hidden: int | None = None

    def __post_init__(self) -> None:
        for low, high in (("min_params", "max_params"), ("min_layers", "max_layers"), ("min_hidden", "max_hidden")):
            lo, hi = getattr(self, low), getattr(self, high)
            for name, value in ((low, lo), (high, hi)):
                if value is not None and value < 1:
                    raise TfnasError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
            if lo is not None and hi is not None and lo > hi:
                raise TfnasError(f"--{low.replace('_', '-')} {lo} is above --{high.replace('_', '-')} {hi}")

    @property
    def shape_limits(self) -> bool:
        """Whether layer or hidden-size limits are set (nb-bert only)."""
        return any(v is not None for v in (self.min_layers, self.max_layers, self.min_hidden, self.max_hidden))

    def check_space(self, space: str) -> None:
        """Raises TfnasError where a limit does not apply to `space`."""
        if self.shape_limits and space != "nb-bert":
            raise TfnasError(f"layer and hidden-size limits apply to nb-bert only, not to space {space!r}")

    def describe(self) -> str:
        parts = [
            f"{name.replace('_', ' ')} {value:,}"
            for name, value in vars(self).items()
            if value is not None
        ]
        return ", ".join(parts) or "none"

    def admits(self, *, params: int, layers: int | None = None, hidden: int | None = None) -> bool:
        """Whether an architecture with these sizes satisfies every limit."""

        def inside(value, low, high) -> bool:
            if low is None and high is None:
                return True
            return value is not None and (low is None or value >= low) and (high is None or value <= high)

        return (
            inside(params, self.min_params, self.max_params)
            and inside(layers, self.min_layers, self.max_layers)
            and inside(hidden, self.min_hidden, self.max_hidden)
        )


def bert_shape(spec: str) -> tuple[int, int]:
    """(encoder layers, hidden size) of a canonical nb-bert spec."""
    parsed = json.loads(spec)
    return len(parsed["encoder_layers"]), int(parsed["hidden_size"])


def pareto_front(merit: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Indices on the Pareto front of (merit: higher better, params: lower better), in
    increasing parameter count (NaN merits excluded).

    Sweep in increasing params (ties: highest merit first): an architecture is on the
    front when its merit beats every merit seen at strictly fewer parameters, and at
    equal parameters it ties the best merit of that count.

    Example:
        >>> pareto_front(np.array([1.0, 3.0, 2.0, 3.0]), np.array([10, 30, 20, 40])).tolist()
        [0, 2, 1]
    """
    merit = np.asarray(merit, dtype=np.float64)
    params = np.asarray(params, dtype=np.float64)
    if merit.shape != params.shape:
        raise TfnasError(f"pareto_front: {merit.size} merits but {params.size} parameter counts")
    finite = np.flatnonzero(np.isfinite(merit) & np.isfinite(params))
    order = finite[np.lexsort((-merit[finite], params[finite]))]
    front: list[int] = []
    best_below = -math.inf  # best merit at strictly fewer parameters
    i = 0
    while i < order.size:
        j = i
        while j < order.size and params[order[j]] == params[order[i]]:
            j += 1
        group = order[i:j]
        top = merit[group[0]]  # the group is sorted by merit, highest first
        if top > best_below:
            front += [int(g) for g in group if merit[g] == top]
            best_below = top
        i = j
    return np.asarray(front, dtype=np.int64)


@dataclass(frozen=True)
class Ranked:
    """One method's view of the candidates.

    Attributes:
        method: the method's name.
        merit: per candidate, higher = predicted better (NaN: not ranked).
        score: per candidate, the metric's own value (an ensemble: its merit).
        kept: indices of the kept candidates, best first.
        front: indices on the Pareto front (merit vs params), fewest parameters first.
    """

    method: str
    merit: np.ndarray
    score: np.ndarray
    kept: np.ndarray
    front: np.ndarray


def rank_candidates(
    method: Method,
    columns: Mapping[str, np.ndarray],
    directions: Mapping[str, str],
    params: np.ndarray,
    keep: int,
) -> Ranked:
    """Rank candidates by `method`, keep the best `keep`, and find the Pareto front.

    Args:
        columns: metric -> values over the candidates (NaN: failed).
        directions: metric -> declared direction.
        params: parameter count per candidate.
        keep: how many to keep (fewer where fewer have a finite merit).
    """
    if keep < 1:
        raise TfnasError(f"--keep must be >= 1, got {keep}")
    merit = method_merit(method, columns, directions)
    score = merit if method.is_ensemble else np.asarray(columns[method.members[0]], dtype=np.float64)
    return Ranked(method.name, merit, score, top_k(merit, keep), pareto_front(merit, params))


def _float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def chosen_rows(ranked: Ranked, candidates: pa.Table, params: np.ndarray) -> list[dict]:
    """Rows of chosen.parquet for one method: rank, arch, score, merit, params, spec."""
    arch_ids = candidates.column("arch_id").to_pylist()
    spaces = candidates.column("space").to_pylist()
    specs = candidates.column("spec").to_pylist()
    front = set(ranked.front.tolist())
    return [
        {
            "method": ranked.method,
            "rank": rank,
            "arch_id": arch_ids[i],
            "space": spaces[i],
            "score": _float(ranked.score[i]),
            "merit": _float(ranked.merit[i]),
            "params": int(params[i]),
            "on_pareto_front": int(i) in front,
            "spec": specs[i],
        }
        for rank, i in enumerate(ranked.kept.tolist(), start=1)
    ]


def pareto_rows(ranked: Ranked, candidates: pa.Table, params: np.ndarray) -> list[dict]:
    """Rows of pareto.parquet for one method, fewest parameters first."""
    arch_ids = candidates.column("arch_id").to_pylist()
    return [
        {
            "method": ranked.method,
            "arch_id": arch_ids[i],
            "merit": _float(ranked.merit[i]),
            "score": _float(ranked.score[i]),
            "params": int(params[i]),
        }
        for i in ranked.front.tolist()
    ]


def metric_columns(scores: pa.Table, arch_ids: Sequence[str], metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """metric -> values aligned with `arch_ids` (mean over seeds; NaN where missing or failed)."""
    sums: dict[tuple[str, str], list[float]] = {}
    for arch_id, metric, value in zip(
        scores.column("arch_id").to_pylist(), scores.column("metric").to_pylist(), scores.column("value").to_pylist()
    ):
        if value is not None and math.isfinite(value):
            sums.setdefault((metric, arch_id), []).append(value)
    return {
        metric: np.array([np.mean(sums[(metric, a)]) if (metric, a) in sums else math.nan for a in arch_ids])
        for metric in metrics
    }
