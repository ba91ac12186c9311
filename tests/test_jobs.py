"""Ray job submission: `tfnas_ray.distributed.jobs` and `tfnas submit / jobs / logs`.

The fast tests check addresses, argument handling and error messages without a
cluster. The slow ones start a real single-node Ray cluster with its dashboard on
loopback, with token authentication on (as Ray >= 2.59 does for local clusters), and
drive it through the `tfnas` command line in subprocesses, the way a user does.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tfnas_ray import cli
from tfnas_ray.distributed import jobs
from tfnas_ray.errors import TfnasError

REPO = Path(__file__).resolve().parents[1]

# Variables a test process may have inherited (the session's ray.init() sets some of
# them) that would point a subprocess at the wrong cluster or token.
_RAY_CLIENT_VARS = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
)


def _free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- addresses and arguments (no cluster) ---------------------------------------------


def test_resolve_address_order(monkeypatch):
    for var in jobs.ADDRESS_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert jobs.resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.2:8265/")
    assert jobs.resolve_address(None) == "http://10.0.0.2:8265"
    # Ray's own `ray job` CLI prefers RAY_API_SERVER_ADDRESS to RAY_ADDRESS.
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://ray.example.org:443")
    assert jobs.resolve_address(None) == "https://ray.example.org:443"
    # An explicit address beats both.
    assert jobs.resolve_address("http://head:8265") == "http://head:8265"


@pytest.mark.parametrize("address", ["auto", "127.0.0.1:6379", "ray://head:10001", "http://head:8265/api", "http://:8265"])
def test_resolve_address_rejects_non_dashboard_addresses(address):
    with pytest.raises(TfnasError, match=re.escape(f"--address={address!r} is not the Ray dashboard's address")):
        jobs.resolve_address(address)


def test_resolve_address_names_the_env_var(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(TfnasError, match=r"^RAY_ADDRESS='auto' is not the Ray dashboard's address"):
        jobs.resolve_address(None)


def test_submit_job_checks_its_arguments_before_connecting(tmp_path):
    # Port 9 (discard) has no dashboard: each check must fire before any connection.
    address = "http://127.0.0.1:9"
    with pytest.raises(TfnasError, match="entrypoint_args is empty"):
        jobs.submit_job([], address=address)
    with pytest.raises(TfnasError, match=r"entrypoint_args starts with 'tfnas' \('tfnas score a.parquet'\)"):
        jobs.submit_job(["tfnas", "score", "a.parquet"], address=address)
    missing = tmp_path / "nope"
    with pytest.raises(TfnasError, match=re.escape(f"working_dir={str(missing)!r} is not a directory")):
        jobs.submit_job(["--help"], address=address, working_dir=missing)


def test_wait_for_job_checks_its_arguments():
    with pytest.raises(TfnasError, match=r"poll_s=0 must be > 0"):
        jobs.wait_for_job("raysubmit_x", address="http://127.0.0.1:9", poll_s=0)
    with pytest.raises(TfnasError, match=r"timeout_s=-1 must be > 0"):
        jobs.wait_for_job("raysubmit_x", address="http://127.0.0.1:9", timeout_s=-1)


def test_unreachable_dashboard_is_one_line_naming_the_address():
    address = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(TfnasError, match=re.escape(f"cannot reach the Ray dashboard at {address}")) as caught:
        jobs.list_jobs(address)
    assert "\n" not in str(caught.value)


def test_submit_passes_everything_after_double_dash_to_the_job(monkeypatch):
    """`--address auto` after `--` belongs to the job's command, not to `tfnas submit`."""
    calls = {}

    def fake_submit(args, *, address, working_dir, **more):
        calls.update(args=list(args), address=address, working_dir=working_dir)
        return "raysubmit_fake"

    monkeypatch.setattr(jobs, "submit_job", fake_submit)
    result = CliRunner().invoke(
        cli.app,
        ["submit", "--address", "http://head:8265", "--working-dir", str(REPO), "--",
         "reproduce", "nb-nlp-ptb", "--out", "/results/x y", "--address", "auto"],
    )
    assert result.exit_code == 0, result.output
    assert calls == {
        "args": ["reproduce", "nb-nlp-ptb", "--out", "/results/x y", "--address", "auto"],
        "address": "http://head:8265",
        "working_dir": REPO,
    }
    assert "submitted raysubmit_fake to http://head:8265" in result.output


# ---- a real cluster on loopback, with token authentication -------------------------------


class _LoopbackCluster:
    """A single-node Ray cluster with its dashboard, private to this test module.

    It must not disturb the session's Ray (tests/conftest.py) or any other Ray on the
    machine: every port is a free one picked here, the temp dir is its own, and it is
    stopped by signalling its own process session, never with `ray stop` (which stops
    every Ray process of the user on the machine). `ray start --block` stays in the
    foreground as the session leader and, on SIGTERM, shuts down what it started.

    Its HOME is a fresh directory holding ~/.ray/auth_token, and RAY_AUTH_MODE=token,
    so the dashboard rejects requests without that token. The `tfnas` the job runs is a
    two-line launcher on the cluster's PATH (a cluster image installs the real one);
    it imports tfnas_ray from the working directory the job ships.
    """

    def __init__(self) -> None:
        # A short root: Ray's Unix socket paths under it must stay below 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="tfnas-jobs-", dir="/tmp"))
        self.home = self.root / "home"
        (self.home / ".ray").mkdir(parents=True)
        (self.home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
        bin_dir = self.root / "bin"
        bin_dir.mkdir()
        launcher = bin_dir / "tfnas"
        launcher.write_text(f"#!{sys.executable}\nfrom tfnas_ray.cli import main\nmain()\n")
        launcher.chmod(0o755)
        self.dashboard_port = _free_port()
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        env = self.client_env(self.home)
        env.update(
            RAY_AUTH_MODE="token",
            PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")]),
        )
        command = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={_free_port()}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
            # 0/0: workers bind OS-chosen ports, not the 10002-19999 range that
            # another Ray on this machine draws from.
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--num-cpus=2",
            f"--object-store-memory={100 * 1024 * 1024}",
            f"--temp-dir={self.root / 'ray'}",
            "--disable-usage-stats",
        ]
        self.log_path = self.root / "ray-start.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @staticmethod
    def client_env(home: Path) -> dict[str, str]:
        """The environment of a `tfnas` process run by a user whose home is `home`."""
        env = {k: v for k, v in os.environ.items() if k not in _RAY_CLIENT_VARS}
        env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
        return env

    def wait_until_up(self, timeout_s: float = 60.0) -> None:
        """Return once the dashboard answers (401 counts: it is up and wants a token)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"`ray start` exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                urllib.request.urlopen(f"{self.url}/api/version", timeout=2).close()
                return
            except urllib.error.HTTPError as err:
                if err.code == 401:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"Ray dashboard not up at {self.url} after {timeout_s} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        """Stop every process of this cluster and remove its files."""
        leader = self.process.pid
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        # Whatever survived (workers, agents) still belongs to the leader's session.
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getsid(int(entry.name)) == leader:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def tfnas(self, *args: str, home: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run `tfnas ARGS` on this machine as a user with the cluster's token (or, with
        `home`, as a user whose home directory is `home`)."""
        return subprocess.run(
            [sys.executable, "-m", "tfnas_ray.cli", *args],
            env=self.client_env(home or self.home),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def loopback_cluster():
    cluster = _LoopbackCluster()
    try:
        cluster.wait_until_up()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
def test_submit_wait_runs_the_command_and_lists_and_logs_it(loopback_cluster):
    """A real scoring job: `tfnas submit -- score …` on the loopback cluster writes its
    Parquet shards, and `jobs` / `logs` show it."""
    from tfnas_ray import tables
    from tfnas_ray.pipeline import sample_archs

    cluster = loopback_cluster
    archs = cluster.root / "archs.parquet"
    tables.write_table("archs", sample_archs("nb-nlp", 4, seed=0), archs)
    scores = cluster.root / "scores"
    command = ["score", str(archs), "--metric", "params", "--out", str(scores), "--address", "auto", "--no-progress"]
    submitted = cluster.tfnas(
        "submit", "--address", cluster.url, "--working-dir", str(REPO), "--wait", "--", *command, timeout=180
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    match = re.search(r"submitted (raysubmit_\w+) to " + re.escape(cluster.url), submitted.stdout)
    assert match, submitted.stdout
    job_id = match.group(1)
    # The job's own output (the scoring summary) streamed back, then the final status.
    assert "archs: 4 in 4 shards" in submitted.stdout
    assert f"job {job_id} SUCCEEDED" in submitted.stdout
    written = tables.read_table("scores", scores)
    assert written.num_rows == 4 and written.column("value").null_count == 0

    listed = cluster.tfnas("jobs", "--address", cluster.url)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert row.split()[1] == "SUCCEEDED"
    assert row.endswith("--no-progress")

    logs = cluster.tfnas("logs", job_id, "--address", cluster.url)
    assert logs.returncode == 0, logs.stderr
    assert "archs: 4 in 4 shards" in logs.stdout


@pytest.mark.slow
def test_unknown_job_and_missing_token_are_one_line_errors(loopback_cluster):
    cluster = loopback_cluster
    unknown = cluster.tfnas("logs", "raysubmit_doesnotexist", "--address", cluster.url)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        f"error: no job 'raysubmit_doesnotexist' on the Ray cluster at {cluster.url}; "
        f"`tfnas jobs --address {cluster.url}` lists its jobs"
    )

    # A user without the cluster's token is refused, and told where the token goes.
    stranger = cluster.root / "stranger"
    stranger.mkdir()
    refused = cluster.tfnas("jobs", "--address", cluster.url, home=stranger)
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith(f"error: the Ray cluster at {cluster.url} refused the request")
    assert "~/.ray/auth_token" in refused.stderr


@pytest.mark.slow
def test_submit_wait_exits_1_when_the_job_fails(loopback_cluster):
    cluster = loopback_cluster
    # `tfnas no-such-command` exits 2 (a usage error) on the cluster.
    failed = cluster.tfnas("submit", "--address", cluster.url, "--working-dir", str(REPO), "--wait", "--", "no-such-command")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    job_id = re.search(r"submitted (raysubmit_\w+)", failed.stdout).group(1)
    assert "No such command" in failed.stdout  # the job's own output, streamed back
    # One line, not the job's whole output (Ray appends its tail to the job's message).
    error_lines = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, failed.stderr
    assert error_lines[0].startswith(
        f"error: job {job_id} on {cluster.url} ended FAILED: Job entrypoint command failed with exit code 2"
    )
