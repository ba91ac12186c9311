"""Benchmark: seconds per architecture for the nb-nlp metrics, single process.

    python bench/bench_scoring.py [--archs 10] [--metrics hidden_cov,params] [--threads 1]

Targets (2-core CPU, one thread per scorer): hidden_cov alone ≥ 4 archs/s;
the full paper protocol ≤ 10 s per architecture on average. Not part of the tests.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.metrics import BATCHES, load_metrics
from tfnas_ray.metrics.scoring import score_architecture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=10)
    parser.add_argument("--metrics", default="hidden_cov,params")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_metrics()
    metrics = args.metrics.split(",")
    archs, _ = get_benchmark("nb-nlp-ptb").load()
    batch = BATCHES.get("nb-nlp")({})
    times = []
    for row in archs.slice(0, args.archs).to_pylist():
        started = time.perf_counter()
        score_architecture(arch_id=row["arch_id"], space="nb-nlp", spec=row["spec"], metrics=metrics, seed=0, batch=batch)
        times.append(time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"metrics={args.metrics} archs={len(times)} threads={args.threads}: "
        f"mean {statistics.mean(times):.3f} s/arch, median {statistics.median(times):.3f}, "
        f"{len(times) / sum(times):.2f} archs/s, peak RSS {peak_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
