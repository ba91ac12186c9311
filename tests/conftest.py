"""Shared fixtures: one local Ray cluster per test session, and paths to ../shared data.

Ray on a 2-core machine: one cluster for the whole session (starting one takes seconds),
no dashboard, a modest object store, usage stats off.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The published data the package was built from (tests only; the product never
    reads it)."""
    if not SHARED_DATA.exists():
        pytest.fail(f"{SHARED_DATA} is missing: tests compare against the published data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=200 * 1024 * 1024,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def benchmark_run(tmp_path):
    """`run(name, n)`: the first `n` archs of shipped benchmark `name` and their truth rows
    written into `tmp_path` as `reproduce` lays them out (archs.parquet, truth.parquet and
    an empty scores/); returns (archs, truth)."""
    import numpy as np

    from tfnas_ray import tables
    from tfnas_ray.benchmarks import get_benchmark

    def run(name: str, n: int):
        archs, truth = get_benchmark(name).load()
        archs = archs.slice(0, n)
        ids = set(archs.column("arch_id").to_pylist())
        truth = truth.filter(np.array([a in ids for a in truth.column("arch_id").to_pylist()]))
        tables.write_table("archs", archs, tmp_path / "archs.parquet")
        tables.write_table("truth", truth, tmp_path / "truth.parquet")
        (tmp_path / "scores").mkdir()
        return archs, truth

    return run
