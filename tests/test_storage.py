"""Tables and score shards at a local path, a file:// URL, an fsspec URL, and a real
S3 endpoint (moto's S3 server on loopback, reached through pyarrow's S3 filesystem the
way a cluster reaches AWS: AWS_ENDPOINT_URL and credentials from the environment)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from tfnas_ray import tables
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.distributed.scoring import ScoreConfig, run_scoring
from tfnas_ray.errors import TfnasError
from tfnas_ray.storage import locate


def _truth_rows(n: int) -> pa.Table:
    return tables.from_rows(
        "truth",
        [{"arch_id": f"a{i}", "source": "t", "target": "test_loss", "value": float(i), "status": "ok"} for i in range(n)],
    )


@pytest.mark.parametrize("scheme", ["path", "file", "memory"])
def test_a_table_round_trips_and_a_directory_reads_as_one_table(tmp_path, scheme):
    base = {"path": str(tmp_path), "file": f"file://{tmp_path}", "memory": f"memory://{tmp_path.name}"}[scheme]
    table = _truth_rows(3)
    tables.write_table("truth", table, f"{base}/dir/part-1.parquet")
    tables.write_table("truth", table.slice(0, 2), f"{base}/dir/sub/part-2.parquet")
    assert tables.read_table("truth", f"{base}/dir/part-1.parquet").column("value").to_pylist() == [0.0, 1.0, 2.0]
    assert tables.read_table("truth", f"{base}/dir").num_rows == 5  # recursive, sorted by path
    listed = [f.name for f in locate(f"{base}/dir").files(".parquet", recursive=True)]
    assert listed == ["part-1.parquet", "part-2.parquet"]  # no temporary file left behind


def test_hidden_files_are_not_part_of_a_directory(tmp_path):
    tables.write_table("truth", _truth_rows(2), tmp_path / "a.parquet")
    (tmp_path / ".a.parquet.123.tmp").write_bytes(b"half a file")
    (tmp_path / ".quarantine").mkdir()
    tables.write_table("truth", _truth_rows(2), tmp_path / ".quarantine" / "b.parquet")
    assert tables.read_table("truth", f"file://{tmp_path}").num_rows == 2


def test_bad_locations_are_one_line_errors(tmp_path):
    with pytest.raises(TfnasError, match=r"scheme 'nosuchfs' is not supported") as err:
        locate("nosuchfs://bucket/x")
    assert "\n" not in str(err.value)
    with pytest.raises(TfnasError, match=r"truth table 'file://.*/missing.parquet' does not exist"):
        tables.read_table("truth", f"file://{tmp_path}/missing.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(TfnasError, match=r"is not a readable Parquet file") as err:
        tables.read_table("truth", f"file://{tmp_path}/junk.parquet")
    assert "\n" not in str(err.value)


# ---- a real S3 endpoint ------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_bucket():
    """An S3 server on loopback with one bucket; the environment points pyarrow at it."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="tfnas-results")
    yield "s3://tfnas-results"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture(scope="module")
def ptb_archs() -> pa.Table:
    archs, _ = get_benchmark("nb-nlp-ptb").load()
    return archs.slice(0, 6)


def test_scoring_writes_resumes_and_repairs_shards_in_s3(ray_cluster, s3_bucket, ptb_archs):
    import boto3

    out = f"{s3_bucket}/scoring/scores"
    config = ScoreConfig(metrics=("params", "hidden_cov"), shard_size=2, seeding="fixed")
    # The session's Ray workers started before the endpoint was set: they cannot reach
    # this S3, so the driver writes their shards, having said so once.
    said = []
    first = run_scoring(ptb_archs, out, config, progress=False, log=said.append)
    assert first.shards_total == 3 and first.shards_skipped == 0
    assert len(said) == 1 and said[0].startswith("a scorer could not write its shard (cannot open s3://tfnas-results/scoring/scores/shard-")
    assert first.shards_written_by_scorers == 0
    keys = sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="tfnas-results", Prefix="scoring/scores/")["Contents"])
    shards = [k.rsplit("/", 1)[-1] for k in keys if k.endswith(".parquet")]
    assert len(shards) == 3 and all(name.startswith("shard-") for name in shards)
    assert not any(".tmp" in k for k in keys)  # objects are written in place, whole
    assert first.table.num_rows == 12

    # A rerun skips every shard; a shard overwritten with junk is moved aside and redone.
    assert run_scoring(ptb_archs, out, config, progress=False).shards_skipped == 3
    victim = next(k for k in keys if k.endswith(".parquet"))
    boto3.client("s3").put_object(Bucket="tfnas-results", Key=victim, Body=b"truncated")
    logged = []
    again = run_scoring(ptb_archs, out, config, progress=False, log=logged.append)
    assert again.shards_recomputed == 1 and again.shards_skipped == 2
    assert "is corrupt (unreadable Parquet" in logged[0]
    assert again.table.sort_by([("arch_id", "ascending"), ("metric", "ascending")]).column("value").equals(
        first.table.sort_by([("arch_id", "ascending"), ("metric", "ascending")]).column("value")
    )
    assert tables.read_table("scores", out).num_rows == 12  # the quarantined copy is hidden


def test_reproduce_and_correlate_read_and_write_s3(ray_cluster, s3_bucket):
    from tfnas_ray.pipeline import PAPER_PROTOCOL, reproduce

    out = f"{s3_bucket}/runs/ptb"
    result = reproduce("nb-nlp-ptb", out, dataclasses.replace(PAPER_PROTOCOL, metrics=("params",)), limit=6, resamples=50, progress=False, log=lambda line: None)
    assert result.out_dir.url == out
    for name in ("archs.parquet", "truth.parquet", "correlations.parquet"):
        assert locate(f"{out}/{name}").exists(), name
    # The CLI in a fresh process: reads both tables from S3, writes the correlations there.
    command = [sys.executable, "-m", "tfnas_ray.cli", "correlate", f"{out}/scores", f"{out}/truth.parquet", "--out", f"{out}/again.parquet", "--resamples", "50"]
    done = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    again = tables.read_table("correlations", f"{out}/again.parquet")
    def taus(table):  # reproduce lists its metrics first, then the baselines; correlate by name
        return {(r["metric"], r["target"]): r["kendall_tau"] for r in table.to_pylist()}

    assert taus(again) == taus(result.correlations)


def test_a_missing_bucket_is_a_one_line_error(s3_bucket):
    with pytest.raises(TfnasError, match=r"s3://no-such-bucket/x\.parquet") as err:
        tables.write_table("truth", _truth_rows(1), "s3://no-such-bucket/x.parquet")
    assert "\n" not in str(err.value)


def test_scorers_write_their_shards_to_s3_from_their_own_nodes(s3_bucket, ptb_archs, tmp_path):
    """`tfnas score --out s3://…` in a fresh process: its Ray workers have the S3
    settings, so each scorer uploads its own shards; a rerun finds them all."""
    archs = tmp_path / "archs.parquet"
    tables.write_table("archs", ptb_archs, archs)
    out = f"{s3_bucket}/cli/scores"
    command = [sys.executable, "-m", "tfnas_ray.cli", "score", str(archs), "-m", "params", "--shard-size", "2", "--out", out, "--no-progress"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shards written by the scorers to the object store: 3" in done.stdout
    assert "could not write" not in done.stdout
    scores = tables.read_table("scores", out)
    assert scores.num_rows == 6 and scores.column("error").null_count == 6
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0 and "3 shards already done" in again.stdout, again.stdout + again.stderr[-2000:]


# ---- issue 18, row 7: transient read errors, quarantined shards, the plan run last -------------


class _FlakyHandler:
    """A local file system whose first `failures` opens of each shard file fail with an
    I/O error, as a dropped S3 connection does; pyarrow reaches it through PyFileSystem."""

    def __new__(cls, failures: int):
        import fsspec
        import pyarrow.fs as pafs

        class Flaky(pafs.FSSpecHandler):
            def __init__(self):
                super().__init__(fsspec.filesystem("file"))
                self.opens: dict[str, int] = {}

            def _maybe_fail(self, path: str) -> None:
                if "/shard-" in path:
                    self.opens[path] = self.opens.get(path, 0) + 1
                    if self.opens[path] <= failures:
                        raise OSError(f"When reading information for key '{path}': AWS Error NETWORK_CONNECTION: connection reset")

            def open_input_stream(self, path):
                self._maybe_fail(path)
                return super().open_input_stream(path)

            def open_input_file(self, path):
                self._maybe_fail(path)
                return super().open_input_file(path)

        return Flaky()


def _scored_shard(directory) -> tuple:
    """One shard of one NAS-Bench-NLP cell's `params`, computed (no Ray), in `directory`."""
    from tfnas_ray.distributed.scoring import plan_shards
    from tfnas_ray.metrics import BATCHES, load_metrics
    from tfnas_ray.metrics.scoring import arch_seed, score_architecture

    load_metrics()
    archs = get_benchmark("nb-nlp-ptb").load()[0].slice(0, 1)
    config = ScoreConfig(metrics=("params",))
    (shard,) = plan_shards(archs, config)
    rows = score_architecture(
        arch_id=shard.arch_ids[0], space="nb-nlp", spec=shard.specs[0], metrics=["params"],
        seed=arch_seed(shard.arch_ids[0], 0, "derived"), batch=BATCHES.get("nb-nlp")({}),
    )
    tables.write_table("scores", tables.from_rows("scores", rows), locate(directory).child(shard.filename))
    return shard, config


def _flaky(directory, failures: int):
    import pyarrow.fs as pafs

    from tfnas_ray.storage import Location

    return Location(pafs.PyFileSystem(_FlakyHandler(failures)), str(directory), f"flaky://{directory}")


def test_a_transient_read_error_is_retried_not_called_corrupt(tmp_path, monkeypatch):
    from tfnas_ray import storage
    from tfnas_ray.distributed.scoring import resume_state

    monkeypatch.setattr(storage, "READ_BACKOFF_S", 0.01, raising=False)  # raising: also run against 5a94169
    shard, config = _scored_shard(tmp_path)
    logged = []
    state = resume_state(_flaky(tmp_path, failures=3), [shard], list(config.metrics), log=logged.append)
    assert state.finished == {shard.shard_id} and state.corrupt == 0, logged
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard.filename]  # nothing moved aside


def test_a_read_that_keeps_failing_stops_the_run_and_moves_nothing(tmp_path, monkeypatch):
    from tfnas_ray import storage
    from tfnas_ray.distributed.scoring import resume_state

    monkeypatch.setattr(storage, "READ_BACKOFF_S", 0.01, raising=False)  # raising: also run against 5a94169
    shard, config = _scored_shard(tmp_path)
    with pytest.raises(TfnasError, match=rf"^cannot read flaky://{tmp_path}/{shard.filename} \(4 tries\): When reading .* connection reset$"):
        resume_state(_flaky(tmp_path, failures=100), [shard], list(config.metrics), log=print)
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard.filename]


def test_a_quarantined_copy_goes_once_its_shard_is_whole_again(tmp_path):
    from tfnas_ray.distributed.scoring import resume_state

    shard, config = _scored_shard(tmp_path)
    (tmp_path / f".{shard.filename}.corrupt-1700000000").write_bytes(b"the truncated shard a run set aside")
    (tmp_path / ".shard-other.parquet.corrupt-1700000000").write_bytes(b"another shard's, not rewritten")
    state = resume_state(locate(tmp_path), [shard], list(config.metrics), log=print)
    assert state.finished == {shard.shard_id}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shard-other.parquet.corrupt-1700000000", shard.filename]


def test_a_corrupt_shard_is_recomputed_and_its_quarantined_copy_removed(ray_cluster, tmp_path):
    archs = get_benchmark("nb-nlp-ptb").load()[0].slice(0, 2)
    config = ScoreConfig(metrics=("params",), shard_size=1)
    first = run_scoring(archs, tmp_path, config, progress=False, log=print)
    victim = sorted(tmp_path.glob("shard-*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated mid-file
    logged = []
    again = run_scoring(archs, tmp_path, config, progress=False, log=logged.append)
    assert again.shards_recomputed == 1 and any(f"shard {victim.name} is corrupt" in line for line in logged), logged
    assert again.table.select(["arch_id", "metric", "value"]).equals(first.table.select(["arch_id", "metric", "value"]))
    assert not [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_the_plan_read_is_the_one_run_last_not_the_one_created_last(tmp_path):
    from tfnas_ray import plans

    out = locate(tmp_path)
    first = plans.write_manifest(out, {"metrics": ["params"], "seed": 0}, ["shard-a.parquet"])
    second = plans.write_manifest(out, {"metrics": ["params"], "seed": 1}, ["shard-b.parquet"])
    assert [p.plan_id for p in plans.plans_in(out)] == [first.plan_id, second.plan_id]
    again = plans.write_manifest(out, {"metrics": ["params"], "seed": 0}, ["shard-a.parquet"])  # the first, rerun
    assert again.plan_id == first.plan_id and again.created == first.created
    assert [p.plan_id for p in plans.plans_in(out)] == [second.plan_id, first.plan_id]
    assert [p.run for p in plans.plans_in(out)] == [2, 3]


def test_manifests_of_earlier_versions_are_read_and_renamed_out_of_the_readers_way(tmp_path):
    """A scores directory of 5a94169: `plan-<id>.json` and `study-<id>.json`."""
    import json

    from tfnas_ray import plans

    old = {"plan": "0123456789abcdef", "identity": {"metrics": ["params"], "seed": 0}, "shards": ["shard-a.parquet"], "created": 1.0e9}
    (tmp_path / "plan-0123456789abcdef.json").write_text(json.dumps(old))
    (tmp_path / "study-fedcba9876543210.json").write_text(json.dumps({"study": "fedcba9876543210", "plans": ["0123456789abcdef"]}))
    out = locate(tmp_path)
    (read,) = plans.plans_in(out)
    assert (read.plan_id, read.shards, read.run) == ("0123456789abcdef", ("shard-a.parquet",), 0)
    assert plans.studies_in(out) == [("0123456789abcdef",)]
    newer = plans.write_manifest(out, {"metrics": ["params"], "seed": 1}, ["shard-b.parquet"])  # a run resumes here
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["_plan-0123456789abcdef.json", f"_plan-{newer.plan_id}.json", "_study-fedcba9876543210.json"]
    )
    assert [p.plan_id for p in plans.plans_in(out)] == ["0123456789abcdef", newer.plan_id]
    assert plans.studies_in(out) == [("0123456789abcdef",)]


def test_an_output_location_is_parsed_once_where_it_enters(ray_cluster, tmp_path, monkeypatch):
    """`score_table` parses `--out` once and hands a Location down (lease, plans,
    scoring, tables); on 5a94169 the same URL was parsed again at every step."""
    import sys as _sys

    from tfnas_ray import pipeline, storage

    archs = tmp_path / "archs.parquet"
    tables.write_table("archs", get_benchmark("nb-nlp-ptb").load()[0].slice(0, 2), archs)
    out = f"file://{tmp_path}/scores"
    parsed = []
    real = storage.locate

    def counting(where):
        if not isinstance(where, storage.Location):
            parsed.append(str(where))
        return real(where)

    for module in [m for name, m in list(_sys.modules.items()) if name.startswith("tfnas_ray")]:
        if getattr(module, "locate", None) is real:
            monkeypatch.setattr(module, "locate", counting)
    summary = pipeline.score_table(archs, out, ScoreConfig(metrics=("params",)), progress=False, log=print)
    assert summary.table.num_rows == 2
    assert [p for p in parsed if p.startswith(out)] == [out]
