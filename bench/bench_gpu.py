"""GPU benchmark: the device's matmul speed, values on the device vs the CPU for every
column, hidden_cov alone with CUDA graphs on and off, and archs/s for 1, 2 and 4 scorer
actors per GPU (fractional GPUs: --actors-per-gpu N gives each 1/N of a GPU).

    bash bench/gpu.sh            # or: python bench/bench_gpu.py [--archs 48] [--sets hidden_cov,paper]
    python bench/bench_gpu.py --device cpu --archs 2 --columns hidden_cov,params --sets hidden_cov --per-gpu 1   # the CI dry run

On a machine with one CUDA GPU (`--device cuda`, the default); prints one line per
measurement. `--device cpu` runs every step of the script on the CPU (the "device"
values are then CPU values, the graphs never capture, the scorers are CPU actors): the
tests run it that way on 2 architectures (two cheap columns: the 13 paper columns take
minutes per architecture on a CPU) so that the script itself is known to work before a
GPU runs it. Every failure is printed with its architecture, metric and error
(a line starting "error"), never skipped; rates count successful architectures only.
Results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_scoring import PAPER_COLUMNS, pick_archs  # noqa: E402

SETS = {"hidden_cov": ["hidden_cov"], "paper": PAPER_COLUMNS}
GRAPHS_ENV = "TFNAS_CUDA_GRAPHS"  # tfnas_ray.spaces.nasbench_nlp.cell.CUDA_GRAPHS_ENV


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def roofline(device: str) -> None:
    """fp32 matmul TFLOP/s at the cell's shapes (one block; five blocks) and at a large one."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # the scorer computes in full fp32
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    shapes = [(50, 600, 2400), (250, 600, 2400), (3500, 400, 2400)]
    if device == "cuda":
        shapes.append((8192, 8192, 8192))
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        for _ in range(3):
            a @ b
        _synchronize(device)
        reps = max(3 if device == "cpu" else 10, int((2e9 if device == "cpu" else 2e11) / (2 * m * k * n)))
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        _synchronize(device)
        seconds = (time.perf_counter() - start) / reps
        print(f"roofline {name}: ({m}, {k}) @ ({k}, {n}) fp32 {2 * m * k * n / seconds / 1e12:.3f} TFLOP/s", flush=True)


def _score(arch_id: str, spec: str, metrics: list[str], device: str, batch) -> tuple[dict, dict, float]:
    """({metric: value}, {metric: error}, seconds) of one architecture on `device`; an
    exception outside the metrics (model build, out of memory) is every metric's error."""
    from tfnas_ray.metrics.scoring import score_architecture

    start = time.perf_counter()
    try:
        rows = score_architecture(arch_id=arch_id, space="nb-nlp", spec=spec, metrics=metrics, seed=0, batch=batch, device=device)
        _synchronize(device)
    except Exception as exc:  # noqa: BLE001 — printed per architecture, the benchmark goes on
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return {}, {m: error for m in metrics}, time.perf_counter() - start
    values = {r["metric"]: r["value"] for r in rows if r["error"] is None}
    errors = {r["metric"]: r["error"] for r in rows if r["error"] is not None}
    return values, errors, time.perf_counter() - start


def _print_errors(arch_id: str, where: str, errors: dict) -> None:
    for metric, error in errors.items():
        print(f"error {arch_id[:10]} {metric} on {where}: {error}", flush=True)


def _relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a)


def values_on_device(device: str, archs: list[tuple[str, str]], columns: list[str]) -> None:
    """Every column on the device vs on the CPU, per architecture and per column; then
    hidden_cov alone on the device with CUDA graphs off and on (values and seconds)."""
    from tfnas_ray.metrics import BATCHES, load_metrics

    load_metrics()
    batch = BATCHES.get("nb-nlp")({})
    for arch_id, spec in archs:
        cpu, cpu_errors, cpu_seconds = _score(arch_id, spec, columns, "cpu", batch)
        dev, dev_errors, dev_seconds = _score(arch_id, spec, columns, device, batch)
        _print_errors(arch_id, "cpu", cpu_errors)
        _print_errors(arch_id, device, dev_errors)
        print(f"values {arch_id[:10]}: {len(columns)} columns, cpu {cpu_seconds:.2f} s, {device} {dev_seconds:.2f} s", flush=True)
        for metric in columns:
            if metric in cpu and metric in dev:
                print(f"value {arch_id[:10]} {metric:28s} cpu {cpu[metric]:+.9e} {device} {dev[metric]:+.9e} "
                      f"rel. diff {_relative(dev[metric], cpu[metric]):.1e}", flush=True)
        both = [m for m in columns if m in cpu and m in dev]
        if both:
            worst = max(both, key=lambda m: _relative(dev[m], cpu[m]))  # ties: the first column
            print(f"values {arch_id[:10]}: largest relative difference {_relative(dev[worst], cpu[worst]):.1e} ({worst}); "
                  f"{len(both)} of {len(columns)} columns compared", flush=True)
        else:
            print(f"values {arch_id[:10]}: no column succeeded on both devices", flush=True)
    saved = os.environ.get(GRAPHS_ENV)
    try:
        for arch_id, spec in archs:
            runs = {}
            for graphs in ("0", "1"):
                os.environ[GRAPHS_ENV] = graphs
                runs[graphs] = _score(arch_id, spec, ["hidden_cov"], device, batch)
                _print_errors(arch_id, f"{device} graphs {'on' if graphs == '1' else 'off'}", runs[graphs][1])
            (off, _, off_s), (on, _, on_s) = runs["0"], runs["1"]
            if "hidden_cov" in off and "hidden_cov" in on:
                print(f"hidden_cov {arch_id[:10]} on {device}: graphs off {off_s:.3f} s, on {on_s:.3f} s "
                      f"(on/off {on_s / off_s:.2f}); values {off['hidden_cov']:+.9e} vs {on['hidden_cov']:+.9e}, "
                      f"rel. diff {_relative(on['hidden_cov'], off['hidden_cov']):.1e}", flush=True)
            else:
                print(f"hidden_cov {arch_id[:10]} on {device}: graphs off {'ok' if off else 'failed'}, "
                      f"on {'ok' if on else 'failed'} (errors above)", flush=True)
    finally:
        if saved is None:
            os.environ.pop(GRAPHS_ENV, None)
        else:
            os.environ[GRAPHS_ENV] = saved


def throughput_line(label: str, rows: list[dict], n_archs: int, seconds: float) -> str:
    """archs/s over the architectures every metric of which succeeded; the failures printed
    by the caller. Never raises on an empty or all-failed run."""
    per_arch: dict[str, float] = {}
    failed: set[str] = set()
    for row in rows:
        per_arch[row["arch_id"]] = per_arch.get(row["arch_id"], 0.0) + (row["seconds"] or 0.0)
        if row["error"] is not None or row["value"] is None:
            failed.add(row["arch_id"])
    succeeded = [a for a in per_arch if a not in failed]
    if not succeeded:
        return f"throughput {label}: no architecture succeeded ({len(failed)} of {n_archs} failed) in {seconds:.1f} s"
    median = statistics.median(per_arch[a] for a in succeeded)
    rate = len(succeeded) / seconds if seconds > 0 else math.nan
    return (f"throughput {label}: {len(succeeded)} of {n_archs} archs succeeded in {seconds:.1f} s "
            f"(actor start included) = {rate:.2f} archs/s; median {median:.2f} s per arch in a scorer"
            + (f"; {len(failed)} failed" if failed else ""))


def throughput(device: str, archs: list[tuple[str, str]], sets: list[str], per_gpu: list[int]) -> None:
    import ray

    from tfnas_ray.benchmarks import get_benchmark
    from tfnas_ray.distributed.scoring import ScoreConfig, run_scoring

    wanted = {arch_id for arch_id, _ in archs}
    table, _ = get_benchmark("nb-nlp-ptb").load()
    keep, seen = [], set()
    for i, arch_id in enumerate(table.column("arch_id").to_pylist()):
        if arch_id in wanted and arch_id not in seen:
            seen.add(arch_id)
            keep.append(i)
    table = table.take(keep)
    # a Ray of its own ("local"): never another job's cluster that happens to run on this host
    ray.init(address="local", include_dashboard=False, num_cpus=max(per_gpu) if device == "cpu" else None)
    try:
        for s in sets:
            for n in per_gpu:
                label = f"{s:10s} {n} scorer(s)/GPU" if device == "cuda" else f"{s:10s} {n} CPU scorer(s)"
                options = {"device": "gpu", "actors_per_gpu": n} if device == "cuda" else {"device": "cpu", "workers": n}
                with tempfile.TemporaryDirectory() as out:
                    start = time.perf_counter()
                    try:
                        config = ScoreConfig(metrics=tuple(SETS[s]), seed=0, seeding="fixed", shard_size=1, **options)
                        summary = run_scoring(table, out, config, progress=False, log=lambda *a, **k: None)
                    except Exception as exc:  # noqa: BLE001 — one configuration failed; say so, go on
                        print(f"error throughput {label}: {type(exc).__name__}: {exc}".splitlines()[0], flush=True)
                        traceback.print_exc(limit=3)
                        print(throughput_line(label, [], len(keep), time.perf_counter() - start), flush=True)
                        continue
                    rows = summary.table.to_pylist() if summary.table is not None else []
                    for row in rows:
                        if row["error"] is not None:
                            print(f"error {row['arch_id'][:10]} {row['metric']} in throughput {label}: {row['error']}", flush=True)
                    print(throughput_line(label, rows, len(keep), summary.seconds), flush=True)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the dry run of every step")
    parser.add_argument("--archs", type=int, default=48, help="architectures for the throughput runs")
    parser.add_argument("--value-archs", type=int, default=2, help="architectures for the value comparisons")
    parser.add_argument("--columns", default="paper",
                        help="columns of the device-vs-CPU comparison: paper (the 13 paper columns) or a comma list")
    parser.add_argument("--sets", default="hidden_cov,paper", help=f"column sets of the throughput runs: {', '.join(SETS)}")
    parser.add_argument("--per-gpu", default="1,2,4", help="scorers per GPU (CPU scorers with --device cpu)")
    args = parser.parse_args()
    sets = args.sets.split(",")
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        parser.error(f"--sets {','.join(unknown)} unknown; known: {', '.join(SETS)}")
    per_gpu = [int(n) for n in args.per_gpu.split(",")]
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"no CUDA device visible to torch {torch.__version__}; run this on a GPU machine (or --device cpu)")
    print(f"device {args.device}; torch {torch.__version__}", flush=True)
    roofline(args.device)
    archs = pick_archs(max(args.archs, args.value_archs))
    columns = PAPER_COLUMNS if args.columns == "paper" else args.columns.split(",")
    values_on_device(args.device, archs[: args.value_archs], columns)
    throughput(args.device, archs[: args.archs], sets, per_gpu)
    print("done", flush=True)


if __name__ == "__main__":
    main()
