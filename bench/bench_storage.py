"""Benchmark: the cost of shard storage at a local path and on S3, as scoring pays it.

    python bench/bench_storage.py [--shards 300] [--url s3://bucket/prefix]

Without --url it starts moto's S3 server on loopback (the test extra installs moto) and
compares it with a local directory. It times writing N shards (16 architectures × 13
metrics each, the shape of a paper-table shard), the resume check of a rerun (one
listing, then every shard read and checked), and reading the whole scores table.

Target: the resume check costs at most 20 ms per shard on S3, so a rerun of a
10,000-shard job starts within about 3 minutes (measured 2026-11-29, 2 cores: 14 ms
per shard against moto on loopback, 0.7 ms locally). moto's server is Python and
CPU-bound here, so it measures our client's cost, not real S3's per-request latency,
which the 16 checking threads are there to overlap. Not part of the tests.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from tfnas_ray import tables
from tfnas_ray.distributed.scoring import Shard, resume_state
from tfnas_ray.storage import locate

METRICS = tuple(f"metric_{i}" for i in range(13))


def shard_rows(index: int) -> tuple[Shard, list[dict]]:
    arch_ids = tuple(f"arch-{index}-{j}" for j in range(16))
    shard = Shard(shard_id=f"{index:020d}", arch_ids=arch_ids, spaces=("nb-nlp",) * 16, specs=("{}",) * 16)
    rows = [
        {"arch_id": a, "metric": m, "value": float(j), "error": None, "seconds": 0.1, "seed": 0, "device": "cpu", "version": "bench"}
        for j, a in enumerate(arch_ids)
        for m in METRICS
    ]
    return shard, rows


def measure(url: str, n: int) -> dict[str, float]:
    out = locate(url)
    shards = []
    started = time.perf_counter()
    for i in range(n):
        shard, rows = shard_rows(i)
        tables.write_table("scores", tables.from_rows("scores", rows), out.child(shard.filename))
        shards.append(shard)
    write = time.perf_counter() - started
    check = {}
    for threads in (1, 16):
        started = time.perf_counter()
        state = resume_state(out, shards, METRICS, log=lambda line: None, threads=threads)
        check[threads] = time.perf_counter() - started
        assert len(state.finished) == n, (len(state.finished), n)
    started = time.perf_counter()
    table = tables.read_table("scores", out)
    read = time.perf_counter() - started
    assert table.num_rows == n * 16 * len(METRICS)
    return {"write": write, "check_1": check[1], "check_16": check[16], "read": read}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=300)
    parser.add_argument("--url", help="an S3 (or other) prefix to measure instead of a local moto server")
    args = parser.parse_args()
    targets = {"local": tempfile.mkdtemp(prefix="bench-storage-")}
    server = None
    if args.url:
        targets["url"] = args.url
    else:
        import boto3
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://{host}:{port}")
        boto3.client("s3").create_bucket(Bucket="bench")
        targets["s3 (moto, loopback)"] = "s3://bench/scores"
    for name, url in targets.items():
        seconds = measure(url, args.shards)
        per = {k: 1000 * v / args.shards for k, v in seconds.items()}
        print(
            f"{name:20s} {args.shards} shards: write {seconds['write']:.2f} s ({per['write']:.1f} ms/shard); "
            f"resume check {seconds['check_1']:.2f} s with 1 thread, {seconds['check_16']:.2f} s with 16 "
            f"({per['check_16']:.1f} ms/shard); read all {seconds['read']:.2f} s"
        )
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
