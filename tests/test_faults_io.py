"""Faults on the data side of the engine (issue 13): stale or mixed results, interrupted
object-store writes, two runs on one output, and what reaches a cluster or is loaded
from it. Each scoring scenario ends with every architecture scored exactly once and
values identical to an undisturbed run.

S3 is moto's server on loopback. The tests are hermetic whatever the fixture order:
every S3 test takes the `s3` fixture, which points pyarrow at that server for the test
(endpoint, fake credentials, no profile or config file, no instance metadata) and then
checks that the endpoint pyarrow will use is a loopback address before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from tfnas_ray import cli, lease, plans, tables
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.distributed import jobs
from tfnas_ray.distributed.scoring import ScoreConfig, ScoringInterrupted, plan_shards, run_scoring
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import load_metrics
from tfnas_ray.storage import locate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archs() -> pa.Table:
    """Four distinct NAS-Bench-NLP cells of the shipped PTB benchmark."""
    table, _ = get_benchmark("nb-nlp-ptb").load()
    first = {}
    for i, arch_id in enumerate(table.column("arch_id").to_pylist()):
        first.setdefault(arch_id, i)
    return table.take(list(first.values())[:4])


def _by_key(table: pa.Table) -> dict[tuple[str, str], float | None]:
    """(arch_id, metric) -> value; fails if a pair appears twice (scored twice)."""
    out = {}
    for row in table.select(["arch_id", "metric", "value"]).to_pylist():
        key = (row["arch_id"], row["metric"])
        assert key not in out, f"{key} scored twice"
        out[key] = row["value"]
    return out


def _quiet(line: str) -> None:
    pass


# Scored once per module without any fault: the values every disturbed run must equal.
CONFIG = ScoreConfig(metrics=("params", "hidden_cov"), shard_size=2, seeding="fixed")


@pytest.fixture(scope="module")
def undisturbed(ray_cluster, archs, tmp_path_factory) -> dict:
    summary = run_scoring(archs, tmp_path_factory.mktemp("undisturbed"), CONFIG, progress=False, log=_quiet)
    values = _by_key(summary.table)
    assert len(values) == archs.num_rows * len(CONFIG.metrics)
    return values


# ---- stale values and mixed plans --------------------------------------------------------------


def test_duplicate_metrics_are_scored_once():
    config = ScoreConfig(metrics=("params", "hidden_cov", "params"))
    assert config.metrics == ("params", "hidden_cov")  # first occurrence, order kept
    assert dataclasses.replace(config, metrics=("hidden_cov",) * 3).metrics == ("hidden_cov",)


def test_duplicate_metrics_resume_instead_of_finding_every_shard_corrupt(ray_cluster, archs, undisturbed, tmp_path):
    twice = dataclasses.replace(CONFIG, metrics=("params", "params", "hidden_cov", "hidden_cov"))
    first = run_scoring(archs, tmp_path, twice, progress=False, log=_quiet)
    assert _by_key(first.table) == undisturbed
    logged = []
    again = run_scoring(archs, tmp_path, twice, progress=False, log=logged.append)
    assert again.shards_skipped == again.shards_total == 2 and again.shards_recomputed == 0, logged


def test_a_fixed_metric_implementation_is_recomputed_not_reused(archs, monkeypatch):
    hidden_cov = load_metrics().get("hidden_cov")
    before = [s.shard_id for s in plan_shards(archs, CONFIG)]
    assert hidden_cov.impls["nb-nlp"].version == 1  # the default of register_metric
    # The fix: version 2 of the nb-nlp implementation.
    monkeypatch.setitem(hidden_cov.impls, "nb-nlp", dataclasses.replace(hidden_cov.impls["nb-nlp"], version=2))
    after = [s.shard_id for s in plan_shards(archs, CONFIG)]
    assert not set(before) & set(after)  # every shard holding hidden_cov is new
    # A metric that did not change keeps its shards.
    params_only = dataclasses.replace(CONFIG, metrics=("params",))
    monkeypatch.undo()
    kept = [s.shard_id for s in plan_shards(archs, params_only)]
    monkeypatch.setitem(hidden_cov.impls, "nb-nlp", dataclasses.replace(hidden_cov.impls["nb-nlp"], version=2))
    assert [s.shard_id for s in plan_shards(archs, params_only)] == kept


def test_the_version_column_carries_the_implementation_version(archs, monkeypatch):
    import tfnas_ray
    from tfnas_ray.metrics import BATCHES
    from tfnas_ray.metrics.scoring import score_architecture

    params = load_metrics().get("params")
    monkeypatch.setitem(params.impls, "nb-nlp", dataclasses.replace(params.impls["nb-nlp"], version=3))
    rows = score_architecture(
        arch_id="a", space="nb-nlp", spec=archs.column("spec")[0].as_py(), metrics=["params"], seed=0, batch=BATCHES.get("nb-nlp")({})
    )
    assert rows[0]["version"] == f"{tfnas_ray.__version__}+m3"


def test_correlate_reads_one_plan_of_a_directory_and_says_so(ray_cluster, archs, undisturbed, tmp_path):
    out = tmp_path / "scores"
    seed0 = run_scoring(archs, out, CONFIG, progress=False, log=_quiet)  # == undisturbed
    time.sleep(0.01)  # plans are ordered by their start time
    seed1 = run_scoring(archs, out, dataclasses.replace(CONFIG, seed=1), progress=False, log=_quiet)
    assert _by_key(seed0.table) == undisturbed and _by_key(seed1.table) != undisturbed
    _, truth = get_benchmark("nb-nlp-ptb").load()
    tables.write_table("truth", truth, tmp_path / "truth.parquet")
    newest, oldest = plans.plans_in(locate(out))[::-1]

    def correlate(*extra: str) -> tuple[pa.Table, str]:
        result = CliRunner().invoke(cli.app, ["correlate", str(out), str(tmp_path / "truth.parquet"), "--out", str(tmp_path / "c.parquet"), "--resamples", "0", *extra])
        assert result.exit_code == 0, result.output
        return tables.read_table("correlations", tmp_path / "c.parquet"), result.stderr

    from tfnas_ray.analysis.correlation import CorrelationConfig, correlate as correlate_tables

    def expected(scores: pa.Table) -> list:
        return correlate_tables(scores, truth, config=CorrelationConfig(resamples=0)).column("kendall_tau").to_pylist()

    table, said = correlate()
    assert table.column("kendall_tau").to_pylist() == expected(seed1.table)  # the newest plan, not an average
    assert said.count("\n") == 1 and f"reading only plan {newest.plan_id}" in said and "ignoring 1 other plan(s)" in said
    table, _ = correlate("--plan", oldest.plan_id[:6])
    assert table.column("kendall_tau").to_pylist() == expected(seed0.table)
    assert oldest.identity["seed"] == 0 and newest.identity["seed"] == 1
    assert oldest.identity["versions"] == {"params": {"nb-nlp": 1}, "hidden_cov": {"nb-nlp": 1}}


# ---- an interrupted object-store write ------------------------------------------------------


@pytest.fixture(scope="module")
def moto_server():
    pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


_AWS_SETTINGS_THAT_COULD_POINT_ELSEWHERE = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


@pytest.fixture
def s3(moto_server, monkeypatch, tmp_path):
    """A fresh bucket on the loopback server; pyarrow and boto3 can reach nothing else."""
    import boto3

    for name in _AWS_SETTINGS_THAT_COULD_POINT_ELSEWHERE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    # The guard: whatever ran before, the endpoint in effect is this loopback server.
    endpoint = urlsplit(os.environ["AWS_ENDPOINT_URL"])
    assert endpoint.hostname == "127.0.0.1" and socket.inet_aton(endpoint.hostname)[0] == 127
    bucket = f"faults-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    client = boto3.client("s3")
    assert urlsplit(client.meta.endpoint_url).hostname == "127.0.0.1"
    client.create_bucket(Bucket=bucket)
    yield bucket, client


def _keys(client, bucket: str) -> list[str]:
    """The objects of `bucket`, without the empty "dir/" markers pyarrow puts after a delete."""
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []) if not o["Key"].endswith("/"))


class _Interrupt(KeyboardInterrupt):
    """Ctrl-C in the middle of an upload."""


def _interrupting_writer(monkeypatch, *, after_bytes: int, times: int = 1):
    """Make `tables.write_table` write `after_bytes` of the Parquet file, then raise
    Ctrl-C, on its next `times` calls."""
    real = tables.pq.write_table
    left = {"n": times}

    def write_table(table, where, **kwargs):
        if left["n"] <= 0:
            return real(table, where, **kwargs)
        left["n"] -= 1
        sink = pa.BufferOutputStream()
        real(table, sink, **kwargs)
        where.write(sink.getvalue().to_pybytes()[:after_bytes])
        raise _Interrupt()

    monkeypatch.setattr(tables.pq, "write_table", write_table)


def test_an_interrupted_upload_publishes_nothing_and_keeps_the_old_table(s3, monkeypatch):
    bucket, client = s3
    url = f"s3://{bucket}/run/correlations.parquet"
    old = tables.from_rows("truth", [{"arch_id": "a", "target": "t", "value": 1.0}])
    tables.write_table("truth", old, url)
    new = tables.from_rows("truth", [{"arch_id": f"a{i}", "target": "t", "value": float(i)} for i in range(100)])
    _interrupting_writer(monkeypatch, after_bytes=200, times=2)
    with pytest.raises(_Interrupt):
        tables.write_table("truth", new, url)
    assert _keys(client, bucket) == ["run/correlations.parquet"]  # no temporary left either
    assert tables.read_table("truth", url).equals(tables.conform("truth", old))
    with pytest.raises(_Interrupt):  # a first write: nothing appears at all
        tables.write_table("truth", new, f"s3://{bucket}/run/other.parquet")
    assert _keys(client, bucket) == ["run/correlations.parquet"]


def test_scoring_interrupted_during_an_upload_resumes_to_the_undisturbed_values(ray_cluster, s3, archs, undisturbed, monkeypatch):
    bucket, client = s3
    out = f"s3://{bucket}/scores"
    # The session's Ray workers started before this endpoint existed and cannot reach
    # it, so the driver uploads the shards: interrupt its first upload.
    _interrupting_writer(monkeypatch, after_bytes=300)
    with pytest.raises(ScoringInterrupted, match=r"interrupted: 0 of 2 shards are saved"):
        run_scoring(archs, out, CONFIG, progress=False, log=_quiet)
    assert not [k for k in _keys(client, bucket) if k.endswith(".parquet")]  # no partial shard published
    # A killed writer's temporary (what SIGKILL mid-upload leaves) is cleaned on resume.
    client.put_object(Bucket=bucket, Key="scores/.shard-x.parquet.0123.tmp", Body=b"half")
    logged = []
    again = run_scoring(archs, out, CONFIG, progress=False, log=logged.append)
    assert again.shards_recomputed == 0 and again.shards_skipped == 0
    assert any("removed 1 temporary file(s)" in line for line in logged), logged
    assert _by_key(again.table) == undisturbed
    assert _by_key(tables.read_table("scores", out)) == undisturbed  # exactly once each
    assert not [k for k in _keys(client, bucket) if k.endswith(".tmp") or "lease" in k]


def test_a_failed_local_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    old = tables.from_rows("truth", [{"arch_id": "a", "target": "t", "value": 1.0}])
    tables.write_table("truth", old, path)
    _interrupting_writer(monkeypatch, after_bytes=100)
    with pytest.raises(_Interrupt):
        tables.write_table("truth", old.slice(0, 0), path)
    assert sorted(os.listdir(tmp_path)) == ["t.parquet"]
    assert tables.read_table("truth", path).num_rows == 1


# ---- two runs on one output --------------------------------------------------------------------


def _plant_lease(directory: Path, *, age_s: float) -> dict:
    """A lease as another run on another host would hold it, last renewed `age_s` ago
    (by the storage's clock: the file's modification time)."""
    record = {
        "token": "0" * 32, "owner": "alice", "host": "node-7", "pid": 4242, "beat": 5,
        "command": "tfnas score archs.parquet -m params", "started": time.time() - age_s - 60, "heartbeat": time.time() - age_s,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / lease.LEASE_NAME
    path.write_text(json.dumps(record))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return record


def test_a_second_driver_on_one_out_stops_naming_the_first(ray_cluster, archs, tmp_path):
    _plant_lease(tmp_path, age_s=1)
    with pytest.raises(TfnasError, match=r"is in use by another run: alice@node-7 pid 4242 \(`tfnas score archs.parquet -m params`") as caught:
        run_scoring(archs, tmp_path, CONFIG, progress=False, log=_quiet)
    assert "\n" not in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == [lease.LEASE_NAME]  # nothing written


def test_a_stale_lease_is_taken_over_and_the_run_completes(ray_cluster, archs, undisturbed, tmp_path):
    _plant_lease(tmp_path, age_s=lease.STALE_AFTER_S + 5)
    dead_write = tmp_path / ".shard-0123.parquet.abcd.tmp"
    dead_write.write_bytes(b"half a shard of the dead run")
    os.utime(dead_write, (time.time() - lease.STALE_AFTER_S - 5, time.time() - lease.STALE_AFTER_S - 5))  # it died with its run
    logged = []
    summary = run_scoring(archs, tmp_path, CONFIG, progress=False, log=logged.append)
    assert any(line.startswith(f"taking over the lease of {tmp_path} from a run that stopped renewing it") for line in logged), logged
    assert _by_key(summary.table) == undisturbed
    assert not (tmp_path / lease.LEASE_NAME).exists()  # released at the end
    assert not list(tmp_path.glob(".*.tmp"))


def test_two_live_drivers_one_wins(ray_cluster, archs, undisturbed, tmp_path):
    """Two drivers at once on one --out (two threads here; two processes or hosts see
    the same lease file): the second stops at once naming the first, which scores
    every architecture once, with the undisturbed values."""
    import threading

    outcome = {}

    def first_driver():
        try:
            outcome["summary"] = run_scoring(archs, tmp_path, CONFIG, progress=False, log=_quiet)
        except BaseException as err:  # noqa: BLE001 — reported by the assertion below
            outcome["error"] = err

    thread = threading.Thread(target=first_driver)
    thread.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / lease.LEASE_NAME).exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(TfnasError, match=r"is in use by another run: .*@%s pid %d " % (socket.gethostname(), os.getpid())):
        run_scoring(archs, tmp_path, CONFIG, progress=False, log=_quiet)
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert _by_key(outcome["summary"].table) == undisturbed
    assert _by_key(tables.read_table("scores", tmp_path)) == undisturbed


def test_lease_is_exclusive_and_released(tmp_path):
    where = locate(tmp_path)
    with lease.hold(where, log=_quiet):
        record = json.loads((tmp_path / lease.LEASE_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["beat"] == 1
        with pytest.raises(TfnasError, match=r"is in use by another run: .* pid %d " % os.getpid()):
            lease.Lease(where, log=_quiet).acquire()
    assert not (tmp_path / lease.LEASE_NAME).exists()
    lease.Lease(where, log=_quiet).acquire().release()  # free again


def test_a_refused_run_leaves_the_holders_lease_renewed_and_its_own(tmp_path):
    """The holder keeps renewing (its counter advances) after a second run was refused,
    and keeps the lease: `lost` is read after heartbeats that could have set it."""
    held = lease.Lease(locate(tmp_path), log=_quiet, heartbeat=0.05).acquire()
    try:
        with pytest.raises(TfnasError, match="is in use by another run"):
            lease.Lease(locate(tmp_path), log=_quiet).acquire()
        deadline = time.monotonic() + 5
        while json.loads((tmp_path / lease.LEASE_NAME).read_text())["beat"] < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert json.loads((tmp_path / lease.LEASE_NAME).read_text())["beat"] >= 4
        assert not held.lost
        held.check()
    finally:
        held.release()


def test_the_lease_of_a_killed_driver_on_this_host_is_free_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists: a driver killed with SIGKILL
    record = _plant_lease(tmp_path, age_s=1)
    record.update(host=socket.gethostname(), pid=dead.pid)
    (tmp_path / lease.LEASE_NAME).write_text(json.dumps(record))
    said = []
    lease.Lease(locate(tmp_path), log=said.append).acquire().release()
    assert said == [f"taking over the lease of {tmp_path} from a run on this host that no longer exists: alice@{socket.gethostname()} pid {dead.pid} (`tfnas score archs.parquet -m params`, started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(record['started']))})"]


def test_train_refuses_an_out_in_use(ray_cluster, archs, tmp_path):
    from tfnas_ray.distributed.tune import train_architectures
    from tfnas_ray.training.lm import Budget, TrainConfig

    _plant_lease(tmp_path, age_s=1)
    with pytest.raises(TfnasError, match=r"is in use by another run: alice@node-7"):
        train_architectures(archs.slice(0, 1), tmp_path, train=TrainConfig(budget=Budget("steps", 1), emsize=16, nhid=16))
    assert sorted(os.listdir(tmp_path)) == [lease.LEASE_NAME]  # no manifest, no experiment


# ---- input that would crash deep inside -------------------------------------------------------


@pytest.mark.parametrize("space", ["nb-nlp", "nb-bert"])
@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 5000 + "]" * 5000, "nests JSON deeper than 32 levels"),
        ('{"a":' * 5000 + "1" + "}" * 5000, "nests JSON deeper than 32 levels"),
        ('{"x": "' + "y" * 300_000 + '"}', "characters long; at most 262,144 are allowed"),
    ],
)
def test_deep_or_huge_specs_are_rejected_by_size_not_recursion(space, text, message):
    from tfnas_ray.spaces import get_space

    with pytest.raises(TfnasError, match=message) as caught:
        get_space(space).canonicalize(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("arch_id", ["a/b", "../up", ".hidden", "", "x" * 200, "a b"])
def test_train_refuses_an_arch_id_that_cannot_name_a_trial(archs, arch_id):
    from tfnas_ray.distributed.tune import _arch_items

    bad = archs.slice(0, 1).set_column(0, "arch_id", pa.array([arch_id]))
    with pytest.raises(TfnasError, match=r"cannot name a trial; allowed: 1-128 letters, digits"):
        _arch_items(bad)


def test_bad_input_fails_before_ray_is_imported(tmp_path, archs):
    """The checks need no cluster: a fresh `tfnas score` with a wrong metric, corpus or
    output URL exits 2 with one line and never imports ray."""
    path = tmp_path / "archs.parquet"
    tables.write_table("archs", archs, path)
    script = (
        "import sys\nfrom typer.testing import CliRunner\nfrom tfnas_ray.cli import app\n"
        "for extra in (['-m', 'hiden_cov'], ['-m', 'params', '--corpus', 'foo'], ['-m', 'params', '--out', 'foo://x']):\n"
        f"    r = CliRunner().invoke(app, ['score', {str(path)!r}, *extra])\n"
        "    print(r.exit_code, r.stderr.count(chr(10)), r.stderr.strip())\n"
        "print('ray' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 4 and lines[3] == "False", done.stdout  # ray never imported
    for line, start in zip(lines, ("error: unknown metric 'hiden_cov'; known: ", "error: unknown corpus 'foo'; known: ptb, wikitext-2", "error: location 'foo://x': scheme 'foo' is not supported")):
        assert line.startswith(f"2 1 {start}"), line  # exit code 2, one line
    assert sorted(os.listdir(tmp_path)) == ["archs.parquet"]


# ---- what reaches a cluster, and what is loaded from it ------------------------------------------


class _FakeJobClient:
    """Records what `JobSubmissionClient` would send, and the files it would upload."""

    made: list = []

    def __init__(self, address, headers=None, **kwargs):
        self.address, self.headers = address, dict(headers or {})
        _FakeJobClient.made.append(self)

    def submit_job(self, *, entrypoint, runtime_env):
        root = Path(runtime_env["working_dir"])
        excludes = runtime_env.get("excludes", [])
        self.shipped = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not any(part in excludes for part in p.relative_to(root).parts))
        return "raysubmit_fake"

    def list_jobs(self):
        return []


@pytest.fixture
def fake_ray_client(monkeypatch):
    import ray.job_submission

    _FakeJobClient.made = []
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", _FakeJobClient)
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", *jobs.ADDRESS_ENV_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret-token-" + "x" * 20)
    return _FakeJobClient


def test_the_token_goes_only_to_https_or_loopback(fake_ray_client):
    for address in ("https://ray.example.org:443", "http://127.0.0.1:8265", "http://localhost:8265", "http://[::1]:8265"):
        jobs.list_jobs(address)
        assert fake_ray_client.made[-1].headers, address  # sent: nobody else can read it
    sent = len(fake_ray_client.made)
    with pytest.raises(TfnasError, match=r"refusing to send the Ray auth token in clear text to http://10\.0\.0\.5:8265: use https://") as caught:
        jobs.list_jobs("http://10.0.0.5:8265")
    assert "\n" not in str(caught.value) and len(fake_ray_client.made) == sent  # no client, no request
    jobs.list_jobs("http://10.0.0.5:8265", allow_insecure_token=True)  # the user's explicit choice
    assert fake_ray_client.made[-1].headers
    result = CliRunner().invoke(cli.app, ["jobs", "--address", "http://10.0.0.5:8265"])
    assert result.exit_code == 1 and "--allow-insecure-token" in result.stderr


def test_submit_ships_tracked_files_and_includes_never_secrets(fake_ray_client, tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "pkg").mkdir(parents=True)
    for name in ("pkg/code.py", "README.md", ".env", "deploy/id_rsa", "pkg/server.pem", "untracked.py", "data/archs.parquet", "data/keys/tls.key"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text(name)
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-f", "pkg/code.py", "README.md", ".env", "deploy/id_rsa", "pkg/server.pem"], check=True)
    said = []
    jobs.submit_job(["--help"], address="http://127.0.0.1:8265", working_dir=checkout, include=["data"], log=said.append)
    assert fake_ray_client.made[-1].shipped == ["README.md", "data/archs.parquet", "pkg/code.py"]
    assert said == ["not shipping 4 file(s) that look like secrets: .env, data/keys/tls.key, deploy/id_rsa, pkg/server.pem"]
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(TfnasError, match=r"is not a git checkout: a job ships git-tracked files only; name the files to ship with --include"):
        jobs.submit_job(["--help"], address="http://127.0.0.1:8265", working_dir=plain)


class _Planted:
    """A pickle that runs code when unpickled: what a poisoned checkpoint would hold."""

    def __reduce__(self):
        return (os.makedirs, (os.environ["TFNAS_PLANTED_DIR"],))


def test_a_planted_checkpoint_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    import torch

    from tfnas_ray.distributed.tune import load_checkpoint

    marker = tmp_path / "code-ran"
    monkeypatch.setenv("TFNAS_PLANTED_DIR", str(marker))
    path = tmp_path / "trainer.pt"
    torch.save({"model": {}, "iteration": 3, "payload": _Planted()}, path)
    with pytest.raises(TfnasError, match=r"is not a plain trainer state \(refused by weights_only=True\)") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value) and not marker.exists()


def test_a_trainer_checkpoint_round_trips_under_weights_only(archs, tmp_path):
    import torch

    from tfnas_ray.distributed.tune import load_checkpoint
    from tfnas_ray.training.lm import Budget, LMTrainer, TrainConfig

    config = TrainConfig(budget=Budget("steps", 2), iterations=2, emsize=16, nhid=16, bptt=20, train_tokens=4_000, valid_tokens=500)
    spec = archs.column("spec")[0].as_py()
    trainer = LMTrainer(spec, config)
    trainer.train_iteration()
    torch.save(trainer.state_dict(), tmp_path / "trainer.pt")
    resumed = LMTrainer(spec, config)
    resumed.load_state_dict(load_checkpoint(tmp_path / "trainer.pt"))
    after_resume, uninterrupted = resumed.train_iteration(), trainer.train_iteration()
    for key in ("train_loss", "val_loss", "iteration"):  # continues exactly (all but the wall time)
        assert after_resume[key] == uninterrupted[key], key
