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
    so the dashboard rejects requests without that token. It is started by the absolute
    path of its Python with a bare PATH (/usr/bin:/bin), on which neither `tfnas` nor
    this Python lies: a job must find its Python without the head's PATH (issue 17).
    """

    def __init__(self) -> None:
        # A short root: Ray's Unix socket paths under it must stay below 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="tfnas-jobs-", dir="/tmp"))
        self.home = self.root / "home"
        (self.home / ".ray").mkdir(parents=True)
        (self.home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
        self.dashboard_port = _free_port()
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        env = self.client_env(self.home)
        env.update(
            RAY_AUTH_MODE="token",
            PATH="/usr/bin:/bin",
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


# ---- what a job ships (issue 18 rows 3 and 4) -----------------------------------------------

# Secret material, assembled here so that this test file holds none itself (it would be
# left out of every job otherwise).
_PEM = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\n-----END " + "RSA PRIVATE KEY-----\n"
_AWS_KEY_ID = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documented example key id
_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"  # AWS's documented example secret


def _git_checkout(root: Path, files: dict[str, str | bytes], *, track: bool = True) -> Path:
    """A git repository at `root` holding `files` (forced into the index when `track`)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    if track and files:
        subprocess.run(["git", "-C", str(root), "add", "-f", "--", *files], check=True)
    return root


# (file, content): each is a secret that main 5a94169's name list shipped.
SECRET_FILES = [
    (".envrc", "export AWS_PROFILE=prod\n"),
    (".env_production", "DB_PASSWORD=hunter2\n"),
    (".s3cfg", "[default]\naccess_key = x\nsecret_key = y\n"),
    ("deploy/.vault-token", "s.abcdefghijklmnop\n"),
    ("ops/vault.txt", "token: hvs." + "CAESIJ" + "x" * 30 + "\n"),
    ("kubeconfig.yaml", "apiVersion: v1\nkind: Config\n"),  # by name
    ("cluster/admin.conf", "apiVersion: v1\nclusters:\n- cluster: {server: https://k}\nusers:\n- name: admin\n"),  # by content
    ("infra/prod.tfvars", 'db_password = "hunter2"\n'),
    ("infra/prod.tfvars.json", '{"db_password": "hunter2"}\n'),
    ("terraform.tfstate", '{"version": 4}\n'),
    ("config/secrets.yaml", "api_key: abc\n"),
    ("notes/setup.md", "use these:\n" + _PEM),  # a private key in any file
    ("scripts/run.sh", f"export AWS_ACCESS_KEY_ID={_AWS_KEY_ID}\n"),
    ("scripts/env.py", f'aws_secret_access_key = "{_AWS_SECRET}"\n'),
    ("gcp/sa.json", '{"type": "service_account", "project_id": "p", "private_key"' + ': "x"}\n'),
    ("ci/npmrc-publish", "//registry.npmjs.org/:_authToken=npm_abcdef\n"),
    ("ci/netrc.bak", "machine github.com login me pass" + "word s3cret\n"),
    ("ci/release.sh", "GH_TOKEN=ghp_" + "a1B2" * 9 + "\n"),
    ("home/.config/gcloud/application_default_credentials.db", "sqlite"),
]


@pytest.mark.parametrize(("name", "content"), SECRET_FILES, ids=[name for name, _ in SECRET_FILES])
def test_a_tracked_secret_is_never_shipped(tmp_path, name, content):
    checkout = _git_checkout(tmp_path / "checkout", {"pkg/code.py": "x = 1\n", name: content})
    shipped, secrets = jobs.shipped_files(checkout)
    assert shipped == ["pkg/code.py"]
    assert secrets == [name]


# Files that look a little like secrets and are not: they must ship.
HARMLESS_FILES = [
    ("docs/auth.md", "Put the token in ~/.ray/auth_token; the password is never stored.\n"),
    ("pkg/keys.py", "# -----BEGIN PUBLIC KEY----- is what we check against\nKEYS = {}\n"),
    ("environment.yml", "name: tfnas\ndependencies: [python]\n"),
    ("k8s/job.yaml", "apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\n"),  # not a kubeconfig
    ("tokenizer/vocab.txt", "[PAD]\n[UNK]\nhello\n"),
]


@pytest.mark.parametrize(("name", "content"), HARMLESS_FILES, ids=[name for name, _ in HARMLESS_FILES])
def test_a_harmless_file_is_shipped(tmp_path, name, content):
    checkout = _git_checkout(tmp_path / "checkout", {name: content})
    assert jobs.shipped_files(checkout) == ([name], [])


def test_this_repository_ships_whole_except_its_ignore_file():
    """No false alarm on our own code (its tests, its docs, the secret rules themselves)."""
    plan = jobs.plan_shipment(REPO)
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    expected = sorted(p for p in tracked if (REPO / p).is_file() and p != ".gitignore")
    assert list(plan.files) == expected
    assert plan.left_out == ((".gitignore", "ignore file: Ray's packager would apply it to the upload"),)


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.binary(max_size=300),
    after=st.binary(max_size=300),
    secret=st.sampled_from([_PEM.encode(), _AWS_KEY_ID.encode() + b"\n", b"\n" + b"clusters:\n- a\n" + b"x" * 150 + b"\nusers:\n- b\n"]),
)
def test_a_secret_anywhere_in_a_file_is_found(tmp_path_factory, monkeypatch, before, after, secret):
    """Content is scanned whole: a secret after arbitrary binary bytes, also when it
    straddles the scanner's chunks (shrunk to 64 bytes here), is found."""
    monkeypatch.setattr(jobs, "_SCAN_CHUNK", 64, raising=False)
    folder = tmp_path_factory.mktemp("blob")
    (folder / "blob.bin").write_bytes(b"\n" + before + b"\n" + secret + after)
    shipped, secrets = jobs.shipped_files(folder, ["blob.bin"])
    assert (shipped, secrets) == ([], ["blob.bin"])


class _PackagingJobClient:
    """Stands in for `JobSubmissionClient`, but packages `working_dir` with Ray's own
    packager, the call the real client makes before uploading (include_gitignore=True
    is Ray's default), so what Ray would drop is dropped here too."""

    made: list = []

    def __init__(self, address, headers=None, **kwargs):
        _PackagingJobClient.made.append(self)

    def submit_job(self, *, entrypoint, runtime_env):
        import zipfile

        from ray._private.runtime_env.packaging import create_package

        self.entrypoint = entrypoint
        package = Path(tempfile.mkdtemp(prefix="tfnas-pkg-")) / "package.zip"
        create_package(runtime_env["working_dir"], package, include_gitignore=True)
        with zipfile.ZipFile(package) as archive:
            self.packaged = {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
        shutil.rmtree(package.parent)
        return "raysubmit_packaged"


@pytest.fixture
def packaging_client(monkeypatch):
    import ray.job_submission

    _PackagingJobClient.made = []
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", _PackagingJobClient)
    for var in _RAY_CLIENT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    return _PackagingJobClient


def test_an_included_git_ignored_file_reaches_rays_package(packaging_client, tmp_path):
    """`--include runs/x.parquet` under a tracked `.gitignore` of `/runs/`: the file is in
    the zip Ray uploads (main 5a94169 staged the .gitignore, and Ray dropped runs/)."""
    checkout = _git_checkout(
        tmp_path / "checkout",
        {".gitignore": "/runs/\n/out/\n*.log\n", "pkg/code.py": "x = 1\n", "sub/.gitignore": "*.parquet\n", "sub/keep.py": "y = 2\n"},
    )
    for name in ("runs/x.parquet", "runs/y.parquet", "out/z.txt", "sub/t.parquet", "data/a.log", "data/b.txt"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_bytes(b"PAR1" + name.encode())
    said = []
    jobs.submit_job(
        ["score", "runs/x.parquet"], address="http://127.0.0.1:8265", working_dir=checkout,
        include=["runs/x.parquet", "sub/t.parquet", "data"], log=said.append,
    )
    packaged = packaging_client.made[-1].packaged
    assert sorted(packaged) == ["data/b.txt", "pkg/code.py", "runs/x.parquet", "sub/keep.py", "sub/t.parquet"]
    assert packaged["runs/x.parquet"] == b"PAR1runs/x.parquet"
    # data/a.log is git-ignored and only found under the included directory.
    assert said == ["not shipping 1 other file(s): data/a.log (ignored by git (.gitignore:3:*.log); name it in --include to ship it)"]
    reasons = dict(jobs.plan_shipment(checkout, ["runs/x.parquet", "sub/t.parquet", "data"]).left_out)
    assert reasons[".gitignore"] == reasons["sub/.gitignore"] == "ignore file: Ray's packager would apply it to the upload"


def test_symlinks_never_lead_out_of_the_repository(packaging_client, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("private notes\n")
    (outside / "keys").mkdir()
    (outside / "keys" / "a.txt").write_text("private\n")
    checkout = _git_checkout(tmp_path / "checkout", {"pkg/code.py": "x = 1\n", "docs/guide.md": "guide\n"})
    (checkout / "notes.txt").symlink_to(outside / "notes.txt")  # a tracked link out of the repository
    (checkout / "guide.md").symlink_to("docs/guide.md")  # a tracked link inside it
    (checkout / "data").mkdir()
    (checkout / "data" / "keys").symlink_to(outside / "keys", target_is_directory=True)
    (checkout / "data" / "archs.txt").write_text("archs\n")
    subprocess.run(["git", "-C", str(checkout), "add", "notes.txt", "guide.md"], check=True)

    jobs.submit_job(["--help"], address="http://127.0.0.1:8265", working_dir=checkout, include=["data", "data/keys/*"])
    assert packaging_client.made[-1].packaged == {
        "data/archs.txt": b"archs\n", "docs/guide.md": b"guide\n", "guide.md": b"guide\n", "pkg/code.py": b"x = 1\n",
    }
    reasons = dict(jobs.plan_shipment(checkout, ["data", "data/keys/*"]).left_out)
    assert reasons["notes.txt"] == f"symlink to {outside.resolve() / 'notes.txt'}, outside the repository {checkout.resolve()}"
    for link in ("data/keys", "data/keys/a.txt"):
        assert reasons[link].startswith("symlink to ") and "outside the repository" in reasons[link]


def test_include_patterns_are_checked_before_anything_ships(tmp_path):
    checkout = _git_checkout(tmp_path / "checkout", {"pkg/code.py": "x = 1\n"})
    address = "http://127.0.0.1:9"  # nothing listens: the checks must come first
    with pytest.raises(TfnasError, match=re.escape(f"--include 'runs/*.parquet' matches no file under {str(checkout)!r}")):
        jobs.submit_job(["--help"], address=address, working_dir=checkout, include=["runs/*.parquet"])
    (tmp_path / "secrets").write_text("x")
    with pytest.raises(TfnasError, match=re.escape("--include '../secrets' leaves the working directory")):
        jobs.submit_job(["--help"], address=address, working_dir=checkout, include=["../secrets"])


def test_dry_run_prints_what_would_ship_and_why_not_and_submits_nothing(packaging_client, tmp_path, monkeypatch):
    checkout = _git_checkout(tmp_path / "checkout", {"pkg/code.py": "x = 1\n", ".envrc": "export A=1\n", ".gitignore": "/runs/\n"})
    (checkout / "runs").mkdir()
    (checkout / "runs" / "archs.parquet").write_bytes(b"PAR1")
    monkeypatch.chdir(checkout)
    result = CliRunner().invoke(
        cli.app, ["submit", "--dry-run", "--address", "http://10.0.0.5:8265", "--include", "runs/archs.parquet", "--", "score", "runs/archs.parquet", "--metric", "params"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "would ship 2 file(s), 0.00 MiB, from .:",
        "  pkg/code.py",
        "  runs/archs.parquet",
        "left out 2 file(s):",
        "  .envrc: secret: path matches '.env*'",
        "  .gitignore: ignore file: Ray's packager would apply it to the upload",
        "would run on http://10.0.0.5:8265: tfnas score runs/archs.parquet --metric params",
        "dry run: nothing submitted",
    ]
    assert packaging_client.made == []  # no client, no request, no token check


def test_the_job_runs_tfnas_with_python_not_the_heads_path(packaging_client, tmp_path):
    """The entrypoint names neither `tfnas` nor relies on `python` being on PATH: run as
    Ray runs it (/bin/sh, a bare PATH) with TFNAS_PYTHON set, it reaches tfnas's CLI;
    with no Python that imports tfnas_ray it says so and exits 127."""
    checkout = _git_checkout(tmp_path / "checkout", {"pkg/code.py": "x = 1\n"})
    jobs.submit_job(["--help"], address="http://127.0.0.1:8265", working_dir=checkout)
    entrypoint = packaging_client.made[-1].entrypoint
    assert not entrypoint.startswith("tfnas ") and jobs.entrypoint_command(entrypoint) == "tfnas --help"
    bare = {"PATH": "/nonexistent", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    ran = subprocess.run(entrypoint, shell=True, capture_output=True, text=True, env={**bare, "TFNAS_PYTHON": sys.executable}, timeout=120)
    assert ran.returncode == 0 and "score" in ran.stdout, ran.stderr
    lost = subprocess.run(entrypoint, shell=True, capture_output=True, text=True, env=bare, timeout=120)
    assert lost.returncode == 127
    assert "tfnas job: no Python on this node imports tfnas_ray" in lost.stderr and "set TFNAS_PYTHON" in lost.stderr


def test_python_dash_m_tfnas_ray_cli_is_the_cli():
    ran = subprocess.run([sys.executable, "-m", "tfnas_ray.cli", "--help"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert ran.returncode == 0 and "submit" in ran.stdout, ran.stderr
