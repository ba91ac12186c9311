"""Score one architecture with many metrics: the unit of work a scorer runs.

Pure torch and numpy — no Ray. Every (architecture, metric) gives exactly one row of the
`scores` table; a failure (NaN, singular matrix, exception) is a row with a null value
and the reason in `error`, and the other metrics go on.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from typing import Any, Mapping, Sequence

import torch

from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import MetricContext, MetricFailure, check_finite, load_metrics, score_version

SEEDINGS = ("derived", "fixed")


def arch_seed(arch_id: str, run_seed: int, seeding: str = "derived") -> int:
    """The seed an architecture's model is initialised with.

    "derived": a hash of (run seed, arch_id), so architectures get independent draws
    and the value never depends on which worker or shard computed it.
    "fixed": the run seed itself for every architecture — the paper's protocol
    (seed 0 for all), under which our values equal the published ones.
    """
    if seeding == "fixed":
        return int(run_seed)
    if seeding != "derived":
        raise TfnasError(f"unknown seeding {seeding!r}; allowed: {', '.join(SEEDINGS)}")
    digest = hashlib.sha256(f"{int(run_seed)}:{arch_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# The allocation failures of CUDA's libraries: torch raises them as a plain RuntimeError
# carrying the library's status, not as torch.OutOfMemoryError.
_LIBRARY_OUT_OF_MEMORY = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUDA out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says the GPU was full: `torch.OutOfMemoryError` (which is
    `torch.cuda.OutOfMemoryError`) by type; a cuBLAS/cuDNN allocation failure, a
    RuntimeError, by its status text. Anything else (a CPU allocation failure, a shape
    error) is an ordinary failure of the metric.

    Example:
        >>> is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        True
        >>> is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
        True
        >>> is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
        False
    """
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(status in str(error) for status in _LIBRARY_OUT_OF_MEMORY)


def validate_metrics(space: str, metrics: Sequence[str]) -> list[str]:
    """Check that every metric exists for `space`; return them without duplicates.

    Raises:
        TfnasError: an unknown metric (listing the known ones) or one not defined for
            the space.
    """
    registry = load_metrics()
    if not metrics:
        raise TfnasError("no metric given; known: " + ", ".join(registry.names()))
    unique = list(dict.fromkeys(metrics))
    for name in unique:
        registry.get(name).impl(space)
    return unique


def metric_versions(spaces: Sequence[str], metrics: Sequence[str]) -> dict[str, dict[str, int]]:
    """{metric: {space: implementation version}} of `metrics` in `spaces`: what enters
    a shard's identity, so that fixing a metric makes a rerun recompute its values.

    Raises:
        TfnasError: an unknown metric, or one not defined for a space.
    """
    registry = load_metrics()
    return {name: {space: registry.get(name).impl(space).version for space in sorted(set(spaces))} for name in metrics}


def score_architecture(
    *,
    arch_id: str,
    space: str,
    spec: str,
    metrics: Sequence[str],
    seed: int,
    batch: Any,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Score one architecture; one row per metric, in the order of `metrics`.

    Metrics scored together share their passes (see `MetricContext.run_pass`); the
    `seconds` of a metric include the passes it was first to need.

    Raises:
        torch.OutOfMemoryError, RuntimeError: the GPU was full (`is_out_of_memory`); the
            architecture's rows are not made, for the caller to retry it whole.
    """
    registry = load_metrics()
    ctx = MetricContext(space, spec, seed=seed, batch=batch, device=device, options=options, wanted=metrics)
    rows = []
    for name in metrics:
        started = time.perf_counter()
        value, error = None, None
        impl = registry.get(name).impl(space)
        try:
            value = check_finite(impl.fn_for(ctx.protocol)(ctx), name)
        except MetricFailure as failure:
            error = str(failure)
        except TfnasError:
            raise  # bad input (unknown option, …) is the user's to fix, not a metric failure
        except Exception as exc:  # noqa: BLE001 — recorded per (arch, metric), never dropped
            if is_out_of_memory(exc):
                raise  # a full GPU is no property of the architecture: the scorer frees memory and retries it
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            error = f"{type(exc).__name__}: {exc} (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"
        rows.append(
            {
                "arch_id": arch_id,
                "metric": name,
                "value": value,
                "error": error,
                "seconds": time.perf_counter() - started,
                "seed": seed,
                "device": str(device),
                "version": score_version(impl),
                "protocol": getattr(batch, "protocol", None),  # null: the space has one protocol
                "reading": (options or {}).get("reading"),
            }
        )
    return rows


def pick_threads(device: str) -> None:
    """One intra-op thread per CPU scorer: actors already run one per core, and a fixed
    thread count keeps float reductions — hence values — the same on every worker."""
    if str(device).startswith("cpu"):
        torch.set_num_threads(1)
