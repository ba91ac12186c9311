"""Shipped benchmarks: published architectures with their trained results.

Each benchmark registers a `Benchmark` in `BENCHMARKS`; `load()` returns its archs and
truth tables, both carrying the benchmark's own id in `benchmark_id`.
"""

from __future__ import annotations

import importlib
import json
import lzma
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Sequence

import pyarrow as pa

from tfnas_ray.registry import Registry


@dataclass(frozen=True)
class Benchmark:
    """A published benchmark shipped with the package.

    Attributes:
        name: registry key, also the `source` of its rows ("nb-nlp-ptb").
        space: the search space its architectures belong to.
        description: one line for `tfnas benchmarks`.
        primary_target: the target `reproduce` correlates against first.
        default_metrics: what `tfnas reproduce NAME` scores.
        load: () -> (archs table, truth table).
    """

    name: str
    space: str
    description: str
    primary_target: str
    default_metrics: tuple[str, ...]
    load: Callable[[], tuple[pa.Table, pa.Table]]


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")

_BENCHMARK_MODULES: Sequence[str] = (
    "tfnas_ray.spaces.nasbench_nlp.benchmarks",
    "tfnas_ray.spaces.nasbench_bert.benchmarks",
)


def load_benchmarks() -> Registry[Benchmark]:
    for module in _BENCHMARK_MODULES:
        importlib.import_module(module)
    return BENCHMARKS


def get_benchmark(name: str) -> Benchmark:
    return load_benchmarks().get(name)


def read_packaged_json(filename: str):
    """Parse an xz-compressed JSON (or JSON-lines, if the name ends in .jsonl.xz) file
    from `tfnas_ray/data/files`."""
    blob = resources.files("tfnas_ray.data").joinpath("files", filename).read_bytes()
    text = lzma.decompress(blob).decode("utf-8")
    if filename.endswith(".jsonl.xz"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)
