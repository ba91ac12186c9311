#!/usr/bin/env bash
# GPU benchmark, < 5 minutes on one GPU: matmul roofline, CUDA values vs CPU, and archs/s
# with 1, 2 and 4 scorer actors per GPU (each 1/N of the GPU). Run from the repository
# root on the GPU machine, in an environment where tfnas-ray is installed (or PYTHONPATH=.).
# DEVICE=cpu runs every step on the CPU (the dry run the tests make). Every error is printed
# ("error ..." lines); rates count successful architectures only.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-$PWD}" RAY_USAGE_STATS_ENABLED=0
PYTHON="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 290 "$PYTHON" bench/bench_gpu.py --device "${DEVICE:-cuda}" --archs "${ARCHS:-48}" --sets "${SETS:-hidden_cov,paper}" --per-gpu "${PER_GPU:-1,2,4}"
