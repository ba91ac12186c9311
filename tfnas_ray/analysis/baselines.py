"""The trivial baselines of a stored run: the baseline rows its scores directory lacks,
computed from the run's specs under the options its scoring plan recorded.

What `correlate`, `reproduce`, `ensemble` and the report set every metric against
(metrics/baselines.py computes the values; this module only finds their inputs).
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs

from tfnas_ray import tables
from tfnas_ray.plans import plans_in
from tfnas_ray.storage import Location, locate


def run_baselines(scores_dir: str | os.PathLike | Location, scores: pa.Table, *, archs=None, plan: str | None = None) -> tuple[pa.Table, list[str]]:
    """`metrics.baselines.with_baselines` for a scores directory: the specs from `archs`
    (default archs.parquet beside the directory, as `reproduce` lays it out; nothing is
    added when there is none), the batch and model options from the scoring plan read
    (`plan`, default the newest), so the FLOPs are counted at the scored length.

    Returns:
        (scores with the missing baseline rows, [baseline names added]).
    """
    # imported on use, as load_metrics does: importing metrics.baselines first would
    # register the baselines ahead of every other metric (the registry's order)
    from tfnas_ray.metrics.baselines import with_baselines

    where = locate(scores_dir)
    archs_at = locate(archs) if archs is not None else where.parent.child("archs.parquet")
    if archs is None and not archs_at.exists():
        return scores, []
    batch, model = {}, {}
    if where.exists() and where.file_type() == pafs.FileType.Directory:
        plans = plans_in(where)
        chosen = [p for p in plans if plan is not None and p.plan_id.startswith(plan)] or plans[-1:]
        if chosen:
            batch, model = dict(chosen[0].identity.get("batch") or {}), dict(chosen[0].identity.get("model") or {})
    return with_baselines(scores, tables.read_table("archs", archs_at), batch_options=batch, model_options=model)
