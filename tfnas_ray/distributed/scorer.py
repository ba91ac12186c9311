"""The scorer actor: scores architectures on one device (a GPU Ray assigned it, or the CPU)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

from tfnas_ray import tables
from tfnas_ray.distributed.gpu_memory import MemoryNeed, actors_per_gpu_problem
from tfnas_ray.errors import TfnasError

# Tries at one architecture on a scorer when the GPU is full, the cached memory freed
# before each retry (another scorer on the same GPU, or the previous architecture's
# leftovers, may have held it); after that the driver retries it alone on a scorer.
OUT_OF_MEMORY_TRIES = 2
# Ray's switch that leaves CUDA_VISIBLE_DEVICES alone in the processes it starts.
NOSET_CUDA_VISIBLE_DEVICES = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


def cuda_device(gpu_ids: Sequence[str], env: Mapping[str, str]) -> str:
    """The torch device of the GPU Ray assigned a scorer.

    Args:
        gpu_ids: the scorer's GPU ids, `ray.get_runtime_context().get_accelerator_ids()["GPU"]`
            (ids of the node's GPUs, as the node's CUDA_VISIBLE_DEVICES lists them, or
            physical indices when it lists none).
        env: the scorer process's environment.

    Returns:
        "cuda:N". Ray normally sets the process's CUDA_VISIBLE_DEVICES to the assigned
        GPUs only, so the first is "cuda:0". With RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES
        (true or 1, as Ray reads it) the process sees every GPU of the node: the device
        is the assigned id's position in CUDA_VISIBLE_DEVICES if that is set, else the
        id itself (a physical index).

    Raises:
        TfnasError: no GPU assigned, or one the process's CUDA_VISIBLE_DEVICES hides.

    Example:
        >>> cuda_device(["3"], {"CUDA_VISIBLE_DEVICES": "3"})
        'cuda:0'
        >>> cuda_device(["3"], {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"})
        'cuda:3'
        >>> cuda_device(["6"], {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1", "CUDA_VISIBLE_DEVICES": "4,6"})
        'cuda:1'
    """
    if not gpu_ids:
        raise TfnasError("Ray assigned this GPU scorer no GPU (its accelerator ids are empty)")
    gpu = str(gpu_ids[0]).strip()
    if env.get(NOSET_CUDA_VISIBLE_DEVICES, "").lower() not in ("1", "true"):
        return "cuda:0"  # CUDA_VISIBLE_DEVICES holds the assigned GPUs only, the first first
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        if not gpu.isdigit():
            raise TfnasError(f"Ray assigned GPU {gpu!r}, which is not a device index, and CUDA_VISIBLE_DEVICES is not set")
        return f"cuda:{int(gpu)}"
    listed = [v.strip() for v in visible.split(",")]
    if gpu not in listed:
        raise TfnasError(
            f"Ray assigned GPU {gpu}, but this scorer's CUDA_VISIBLE_DEVICES={visible!r} does not list it "
            f"({NOSET_CUDA_VISIBLE_DEVICES} is set, so Ray did not narrow it)"
        )
    return f"cuda:{listed.index(gpu)}"


def runtime_problem(planned: Mapping[str, str] | None, torch_version: str) -> str | None:
    """Why a scorer with `torch_version` cannot score a plan whose identity names the
    runtime `planned` (`scoring.scoring_runtime`; None: the CPU, any torch), or None.

    Example:
        >>> runtime_problem({"device": "cuda", "dtype": "float32", "torch": "2.13.0"}, "2.13.0+cu128") is None
        True
    """
    if planned is None:
        return None
    release = torch_version.split("+")[0]
    if release != planned["torch"]:
        return (
            f"this scorer has torch {release}, but the plan is named for torch {planned['torch']} (the driver's): "
            "values depend on it; install the same torch release on the driver and the GPU workers"
        )
    return None


def score_fitting(score: Callable[[], list[dict]], *, free_memory: Callable[[], None], tries: int = OUT_OF_MEMORY_TRIES) -> tuple[list[dict] | None, str | None]:
    """Score one architecture (`score()`), retrying while the GPU is full.

    A full GPU (`metrics.scoring.is_out_of_memory`: torch.OutOfMemoryError, or a
    cuBLAS/cuDNN allocation failure) frees the cached memory (`free_memory`) and tries
    again, `tries` times in all; any other exception propagates.

    Returns:
        (rows, None) once it fits; (None, the last out-of-memory error in one line) when
        the GPU was full on every try.

    Example:
        >>> rows, full = score_fitting(lambda: [{"value": 1.0}], free_memory=lambda: None)
        >>> rows, full
        ([{'value': 1.0}], None)
    """
    from tfnas_ray.metrics.scoring import is_out_of_memory

    last = None
    for _ in range(tries):
        try:
            return score(), None
        except Exception as err:  # noqa: BLE001 — only a full GPU is handled; the rest re-raised
            if not is_out_of_memory(err):
                raise
            name = type(err).__name__ if type(err).__module__ == "builtins" else f"{type(err).__module__}.{type(err).__name__}"
            last = f"{name}: {(str(err).strip().splitlines() or [''])[0]}"
        # Outside the except block: the traceback, and the tensors its frames hold, are gone.
        free_memory()
    return None, last


def free_gpu_memory() -> None:
    """Return the memory of dead tensors to the GPU (no-op without CUDA)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what `platform` knows:
    hardware metrics (latency) say on what they were measured."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def scorer_class():
    """The Ray actor class of the scorers (built on use: `ray` is imported lazily)."""
    import ray

    from tfnas_ray.distributed import drills

    class ScorerActor:
        """Scores architectures on one device (a GPU Ray assigned it, or the CPU)."""

        def __init__(
            self,
            device_kind: str,
            batch_options: Mapping[str, Any],
            model_options: Mapping[str, Any],
            runtime: Mapping[str, str] | None = None,
            memory: tuple[int, tuple[float, str] | None] = (1, None),
            reports: Any = None,
        ):
            """`runtime`: the plan's (`scoring.scoring_runtime`); `memory`: (actors per
            GPU, the declared need of one scorer, `gpu_memory.scorer_memory_need`);
            `reports`: the run's progress actor (`progress.start_reports`), told of each
            finished architecture, or None."""
            import torch

            from tfnas_ray.metrics.scoring import pick_threads

            self._drill = drills.active()  # no-op outside fault drills
            if self._drill.fail_init:
                raise RuntimeError(self._drill.fail_init)
            self._gpu_ids = [str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]  # ids Ray gave this actor
            self._node = ray.get_runtime_context().get_node_id()
            self._problem = runtime_problem(runtime, torch.__version__)  # why this actor cannot score, reported by describe()
            self._device = "cpu"
            self._label = f"cpu ({cpu_name()})"  # the device column names the hardware
            if device_kind == "gpu":
                gpu = ",".join(self._gpu_ids) or "?"
                if self._drill.simulate_gpus:
                    self._label = f"cpu (simulated gpu {gpu})"
                elif torch.cuda.is_available():
                    try:
                        self._device = cuda_device(self._gpu_ids, os.environ)
                        self._label = f"cuda (gpu {gpu}: {torch.cuda.get_device_name(torch.device(self._device))})"
                    except TfnasError as err:
                        self._problem = self._problem or str(err)
                    else:
                        # Only here is the GPU's memory known: too many scorers for it stop the
                        # run now, not after a run of out-of-memory retries.
                        props = torch.cuda.get_device_properties(torch.device(self._device))
                        actors, need = memory
                        self._problem = self._problem or actors_per_gpu_problem(
                            actors, MemoryNeed(*need) if need else None, props.total_memory, props.name
                        )
                elif self._problem is None:
                    self._problem = (
                        f"Ray assigned GPU {gpu} to a scorer, but torch {torch.__version__} there sees no "
                        "CUDA device; install a CUDA build of torch on the GPU workers"
                    )
            pick_threads(self._device)
            self._batch_options = dict(batch_options)
            self._model_options = dict(model_options)
            self._batches: dict[str, Any] = {}  # space -> metric minibatch, built once
            self._reports = reports  # progress.ArchReports: told of each finished architecture

        def describe(self) -> dict:
            return {"device": self._label, "gpu_ids": self._gpu_ids, "pid": os.getpid(), "node": self._node, "problem": self._problem}

        def score(self, items: list[tuple[str, str, str, int]], metrics: list[str], destination: str | None = None) -> dict:
            """Score `items` (arch_id, space, spec, seed); with a `destination` URL (a
            whole shard), also write the shard there.

            Returns:
                {"rows", "out_of_memory", "written", "write_error"}: `out_of_memory` maps
                the architectures that found the GPU full on every try (`score_fitting`)
                to the last error; their rows are left out, for the driver to retry.
            """
            from tfnas_ray.metrics import BATCHES, load_metrics

            load_metrics()  # fills the metric and batch registries in this process
            rows, out_of_memory = [], {}
            for arch_id, space, spec, seed in items:
                if space not in self._batches:
                    self._batches[space] = BATCHES.get(space)(self._batch_options)
                started = time.perf_counter()  # the batch, built once per space, is not the arch's cost
                self._drill.before_architecture(arch_id, self._node)
                scored, full = score_fitting(lambda: self._score_one(arch_id, space, spec, metrics, seed), free_memory=free_gpu_memory)
                if scored is None:
                    out_of_memory[arch_id] = full
                else:
                    rows += scored
                    if self._reports is not None:  # fire and forget: progress, not results
                        self._reports.done.remote(arch_id, time.perf_counter() - started)
            reply = {"rows": rows, "out_of_memory": out_of_memory, "written": False, "write_error": None}
            if destination is not None and not out_of_memory:
                try:
                    tables.write_table("scores", tables.from_rows("scores", rows), destination)
                    reply["written"] = True
                except TfnasError as err:  # e.g. no credentials on this node: the driver writes
                    reply["write_error"] = str(err)
            return reply

        def _score_one(self, arch_id, space, spec, metrics, seed) -> list[dict]:
            """The rows of one architecture (raises what `score_architecture` raises on a full GPU)."""
            from tfnas_ray.metrics.scoring import score_architecture

            with self._drill.full_gpu(arch_id):
                rows = score_architecture(
                    arch_id=arch_id, space=space, spec=spec, metrics=metrics, seed=seed,
                    batch=self._batches[space], device=self._device, options=self._model_options,
                )
            for row in rows:
                row["device"] = self._label
                row["batch"] = int(self._batch_options.get("index", 0))  # `--batches`
            return rows

    return ray.remote(ScorerActor)
