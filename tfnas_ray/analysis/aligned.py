"""Metric values and trained quality aligned over the same architectures.

The common input of search evaluation and ensemble selection: one truth value per
architecture (the mean of its runs, where a benchmark trained one architecture twice),
and per metric the mean over its seeds (and minibatches), NaN where every value failed.
Only architectures with a finite truth value that appear in the scores are kept.

A target's direction (is lower or higher better?) is a property of the target, not of
the metric: losses and perplexities are lower-is-better, GLUE scores higher-is-better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfnas_ray import tables
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import Direction

# NAS-Bench-BERT's GLUE average and its tasks (spaces/nasbench_bert/benchmarks.TARGETS);
# written here too so that analysis does not build a space to learn a direction.
_HIGHER_TARGETS = frozenset({"glue", "cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst", "sts"})


def target_direction(target: str) -> Direction:
    """Which way a trained-quality target is better.

    `*loss*` and `*perplexity*` targets (test_loss, val_loss@3ep, …) are lower-is-better;
    the GLUE average and its tasks higher-is-better.

    Raises:
        TfnasError: a target of unknown direction (e.g. num_params, which is not a quality).
    """
    base = target.split("@")[0].lower()
    if "loss" in base or "perplexity" in base:
        return Direction.LOWER
    if base in _HIGHER_TARGETS:
        return Direction.HIGHER
    raise TfnasError(
        f"target {target!r} has no known direction; allowed: a *loss* or *perplexity* target "
        f"(lower is better) or one of {', '.join(sorted(_HIGHER_TARGETS))} (higher is better)"
    )


@dataclass(frozen=True)
class Aligned:
    """Attributes:
        arch_ids: the architectures, in truth-table order (first appearance).
        target: the truth target.
        truth: (n,) the target's mean over the runs of each architecture.
        quality: (n,) truth oriented so that higher is better (a loss negated).
        columns: metric -> (n,) mean value per architecture (NaN: no finite value).
    """

    arch_ids: tuple[str, ...]
    target: str
    truth: np.ndarray
    quality: np.ndarray
    columns: Mapping[str, np.ndarray]

    @property
    def direction(self) -> Direction:
        return target_direction(self.target)


def _means(table: pa.Table, by: Sequence[str]) -> pa.Table:
    valid = table.filter(pc.fill_null(pc.is_finite(table.column("value")), False))  # null or NaN: no value
    return valid.group_by(list(by)).aggregate([("value", "mean")])


def align(scores: pa.Table, truth: pa.Table, target: str, *, metrics: Sequence[str] | None = None) -> Aligned:
    """Align a scores table and a truth table over the architectures of `target`.

    Args:
        metrics: the metrics to keep, in order (default: every metric in `scores`).

    Raises:
        TfnasError: the target is absent, or no architecture has a finite truth value,
            or a requested metric has no scores.
    """
    scores = tables.conform("scores", scores, what="scores table")
    truth = tables.conform("truth", truth, what="truth table")
    target_direction(target)  # fails early on a target without a direction
    truth = truth.filter(pc.equal(truth.column("target"), target))
    if truth.num_rows == 0:
        raise TfnasError(f"the truth table has no rows of target {target!r}")
    truth_means = _means(truth, ["arch_id"])
    order = {a: i for i, a in enumerate(dict.fromkeys(truth.column("arch_id").to_pylist()))}
    mean_of = dict(zip(truth_means.column("arch_id").to_pylist(), truth_means.column("value_mean").to_pylist()))
    # Only architectures that were scored: a partial run (or `--limit`) is evaluated on
    # what it scored, not on unscored architectures that every metric would pick last.
    scored = set(scores.column("arch_id").to_pylist())
    arch_ids = tuple(a for a in order if a in mean_of and a in scored)
    if not arch_ids:
        raise TfnasError(
            f"no architecture has both scores and a finite value of target {target!r}: "
            "were the scores and truth tables made from the same archs table?"
        )
    values = np.array([mean_of[a] for a in arch_ids], dtype=np.float64)
    quality = values if target_direction(target) is Direction.HIGHER else -values
    present = list(dict.fromkeys(scores.column("metric").to_pylist()))
    wanted = list(metrics) if metrics else present
    missing = [m for m in wanted if m not in present]
    if missing:
        raise TfnasError(f"the scores have no metric {', '.join(map(repr, missing))}; have: {', '.join(present) or '(none)'}")
    score_means = _means(scores.select(["arch_id", "metric", "value"]), ["metric", "arch_id"])
    index = {a: i for i, a in enumerate(arch_ids)}
    columns = {m: np.full(len(arch_ids), np.nan) for m in wanted}
    for metric, arch_id, value in zip(
        score_means.column("metric").to_pylist(), score_means.column("arch_id").to_pylist(), score_means.column("value_mean").to_pylist()
    ):
        if metric in columns and arch_id in index:
            columns[metric][index[arch_id]] = value
    return Aligned(arch_ids=arch_ids, target=target, truth=values, quality=quality, columns=columns)
