"""A real multi-host Ray cluster: three hosts as Linux network namespaces on one bridge.

Host 1 runs the Ray head (token authentication, dashboard on its own address) and an
S3 server (moto), the only storage the hosts share for their data; hosts 2 and 3 run
one-CPU Ray workers; the head runs no scorer (`--num-cpus=0`). This process, in the
root namespace, is "outside": it reaches the hosts over the bridge only. Every Ray
process is started by the absolute path of its Python with PATH=/usr/bin:/bin, so a
job that needed `tfnas` or the right `python` on the head's PATH would fail.

1. `tfnas submit` from outside, with the architectures shipped by `--include` from the
   git-ignored runs/ directory, scores to s3://; while shards are in flight, every
   process of host 3 is killed (by pid, from `ip netns pids`). The job must end
   SUCCEEDED with every architecture scored once and the values of a one-host run, and
   `tfnas jobs` / `tfnas logs` show it.
2. The driver runs on a worker host (host 2, `tfnas score --address HEAD:6379`), as a
   KubeRay RayJob's submitter pod does, reading its architectures from S3.

The namespaces, links and processes are this test's own (names carry its pid) and are
removed in the fixture's teardown, also when a step fails; leftovers of an earlier run
that died are removed first. Processes are only ever signalled by pid. The drill that
holds each scorer a few seconds on its first architecture (TFNAS_DRILL) writes its
markers to a local directory: test instrumentation, not data the hosts share.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

from tfnas_ray import tables
from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.distributed.drills import Drill

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
METRICS = ("params", "hidden_cov")  # cheap: a parameter count and one forward pass
N_ARCHS = 8
PAUSE_S = 1.5  # each scorer's first attempt at an architecture waits this long (the drill)
# The head declares a node dead after 3 failed health checks 1 s apart (Ray's default: 5,
# 3 s apart), so that losing host 3 costs the test seconds, not tens of seconds.
HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}

PID = os.getpid()
NETNS_PREFIX = "tfnas-"  # netns tfnas-<pid>-h1 .. h3
LINK_PREFIX = "tf"  # links tf<pid>br (bridge), tf<pid>v1 .. v3 (veths): at most 15 characters
# A /24 of its own per run, so that a second run on the machine does not collide.
SUBNET = f"10.77.{PID % 250}"
OUTSIDE_IP = f"{SUBNET}.254"
HEAD_IP = f"{SUBNET}.1"
S3_PORT = 5000
GCS_PORT = 6379
DASHBOARD = f"http://{HEAD_IP}:8265"


def _netns(host: int) -> str:
    return f"{NETNS_PREFIX}{PID}-h{host}"


def _ip(host: int) -> str:
    return f"{SUBNET}.{host}"


def _ipcmd(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_processes(netns: str) -> None:
    """SIGKILL every process inside `netns`, each by its pid."""
    listed = _ipcmd("netns", "pids", netns, check=False)
    for pid in (int(p) for p in listed.stdout.split()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _remove_network(pid: int) -> None:
    """Remove the namespaces (and their processes) and links of the run with `pid`."""
    names = _ipcmd("netns", "list", check=False).stdout
    for netns in re.findall(rf"^({re.escape(NETNS_PREFIX)}{pid}-h\d)\b", names, flags=re.M):
        _kill_netns_processes(netns)
        _ipcmd("netns", "del", netns, check=False)
    links = _ipcmd("-o", "link", "show", check=False).stdout
    for link in sorted(set(re.findall(rf"^\d+: ({LINK_PREFIX}{pid}(?:br|v\d))[@:]", links, flags=re.M))):
        _ipcmd("link", "del", link, check=False)


def _remove_leftovers() -> None:
    """What runs of this test that died left behind (their pid is gone)."""
    names = _ipcmd("netns", "list", check=False).stdout
    links = _ipcmd("-o", "link", "show", check=False).stdout
    pids = {int(p) for p in re.findall(rf"^{re.escape(NETNS_PREFIX)}(\d+)-h\d\b", names, flags=re.M)}
    pids |= {int(p) for p in re.findall(rf"^\d+: {LINK_PREFIX}(\d+)(?:br|v\d)[@:]", links, flags=re.M)}
    for pid in pids:
        if pid == PID or not _alive(pid):
            _remove_network(pid)


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (.ci/run installs it)"
    # Everything the test does to the network, once, on a namespace and a link of its own.
    probe, link = f"{NETNS_PREFIX}{PID}-h0", f"{LINK_PREFIX}{PID}v0"
    try:
        for step in (
            ["netns", "add", probe],
            ["link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", probe],
            ["netns", "exec", probe, "ip", "link", "set", "lo", "up"],
        ):
            done = _ipcmd(*step, check=False)
            if done.returncode != 0:
                return f"cannot build network namespaces here (`ip {' '.join(step)}`: {done.stderr.strip()})"
    finally:
        _ipcmd("link", "del", link, check=False)
        _ipcmd("netns", "del", probe, check=False)
    return None


def _wait_for(what: str, check, timeout_s: float, *, processes=()) -> object:
    """Poll `check()` until it returns something truthy; fail after `timeout_s`, or at
    once when one of `processes` (name, Popen, log path) has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        for name, process, log in processes:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode} while waiting for {what}:\n{Path(log).read_text()[-3000:]}")
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout_s:g} s")
        time.sleep(0.5)


class Hosts:
    """Three hosts (network namespaces) on a bridge, the Ray cluster and the S3 server.

    Every host shares this test's HOME (its ~/.ray/auth_token is the cluster token) and
    environment: the S3 endpoint on host 1, test credentials, a bare PATH.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        (self.home / ".ray").mkdir(parents=True)
        self.token = secrets.token_hex(32)
        (self.home / ".ray" / "auth_token").write_text(self.token)
        self.drill_dir = root / "drill"
        self.processes: list[tuple[str, subprocess.Popen, Path]] = []

    def env(self, **more: str) -> dict[str, str]:
        """The environment of every process on the hosts, and of `tfnas` outside."""
        return {
            "HOME": str(self.home),
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),  # a clean clone runs its own code, installed or not
            "LANG": "C.UTF-8",
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
            "TOKENIZERS_PARALLELISM": "false",
            "AWS_ENDPOINT_URL": f"http://{HEAD_IP}:{S3_PORT}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
            **more,
        }

    def network_up(self) -> None:
        bridge = f"{LINK_PREFIX}{PID}br"
        _ipcmd("link", "add", bridge, "type", "bridge")
        _ipcmd("addr", "add", f"{OUTSIDE_IP}/24", "dev", bridge)
        _ipcmd("link", "set", bridge, "up")
        for host in (1, 2, 3):
            netns, veth = _netns(host), f"{LINK_PREFIX}{PID}v{host}"
            _ipcmd("netns", "add", netns)
            _ipcmd("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _ipcmd("link", "set", veth, "master", bridge, "up")
            _ipcmd("-n", netns, "addr", "add", f"{_ip(host)}/24", "dev", "eth0")
            _ipcmd("-n", netns, "link", "set", "eth0", "up")
            _ipcmd("-n", netns, "link", "set", "lo", "up")  # Ray talks to itself on loopback too

    def spawn(self, name: str, host: int, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start `argv` on `host` (in its namespace), its output to a log file."""
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", _netns(host), *argv], env=env, cwd=self.root,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.processes.append((name, process, log))
        return process

    def start_cluster(self, head_env: dict[str, str], meanwhile=lambda: None) -> object:
        """Start S3, the head, then the workers; return what `meanwhile()`, run while
        the head comes up, returned."""
        ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats", "--object-store-memory=100000000"]
        self.spawn("moto", 1, [sys.executable, "-m", "moto.server", "-H", HEAD_IP, "-p", str(S3_PORT)], self.env())
        self.spawn(
            "head", 1,
            [*ray, "--head", f"--node-ip-address={HEAD_IP}", f"--port={GCS_PORT}", "--num-cpus=0",
             "--include-dashboard=true", f"--dashboard-host={HEAD_IP}", "--dashboard-port=8265", f"--temp-dir={self.root / 'h1'}"],
            head_env,
        )
        result = meanwhile()
        _wait_for("dashboard", lambda: self.dashboard("/api/version") is not None, 120, processes=self.processes)
        for host in (2, 3):
            self.spawn(
                f"worker{host}", host,
                [*ray, f"--address={HEAD_IP}:{GCS_PORT}", f"--node-ip-address={_ip(host)}", "--num-cpus=1", f"--temp-dir={self.root / f'h{host}'}"],
                self.env(),
            )
        _wait_for("three alive nodes", lambda: len(self.alive_nodes()) == 3, 120, processes=self.processes)
        return result

    def dashboard(self, path: str) -> dict | None:
        """GET a dashboard endpoint with the cluster token; None while it does not answer."""
        request = urllib.request.Request(DASHBOARD + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read() or b"null") or {}
        except (OSError, ValueError):
            return None

    def alive_nodes(self) -> dict[str, str]:
        """{node IP: node id} of the nodes the head sees alive."""
        answer = self.dashboard("/api/v0/nodes?detail=1&limit=100") or {}
        nodes = ((answer.get("data") or {}).get("result") or {}).get("result") or []
        return {n["node_ip"]: n["node_id"] for n in nodes if n.get("state") == "ALIVE"}

    def take_away(self, host: int) -> None:
        """Host `host` is gone: every process in its namespace killed, by pid."""
        _kill_netns_processes(_netns(host))

    def teardown(self) -> None:
        for _, process, _ in self.processes:
            if process.poll() is None:
                try:
                    os.kill(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _remove_network(PID)
        for _, process, _ in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture(scope="module")
def archs() -> pa.Table:
    """Eight distinct NAS-Bench-NLP cells, the first of the shipped PTB benchmark."""
    table, _ = get_benchmark("nb-nlp-ptb").load()
    seen, keep = set(), []
    for i, arch_id in enumerate(table.column("arch_id").to_pylist()):
        if arch_id not in seen and len(keep) < N_ARCHS:
            seen.add(arch_id)
            keep.append(i)
    return table.take(keep)


def _one_host_run(archs, out: Path) -> list:
    """The reference: the same architectures and metrics on the session's local Ray."""
    from tfnas_ray.distributed.scoring import ScoreConfig, run_scoring

    summary = run_scoring(archs, str(out), ScoreConfig(metrics=METRICS, shard_size=1), progress=False, log=lambda line: None)
    return _rows(summary.table)


@pytest.fixture(scope="module")
def reference(hosts) -> list:
    """Rows (arch_id, metric, value, error) of the one-host run."""
    return hosts.reference


def _rows(table) -> list:
    return sorted([r["arch_id"], r["metric"], r["value"], r["error"]] for r in table.to_pylist())


@pytest.fixture(scope="module")
def hosts(archs, tmp_path_factory, request):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    _remove_leftovers()
    # Short: Ray's Unix socket paths under it must stay below 108 bytes.
    root = Path(f"/tmp/tfnas-mh-{PID}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    made = Hosts(root)
    try:
        made.network_up()
        # The drill reaches the job's driver through the head's environment; the driver
        # forwards it to the scorers it starts.
        drill = Drill(pause={arch_id: PAUSE_S for arch_id in archs.column("arch_id").to_pylist()}, dir=str(made.drill_dir))

        def one_host_run() -> list:  # while the head comes up: the two share the CPUs better than one waits
            request.getfixturevalue("ray_cluster")
            return _one_host_run(archs, tmp_path_factory.mktemp("one-host"))

        made.reference = made.start_cluster(made.env(**drill.to_env(), **HEALTH_CHECKS), meanwhile=one_host_run)
        yield made
    finally:
        made.teardown()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def bucket(hosts, archs, monkeypatch_module):
    """A bucket on host 1's S3 server, holding the architectures; this process reads it."""
    import boto3

    for name, value in hosts.env().items():
        if name.startswith("AWS_"):
            monkeypatch_module.setenv(name, value)
    monkeypatch_module.delenv("AWS_PROFILE", raising=False)
    monkeypatch_module.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    client = boto3.client("s3")
    _wait_for("S3 server", lambda: _connects(HEAD_IP, S3_PORT), 60, processes=hosts.processes)
    client.create_bucket(Bucket="tfnas")
    tables.write_table("archs", archs, "s3://tfnas/archs.parquet")
    return "tfnas"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def _tfnas(hosts: Hosts, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`tfnas ARGS` run outside the hosts, by a user who holds the cluster token."""
    return subprocess.run([sys.executable, "-m", "tfnas_ray.cli", *args], env=hosts.env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_a_submitted_job_survives_losing_a_host(hosts, bucket, archs, reference):
    runs = REPO / "runs" / f"tfnas-mh-{PID}"  # git-ignored (/runs/): shipped because --include names it
    made_runs = not runs.parent.exists()
    runs.mkdir(parents=True)
    submit = None
    try:
        tables.write_table("archs", archs, runs / "archs.parquet")
        archs_path = (runs / "archs.parquet").relative_to(REPO).as_posix()
        host3 = hosts.alive_nodes()[_ip(3)]
        log = hosts.root / "submit.log"
        with log.open("w") as out:
            submit = subprocess.Popen(
                [sys.executable, "-m", "tfnas_ray.cli", "submit", "--address", DASHBOARD, "--allow-insecure-token",
                 "--working-dir", str(REPO), "--include", archs_path, "--wait", "--",
                 "score", archs_path, "--metric", ",".join(METRICS), "--shard-size", "1",
                 "--out", f"s3://{bucket}/submitted", "--address", "auto", "--no-progress"],
                env=hosts.env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
            )
        # Host 3 goes while its scorer holds an architecture (the drill's marker names the node).
        paused_on_host3 = lambda: [m for m in hosts.drill_dir.glob("paused-*") if m.read_text() == host3]  # noqa: E731
        _wait_for("architecture in flight on host 3", paused_on_host3, 150, processes=[("tfnas submit", submit, log)])
        hosts.take_away(3)
        submit.wait(timeout=240)
        output = log.read_text()
    finally:
        if submit is not None and submit.poll() is None:  # a step failed: it is ours to stop
            submit.kill()
            submit.wait(timeout=30)
        shutil.rmtree(runs if not made_runs else runs.parent, ignore_errors=True)
    assert submit.returncode == 0, output
    job_id = re.search(r"submitted (raysubmit_\w+) to " + re.escape(DASHBOARD), output).group(1)
    assert f"job {job_id} SUCCEEDED" in output
    assert "worker deaths recovered: 1" in output
    assert "failures: none" in output

    scores = tables.read_table("scores", f"s3://{bucket}/submitted")
    assert _rows(scores) == reference  # every architecture once, the one-host values

    listed = _tfnas(hosts, "jobs", "--address", DASHBOARD, "--allow-insecure-token")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert row.split()[1] == "SUCCEEDED" and f"tfnas score {archs_path}" in row
    logs = _tfnas(hosts, "logs", job_id, "--address", DASHBOARD, "--allow-insecure-token")
    assert logs.returncode == 0, logs.stderr
    assert "worker deaths recovered: 1" in logs.stdout and f"archs: {N_ARCHS} in {N_ARCHS} shards" in logs.stdout


def test_the_driver_runs_on_a_worker_host(hosts, bucket, reference):
    """`tfnas score --address HEAD:6379` on host 2, as a RayJob's driver, archs from S3."""
    driver = hosts.spawn(
        "driver-on-host2", 2,
        [sys.executable, "-m", "tfnas_ray.cli", "score", f"s3://{bucket}/archs.parquet", "--metric", ",".join(METRICS),
         "--shard-size", "2", "--out", f"s3://{bucket}/driver-on-host2", "--address", f"{HEAD_IP}:{GCS_PORT}", "--no-progress"],
        hosts.env(),
    )
    driver.wait(timeout=240)
    output = (hosts.root / "driver-on-host2.log").read_text()
    assert driver.returncode == 0, output
    assert f"archs: {N_ARCHS} in {N_ARCHS // 2} shards" in output and "failures: none" in output
    assert _rows(tables.read_table("scores", f"s3://{bucket}/driver-on-host2")) == reference
