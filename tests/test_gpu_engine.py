"""The GPU path without a GPU (issue 17, item 3): a full GPU recognised by exception type
and retried, the device Ray assigned, the device in a plan's identity, GPU memory in the
scorer plan. Real torch exceptions, raised from a real model's forward."""

from __future__ import annotations

import contextlib

import pyarrow as pa
import pytest
import torch

from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.distributed.scorer import cuda_device, score_fitting
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import BATCHES, load_metrics
from tfnas_ray.metrics.scoring import is_out_of_memory, score_architecture


@pytest.fixture(scope="module")
def cell() -> dict:
    """The first NAS-Bench-NLP cell of the shipped PTB benchmark."""
    table, _ = get_benchmark("nb-nlp-ptb").load()
    return table.to_pylist()[0]


@pytest.fixture(scope="module")
def batch():
    load_metrics()
    return BATCHES.get("nb-nlp")({})


# ---- a full GPU, by exception type ---------------------------------------------------------

# The texts are torch's own: c10/cuda/CUDACachingAllocator.cpp ("CUDA out of memory. Tried
# to allocate …"), aten/src/ATen/cuda/CublasHandlePool.cpp and cuDNN's status names.
@pytest.mark.parametrize(
    "error, full",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB"), True),
        (torch.cuda.OutOfMemoryError("CUDA out of memory."), True),  # the same class
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),  # raised as RuntimeError by older builds
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),
        (MemoryError(), False),  # the host, not the GPU
        (ValueError("CUDA out of memory"), False),  # type first: the text alone is not enough
    ],
)
def test_a_full_gpu_is_recognised_by_type_and_library_status(error, full):
    assert is_out_of_memory(error) is full


@contextlib.contextmanager
def full_gpu_for(attempts: list[int], first: int, error=torch.OutOfMemoryError):
    """While the block runs, every module forward of the first `first` attempts raises
    `error` (the attempt number is `attempts[0]`, counted by the caller)."""

    def hook(module, inputs):
        if attempts[0] <= first:
            raise error("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _score(cell, batch, attempts: list[int]):
    def score():
        attempts[0] += 1
        return score_architecture(arch_id=cell["arch_id"], space=cell["space"], spec=cell["spec"], metrics=["hidden_cov", "params"], seed=0, batch=batch)

    return score


def test_a_full_gpu_is_retried_after_freeing_the_cache(cell, batch):
    """The first try's forward raises torch.OutOfMemoryError: the cache is freed and the
    second try's rows are those of an undisturbed run."""
    reference = score_architecture(arch_id=cell["arch_id"], space=cell["space"], spec=cell["spec"], metrics=["hidden_cov", "params"], seed=0, batch=batch)
    attempts, freed = [0], []
    with full_gpu_for(attempts, first=1):
        rows, full = score_fitting(_score(cell, batch, attempts), free_memory=lambda: freed.append(attempts[0]))
    assert full is None and attempts[0] == 2 and freed == [1]
    assert [(r["metric"], r["value"], r["error"]) for r in rows] == [(r["metric"], r["value"], r["error"]) for r in reference]
    assert rows[0]["value"] is not None


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, torch.cuda.OutOfMemoryError])
def test_a_gpu_full_on_every_try_gives_the_last_error_not_rows(cell, batch, error):
    attempts, freed = [0], []
    with full_gpu_for(attempts, first=99, error=error):
        rows, full = score_fitting(_score(cell, batch, attempts), free_memory=lambda: freed.append(attempts[0]), tries=3)
    assert rows is None and attempts[0] == 3 and freed == [1, 2, 3]
    assert full == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_a_cublas_allocation_failure_is_retried_too(cell, batch):
    def cublas(message):
        return RuntimeError(f"CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)` ({message})")

    attempts = [0]
    with full_gpu_for(attempts, first=1, error=cublas):
        rows, full = score_fitting(_score(cell, batch, attempts), free_memory=lambda: None)
    assert full is None and attempts[0] == 2 and rows[0]["error"] is None


def test_any_other_error_of_a_forward_is_the_metrics_failure_not_retried(cell, batch):
    """A shape error is recorded in the row of the metric that hit it (as before); the
    architecture is not retried."""
    attempts, freed = [0], []
    with full_gpu_for(attempts, first=99, error=lambda _: RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")):
        rows, full = score_fitting(_score(cell, batch, attempts), free_memory=lambda: freed.append(1))
    assert full is None and attempts[0] == 1 and freed == []
    hidden_cov, params = rows
    assert hidden_cov["value"] is None and hidden_cov["error"].startswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert params["error"] is None  # no forward: unaffected


# ---- the GPU Ray assigned ------------------------------------------------------------------

NOSET = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


@pytest.mark.parametrize(
    "ids, env, device",
    [
        # Ray set CUDA_VISIBLE_DEVICES to the assigned GPU: it is index 0 in the process.
        (["3"], {"CUDA_VISIBLE_DEVICES": "3"}, "cuda:0"),
        (["1"], {}, "cuda:0"),
        (["2"], {NOSET: "0", "CUDA_VISIBLE_DEVICES": "2"}, "cuda:0"),  # "0" is off, as Ray's env_bool reads it
        # Ray left CUDA_VISIBLE_DEVICES alone: the process sees every GPU of the node.
        (["3"], {NOSET: "1"}, "cuda:3"),
        (["3"], {NOSET: "True"}, "cuda:3"),
        (["6"], {NOSET: "1", "CUDA_VISIBLE_DEVICES": "4,6,7"}, "cuda:1"),
        (["GPU-5f2e"], {NOSET: "true", "CUDA_VISIBLE_DEVICES": "GPU-9a1b,GPU-5f2e"}, "cuda:1"),
    ],
)
def test_the_scorer_uses_the_gpu_ray_assigned(ids, env, device):
    assert cuda_device(ids, env) == device


@pytest.mark.parametrize(
    "ids, env, message",
    [
        ([], {}, r"^Ray assigned this GPU scorer no GPU"),
        (["5"], {NOSET: "1", "CUDA_VISIBLE_DEVICES": "0,1"}, r"^Ray assigned GPU 5, but this scorer's CUDA_VISIBLE_DEVICES='0,1' does not list it"),
        (["GPU-5f2e"], {NOSET: "1"}, r"^Ray assigned GPU 'GPU-5f2e', which is not a device index"),
    ],
)
def test_a_gpu_the_process_cannot_see_is_a_clear_error(ids, env, message):
    with pytest.raises(TfnasError, match=message):
        cuda_device(ids, env)
