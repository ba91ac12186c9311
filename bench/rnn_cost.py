"""Matmul FLOPs of scoring one NAS-Bench-NLP architecture, counted from its recipe,
and the machine's matmul throughput at exactly those shapes (the roofline).

Every linear node input is one (rows, in) @ (in, H) product; the cell fuses the products
that read the same source into one matmul (`RecurrentLayer`), so the shapes here are the
fused ones: the all-steps input projection (T·B, I) @ (I, n_x·H) and, per step and per
source node, (B, H) @ (H, n_s·H). Elementwise work is not counted (it is not matmul).

Work counted per column set (T = 70, B = 50, the paper's batch):
  hidden_cov: one forward of layer 1 at B, plus the correlation of its H units over
      the B·T observations (2·H²·B·T, float64);
  paper: see `paper_work` (the protocol as the CPU path runs it).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import torch

from tfnas_ray.spaces.nasbench_nlp.model import LMConfig
from tfnas_ray.spaces.nasbench_nlp.recipe import parse_recipe

T, B = 70, 50


@dataclass(frozen=True)
class Work:
    """Matmul shapes (M, K, N, dtype) -> how many times each runs."""

    shapes: Counter

    @property
    def flops(self) -> int:
        return sum(2 * m * k * n * count for (m, k, n, _), count in self.shapes.items())

    def __add__(self, other: "Work") -> "Work":
        return Work(self.shapes + other.shapes)


def _layer_shapes(spec: str, layers: int, rows: int) -> Counter:
    """Forward matmuls of the first `layers` layers with `rows` samples per step."""
    recipe = parse_recipe(spec)
    shapes: Counter = Counter()
    for input_size, hidden in LMConfig(ntoken=10_000).layer_sizes()[:layers]:
        readers: Counter = Counter()
        for node in recipe.nodes:
            if node.op == "linear":
                readers.update(node.inputs)
        for source, n in readers.items():
            if source == "x":
                shapes[(T * rows, input_size, n * hidden, "float32")] += 1
            else:
                shapes[(rows, hidden, n * hidden, "float32")] += T
    return shapes


def hidden_cov_work(spec: str) -> Work:
    hidden = LMConfig(ntoken=10_000).nhid
    shapes = _layer_shapes(spec, 1, B)
    shapes[(hidden, B * T, hidden, "float64")] += 1  # corrcoef's X Xᵀ
    return Work(shapes)


def paper_work(spec: str) -> Work:
    """The paper pass as the CPU runs it: 4 forwards of B columns (clean, 3 noised),
    5 input-gradient backwards (the clean graph twice: ones and y), the weight
    gradients of pass 4 over all T·B rows at once, and 3 float64 correlations."""
    one = _layer_shapes(spec, 3, B)
    shapes: Counter = Counter()
    for shape, count in one.items():
        shapes[shape] += (4 + 5) * count  # every backward product has its forward's shape
    for (m, k, n, dtype), count in one.items():
        shapes[(n, m * count, k, dtype)] += 1  # ∂W = ∂projᵀ (n·H, T·B) @ input (T·B, in)
    for _, hidden in LMConfig(ntoken=10_000).layer_sizes():
        shapes[(hidden, B * T, hidden, "float64")] += 1
    return Work(shapes)


def matmul_seconds(shape: tuple[int, int, int, str], *, min_seconds: float = 0.05) -> float:
    """Seconds per (M, K) @ (K, N) product on this machine (current torch threads),
    the median of repeated timings (process CPU time, robust to a shared machine)."""
    m, k, n, dtype = shape
    kind = getattr(torch, dtype)
    a, b = torch.randn(m, k, dtype=kind), torch.randn(k, n, dtype=kind)
    a @ b
    samples = []
    spent = 0.0
    while len(samples) < 5 or spent < min_seconds:
        start = time.process_time()
        a @ b
        took = time.process_time() - start
        samples.append(took)
        spent += took
        if len(samples) > 200:
            break
    samples.sort()
    return max(samples[len(samples) // 2], 1e-9)


class Roofline:
    """Seconds a `Work` takes at this machine's measured matmul speed, memoised per shape."""

    def __init__(self) -> None:
        self._seconds: dict[tuple, float] = {}

    def seconds(self, work: Work) -> float:
        total = 0.0
        for shape, count in work.shapes.items():
            if shape not in self._seconds:
                self._seconds[shape] = matmul_seconds(shape)
            total += self._seconds[shape] * count
        return total

    def gflops(self, work: Work) -> float:
        return work.flops / self.seconds(work) / 1e9
