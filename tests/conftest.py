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
