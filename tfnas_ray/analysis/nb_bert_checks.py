"""The nb-bert parts of the `reproduce` report: the float64 check that flags the paper's
degenerate gradient columns, the correlations table with those flags, and τ per reading
side by side.

Here, not beside the space's options (spaces/nasbench_bert/protocol.py): the check runs
a metric's gradient on a built model, and spaces know nothing of metrics.
"""

from __future__ import annotations

from typing import Mapping

import pyarrow as pa


def degeneracy_flags(spec: str, *, reading: str, seed: int, batch_options: Mapping, sequences: int = 4) -> tuple[list, dict[str, str]]:
    """Run `metrics.transformer.gradient_degeneracy` on one architecture (built as scored,
    the first `sequences` of the metric batch) and map each degenerate quantity to the
    columns that read it: {metric: one-line reason}.

    Returns:
        (the checks, {metric: flag}).
    """
    import torch

    from tfnas_ray.metrics import transformer as tm
    from tfnas_ray.spaces.nasbench_bert import SPACE

    batch = tm.nb_bert_batch(dict(batch_options))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SPACE.build(spec, reading=reading)
    ids = batch["input_ids"][:sequences]
    mask = batch["attention_mask"][:sequences]
    checks = tm.gradient_degeneracy(model, ids, mask)
    flags = {}
    for check in checks:
        if check.degenerate:
            for column in check.columns:
                flags[column] = (
                    f"degenerate: ∂(Σ output)/∂θ is round-off (float64 {check.float64:.2g} vs float32 "
                    f"{check.float32:.2g}); see the _mlm variant"
                )
    return checks, flags


def with_flags(correlations: pa.Table, flags: Mapping[str, str]) -> pa.Table:
    """The correlations table with a `flag` column (null where the metric is sound)."""
    column = pa.array([flags.get(m) for m in correlations.column("metric").to_pylist()], pa.string())
    if "flag" in correlations.column_names:
        correlations = correlations.drop_columns(["flag"])
    return correlations.append_column("flag", column)


def side_by_side(tables: Mapping[str, pa.Table], *, target: str) -> str:
    """τ against `target` per metric, one column per reading."""
    readings = list(tables)
    taus: dict[str, dict[str, float | None]] = {}
    for reading, table in tables.items():
        for row in table.to_pylist():
            if row["target"] == target:
                taus.setdefault(row["metric"], {})[reading] = row["kendall_tau"]
    header = f"{'metric':34s}" + "".join(f"{'τ ' + r:>16s}" for r in readings)
    lines = [f"Kendall τ vs {target}, per reading", header, "-" * len(header)]
    for metric, by_reading in taus.items():
        cells = []
        for r in readings:
            tau = by_reading.get(r)
            cells.append(f"{tau:+16.3f}" if tau is not None and tau == tau else f"{'nan':>16s}")
        lines.append(f"{metric:34s}" + "".join(cells))
    return "\n".join(lines)
