"""nb-bert scoring speed: the pass before and after a change, on the same architectures,
the same batch and the same thread budget, interleaved in one run (the machine is shared,
so only ratios within one run mean anything).

    PYTHONPATH=. python bench/nb_bert_speed.py --before a2d0e83 --archs 4 --repeats 3

The `--before` commit's package is exported with `git archive` to a temporary directory;
each (architecture, version) is scored `--repeats` times, interleaved, each in its own
fresh process with one torch thread (the scorer's setting), timing `score_architecture`
only (model build and every pass, not the imports); the minimum is kept. Both versions score the described reading on the `--before` version's batch
(128 WikiText-2 chunks × `--seq-len`, eval mode, vocabulary 16,384) with the columns the
`--before` version had: the paper's columns, params, synflow, naswot. The new version is
also timed on the MLM-loss columns it adds (grad_norm, snip, fisher and the _mlm variants
share one pass), reported apart. Values of the shared columns are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PAPER = [
    "head_importance", "head_importance_normalized", "head_confidence", "head_confidence_normalized",
    "softmax_confidence", "softmax_confidence_normalized", "synaptic_saliency", "synaptic_saliency_normalized",
    "synaptic_diversity", "synaptic_diversity_normalized", "activation_distance", "activation_distance_normalized",
    "jacob_cov", "params", "synflow", "naswot",
]
MLM = ["head_importance_mlm", "synaptic_saliency_mlm", "synaptic_diversity_mlm", "jacob_cov_mlm", "grad_norm", "snip", "fisher"]

WORKER = r"""
import json, sys, time, torch
import tfnas_ray
print("tree", tfnas_ray.__file__, file=sys.stderr)
torch.set_num_threads(1)
from tfnas_ray.spaces.nasbench_bert.benchmarks import records
from tfnas_ray.metrics import load_metrics
from tfnas_ray.metrics.scoring import score_architecture
load_metrics()
index, metrics, batch_path, mode = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4]
batch = torch.load(batch_path)
if mode:
    batch = {**batch, "mode": mode}
rec = records()[index]
started = time.perf_counter()
rows = score_architecture(arch_id=str(rec["id"]), space="nb-bert", spec=rec["spec"], metrics=metrics, seed=0,
                          batch=batch, options={"vocab_size": 16384})
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "values": {r["metric"]: r["value"] for r in rows}}))
"""


def run(tree: Path, index: int, metrics: list[str], batch_path: str, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    # cwd = the tree: `python -c` puts the working directory first on sys.path
    out = subprocess.run([sys.executable, "-c", WORKER, str(index), ",".join(metrics), batch_path, mode],
                         env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="a2d0e83", help="commit before the change")
    parser.add_argument("--archs", type=int, default=4, help="first N benchmark configs")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs per (arch, version); the minimum is kept")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(root), "archive", args.before, "tfnas_ray"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        batch_path = str(Path(tmp) / "batch.pt")
        subprocess.run([sys.executable, "-c",
                        "import sys, torch; from tfnas_ray.data.tokenizer import metric_batch; "
                        f"torch.save(metric_batch(batch_size=128, seq_len={args.seq_len}), sys.argv[1])", batch_path],
                       env={**os.environ, "PYTHONPATH": str(old)}, cwd=old, check=True)
        print(f"before: {args.before}; after: working tree; {args.archs} archs; batch 128 x {args.seq_len}, eval, 1 thread")
        print(f"{'id':>3s} {'before s':>9s} {'after s':>8s} {'ratio':>6s} {'after MLM s':>12s}  max rel diff of shared columns")
        ratios, extra = [], []
        for i in range(args.archs):
            # alternate which version runs first, so drift in the machine's load cancels
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            result = {}
            for _ in range(args.repeats):  # the minimum of interleaved repeats: least disturbed by other load
                for which in order:
                    tree = old if which == "before" else root
                    got = run(tree, i, PAPER, batch_path, "" if which == "before" else "eval")
                    if which not in result or got["seconds"] < result[which]["seconds"]:
                        result[which] = got
            mlm = min((run(root, i, MLM, batch_path, "eval") for _ in range(args.repeats)), key=lambda r: r["seconds"])
            diffs = []
            for name in PAPER:
                a, b = result["before"]["values"][name], result["after"]["values"][name]
                if a is not None and b is not None:
                    diffs.append(abs(a - b) / max(abs(a), 1e-300))
            ratio = result["after"]["seconds"] / result["before"]["seconds"]
            ratios.append(ratio)
            extra.append(mlm["seconds"])
            print(f"{i:3d} {result['before']['seconds']:9.2f} {result['after']['seconds']:8.2f} {ratio:6.2f} {mlm['seconds']:12.2f}  {max(diffs):.1e}")
        print(f"median ratio after/before (paper columns): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
