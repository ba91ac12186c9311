"""NAS-Bench-BERT scoring options shared by `score`, `reproduce`, `train` (and `search`):
which reading of a config is built, how the metric batch is made, and the float64 check
that flags the paper's degenerate gradient columns.

Kept out of pipeline.py so every command resolves the options the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import pyarrow as pa

from tfnas_ray.errors import TfnasError

NB_BERT = "nb-bert"
READINGS = ("described", "as-scored", "as-trained")
MODES = ("train", "eval")


@dataclass(frozen=True)
class NbBertOptions:
    """How nb-bert architectures are built and scored.

    Attributes:
        reading: "described" (the config as written), "as-scored" (what the authors'
            metric script built: hidden 256, FFN 1024 — the published table's models) or
            "as-trained" (what their pretraining built: all SDP attention).
        seq_len: tokens per batch sequence (None: the protocol's 512).
        mode: "train" (the authors': dropout on, padding mask ignored) or "eval"
            (None: the protocol's "train").
        micro_batch: rows per forward of the gradient passes (None: the whole batch at
            once). The values are the whole batch's to round-off (≤ 1e-6 relative, the
            same dropout masks); memory falls with the rows (bench/RESULTS_nb_bert_memory.md).
    """

    reading: str = "described"
    seq_len: int | None = None
    mode: str | None = None
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        if self.reading not in READINGS:
            raise TfnasError(f"--reading {self.reading!r} is not one of {', '.join(READINGS)}")
        if self.seq_len is not None and not 3 <= self.seq_len <= 512:
            raise TfnasError(f"--seq-len must be in [3, 512] (ELECTRA's position table), got {self.seq_len}")
        if self.mode is not None and self.mode not in MODES:
            raise TfnasError(f"--mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.micro_batch is not None and (isinstance(self.micro_batch, bool) or not isinstance(self.micro_batch, int) or self.micro_batch < 1):
            raise TfnasError(f"--micro-batch must be a positive number of rows, got {self.micro_batch!r}")

    @property
    def model_options(self) -> dict:
        return {"reading": self.reading}

    @property
    def batch_options(self) -> dict:
        options = {}
        if self.seq_len is not None:
            options["seq_len"] = self.seq_len
        if self.mode is not None:
            options["mode"] = self.mode
        if self.micro_batch is not None:
            options["micro_batch"] = self.micro_batch
        return options


def check_applies(spaces: Sequence[str], *, given: Sequence[str]) -> None:
    """nb-bert options given for a table with other spaces are a user error.

    Raises:
        TfnasError: naming the options and the spaces.
    """
    others = sorted(set(spaces) - {NB_BERT})
    if given and others:
        raise TfnasError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to nb-bert only; the table has {', '.join(others)}")


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
