"""GPU benchmark: the GPU's matmul roofline, values on CUDA, and archs/s for 1, 2 and 4
scorer actors per GPU (fractional GPUs: --actors-per-gpu N gives each 1/N of a GPU).

    bash bench/gpu.sh            # or: python bench/bench_gpu.py [--archs 48] [--sets hidden_cov,paper]

Run on a machine with one CUDA GPU; prints one line per measurement. Not part of the
tests (they pass without a GPU); results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_scoring import PAPER_COLUMNS, pick_archs  # noqa: E402

SETS = {"hidden_cov": ["hidden_cov"], "paper": PAPER_COLUMNS}


def roofline() -> None:
    """fp32 matmul TFLOP/s at the cell's shapes (one block; five blocks) and at a large one."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # the scorer computes in full fp32
    name = torch.cuda.get_device_name(0)
    for m, k, n in [(50, 600, 2400), (250, 600, 2400), (3500, 400, 2400), (8192, 8192, 8192)]:
        a, b = torch.randn(m, k, device="cuda"), torch.randn(k, n, device="cuda")
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        reps = max(10, int(2e11 / (2 * m * k * n)))
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / reps
        print(f"roofline {name}: ({m}, {k}) @ ({k}, {n}) fp32 {2 * m * k * n / seconds / 1e12:.2f} TFLOP/s", flush=True)


def values_on_cuda() -> None:
    """hidden_cov with the captured step vs the eager loop, and the paper columns on CUDA
    vs on the CPU, for two shipped architectures."""
    import torch

    from tfnas_ray.metrics import BATCHES, load_metrics
    from tfnas_ray.metrics.scoring import score_architecture

    load_metrics()
    batch = BATCHES.get("nb-nlp")({})
    for arch_id, spec in pick_archs(2):
        rows = {}
        for device in ("cpu", "cuda"):
            start = time.perf_counter()
            got = score_architecture(arch_id=arch_id, space="nb-nlp", spec=spec, metrics=PAPER_COLUMNS, seed=0, batch=batch, device=device)
            if device == "cuda":
                torch.cuda.synchronize()
            rows[device] = ({r["metric"]: r["value"] for r in got}, time.perf_counter() - start)
        worst = max(
            (abs(rows["cuda"][0][m] - rows["cpu"][0][m]) / abs(rows["cpu"][0][m]), m)
            for m in PAPER_COLUMNS if rows["cpu"][0][m] and rows["cuda"][0][m] is not None
        )
        print(f"values {arch_id[:10]}: paper columns cpu {rows['cpu'][1]:.1f} s, cuda {rows['cuda'][1]:.2f} s; largest relative difference {worst[0]:.1e} ({worst[1]})", flush=True)


def throughput(n_archs: int, sets: list[str], per_gpu: list[int]) -> None:
    import ray

    from tfnas_ray.distributed.scoring import ScoreConfig, run_scoring

    from tfnas_ray.benchmarks import get_benchmark

    wanted = {arch_id for arch_id, _ in pick_archs(n_archs)}
    table, _ = get_benchmark("nb-nlp-ptb").load()
    keep, seen = [], set()
    for i, arch_id in enumerate(table.column("arch_id").to_pylist()):
        if arch_id in wanted and arch_id not in seen:
            seen.add(arch_id)
            keep.append(i)
    table = table.take(keep)
    archs = keep
    ray.init(include_dashboard=False)
    try:
        for s in sets:
            for n in per_gpu:
                with tempfile.TemporaryDirectory() as out:
                    config = ScoreConfig(metrics=tuple(SETS[s]), seed=0, seeding="fixed", shard_size=1, device="gpu", actors_per_gpu=n)
                    summary = run_scoring(table, out, config, progress=False)
                    per_arch = {}
                    for row in summary.table.to_pylist():
                        per_arch[row["arch_id"]] = per_arch.get(row["arch_id"], 0.0) + (row["seconds"] or 0.0)
                    print(
                        f"throughput {s:10s} {n} scorer(s)/GPU: {len(archs)} archs in {summary.seconds:.1f} s "
                        f"(actor start included) = {len(archs) / summary.seconds:.2f} archs/s; "
                        f"median {statistics.median(per_arch.values()):.2f} s per arch in a scorer",
                        flush=True,
                    )
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=48)
    parser.add_argument("--sets", default="hidden_cov,paper")
    parser.add_argument("--per-gpu", default="1,2,4")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit(f"no CUDA device visible to torch {torch.__version__}; run this on a GPU machine")
    roofline()
    values_on_cuda()
    throughput(args.archs, args.sets.split(","), [int(n) for n in args.per_gpu.split(",")])


if __name__ == "__main__":
    main()
