"""nb-bert peak memory per scorer: whole-batch gradient passes vs micro-batches, and a
given commit's code vs this tree's, on the same configs, batch and columns.

    # what the coordinator runs (the paper's protocol: 128 × 512 tokens, train mode;
    # ~13 GiB and ~100 s per (config, version) for the whole batch — one at a time):
    PYTHONPATH=. python bench/bench_nb_bert_memory.py --against 5a94169 --configs 0,1 --seq-len 512 --micro-batch 16
    # a reduced size that runs on a shared 2-core machine in a few minutes:
    PYTHONPATH=. python bench/bench_nb_bert_memory.py --against 5a94169 --configs 0 --seq-len 128 --micro-batch 16

Each (config, version) runs in its own fresh process, one after the other (never two at
once, so one peak does not push the other out): the benchmark config `id` of the shipped
NAS-Bench-BERT table, as-scored reading (the published models, hidden 256), the metric
batch of 128 WikiText-2 articles × `--seq-len` tokens in train mode (dropout on, the
authors' protocol), seed 0, the default columns of `tfnas reproduce nb-bert` plus the
MLM-loss columns (grad_norm, snip, fisher and the `_mlm` variants: every gradient pass
but GraSP's), one torch thread. The process reports its peak resident set (VmHWM of
/proc/self/status, which is ru_maxrss) after scoring, the seconds of
`score_architecture`, and the values.

Versions: `--against REV` (REV's tfnas_ray from `git archive`, whole batch: it has no
micro-batches), this tree with the whole batch, and this tree with `--micro-batch` rows
per forward. The table printed gives peak MiB, seconds and the largest relative
difference of each version's values from REV's (or from this tree's whole batch).
Results and commands: bench/RESULTS_nb_bert_memory.md. Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = [
    "head_importance", "head_importance_normalized", "head_confidence", "head_confidence_normalized",
    "softmax_confidence", "softmax_confidence_normalized", "synaptic_saliency", "synaptic_saliency_normalized",
    "synaptic_diversity", "synaptic_diversity_normalized", "activation_distance", "activation_distance_normalized",
    "jacob_cov", "params", "synflow", "naswot",
    "head_importance_mlm", "synaptic_saliency_mlm", "synaptic_diversity_mlm", "jacob_cov_mlm", "grad_norm", "snip", "fisher",
]

WORKER = r"""
import json, resource, sys, time
import torch
import tfnas_ray
torch.set_num_threads(1)
from tfnas_ray.metrics import BATCHES, load_metrics
from tfnas_ray.metrics.scoring import score_architecture
from tfnas_ray.spaces.nasbench_bert.benchmarks import records
index, seq_len, micro_batch, metrics = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
load_metrics()
batch = BATCHES.get("nb-bert")({"seq_len": seq_len, "mode": "train"})
if micro_batch:
    batch = {**batch, "micro_batch": micro_batch}
rec = records()[index]
started = time.perf_counter()
rows = score_architecture(arch_id=str(rec["id"]), space="nb-bert", spec=rec["spec"], metrics=metrics, seed=0,
                          batch=batch, options={"reading": "as-scored"})
seconds = time.perf_counter() - started
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({
    "tree": tfnas_ray.__file__,
    "seconds": seconds,
    "vm_hwm_mib": int(status["VmHWM"].split()[0]) / 1024,
    "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "values": {r["metric"]: r["value"] for r in rows},
    "errors": {r["metric"]: r["error"] for r in rows if r["error"]},
}))
"""


def run(tree: Path, index: int, seq_len: int, micro_batch: int, metrics: list[str]) -> dict:
    """One (config, version) in a fresh process whose only code is `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # cwd = the tree: `python -c` puts the working directory first on sys.path
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(index), str(seq_len), str(micro_batch), ",".join(metrics)],
        env=env, cwd=tree, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"worker for config {index} in {tree} exited {done.returncode}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["tree"].startswith(str(tree)):
        raise SystemExit(f"worker imported {result['tree']}, not the tree {tree}")
    return result


def largest_difference(values: dict, reference: dict) -> tuple[float, str]:
    worst = (0.0, "-")
    for name, ref in reference.items():
        got = values.get(name)
        if ref is None or got is None:
            if (ref is None) != (got is None):
                return float("inf"), name
            continue
        difference = abs(got - ref) / abs(ref) if ref else abs(got)
        if difference > worst[0]:
            worst = (difference, name)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="5a94169", help="commit whose code is measured first (whole batch)")
    parser.add_argument("--configs", default="0", help="benchmark config ids, comma-separated")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (the protocol: 512)")
    parser.add_argument("--micro-batch", type=int, default=16, help="rows per forward of this tree's micro-batched run")
    parser.add_argument("--metrics", default=",".join(COLUMNS))
    parser.add_argument("--versions", default="against,whole,micro",
                        help="which rows to run: against (REV, whole batch), whole (this tree), micro (this tree, micro-batches)")
    args = parser.parse_args()
    if not 3 <= args.seq_len <= 512:
        parser.error(f"--seq-len must be in [3, 512], got {args.seq_len}")
    if args.micro_batch < 1:
        parser.error(f"--micro-batch must be a positive number of rows, got {args.micro_batch}")
    configs = [int(c) for c in args.configs.split(",")]
    metrics = args.metrics.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-nbb-mem-") as tmp:
        old = Path(tmp) / "against"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.against, "tfnas_ray"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        versions = [
            (key, label, tree, micro)
            for key, label, tree, micro in (
                ("against", f"{args.against} whole batch", old, 0),
                ("whole", "this tree, whole batch", ROOT, 0),
                ("micro", f"this tree, micro-batch {args.micro_batch}", ROOT, args.micro_batch),
            )
            if key in args.versions.split(",")
        ]
        if not versions:
            parser.error(f"--versions {args.versions!r} names none of against, whole, micro")
        print(f"nb-bert, as-scored, 128 × {args.seq_len} tokens, train mode, seed 0, {len(metrics)} columns, 1 thread; "
              f"one fresh process per row, run one at a time", flush=True)
        print(f"{'config':>6s}  {'version':34s} {'peak MiB':>9s} {'seconds':>8s}  largest rel. diff from the first row", flush=True)
        for index in configs:
            reference = None
            for _, label, tree, micro in versions:
                result = run(tree, index, args.seq_len, micro, metrics)
                if reference is None:
                    reference = result["values"]
                difference, name = largest_difference(result["values"], reference)
                errors = f"  errors: {result['errors']}" if result["errors"] else ""
                print(f"{index:>6d}  {label:34s} {result['vm_hwm_mib']:9.0f} {result['seconds']:8.1f}  "
                      f"{difference:.1e} ({name}){errors}", flush=True)


if __name__ == "__main__":
    main()
