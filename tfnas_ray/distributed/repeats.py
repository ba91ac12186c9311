"""Scoring under several initialisation seeds and minibatches (the stability ablation).

`--init-seeds S --batches B` scores every architecture S·B times: under run seeds
seed, seed+1, …, seed+S−1 (each giving the per-architecture seeds of `seeding`) and
minibatches 0 … B−1 (batch option `index`: minibatch b is the b-th consecutive block of
the corpus, see the space's batch builder). Each (seed, batch) is an ordinary scoring
run into the same directory: its shards carry their own identity (seed and batch
options), so every combination resumes on its own, and (S, B) = (1, 1) is exactly the
single run of before — the same shards, the same identity.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import pyarrow as pa

from tfnas_ray import plans, tables
from tfnas_ray.distributed.scoring import ScoreConfig, ScoreSummary, plan_identity, plan_shards, run_scoring
from tfnas_ray.errors import TfnasError
from tfnas_ray.storage import Location, locate


@dataclass(frozen=True)
class Repeats:
    """Attributes:
        init_seeds: S, initialisation seeds per architecture (run seeds seed … seed+S−1).
        batches: B, metric minibatches (indices 0 … B−1; 0 is the default minibatch).
    """

    init_seeds: int = 1
    batches: int = 1

    def __post_init__(self) -> None:
        if self.init_seeds < 1:
            raise TfnasError(f"--init-seeds must be >= 1, got {self.init_seeds}")
        if self.batches < 1:
            raise TfnasError(f"--batches must be >= 1, got {self.batches}")

    def configs(self, config: ScoreConfig) -> list[ScoreConfig]:
        """One ScoreConfig per (seed, batch); the first is `config` itself."""
        out = []
        for s in range(self.init_seeds):
            for b in range(self.batches):
                # Batch 0 leaves the options untouched, so its shard identity is today's.
                batch_options = {**config.batch_options, "index": b} if b else dict(config.batch_options)
                out.append(dataclasses.replace(config, seed=config.seed + s, batch_options=batch_options))
        return out


def run_repeated_scoring(archs: pa.Table, out_dir: str | os.PathLike | Location, config: ScoreConfig, repeats: Repeats = Repeats(), *, progress: bool = True, log=print) -> ScoreSummary:
    """`run_scoring` for every (seed, batch) of `repeats` into `out_dir`; one summary
    whose table holds every row (columns `seed` and `batch` tell them apart)."""
    out = locate(out_dir)  # a Location from `pipeline` passes through; a path is parsed once here
    configs = repeats.configs(config)
    if len(configs) == 1:
        return run_scoring(archs, out, config, progress=progress, log=log)
    # Name the study's plans up front, so a reader of the directory takes them together
    # (and an interrupted study is still one study).
    spaces = set(archs.column("space").to_pylist())
    plans.write_study(
        out,
        [plans.plan_id(plan_identity(sub, spaces), [s.filename for s in plan_shards(archs, sub)]) for sub in configs],
    )
    total = ScoreSummary()
    parts = []
    for i, sub in enumerate(configs):
        log(f"scoring run seed {sub.seed}, minibatch {sub.batch_options.get('index', 0)} ({i + 1} of {len(configs)})")
        summary = run_scoring(archs, out, sub, progress=progress, log=log)
        parts.append(summary.table)
        total.archs = summary.archs
        total.scored += summary.scored
        total.shards_total += summary.shards_total
        total.shards_skipped += summary.shards_skipped
        total.shards_recomputed += summary.shards_recomputed
        total.failures += summary.failures
        total.worker_deaths += summary.worker_deaths
        total.shards_written_by_scorers += summary.shards_written_by_scorers
        total.scorers.update(summary.scorers)
        total.seconds += summary.seconds
    # Shards of the other (seed, batch) runs are not stale: only files no run planned are.
    planned = {shard.filename for sub in configs for shard in plan_shards(archs, sub)}
    total.stale_files = sum(1 for f in out.files(".parquet") if f.name.startswith("shard-") and f.name not in planned)
    total.table = pa.concat_tables(parts, promote_options="default") if parts else tables.from_rows("scores", [])
    return total
