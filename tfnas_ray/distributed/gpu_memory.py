"""GPU memory a scorer needs, and how many scorers (`--actors-per-gpu`) fit one GPU.

Each space declares the most GPU memory one of its scorers holds at once (its largest
model at its largest metric batch, plus the CUDA context). A run asking for more
scorers per GPU than the GPU's memory holds is refused by its first scorer, which knows
the GPU it was given (`torch.cuda.get_device_properties`), with one line saying how many
fit — before any architecture is scored, instead of a run of out-of-memory retries.
Spaces without a declared figure (user families from TOML files) are not checked.
"""

from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple

from tfnas_ray.distributed.cluster import GIB


class MemoryNeed(NamedTuple):
    """The GPU memory one scorer needs, and what the figure is for (for messages)."""

    gib: float
    what: str


# Declared, not yet measured on a GPU (none has been lent to this project):
# - nb-nlp: peak RSS of a CPU scorer computing the paper's columns is 1.2 GiB
#   (bench/RESULTS.md), which bounds its tensors; a CUDA context adds about 0.5 GiB.
# - nb-bert, whole batch: the paper's protocol (128 × 512 tokens, train mode) peaked at
#   16.3 GiB for every column, the MLM-loss ones included (bench/RESULTS_nb_bert_memory.md);
#   17 GiB with the CUDA context.
# - nb-bert with `--micro-batch 16`: 3.3 GiB peak RSS at that protocol (same file), so
#   4 GiB with the context.
# Shorter sequences and eval mode need less: each figure is their upper bound.
SCORER_GPU_MEMORY: Mapping[str, MemoryNeed] = {
    "nb-nlp": MemoryNeed(1.5, "nb-nlp (the paper's columns, 1.5 GiB declared per scorer)"),
    "nb-bert": MemoryNeed(17.0, "nb-bert (the paper's 128 × 512 tokens in one batch, 17 GiB declared per scorer; --micro-batch 16 needs 4 GiB)"),
}
MICRO_BATCHED_GPU_MEMORY: Mapping[str, MemoryNeed] = {
    "nb-bert": MemoryNeed(4.0, "nb-bert (the paper's 128 × 512 tokens in micro-batches of at most 16, 4 GiB declared per scorer)"),
}
MICRO_BATCH_DECLARED = 16  # the largest micro-batch the 4 GiB figure covers


def scorer_memory_need(spaces: Iterable[str], batch_options: Mapping[str, object] | None = None) -> MemoryNeed | None:
    """The declared need of a scorer of a run over `spaces` under `batch_options`: the
    largest of theirs (a scorer may be given any architecture); None when no space
    declares one. nb-bert's gradient passes in micro-batches of ≤ 16 rows
    (`micro_batch`) need far less than the whole batch at once."""
    micro = (batch_options or {}).get("micro_batch")
    micro_batched = micro is not None and int(micro) <= MICRO_BATCH_DECLARED
    needs = [
        (MICRO_BATCHED_GPU_MEMORY.get(s) if micro_batched else None) or SCORER_GPU_MEMORY[s]
        for s in sorted(set(spaces)) if s in SCORER_GPU_MEMORY
    ]
    return max(needs, default=None)


def actors_per_gpu_problem(actors_per_gpu: int, need: MemoryNeed | None, gpu_bytes: float, gpu_name: str) -> str | None:
    """Why `actors_per_gpu` scorers needing `need` each do not fit a GPU of `gpu_bytes`
    (None: they fit, or nothing is declared).

    Example:
        >>> actors_per_gpu_problem(2, MemoryNeed(4.0, "x"), 24 * GIB, "NVIDIA L4") is None
        True
        >>> print(actors_per_gpu_problem(8, MemoryNeed(4.0, "x"), 24 * GIB, "NVIDIA L4"))
        --actors-per-gpu 8: 8 scorers of x need 32.0 GiB, the NVIDIA L4 has 24.0 GiB; use --actors-per-gpu 6 or fewer
    """
    if need is None or actors_per_gpu * need.gib * GIB <= gpu_bytes:
        return None
    fit = int(gpu_bytes // (need.gib * GIB))
    advice = f"use --actors-per-gpu {fit} or fewer" if fit >= 1 else "a GPU with more memory is needed"
    return (
        f"--actors-per-gpu {actors_per_gpu:g}: {actors_per_gpu:g} scorer{'s' if actors_per_gpu != 1 else ''} of {need.what} need{'s' if actors_per_gpu == 1 else ''} "
        f"{actors_per_gpu * need.gib:.1f} GiB, the {gpu_name} has {gpu_bytes / GIB:.1f} GiB; {advice}"
    )
