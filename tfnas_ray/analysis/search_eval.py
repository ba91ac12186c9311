"""How good is a metric as a search method? A Monte-Carlo over pools of architectures.

A search with a budget draws a pool of P architectures, keeps the K its metric ranks
best, trains those, and ends with the best of them. Over R pools drawn from a benchmark
(each a uniformly random sample of P distinct architectures, in random order):

- regret: the pool's best trained quality minus the best of the K picks, in the
  target's units (nats of loss, GLUE points), >= 0; the sign comes from the target's
  direction (`aligned.target_direction`), the metric's from its declared direction.
  Reported as the mean over pools, with the 2.5% and 97.5% quantiles of the per-pool
  regret: the range one search of that budget sees (not an interval of the mean).
- percentile: where the best pick stands in its pool, 100·(worse + ½·tied others)/(P−1):
  100 is the pool's best, 0 its worst; mean over pools.
- top10_overlap: the share of the metric's top 10% of the pool (round(0.1·P), at least
  one) that is also in the truth's top 10%; mean over pools. Random expects about 0.1.

Methods: every metric or rank ensemble (`ranking.method_merit`), `random` (the first K
of the pool, whose order is random) and `oracle` (the top K by truth: regret 0).
Ties in a metric are broken by pool order, i.e. at random; an architecture whose metric
failed (NaN) is picked only after every one with a value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from tfnas_ray import tables
from tfnas_ray.analysis.aligned import Aligned
from tfnas_ray.analysis.ranking import method_merit, parse_method
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import Direction

RANDOM = "random"
ORACLE = "oracle"
DEFAULT_POOL_SIZE = 100


@dataclass(frozen=True)
class SearchEvalConfig:
    """Attributes:
        pools: R, pools per pool size.
        pool_sizes: P values; empty: 100 (where the benchmark has more) and the whole benchmark.
        keeps: K values, architectures kept per pool.
        seed: seed of the pool generator (the same seed gives the same table).
        top_fraction: the share of a pool that `top10_overlap` compares.
    """

    pools: int = 1000
    pool_sizes: tuple[int, ...] = ()
    keeps: tuple[int, ...] = (1, 10)
    seed: int = 0
    top_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.pools < 1:
            raise TfnasError(f"--pools must be >= 1, got {self.pools}")
        for size in self.pool_sizes:
            if size < 2:
                raise TfnasError(f"--pool-size must be >= 2, got {size}")
        if not self.keeps:
            raise TfnasError("--keep: give at least one K")
        for keep in self.keeps:
            if keep < 1:
                raise TfnasError(f"--keep must be >= 1, got {keep}")
        if not 0 < self.top_fraction <= 1:
            raise TfnasError(f"top_fraction must be in (0, 1], got {self.top_fraction}")

    def sizes_for(self, n: int) -> list[int]:
        """The pool sizes used on a benchmark of `n` architectures."""
        if not self.pool_sizes:
            return [DEFAULT_POOL_SIZE, n] if n > DEFAULT_POOL_SIZE else [n]
        for size in self.pool_sizes:
            if size > n:
                raise TfnasError(f"--pool-size {size} exceeds the {n} architectures with a truth value; allowed: 2..{n}")
        return list(dict.fromkeys(self.pool_sizes))


def draw_pools(n: int, size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, size) indices: each row a uniform random sample of `size` of range(n), in
    random order (the prefix of a random permutation)."""
    if size == n:
        return rng.permuted(np.tile(np.arange(n), (count, 1)), axis=1)
    return np.argsort(rng.random((count, n)), axis=1)[:, :size]


def pool_outcomes(merit: np.ndarray, quality: np.ndarray, pools: np.ndarray, keeps: Sequence[int], top_fraction: float = 0.1) -> dict[int, dict[str, np.ndarray]]:
    """Per pool, for each K: regret, percentile of the best pick, and top-fraction overlap.

    Args:
        merit: (n,) higher = predicted better; NaN = picked last.
        quality: (n,) trained quality, higher = better.
        pools: (R, P) indices from `draw_pools`.

    Returns:
        {K: {"regret": (R,), "percentile": (R,), "overlap": (R,)}}.
    """
    count, size = pools.shape
    q = quality[pools]  # (R, P)
    m = merit[pools]
    m = np.where(np.isnan(m), -np.inf, m)
    # Stable sort: ties keep pool order, which is random, so ties are broken at random.
    order = np.argsort(-m, axis=1, kind="stable")
    best = q.max(axis=1)
    top = max(1, round(top_fraction * size))
    by_metric = np.zeros((count, size), dtype=bool)
    np.put_along_axis(by_metric, order[:, :top], True, axis=1)
    by_truth = np.zeros((count, size), dtype=bool)
    np.put_along_axis(by_truth, np.argsort(-q, axis=1, kind="stable")[:, :top], True, axis=1)
    overlap = (by_metric & by_truth).sum(axis=1) / top
    out = {}
    for keep in keeps:
        if keep > size:
            raise TfnasError(f"--keep {keep} exceeds the pool size {size}")
        pick = np.take_along_axis(q, order[:, :keep], axis=1).max(axis=1)  # (R,)
        worse = (q < pick[:, None]).sum(axis=1)
        tied_others = (q == pick[:, None]).sum(axis=1) - 1
        out[keep] = {
            "regret": best - pick,
            "percentile": 100.0 * (worse + 0.5 * tied_others) / (size - 1),
            "overlap": overlap,
        }
    return out


def evaluate_search(
    data: Aligned,
    methods: Sequence[str],
    directions: Mapping[str, Direction | str],
    config: SearchEvalConfig = SearchEvalConfig(),
) -> pa.Table:
    """The search_eval table: one row per (method, P, K); `random` and `oracle` included.

    Every method sees the same pools (one seeded draw per P), so their differences are
    not Monte-Carlo noise between methods.

    Raises:
        TfnasError: an unknown method member, a pool size or K larger than allowed.
    """
    n = len(data.arch_ids)
    merits = {name: method_merit(parse_method(name), data.columns, directions) for name in methods}
    for name, values in merits.items():
        if not np.isfinite(values).any():
            raise TfnasError(f"method {name!r} has no finite value on the {n} architectures of target {data.target!r}")
    merits = {ORACLE: data.quality, **merits, RANDOM: np.zeros(n)}
    rng = np.random.default_rng(config.seed)
    rows = []
    for size in config.sizes_for(n):
        pools = draw_pools(n, size, config.pools, rng)
        for name, merit in merits.items():
            for keep, outcome in pool_outcomes(merit, data.quality, pools, config.keeps, config.top_fraction).items():
                lo, hi = np.quantile(outcome["regret"], [0.025, 0.975])
                rows.append(
                    {
                        "method": name,
                        "pool_size": size,
                        "keep": keep,
                        "regret": float(outcome["regret"].mean()),
                        "regret_lo": float(lo),
                        "regret_hi": float(hi),
                        "percentile": float(outcome["percentile"].mean()),
                        "top10_overlap": float(outcome["overlap"].mean()),
                        "target": data.target,
                    }
                )
    table = tables.from_rows("search_eval", rows)
    return table.replace_schema_metadata(
        {
            b"tfnas.conventions": json.dumps(
                {
                    "pools": f"{config.pools} pools per pool size, uniform samples without replacement, numpy default_rng({config.seed})",
                    "architectures": n,
                    "target_direction": data.direction.value,
                    "regret": "pool's best truth minus the best truth among the K picks, target units, >= 0; mean over pools",
                    "regret_interval": "2.5% and 97.5% quantiles of the per-pool regret (spread of outcomes, not a CI of the mean)",
                    "percentile": "100*(worse + 0.5*tied others)/(P-1) of the best pick within its pool; mean over pools",
                    "top10_overlap": f"|top round({config.top_fraction}*P) by metric ∩ by truth| / that size; mean over pools",
                    "ties": "broken by pool order (random); NaN metric values picked last",
                    "random": "the first K of each randomly ordered pool",
                    "oracle": "the top K by truth",
                    "truth": "mean over the runs of an architecture",
                }
            ).encode()
        }
    )


def format_search_eval(table: pa.Table) -> str:
    """A plain-text table per (P, K), methods by regret, best first."""
    rows = table.to_pylist()
    if not rows:
        return "(no rows)"
    target = rows[0]["target"]
    lines = []
    meta = json.loads((table.schema.metadata or {}).get(b"tfnas.conventions", b"{}"))
    if meta:
        lines += [f"{meta['architectures']} architectures; {meta['pools'].split(',')[0]}; regret in {target} units, {meta['target_direction']}", ""]
    groups: dict[tuple[int, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["pool_size"], row["keep"]), []).append(row)
    for (size, keep), group in groups.items():
        group.sort(key=lambda r: (math.inf if r["regret"] is None or r["regret"] != r["regret"] else r["regret"], r["method"]))
        header = f"{'method':44s} {'regret':>9s} [{'95% of pools':^19s}]  {'percentile':>10s}  {'top-10% overlap':>15s}"
        lines += [f"target {target}, pool size P = {size}, keep K = {keep}:", header, "-" * len(header)]
        for r in group:
            lines.append(
                f"{r['method']:44s} {r['regret']:9.4f} [{r['regret_lo']:8.4f}, {r['regret_hi']:8.4f}]  {r['percentile']:10.1f}  {r['top10_overlap']:15.3f}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()
