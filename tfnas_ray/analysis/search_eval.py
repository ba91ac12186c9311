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
from tfnas_ray.analysis.ranking import Method, baseline_candidates, method_merit, parse_method, rank_within_pools
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
        seed: seed of the pool generator and of the bootstrap (the same seed gives the same table).
        top_fraction: the share of a pool that `top10_overlap` compares.
        replicates: bootstrap replicates of the benchmark behind the interval of `regret_diff`.
        replicate_pools: pools per replicate (at most `pools`); their Monte-Carlo noise
            widens the interval a little, never narrows it.
    """

    pools: int = 1000
    pool_sizes: tuple[int, ...] = ()
    keeps: tuple[int, ...] = (1, 10)
    seed: int = 0
    top_fraction: float = 0.1
    # 200 replicates put the 2.5% quantile on the 5th value; enough for a verdict, and
    # the default evaluation (254 archs, ~20 methods, 2 pool sizes) stays within seconds.
    replicates: int = 200
    replicate_pools: int = 100

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
        if self.replicates < 1:
            raise TfnasError(f"--replicates must be >= 1, got {self.replicates}")
        if self.replicate_pools < 1:
            raise TfnasError(f"replicate_pools must be >= 1, got {self.replicate_pools}")
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
        merit: (n,) per architecture, or (R, P) per pool entry (`ranking.rank_within_pools`:
            an ensemble ranked inside each pool); higher = predicted better; NaN = picked last.
        quality: (n,) trained quality, higher = better.
        pools: (R, P) indices from `draw_pools`.

    Returns:
        {K: {"regret": (R,), "percentile": (R,), "overlap": (R,)}}.
    """
    count, size = pools.shape
    q = quality[pools]  # (R, P)
    merit = np.asarray(merit, dtype=np.float64)
    m = merit if merit.ndim == 2 else merit[pools]
    if m.shape != pools.shape:
        raise ValueError(f"merit of shape {merit.shape} does not fit pools of shape {pools.shape}")
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


def kept_best(merit: np.ndarray, quality: np.ndarray, keeps: Sequence[int]) -> dict[int, np.ndarray]:
    """Per pool, for each K: the best quality among the K entries of highest merit, with
    exactly `pool_outcomes`'s order (NaN last, ties by pool order) at O(R·P) per K.

    Args:
        merit: (R, P) per pool entry, higher = predicted better; NaN = picked last.
        quality: (R, P) per pool entry.

    Returns:
        {K: (R,)}.
    """
    count, size = merit.shape
    # One integer key per entry, unique within its row: the merit's dense rank over all
    # entries, then the earlier pool position; the K largest keys are then exactly the
    # first K of the stable sort, and a partition finds them without sorting.
    dense = np.unique(np.where(np.isnan(merit), -np.inf, merit), return_inverse=True)[1].reshape(count, size)
    key = dense.astype(np.int64) * size + (size - 1 - np.arange(size))
    out = {}
    for keep in keeps:
        kth = np.partition(key, size - keep, axis=1)[:, size - keep]  # the K-th largest key
        out[keep] = np.where(key >= kth[:, None], quality, -np.inf).max(axis=1)
    return out


def bootstrap_mean_regrets(
    data: Aligned,
    parsed: Mapping[str, Method],
    directions: Mapping[str, Direction | str],
    size: int,
    keeps: Sequence[int],
    *,
    replicates: int,
    pools: int,
    rng: np.random.Generator,
) -> dict[str, dict[int, np.ndarray]]:
    """Mean regret per bootstrap replicate of the benchmark, for every method, `random`
    and `oracle`: {method: {K: (replicates,)}}.

    A replicate resamples the n architectures with replacement (one resample shared by
    every method: the comparison is paired) and draws `pools` pools of `size` from it, as
    `draw_pools` draws from the benchmark. Copies of an architecture are distinct members
    of a pool, equal in truth and metric: a copy of the pool's best among the picks gives
    regret 0, and copies tie in the ranking like any equal values (pool order).
    """
    n = len(data.arch_ids)
    per_chunk = max(1, 2_000_000 // (pools * size))  # bounds memory: ~2M pool entries at a time
    means: dict[str, dict[int, list[np.ndarray]]] = {name: {k: [] for k in keeps} for name in (ORACLE, *parsed, RANDOM)}
    for start in range(0, replicates, per_chunk):
        chunk = min(per_chunk, replicates - start)
        resample = rng.integers(0, n, size=(chunk, n))  # (C, n) architecture per benchmark slot
        slots = draw_pools(n, size, chunk * pools, rng).reshape(chunk, pools, size)
        drawn = resample[np.arange(chunk)[:, None, None], slots].reshape(chunk * pools, size)  # (C·R, P)
        q = data.quality[drawn]
        best = q.max(axis=1)
        merits = {name: rank_within_pools(method, data.columns, directions, drawn) for name, method in parsed.items()}
        merits[RANDOM] = np.zeros(drawn.shape)  # pool order is random: the first K
        for name in means:
            picks = {k: best for k in keeps} if name == ORACLE else kept_best(merits[name], q, keeps)
            for keep in keeps:
                means[name][keep].append((best - picks[keep]).reshape(chunk, pools).mean(axis=1))
    return {name: {k: np.concatenate(v) for k, v in by_keep.items()} for name, by_keep in means.items()}


def _references(methods: Sequence[str], reference: str | None, baselines: Sequence[str] | None) -> list[str]:
    """The candidates for the reference method: the one given, else the baselines among
    `methods` (`ranking.baseline_candidates` when `baselines` is None)."""
    if reference is not None:
        if reference not in methods:
            raise TfnasError(f"--reference {reference!r} is not one of the evaluated methods: {', '.join(methods) or '(none)'}")
        return [reference]
    found = baseline_candidates(methods) if baselines is None else list(baselines)
    return [b for b in found if b in methods]


def evaluate_search(
    data: Aligned,
    methods: Sequence[str],
    directions: Mapping[str, Direction | str],
    config: SearchEvalConfig = SearchEvalConfig(),
    *,
    reference: str | None = None,
    baselines: Sequence[str] | None = None,
) -> pa.Table:
    """The search_eval table: one row per (method, P, K); `random` and `oracle` included.

    Every method sees the same pools (one seeded draw per P), so their differences are
    not Monte-Carlo noise between methods; each is compared with the reference method on
    those pools (columns `reference`, `regret_diff`: the mean per-pool regret difference).
    Its 95% interval (`regret_diff_lo`, `regret_diff_hi`) is a paired bootstrap over
    architectures: the benchmark is one sample of the space, so each replicate resamples
    its architectures with replacement (the same resample for every method), draws
    `config.replicate_pools` pools from it and takes the difference of mean regrets; the
    interval is the 2.5% and 97.5% quantiles over `config.replicates` replicates
    (`bootstrap_mean_regrets`). The pools alone cannot give it: at P = n every pool is the
    same set. `scored` counts the architectures a method could rank (a value of every
    member); the rest are picked last.

    Args:
        reference: the method every other is compared with; default the best (lowest mean
            regret at that P and K) of `baselines`.
        baselines: the baseline methods (default `ranking.baseline_candidates(methods)`:
            metrics flagged baseline in the registry, else `params`).

    Raises:
        TfnasError: an unknown method member or reference, a pool size or K larger than allowed.
    """
    n = len(data.arch_ids)
    parsed = {name: parse_method(name) for name in methods}
    merits = {name: method_merit(method, data.columns, directions) for name, method in parsed.items()}
    for name, values in merits.items():
        if not np.isfinite(values).any():
            raise TfnasError(f"method {name!r} has no finite value on the {n} architectures of target {data.target!r}")
    references = _references(list(methods), reference, baselines)
    scored = {ORACLE: n, **{name: int(np.isfinite(v).sum()) for name, v in merits.items()}, RANDOM: n}
    sizes = config.sizes_for(n)
    for keep in config.keeps:  # before any pool is drawn
        if keep > min(sizes):
            raise TfnasError(f"--keep {keep} exceeds the pool size {min(sizes)}")
    rng = np.random.default_rng(config.seed)
    # A stream of its own, so the pools stay those of `default_rng(seed)` alone.
    bootstrap_rng = np.random.default_rng([config.seed, 1])
    rows = []
    for size in sizes:
        pools = draw_pools(n, size, config.pools, rng)
        outcomes = {ORACLE: pool_outcomes(data.quality, data.quality, pools, config.keeps, config.top_fraction)}
        for name, method in parsed.items():
            # Ranked inside each pool, as `search` ranks its P candidates.
            in_pools = rank_within_pools(method, data.columns, directions, pools)
            outcomes[name] = pool_outcomes(in_pools, data.quality, pools, config.keeps, config.top_fraction)
        outcomes[RANDOM] = pool_outcomes(np.zeros(n), data.quality, pools, config.keeps, config.top_fraction)
        replicated = (
            bootstrap_mean_regrets(
                data, parsed, directions, size, config.keeps,
                replicates=config.replicates, pools=min(config.replicate_pools, config.pools), rng=bootstrap_rng,
            )
            if references else None
        )
        for keep in config.keeps:
            ref = min(references, key=lambda r: (float(outcomes[r][keep]["regret"].mean()), references.index(r))) if references else None
            for name, by_keep in outcomes.items():
                outcome = by_keep[keep]
                lo, hi = np.quantile(outcome["regret"], [0.025, 0.975])
                diff = (None, None, None)
                if ref:
                    spread = np.quantile(replicated[name][keep] - replicated[ref][keep], [0.025, 0.975])
                    diff = (float((outcome["regret"] - outcomes[ref][keep]["regret"]).mean()), float(spread[0]), float(spread[1]))
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
                        "scored": scored[name],
                        "reference": ref,
                        "regret_diff": diff[0],
                        "regret_diff_lo": diff[1],
                        "regret_diff_hi": diff[2],
                    }
                )
    table = tables.from_rows("search_eval", rows)
    for name, kind in EXTRA_COLUMNS.items():  # beyond the fixed schema (conform keeps them)
        table = table.append_column(pa.field(name, kind), pa.array([r[name] for r in rows], kind))
    return table.replace_schema_metadata(
        {
            b"tfnas.conventions": json.dumps(
                {
                    "pools": f"{config.pools} pools per pool size, uniform samples without replacement, numpy default_rng({config.seed})",
                    "architectures": n,
                    "replicates": config.replicates,
                    "target_direction": data.direction.value,
                    "regret": "pool's best truth minus the best truth among the K picks, target units, >= 0; mean over pools",
                    "regret_interval": "2.5% and 97.5% quantiles of the per-pool regret (spread of outcomes, not a CI of the mean)",
                    "percentile": "100*(worse + 0.5*tied others)/(P-1) of the best pick within its pool; mean over pools",
                    "top10_overlap": f"|top round({config.top_fraction}*P) by metric ∩ by truth| / that size; mean over pools",
                    "ties": "broken by pool order (random); NaN metric values picked last",
                    "ranking": "inside each pool: an ensemble's members ranked among the pool's architectures every member scored",
                    "scored": "architectures the method could rank (a finite value of every member)",
                    "reference": (
                        f"the given reference {reference!r}" if reference is not None
                        else "the baseline (" + (", ".join(references) or "none present") + ") of lowest mean regret at that P and K"
                    ),
                    "regret_diff": "mean over the same pools of (method's regret − reference's regret); negative: better than the reference",
                    "regret_diff_interval": (
                        f"2.5% and 97.5% quantiles of the same difference over {config.replicates} paired bootstrap replicates over architectures "
                        f"(the benchmark's architectures resampled with replacement, the same resample for every method; "
                        f"{min(config.replicate_pools, config.pools)} pools drawn from each, copies distinct pool members; "
                        f"numpy default_rng([{config.seed}, 1])); the reference is fixed, not re-chosen per replicate"
                    ),
                    "random": "the first K of each randomly ordered pool",
                    "oracle": "the top K by truth",
                    "truth": "mean over the runs of an architecture",
                }
            ).encode()
        }
    )


EXTRA_COLUMNS = {
    "scored": pa.int64(),
    "reference": pa.string(),
    "regret_diff": pa.float64(),
    "regret_diff_lo": pa.float64(),
    "regret_diff_hi": pa.float64(),
}


def beats_reference(row: Mapping) -> bool | None:
    """True where the bootstrap interval of the regret difference lies below 0 (the method's
    picks are better than the reference's), False where it does not, None without one."""
    hi = row.get("regret_diff_hi")
    if row.get("reference") is None or hi is None or not math.isfinite(hi):
        return None
    return hi < 0


def format_search_eval(table: pa.Table) -> str:
    """A plain-text table per (P, K), methods by regret, best first; each method's paired
    regret difference to the reference, and in words which methods do not beat it."""
    rows = table.to_pylist()
    if not rows:
        return "(no rows)"
    target = rows[0]["target"]
    lines = []
    meta = json.loads((table.schema.metadata or {}).get(b"tfnas.conventions", b"{}"))
    if meta:
        replicates = f"; Δ regret intervals from {meta['replicates']} bootstrap replicates" if "replicates" in meta else ""
        lines += [f"{meta['architectures']} architectures; {meta['pools'].split(',')[0]}{replicates}; regret in {target} units, {meta['target_direction']}", ""]
    groups: dict[tuple[int, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["pool_size"], row["keep"]), []).append(row)
    for (size, keep), group in groups.items():
        group.sort(key=lambda r: (math.inf if r["regret"] is None or r["regret"] != r["regret"] else r["regret"], r["method"]))
        reference = group[0].get("reference")
        vs = f"Δ regret vs {reference} [95% paired bootstrap over architectures]" if reference else "Δ regret vs reference"
        header = f"{'method':44s} {'scored':>6s} {'regret':>9s} [{'2.5–97.5% of pools':^19s}]  {'percentile':>10s}  {'top-10% overlap':>15s}  {vs}"
        lines += [f"target {target}, pool size P = {size}, keep K = {keep}:", header, "-" * len(header)]
        for r in group:
            diff = ""
            if reference and r.get("regret_diff") is not None and r["method"] != reference:
                diff = f"{r['regret_diff']:+9.4f} [{r['regret_diff_lo']:+8.4f}, {r['regret_diff_hi']:+8.4f}]"
            scored = "" if r.get("scored") is None else str(r["scored"])
            lines.append(
                f"{r['method']:44s} {scored:>6s} {r['regret']:9.4f} [{r['regret_lo']:8.4f}, {r['regret_hi']:8.4f}]  {r['percentile']:10.1f}  {r['top10_overlap']:15.3f}  {diff}".rstrip()
            )
        if reference:
            others = [r for r in group if r["method"] not in (reference, ORACLE, RANDOM)]
            behind = [r["method"] for r in others if beats_reference(r) is False]
            if behind:
                lines.append(f"do not beat the best baseline {reference} (paired interval not below 0): {', '.join(behind)}")
            elif others:
                lines.append(f"every method beats the best baseline {reference} (paired interval below 0)")
        lines.append("")
    return "\n".join(lines).rstrip()
