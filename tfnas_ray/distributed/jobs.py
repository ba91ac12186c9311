"""Run tfnas commands on a running Ray cluster as Ray jobs; list them; read their logs.

A job is one `tfnas ...` command line run by the cluster's head node, with this
checkout's working directory shipped alongside (Ray puts it first on the job's
PYTHONPATH, so the shipped code wins over a tfnas-ray installed in the cluster image).

Addresses. Job submission is served by the Ray *dashboard* over HTTP (port 8265 on the
head), not by the GCS port (6379) that `ray.init(address=...)` and `--address auto`
take. Every function here takes that dashboard URL, resolved in this order: the
`address` argument, then `RAY_API_SERVER_ADDRESS`, then `RAY_ADDRESS` (the variables
Ray's own `ray job` CLI reads), then http://127.0.0.1:8265.

Token authentication. Since Ray 2.52 a cluster may require a bearer token on every
dashboard request; since Ray 2.59 `ray.init()` turns it on for new local clusters and
`ray start --head` turns it on whenever a token exists on the machine. Ray's own job
client sends the token only when the *client* process has `RAY_AUTH_MODE=token` set,
so a plain `JobSubmissionClient` cannot talk to such a cluster. Here the token is
looked up the way Ray's nodes look it up (`RAY_AUTH_TOKEN`, then the file named by
`RAY_AUTH_TOKEN_PATH`, then `~/.ray/auth_token`) and sent whenever one exists, unless
`RAY_AUTH_MODE=disabled`. The token grants control of the cluster, so it is sent only
where nobody else can read it: to an https:// address, or over plain http to a
loopback address (the machine itself, an SSH tunnel, `kubectl port-forward`). Sending
it in clear text to another host needs `allow_insecure_token=True`
(`--allow-insecure-token`), a decision the user takes knowingly.

What a job ships. `submit_job` uploads the git-tracked files of the working directory
(plus the files an explicit `include` names), never untracked files, and never a file
that looks like a secret (`.env`, keys, credentials: `SECRET_PATTERNS`), even a
tracked one: a stray `.env` or `id_rsa` in a checkout must not reach a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import ipaddress
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tfnas_ray.errors import TfnasError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

DEFAULT_ADDRESS = "http://127.0.0.1:8265"

# Ray's own `ray job` CLI reads these, in this order, for the dashboard address.
ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")

# Files that are never shipped with a job, tracked or not (fnmatch patterns on every part
# of the path): environment files, private keys and keystores, credential stores.
SECRET_PATTERNS: tuple[str, ...] = (
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.kdbx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".pgpass",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    "credentials",
    "credentials.json",
    "*credentials*.json",
    "service-account*.json",
    "auth_token",
    "kubeconfig",
    ".aws",
    ".ssh",
    ".gnupg",
    ".kube",
    ".docker",
    ".git",
)

# Ray's JobStatus values after which a job never changes again.
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


@dataclass(frozen=True)
class JobInfo:
    """One job as the cluster reports it.

    Arguments:
        job_id: the submission id (`raysubmit_...`) for submitted jobs, which is what
            `tfnas logs` takes; the driver's job id for scripts that called
            `ray.init()` themselves.
        status: one of Ray's JobStatus values: PENDING, RUNNING, STOPPED, SUCCEEDED,
            FAILED.
        entrypoint: the shell command the job runs ("" for plain drivers).
        start_time: seconds since the epoch, or None before the job started.
        end_time: seconds since the epoch, or None while it runs.
        message: Ray's one-line explanation of the status (why it failed, ...).
    """

    job_id: str
    status: str
    entrypoint: str
    start_time: float | None
    end_time: float | None
    message: str

    @property
    def is_terminal(self) -> bool:
        """Whether the job has finished (succeeded, failed or been stopped)."""
        return self.status in TERMINAL_STATUSES

    @property
    def reason(self) -> str:
        """The first line of `message`: for a failed job Ray appends its last 20,000
        characters of output there, which belong in `tfnas logs`, not in one line."""
        lines = self.message.strip().splitlines()
        return lines[0] if lines else ""

    @classmethod
    def from_details(cls, details: JobDetails) -> JobInfo:
        """Convert Ray's `JobDetails` (times in milliseconds) to a `JobInfo`."""
        return cls(
            job_id=details.submission_id or details.job_id or "",
            status=str(getattr(details.status, "value", details.status)),
            entrypoint=details.entrypoint or "",
            start_time=details.start_time / 1000 if details.start_time else None,
            end_time=details.end_time / 1000 if details.end_time else None,
            message=details.message or "",
        )


def resolve_address(address: str | None = None) -> str:
    """The dashboard URL that job requests go to.

    Arguments:
        address: "http://HOST:PORT" or "https://HOST:PORT" of the Ray dashboard; None
            takes `RAY_API_SERVER_ADDRESS`, then `RAY_ADDRESS`, then
            http://127.0.0.1:8265.

    Returns:
        The URL without a trailing slash, e.g. "http://127.0.0.1:8265".

    Raises:
        TfnasError: the address is not an http(s) URL with a host (for example the
            GCS address "10.0.0.1:6379", "auto" or "ray://..."), naming where it came
            from.

    Example:
        >>> resolve_address("http://10.0.0.5:8265/")
        'http://10.0.0.5:8265'
    """
    source = "--address"
    if address is None:
        for var in ADDRESS_ENV_VARS:
            if os.environ.get(var):
                source, address = var, os.environ[var]
                break
        else:
            return DEFAULT_ADDRESS
    url = address.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise TfnasError(
            f"{source}={address!r} is not the Ray dashboard's address: job submission "
            "talks to the dashboard over HTTP, so give http://HEAD:8265 or "
            "https://HEAD:PORT (not the GCS address HOST:6379, 'auto' or ray://)"
        )
    return url


def submit_job(
    entrypoint_args: Sequence[str],
    *,
    address: str | None = None,
    working_dir: str | os.PathLike[str] = ".",
    include: Sequence[str] = (),
    allow_insecure_token: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> str:
    """Run `tfnas <entrypoint_args>` on the cluster as a Ray job; return at once.

    Arguments:
        entrypoint_args: the tfnas command line without the leading `tfnas`, e.g.
            ["score", "archs.parquet", "--metric", "params", "--out", "/results/s"];
            each item is shell-quoted, so spaces and quotes arrive unchanged.
        address: the dashboard URL (see `resolve_address`).
        working_dir: a git checkout whose tracked files are uploaded with the job (see
            `shipped_files`); the command runs inside them and imports their code first.
        include: glob patterns (relative to `working_dir`) of untracked files to ship
            too, e.g. ["archs.parquet"]; secrets are left out even then.
        allow_insecure_token: send the cluster token over plain http to a host that is
            not loopback (see the module docstring).
        log: receives a line naming the secret-looking files left out, if any.

    Returns:
        The job's submission id, which `job_logs`, `wait_for_job` and `tfnas logs`
        take.

    Raises:
        TfnasError: empty or `tfnas`-prefixed arguments, a missing working
            directory or one that is not a git checkout, an unreachable dashboard,
            a token that would travel in clear text, a refused token, or the
            cluster rejecting the job.

    Example:
        >>> job = submit_job(["--help"], address="http://127.0.0.1:8265")  # doctest: +SKIP
        >>> wait_for_job(job, address="http://127.0.0.1:8265").status  # doctest: +SKIP
        'SUCCEEDED'
    """
    args = [str(arg) for arg in entrypoint_args]
    if not args:
        raise TfnasError(
            "entrypoint_args is empty: give the tfnas command to run on the cluster, "
            "e.g. ['score', 'archs.parquet', '--metric', 'params']"
        )
    if args[0] == "tfnas":
        raise TfnasError(
            f"entrypoint_args starts with 'tfnas' ({shlex.join(args)!r}): give the "
            "arguments after it; `tfnas` is prepended for you"
        )
    directory = Path(working_dir).expanduser()
    if not directory.is_dir():
        raise TfnasError(
            f"working_dir={str(working_dir)!r} is not a directory: give the checkout "
            "to upload with the job (default: the current directory)"
        )
    files, secrets = shipped_files(directory, include)
    if secrets:
        log(f"not shipping {len(secrets)} file(s) that look like secrets: {', '.join(secrets[:5])}{' …' if len(secrets) > 5 else ''}")
    url = resolve_address(address)
    with tempfile.TemporaryDirectory(prefix="tfnas-job-") as staging:
        # Ray zips and uploads `working_dir` inside submit_job, so a copy of exactly
        # the shipped files needs to live only until it returns.
        for relative in files:
            target = Path(staging, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(directory / relative, target)
        with _job_client(url, allow_insecure_token=allow_insecure_token) as client:
            return client.submit_job(
                entrypoint=shlex.join(["tfnas", *args]),
                runtime_env={"working_dir": staging},
            )


def shipped_files(directory: str | os.PathLike[str], include: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """What `submit_job` uploads from `directory`: its git-tracked files and the files
    matching `include`, minus anything matching `SECRET_PATTERNS`.

    Returns:
        (shipped, left out as secrets): paths relative to `directory`, sorted.

    Raises:
        TfnasError: `directory` is not inside a git checkout and `include` is empty.

    Example:
        >>> shipped, secrets = shipped_files(".")   # doctest: +SKIP
        >>> "pyproject.toml" in shipped, ".env" in shipped   # doctest: +SKIP
        (True, False)
    """
    directory = Path(directory)
    tracked: set[str] = set()
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--", "."],
            cwd=directory, capture_output=True, check=True, timeout=60,
        )
        tracked = {p for p in listing.stdout.decode("utf-8", "surrogateescape").split("\0") if p}
    except (OSError, subprocess.SubprocessError):
        if not include:
            raise TfnasError(
                f"working_dir={str(directory)!r} is not a git checkout: a job ships git-tracked files only; "
                "name the files to ship with --include PATTERN"
            ) from None
    chosen = {p for p in tracked if (directory / p).is_file()}  # a tracked file deleted since is not shipped
    for pattern in include:
        for match in directory.glob(pattern):
            paths = [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file()]
            chosen.update(p.relative_to(directory).as_posix() for p in paths)
    secrets = sorted(p for p in chosen if _looks_secret(p))
    return sorted(chosen - set(secrets)), secrets


def _looks_secret(relative: str) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in relative.split("/") for pattern in SECRET_PATTERNS)


def list_jobs(address: str | None = None, *, allow_insecure_token: bool = False) -> list[JobInfo]:
    """Every job the cluster knows, oldest first (jobs not yet started last).

    Arguments:
        address: the dashboard URL (see `resolve_address`).

    Returns:
        One `JobInfo` per job, submitted ones and plain drivers alike.

    Raises:
        TfnasError: the dashboard cannot be reached or refuses the token.
    """
    url = resolve_address(address)
    with _job_client(url, allow_insecure_token=allow_insecure_token) as client:
        details = client.list_jobs()
    jobs = [JobInfo.from_details(d) for d in details]
    return sorted(jobs, key=lambda job: (job.start_time is None, job.start_time or 0.0))


def job_logs(address: str | None, job_id: str, follow: bool = False, *, allow_insecure_token: bool = False) -> Iterator[str]:
    """The job's stdout and stderr, as chunks of text.

    Arguments:
        address: the dashboard URL (see `resolve_address`).
        job_id: the submission id `submit_job` returned.
        follow: False yields everything logged so far, once; True keeps yielding new
            output as the job writes it and stops when the job ends.

    Returns:
        An iterator of text chunks (each may hold several lines, or part of one);
        nothing is requested before the first `next()`.

    Raises:
        TfnasError: no such job, or the dashboard cannot be reached.
    """
    url = resolve_address(address)
    with _job_client(url, job_id=job_id, allow_insecure_token=allow_insecure_token) as client:
        # Ask for the job first: the log endpoints answer an unknown id with an empty
        # log (and the websocket with a bare handshake error), not with a 404.
        client.get_job_info(job_id)
        if not follow:
            yield client.get_job_logs(job_id)
            return
        yield from _iterate_async(client.tail_job_logs(job_id))


def wait_for_job(
    job_id: str,
    *,
    address: str | None = None,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    allow_insecure_token: bool = False,
) -> JobInfo:
    """Block until the job has finished, however it ended.

    Arguments:
        job_id: the submission id `submit_job` returned.
        address: the dashboard URL (see `resolve_address`).
        timeout_s: give up after this many seconds (None: wait for ever).
        poll_s: seconds between status requests.

    Returns:
        The final `JobInfo`; check `.status == "SUCCEEDED"`, since a failed job is
        an answer, not an error of this call.

    Raises:
        TfnasError: no such job, an unreachable dashboard, a non-positive poll_s or
            timeout_s, or the job still running after timeout_s (the message gives
            the command that keeps following it).
    """
    if poll_s <= 0:
        raise TfnasError(f"poll_s={poll_s!r} must be > 0 seconds")
    if timeout_s is not None and timeout_s <= 0:
        raise TfnasError(f"timeout_s={timeout_s!r} must be > 0 seconds or None")
    url = resolve_address(address)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with _job_client(url, job_id=job_id, allow_insecure_token=allow_insecure_token) as client:
        while True:
            info = JobInfo.from_details(client.get_job_info(job_id))
            if info.is_terminal:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TfnasError(
                    f"job {job_id} on {url} is still {info.status} after "
                    f"{timeout_s:g} s; follow it with "
                    f"`tfnas logs {job_id} --address {url} --follow`"
                )
            time.sleep(poll_s)


# ---- internals -----------------------------------------------------------------------


def token_may_travel(url: str) -> bool:
    """Whether a token sent to `url` stays private: https, or a loopback host."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _auth_headers(url: str, *, allow_insecure_token: bool = False) -> dict[str, str]:
    """The `authorization` header for a token-protected cluster ({} without a token).

    Raises:
        TfnasError: RAY_AUTH_MODE=token but no token exists, RAY_AUTH_TOKEN_PATH
            names a file that cannot be read, or the token would go in clear text to
            a host that is not loopback without `allow_insecure_token`.
    """
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return {}
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    try:
        # ignore_auth_mode: look the token up even though this process has not set
        # RAY_AUTH_MODE=token (see the module docstring).
        headers = AuthenticationTokenLoader.instance().get_token_for_http_header(
            ignore_auth_mode=True
        )
    except AuthenticationError as err:
        raise TfnasError(f"cannot load the Ray auth token: {err.message}") from None
    if not headers and mode == "token":
        raise TfnasError(
            "RAY_AUTH_MODE=token but no Ray auth token was found: set RAY_AUTH_TOKEN, "
            "point RAY_AUTH_TOKEN_PATH at a file holding it, or write it to "
            "~/.ray/auth_token"
        )
    if headers and not allow_insecure_token and not token_may_travel(url):
        raise TfnasError(
            f"refusing to send the Ray auth token in clear text to {url}: use https://, a loopback address "
            "(an SSH tunnel or `kubectl port-forward` to 127.0.0.1), or pass --allow-insecure-token"
        )
    return dict(headers)


@contextlib.contextmanager
def _without_env(names: Sequence[str]) -> Iterator[None]:
    """Hide environment variables for the duration of the block, then restore them."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _job_client(url: str, *, job_id: str | None = None, allow_insecure_token: bool = False) -> Iterator[JobSubmissionClient]:
    """A connected `JobSubmissionClient`; Ray's errors inside the block become
    one-line `TfnasError`s naming the address (and the job, where there is one).
    """
    import aiohttp
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        # Ray's client lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override an explicit
        # address; `url` has already been resolved from them, so hide them while it
        # connects. (Not thread-safe, like any os.environ edit.)
        with _without_env(ADDRESS_ENV_VARS):
            client = JobSubmissionClient(url, headers=_auth_headers(url, allow_insecure_token=allow_insecure_token))
        yield client
    except AuthenticationError as err:
        reason = err.message.splitlines()[0]
        raise TfnasError(
            f"the Ray cluster at {url} refused the request ({reason}); put its token "
            "in RAY_AUTH_TOKEN, in the file RAY_AUTH_TOKEN_PATH names, or in "
            "~/.ray/auth_token"
        ) from None
    except (ConnectionError, requests.exceptions.RequestException) as err:
        raise TfnasError(
            f"cannot reach the Ray dashboard at {url} ({type(err).__name__}): start a "
            "cluster with its dashboard (`ray start --head --include-dashboard=true`), "
            "or give its address with --address / RAY_ADDRESS"
        ) from err
    except aiohttp.ClientError as err:
        # Only `follow=True` log streaming goes through aiohttp.
        raise TfnasError(
            f"the log stream of job {job_id!r} from {url} broke: "
            f"{type(err).__name__}: {err}".splitlines()[0]
        ) from err
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        if job_id is not None and "status code 404" in first_line:
            raise TfnasError(
                f"no job {job_id!r} on the Ray cluster at {url}; "
                f"`tfnas jobs --address {url}` lists its jobs"
            ) from None
        raise TfnasError(f"the Ray job server at {url} answered: {first_line}") from err


def _iterate_async(chunks: AsyncIterator[str]) -> Iterator[str]:
    """Drive an async iterator from synchronous code, on a private event loop."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(chunks.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(chunks.aclose())  # type: ignore[attr-defined]
        loop.close()
