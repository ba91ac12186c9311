"""Benchmark: nb-nlp scoring speed against the hardware, and against an older revision.

    python bench/bench_scoring.py [--archs 8] [--sets hidden_cov,paper] [--against a2d0e83]
                                  [--scaling] [--roofline]

For each architecture (evenly spaced over the distinct shipped PTB ones) and column set
("hidden_cov": `--metric hidden_cov` alone; "paper": the paper's 13 columns), a worker
process scores it the way a CPU scorer does (one thread: OMP_NUM_THREADS=1, also for
numpy's BLAS) and reports wall and CPU seconds (CPU seconds are what a shared machine
distorts least), model construction included. It prints:

  * per architecture: seconds, its matmul GFLOP counted from the recipe (bench/rnn_cost.py),
    the seconds those matmuls take at this machine's measured speed at the same shapes
    (the roofline) and the percentage of it reached (`--roofline`);
  * with `--against REV`: the same architectures scored by REV's code (a `git archive`
    of REV's tfnas_ray on PYTHONPATH, in its own worker) interleaved with the current
    code, arch by arch, and the ratio current / REV;
  * with `--scaling`: archs/s of 1 worker and of 2 concurrent workers (processes, as the
    Ray scorer pool runs them: one per core), and each worker's peak RSS.

Not part of the tests. bench/RESULTS.md records results and the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAPER_COLUMNS = [
    "hidden_cov", "hidden_cov_l2", "hidden_cov_l3", "activation_distance", "synaptic_saliency",
    "jacob_cov", "jacobian_cosine", "jacobian_noise", "jacobian_noise_cosine",
    "jacobian_more_noise", "jacobian_more_noise_cosine", "hidden_saliency", "params",
]
SETS = {"hidden_cov": ["hidden_cov"], "paper": PAPER_COLUMNS}
WARMUP_SPEC = json.dumps({"f": {"op": "linear", "input": ["x", "h_prev_0"]}, "h_new_0": {"op": "activation_tanh", "input": ["f"]}})


# ------------------------------------------------------------------------------ worker


def worker() -> None:
    """Read {"spec", "metrics"} lines from stdin, score each, answer one JSON line."""
    import torch

    from tfnas_ray.metrics import BATCHES, load_metrics
    from tfnas_ray.metrics.scoring import score_architecture

    torch.set_num_threads(1)
    load_metrics()
    batch = BATCHES.get("nb-nlp")({})
    for line in sys.stdin:
        job = json.loads(line)
        wall, cpu = time.perf_counter(), time.process_time()
        rows = score_architecture(arch_id="bench", space="nb-nlp", spec=job["spec"], metrics=job["metrics"], seed=0, batch=batch)
        reply = {
            "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "values": {r["metric"]: r["value"] for r in rows},
        }
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class Worker:
    """A scoring process running `code` (a directory holding tfnas_ray) on one thread."""

    def __init__(self, code: Path):
        env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(code),
        )
        self.score(WARMUP_SPEC, ["hidden_cov"])  # imports, corpus, first allocations

    def score(self, spec: str, metrics: list[str]) -> dict:
        self.proc.stdin.write(json.dumps({"spec": spec, "metrics": metrics}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench worker exited with {self.proc.wait()}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def snapshot(rev: str, into: Path) -> Path:
    """REV's tfnas_ray, extracted under `into` (no worktree, no checkout)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "tfnas_ray"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


# ------------------------------------------------------------------------------ driver


def pick_archs(n: int) -> list[tuple[str, str]]:
    """n distinct shipped PTB architectures, evenly spaced in benchmark order."""
    from tfnas_ray.benchmarks import get_benchmark

    table, _ = get_benchmark("nb-nlp-ptb").load()
    seen: dict[str, str] = {}
    for arch_id, spec in zip(table.column("arch_id").to_pylist(), table.column("spec").to_pylist()):
        seen.setdefault(arch_id, spec)
    items = list(seen.items())
    step = max(1, len(items) // n)
    return items[::step][:n]


def _median(values):
    return statistics.median(values) if values else float("nan")


def compare(archs, sets, against: str | None, roofline: bool) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import rnn_cost

    roof = rnn_cost.Roofline() if roofline else None
    with tempfile.TemporaryDirectory(prefix="bench-base-") as tmp:
        codes = {"current": ROOT}
        if against:
            codes[against] = snapshot(against, Path(tmp))
        workers = {(name, s): Worker(code) for name, code in codes.items() for s in sets}
        results = {key: [] for key in workers}
        print(f"{len(archs)} archs, sets {', '.join(sets)}, code: {', '.join(codes)} (1 thread per worker)")
        for i, (arch_id, spec) in enumerate(archs):
            for s in sets:
                order = list(codes) if i % 2 == 0 else list(reversed(codes))  # cancel drift
                line = [f"{arch_id[:10]} {s:10s}"]
                for name in order:
                    reply = workers[(name, s)].score(spec, SETS[s])
                    results[(name, s)].append(reply)
                for name in codes:
                    r = results[(name, s)][-1]
                    line.append(f"{name}: {r['wall']:6.2f} s wall {r['cpu']:6.2f} s cpu")
                if against:
                    new, old = results[("current", s)][-1], results[(against, s)][-1]
                    line.append(f"ratio cpu {new['cpu'] / old['cpu']:.2f} wall {new['wall'] / old['wall']:.2f}")
                    diff = [
                        abs(new["values"][m] - old["values"][m]) / max(abs(old["values"][m]), 1e-300)
                        for m in SETS[s] if new["values"].get(m) is not None and old["values"].get(m) is not None
                    ]
                    line.append(f"max rel diff {max(diff or [0]):.1e}")
                if roof is not None:
                    work = rnn_cost.hidden_cov_work(spec) if s == "hidden_cov" else rnn_cost.paper_work(spec)
                    ideal = roof.seconds(work)
                    cpu = results[("current", s)][-1]["cpu"]
                    line.append(f"{work.flops / 1e9:6.1f} GFLOP roofline {ideal:5.2f} s = {100 * ideal / cpu:3.0f}%")
                print(" | ".join(line), flush=True)
        print("\nsummary (medians over archs)")
        for s in sets:
            for name in codes:
                rs = results[(name, s)]
                print(
                    f"  {s:10s} {name:10s}: {_median([r['cpu'] for r in rs]):6.2f} s cpu, "
                    f"{_median([r['wall'] for r in rs]):6.2f} s wall per arch, peak RSS {max(r['peak_mib'] for r in rs):.0f} MiB"
                )
            if against:
                cur, old = results[("current", s)], results[(against, s)]
                print(
                    f"  {s:10s} ratio current/{against}: cpu {_median([a['cpu'] / b['cpu'] for a, b in zip(cur, old)]):.2f}, "
                    f"wall {_median([a['wall'] / b['wall'] for a, b in zip(cur, old)]):.2f} "
                    f"(total cpu {sum(a['cpu'] for a in cur) / sum(b['cpu'] for b in old):.2f})"
                )
            if roof is not None:
                pct = []
                for (arch_id, spec), r in zip(archs, results[("current", s)]):
                    work = rnn_cost.hidden_cov_work(spec) if s == "hidden_cov" else rnn_cost.paper_work(spec)
                    pct.append(100 * roof.seconds(work) / r["cpu"])
                print(f"  {s:10s} roofline reached (current, CPU time): median {_median(pct):.0f}% (range {min(pct):.0f}–{max(pct):.0f}%)")
        for w in workers.values():
            w.close()


def scaling(archs, sets) -> None:
    """archs/s with 1 worker, then with 2 concurrent workers, on the same archs."""
    for s in sets:
        rates = {}
        for n in (1, 2):
            workers = [Worker(ROOT) for _ in range(n)]
            # One queue, each worker taking the next arch when it is free — as the Ray
            # scorer pool hands out work (a fixed split would measure the split's imbalance).
            pending = queue.SimpleQueue()
            for _, spec in archs:
                pending.put(spec)
            peaks = [0.0] * n
            cpu = []  # CPU seconds per arch: ≈ equal for 1 and 2 workers when nothing is shared but cores

            def run(k):
                while True:
                    try:
                        spec = pending.get_nowait()
                    except queue.Empty:
                        return
                    reply = workers[k].score(spec, SETS[s])
                    peaks[k] = max(peaks[k], reply["peak_mib"])
                    cpu.append(reply["cpu"])

            started = time.perf_counter()
            threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - started
            rates[n] = len(archs) / seconds
            for w in workers:
                w.close()
            print(
                f"  {s:10s} {n} worker(s): {len(archs)} archs in {seconds:.1f} s = {rates[n]:.3f} archs/s, "
                f"{sum(cpu):.1f} s CPU in all, peak RSS per worker {', '.join(f'{p:.0f}' for p in peaks)} MiB",
                flush=True,
            )
        print(f"  {s:10s} 2 workers / 1 worker throughput: {rates[2] / rates[1]:.2f}×")


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        worker()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=8, help="distinct shipped PTB architectures, evenly spaced")
    parser.add_argument("--sets", default="hidden_cov,paper", help="column sets: hidden_cov, paper")
    parser.add_argument("--against", default=None, help="a git revision to compare with, interleaved (e.g. a2d0e83)")
    parser.add_argument("--roofline", action="store_true", help="FLOPs and the measured matmul roofline per arch")
    parser.add_argument("--scaling", action="store_true", help="archs/s with 1 and with 2 concurrent workers")
    parser.add_argument("--only-scaling", action="store_true", help="skip the per-arch table (implies --scaling)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)  # the roofline is one core's, like each scorer's
    sets = args.sets.split(",")
    unknown = set(sets) - set(SETS)
    if unknown:
        parser.error(f"unknown set(s) {sorted(unknown)}; known: {', '.join(SETS)}")
    archs = pick_archs(args.archs)
    if not args.only_scaling:
        compare(archs, sets, args.against, args.roofline)
    if args.scaling or args.only_scaling:
        scaling(archs, sets)


if __name__ == "__main__":
    main()
