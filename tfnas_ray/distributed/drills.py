"""Fault drills: faults a scorer actor stages on itself, to test recovery.

A drill is never part of a scoring command's configuration. It is a JSON object in the
environment variable `TFNAS_DRILL`, read only inside the scorer actors; the driver
forwards the variable to the actors it starts (`forward_env`) without reading it.
Without the variable (every real run) nothing here has any effect.

Fields of the JSON object (all optional):
    exit: {arch_id: n}: the scorer process exits abruptly (as a segfault would) on the
        first n attempts at that architecture.
    pause: {arch_id: seconds}: on the first attempt at that architecture the scorer
        writes `paused-<arch_id>` (holding its node id) to `dir`, then sleeps — a window
        in which a test removes the node or kills the process.
    cuda_oom: {arch_id: n}: the first n tries at that architecture run on a "full GPU":
        every module forward raises a real `torch.OutOfMemoryError`, as torch does when
        a GPU is full (a metric that runs no forward, such as params, does not notice).
    fail_init: the scorer's constructor raises RuntimeError with this message.
    simulate_gpus: GPU scorers run on the CPU (a cluster of logical GPUs,
        `ray start --num-gpus 4` on a machine without any).
    dir: where attempts are counted (shared by every scorer of a machine).

Example:
    TFNAS_DRILL='{"exit": {"ab12": 1}, "dir": "/tmp/drill"}' tfnas score archs.parquet -m params
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

DRILL_ENV = "TFNAS_DRILL"


@dataclass(frozen=True)
class Drill:
    exit: Mapping[str, int] = field(default_factory=dict)
    pause: Mapping[str, float] = field(default_factory=dict)
    cuda_oom: Mapping[str, int] = field(default_factory=dict)
    fail_init: str | None = None
    simulate_gpus: bool = False
    dir: str = "."

    def to_env(self) -> dict[str, str]:
        """The environment that stages this drill (for tests: `monkeypatch.setenv`)."""
        return {DRILL_ENV: json.dumps({k: v for k, v in self.__dict__.items()})}

    def first_attempts(self, kind: str, arch_id: str, times: int) -> bool:
        """Count an attempt of `kind` at `arch_id`; True while within the first `times`."""
        marker_dir = Path(self.dir)
        marker_dir.mkdir(parents=True, exist_ok=True)
        marker = marker_dir / f"{kind}-{arch_id}"
        attempts = int(marker.read_text()) if marker.exists() else 0
        if attempts >= times:
            return False
        # Atomically: a scorer SIGKILLed mid-write (the chaos test) leaves no empty count.
        partial = marker.with_name(f".{marker.name}.{os.getpid()}")
        partial.write_text(str(attempts + 1))
        os.replace(partial, marker)
        return True

    def before_architecture(self, arch_id: str, node_id: str) -> None:
        """Stage this drill's faults before scoring `arch_id` (in the scorer process)."""
        if arch_id in self.pause and self.first_attempts("pause", arch_id, 1):
            import time

            (Path(self.dir) / f"paused-{arch_id}").write_text(node_id)
            time.sleep(self.pause[arch_id])
        if arch_id in self.exit and self.first_attempts("exit", arch_id, self.exit[arch_id]):
            os._exit(17)

    @contextlib.contextmanager
    def full_gpu(self, arch_id: str) -> Iterator[None]:
        """One try at `arch_id`: within the first `cuda_oom[arch_id]` tries, every module
        forward in this process raises torch.OutOfMemoryError while the block runs."""
        if not (arch_id in self.cuda_oom and self.first_attempts("cuda-oom", arch_id, self.cuda_oom[arch_id])):
            yield
            return
        import torch

        def full(module, inputs):
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (fault drill: {type(module).__name__} forward of {arch_id})"
            )

        hook = torch.nn.modules.module.register_module_forward_pre_hook(full)
        try:
            yield
        finally:
            hook.remove()


def active() -> Drill:
    """The drill staged in this process's environment (none: a Drill that does nothing)."""
    text = os.environ.get(DRILL_ENV)
    return Drill(**json.loads(text)) if text else Drill()


def forward_env() -> dict[str, str]:
    """Environment variables the driver passes to the actors it starts: the drill, if
    one is staged (actors of a running cluster do not see the driver's environment)."""
    return {DRILL_ENV: os.environ[DRILL_ENV]} if os.environ.get(DRILL_ENV) else {}
