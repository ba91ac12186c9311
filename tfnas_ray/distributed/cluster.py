"""Connecting to Ray: a local cluster started for you, or an existing one."""

from __future__ import annotations

import os

from tfnas_ray.errors import TfnasError

# A modest object store: scorer results are small tables, and a 2-core laptop or CI
# machine should not reserve a third of its memory for Ray.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
GIB = 1024**3


def connect(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Start or join a Ray cluster (idempotent: an initialised Ray is reused).

    Args:
        address: None starts a local cluster; "auto" joins the cluster this machine is
            part of; "ray://host:10001" or "host:6379" joins a remote one.
        num_cpus: CPUs of a local cluster (default: all).

    Raises:
        TfnasError: the address cannot be reached.
    """
    import ray

    from tfnas_ray import termination

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    try:
        with termination.keep_handler():  # ray.init replaces the CLI's SIGTERM handler
            if address is None:
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    log_to_driver=False,
                    configure_logging=False,
                )
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise TfnasError(f"cannot connect to Ray at {address!r}: {err}".splitlines()[0]) from None


def cluster_gpus() -> float:
    """GPUs the connected cluster has (0 without any)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0))


def cluster_memory() -> float:
    """Bytes of Ray's `memory` resource in the connected cluster (what tasks and actors
    may reserve: the nodes' memory less the object store and Ray's own share)."""
    import ray

    return float(ray.cluster_resources().get("memory", 0))
