"""The scorer actor: scores architectures on one device (a GPU Ray assigned it, or the CPU)."""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

from tfnas_ray import tables
from tfnas_ray.errors import TfnasError

# The error torch raises when a GPU is full; its type name is what score_architecture
# records. Scoring the same architecture again after freeing the cache often succeeds
# (another scorer on the same GPU held the memory), so it is retried, not recorded.
CUDA_OUT_OF_MEMORY = "OutOfMemoryError"


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

        def __init__(self, device_kind: str, batch_options: Mapping[str, Any], model_options: Mapping[str, Any], reports: Any = None):
            import torch

            from tfnas_ray.metrics.scoring import pick_threads

            self._drill = drills.active()  # no-op outside fault drills
            if self._drill.fail_init:
                raise RuntimeError(self._drill.fail_init)
            self._gpu_ids = [str(g) for g in ray.get_gpu_ids()]  # ids Ray gave this actor
            self._node = ray.get_runtime_context().get_node_id()
            self._problem = None  # why this actor cannot score, reported by describe()
            self._device = "cpu"
            self._label = f"cpu ({cpu_name()})"  # the device column names the hardware
            if device_kind == "gpu":
                gpu = ",".join(self._gpu_ids) or "?"
                if self._drill.simulate_gpus:
                    self._label = f"cpu (simulated gpu {gpu})"
                elif torch.cuda.is_available():
                    self._device = "cuda:0"  # CUDA_VISIBLE_DEVICES holds only the assigned GPU
                    self._label = f"cuda (gpu {gpu}: {torch.cuda.get_device_name(0)})"
                else:
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
                {"rows", "out_of_memory", "written", "write_error"}: `out_of_memory` lists
                the architectures that found the GPU full twice (their rows are left out,
                for the driver to retry).
            """
            from tfnas_ray.metrics import BATCHES, load_metrics

            load_metrics()  # fills the metric and batch registries in this process
            rows, out_of_memory = [], []
            for arch_id, space, spec, seed in items:
                if space not in self._batches:
                    self._batches[space] = BATCHES.get(space)(self._batch_options)
                started = time.perf_counter()  # the batch, built once per space, is not the arch's cost
                self._drill.before_architecture(arch_id, self._node)
                scored = self._score_one(arch_id, space, spec, metrics, seed)
                if scored is None:
                    out_of_memory.append(arch_id)
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

        def _score_one(self, arch_id, space, spec, metrics, seed) -> list[dict] | None:
            """The rows of one architecture; None when the GPU was full on two tries."""
            import torch

            from tfnas_ray.metrics.scoring import score_architecture

            for _ in range(2):
                if self._drill.out_of_memory(arch_id):
                    continue
                rows = score_architecture(
                    arch_id=arch_id, space=space, spec=spec, metrics=metrics, seed=seed,
                    batch=self._batches[space], device=self._device, options=self._model_options,
                )
                if not any((row["error"] or "").startswith(CUDA_OUT_OF_MEMORY) for row in rows):
                    for row in rows:
                        row["device"] = self._label
                        row["batch"] = int(self._batch_options.get("index", 0))  # `--batches`
                    return rows
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            return None

    return ray.remote(ScorerActor)

