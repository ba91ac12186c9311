"""The shipped NAS-Bench-NLP benchmarks: `nb-nlp-ptb` and `nb-nlp-wt2`."""

from __future__ import annotations

import json

import pyarrow as pa

from tfnas_ray import tables
from tfnas_ray.benchmarks import BENCHMARKS, Benchmark, read_packaged_json
from tfnas_ray.spaces.nasbench_nlp import SPACE

PAPER_COLUMNS = (
    "hidden_cov",
    "hidden_cov_l2",
    "hidden_cov_l3",
    "activation_distance",
    "synaptic_saliency",
    "jacob_cov",
    "jacobian_cosine",
    "jacobian_noise",
    "jacobian_noise_cosine",
    "jacobian_more_noise",
    "jacobian_more_noise_cosine",
    "hidden_saliency",
    "params",
)


def _arch_row(recipe, source: str, benchmark_id) -> dict:
    return {
        "arch_id": SPACE.arch_id(recipe),
        "space": SPACE.name,
        "spec": SPACE.canonicalize(recipe),
        "source": source,
        "benchmark_id": str(benchmark_id),
    }


def load_ptb() -> tuple[pa.Table, pa.Table]:
    """312 NAS-Bench-NLP cells with their published PTB test loss and parameter count."""
    archs, truth = [], []
    for entry in read_packaged_json("nb-nlp-ptb.jsonl.xz"):
        row = _arch_row(entry["recepie"], "nb-nlp-ptb", entry["recepie_id"])
        archs.append(row)
        for target in ("test_loss", "num_params"):
            truth.append(
                {
                    "arch_id": row["arch_id"],
                    "target": target,
                    "value": float(entry[target]),
                    "source": "nb-nlp-ptb",
                    "benchmark_id": row["benchmark_id"],
                    "status": "ok",
                }
            )
    return tables.from_rows("archs", archs), tables.from_rows("truth", truth)


def load_wt2() -> tuple[pa.Table, pa.Table]:
    """345 NAS-Bench-NLP WikiText-2 training logs (50 epochs): final test/val loss,
    with the per-epoch curve; diverged runs have a null value and their status."""
    archs, truth = [], []
    for log in read_packaged_json("nb-nlp-wt2.jsonl.xz"):
        row = _arch_row(json.loads(log["recepie"]), "nb-nlp-wt2", log["recepie_id"])
        archs.append(row)
        ok = log["status"] == "OK"
        for target, curve_key in (("test_loss", "test_losses"), ("val_loss", "val_losses"), ("train_loss", "train_losses")):
            curve = [float(v) for v in log.get(curve_key) or []]
            truth.append(
                {
                    "arch_id": row["arch_id"],
                    "target": target,
                    "value": curve[-1] if ok and curve else None,
                    "source": "nb-nlp-wt2",
                    "benchmark_id": row["benchmark_id"],
                    "curve": curve,
                    "seconds": float(sum(log.get("wall_times") or [])),
                    "status": "ok" if ok else log["status"].lower(),
                }
            )
        truth.append(
            {
                "arch_id": row["arch_id"],
                "target": "num_params",
                "value": float(log["num_params"]),
                "source": "nb-nlp-wt2",
                "benchmark_id": row["benchmark_id"],
                "status": "ok",
            }
        )
    return tables.from_rows("archs", archs), tables.from_rows("truth", truth)


BENCHMARKS.add(
    "nb-nlp-ptb",
    Benchmark(
        name="nb-nlp-ptb",
        space=SPACE.name,
        description="NAS-Bench-NLP: 312 cells with published PTB test loss (50 epochs)",
        primary_target="test_loss",
        default_metrics=PAPER_COLUMNS,
        load=load_ptb,
    ),
)
BENCHMARKS.add(
    "nb-nlp-wt2",
    Benchmark(
        name="nb-nlp-wt2",
        space=SPACE.name,
        description="NAS-Bench-NLP: 345 WikiText-2 training logs (50 epochs, 4 diverged)",
        primary_target="test_loss",
        default_metrics=PAPER_COLUMNS,
        load=load_wt2,
    ),
)
