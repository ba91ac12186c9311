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
plus the files an explicit `include` names, never untracked files otherwise, and never a
file that is, or holds, a secret, even a tracked or included one: a secret is decided by
its path (`.env*`, `.envrc`, `*.tfvars`, `secrets.yaml`, `.aws/`, `.s3cfg`, `.netrc`,
`.vault-token`, keys and keystores: `SECRET_PATTERNS`) and by its content (private-key
PEM headers, AWS key ids and secret keys, Google service-account and OAuth JSON,
kubeconfigs, npm/netrc/API tokens: `SECRET_CONTENT`). An included file that git ignores
ships only when the include names it (a path or glob that matches it), not when it lies
under an included directory. A symlink ships its target's content only when the target
is a file inside the repository. `plan_shipment` says what would be shipped and why
each other file was left out; `tfnas submit --dry-run` prints it and submits nothing.

How a job finds Python. The job's command runs in a shell on the head, whose PATH is
whatever the head was started with: a head started as `/opt/venv/bin/ray start` has
neither `tfnas` nor the right `python` on it. So the job runs a small launcher shipped
with it, which starts `python -m tfnas_ray.cli` with `$TFNAS_PYTHON` when the cluster
sets it, else with the interpreter the cluster runs its Python workers with (the raylet,
parent of the job's supervisor, is started with `--python_worker_command=PYTHON ...`),
else with `python3` or `python` from PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import glob
import ipaddress
import os
import re
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

from tfnas_ray.errors import InputError, TfnasError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

DEFAULT_ADDRESS = "http://127.0.0.1:8265"

# Ray's own `ray job` CLI reads these, in this order, for the dashboard address.
ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")

# Files that are never shipped with a job, tracked or not (fnmatch patterns, matched
# case-insensitively on every part of the path): environment files, private keys and
# keystores, cloud and registry credentials, token files, kubeconfigs, Terraform variables.
SECRET_PATTERNS: tuple[str, ...] = (
    ".env*",
    "*.env",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.ppk",
    "*.jks",
    "*.keystore",
    "*.kdbx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    "_netrc",
    ".pgpass",
    ".my.cnf",
    ".htpasswd",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".s3cfg",
    ".boto",
    ".vault-token",
    ".dockercfg",
    "credentials",
    "credentials.json",
    "*credentials*.json",
    "service-account*.json",
    "client_secret*.json",
    "auth_token",
    "kubeconfig",
    "kubeconfig.*",
    "*.kubeconfig",
    "*.tfvars",
    "*.tfvars.json",
    "*.tfstate",
    "*.tfstate.backup",
    "secrets.yaml",
    "secrets.yml",
    "secrets.json",
    "secrets.toml",
    ".aws",
    ".azure",
    ".ssh",
    ".gnupg",
    ".kube",
    ".docker",
    ".ray",
    ".git",
)

# What a secret looks like inside a file, whatever its name: (why, patterns that must all
# occur somewhere in the file). Written so that this source file does not match itself.
SECRET_CONTENT: tuple[tuple[str, tuple[re.Pattern[bytes], ...]], ...] = (
    ("a private key", (re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),)),
    ("an AWS access key id", (re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])"),)),
    ("an AWS secret access key", (re.compile(rb"(?i)aws_secret_access_key[\"']?\s*[=:]\s*[\"']?[A-Za-z0-9/+=]{40}"),)),
    ("a Google credential (private_key / refresh_token)", (re.compile(rb'"(?:private_key|refresh_token|client_secret)"\s*:\s*"'),)),
    ("a kubeconfig (clusters: and users:)", (re.compile(rb"(?m)^clusters:"), re.compile(rb"(?m)^users:"))),
    ("an npm auth token", (re.compile(rb"(?m)^\s*(?://\S+:)?_auth(?:Token)?\s*=\s*\S"),)),
    ("a netrc password", (re.compile(rb"\bmachine\s+\S+\s+(?:login\s+\S+\s+)?password\s+\S"),)),
    ("a GitHub token", (re.compile(rb"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,})"),)),
    ("a Slack token", (re.compile(rb"\bxox[abprs]-[A-Za-z0-9-]{10,}"),)),
    ("a Vault token", (re.compile(rb"\bhv[sbr]\.[A-Za-z0-9_-]{24,}"),)),
    ("a Hugging Face token", (re.compile(rb"\bhf_[A-Za-z0-9]{34}\b"),)),
)

# Files whose rules Ray's packager applies to the directory it uploads: left out of the
# staged copy, or they would drop files chosen here (a tracked `.gitignore` with `/runs/`
# would drop an included runs/x.parquet).
PACKAGER_IGNORE_FILES = frozenset({".gitignore", ".rayignore"})
_IGNORE_FILE = "ignore file"  # how plan_shipment says so (not worth a line at every submit)

# The shell script a job runs, as `/bin/sh -c SCRIPT tfnas ARGS` (see "How a job finds
# Python" above): $TFNAS_PYTHON, else the workers' interpreter from the command line of
# the raylet among the shell's ancestors (supervisor, raylet; a shell or two between),
# else python3 / python; the first that imports tfnas_ray runs `-m tfnas_ray.cli ARGS`.
_LAUNCHER_SCRIPT = (
    r'py=${TFNAS_PYTHON:-}; p=$PPID; n=0; '
    r'while [ -z "$py" ] && [ "${p:-0}" -gt 1 ] && [ $n -lt 8 ]; do '
    r'py=$(tr "\0" "\n" <"/proc/$p/cmdline" 2>/dev/null | sed -n "s/^--python_worker_command=\([^ ]*\).*/\1/p"); '
    r'p=$(sed -n "s/^PPid:[[:space:]]*//p" "/proc/$p/status" 2>/dev/null); n=$((n + 1)); '
    r"done; "
    r'for c in "$py" python3 python; do '
    r'[ -n "$c" ] && "$c" -c "import tfnas_ray.cli" 2>/dev/null && exec "$c" -m tfnas_ray.cli "$@"; '
    r"done; "
    r'echo "tfnas job: no Python on this node imports tfnas_ray (tried: $py python3 python); set TFNAS_PYTHON on the cluster" >&2; '
    r"exit 127"
)

_SCAN_CHUNK = 4 << 20  # bytes read at a time when looking for secrets in a file
_SCAN_OVERLAP = 4096  # a secret split across two chunks is still seen whole

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


@dataclass(frozen=True)
class Shipment:
    """What a job would upload from a working directory, and what it would not.

    Arguments:
        root: the working directory, as given.
        files: paths relative to `root` that are shipped, sorted.
        left_out: (path, why) for every candidate file that is not shipped, sorted:
            secrets ("secret: ..."), files git ignores that no include names, symlinks
            that leave the repository, the packager's ignore files.
    """

    root: Path
    files: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...]

    @property
    def secrets(self) -> list[str]:
        """The left-out files that are, or hold, a secret."""
        return [path for path, why in self.left_out if why.startswith("secret")]

    @property
    def total_bytes(self) -> int:
        """Bytes the shipped files hold (symlinks counted by their target)."""
        return sum((self.root / path).stat().st_size for path in self.files)

    def lines(self) -> list[str]:
        """A listing for people: every shipped file, then every left-out file and why."""
        out = [f"would ship {len(self.files)} file(s), {self.total_bytes / 2**20:.2f} MiB, from {self.root}:"]
        out += [f"  {path}" for path in self.files]
        if self.left_out:
            out.append(f"left out {len(self.left_out)} file(s):")
            out += [f"  {path}: {why}" for path, why in self.left_out]
        return out


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
            `plan_shipment`); the command runs inside them and imports their code first.
        include: glob patterns (relative to `working_dir`) of untracked files to ship
            too, e.g. ["runs/archs.parquet"]; secrets are left out even then.
        allow_insecure_token: send the cluster token over plain http to a host that is
            not loopback (see the module docstring).
        log: receives a line naming the secret-looking files left out, and one for the
            other files left out, if any.

    Returns:
        The job's submission id, which `job_logs`, `wait_for_job` and `tfnas logs`
        take.

    Raises:
        TfnasError: empty or `tfnas`-prefixed arguments, a missing working
            directory or one that is not a git checkout, an include that matches
            nothing or leaves the directory, an unreachable dashboard, a token that
            would travel in clear text, a refused token, or the cluster rejecting
            the job.

    Example:
        >>> job = submit_job(["--help"], address="http://127.0.0.1:8265")  # doctest: +SKIP
        >>> wait_for_job(job, address="http://127.0.0.1:8265").status  # doctest: +SKIP
        'SUCCEEDED'
    """
    args = check_entrypoint_args(entrypoint_args)
    shipment = plan_shipment(_checked_working_dir(working_dir), include)
    secrets = shipment.secrets
    if secrets:
        log(f"not shipping {len(secrets)} file(s) that look like secrets: {', '.join(secrets[:5])}{' …' if len(secrets) > 5 else ''}")
    others = [f"{path} ({why})" for path, why in shipment.left_out if not why.startswith(("secret", _IGNORE_FILE))]
    if others:
        log(f"not shipping {len(others)} other file(s): {'; '.join(others[:5])}{' …' if len(others) > 5 else ''}")
    url = resolve_address(address)
    with tempfile.TemporaryDirectory(prefix="tfnas-job-") as staging:
        # Ray zips and uploads `working_dir` inside submit_job, so a copy of exactly
        # the shipped files needs to live only until it returns.
        stage(shipment, staging)
        with _job_client(url, allow_insecure_token=allow_insecure_token) as client:
            return client.submit_job(entrypoint=job_entrypoint(args), runtime_env={"working_dir": staging})


def check_entrypoint_args(entrypoint_args: Sequence[str]) -> list[str]:
    """The tfnas command line of a job as strings, or a TfnasError saying what is wrong."""
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
    return args


def job_entrypoint(args: Sequence[str]) -> str:
    """The shell command a job runs for `tfnas ARGS`: a launcher run by /bin/sh, so that
    neither `tfnas` nor `python` has to be on the head's PATH.

    Example:
        >>> job_entrypoint(["score", "a b.parquet"]).endswith("tfnas score 'a b.parquet'")
        True
    """
    return shlex.join(["/bin/sh", "-c", _LAUNCHER_SCRIPT, "tfnas", *args])


def entrypoint_command(entrypoint: str) -> str:
    """The tfnas command line a job runs, as a person would type it, for job listings:
    `tfnas score ...` for a job `submit_job` made, the entrypoint unchanged otherwise."""
    prefix = shlex.join(["/bin/sh", "-c", _LAUNCHER_SCRIPT, "tfnas"]) + " "
    return "tfnas " + entrypoint[len(prefix):] if entrypoint.startswith(prefix) else entrypoint


def _checked_working_dir(working_dir: str | os.PathLike[str]) -> Path:
    directory = Path(working_dir).expanduser()
    if not directory.is_dir():
        raise TfnasError(
            f"working_dir={str(working_dir)!r} is not a directory: give the checkout "
            "to upload with the job (default: the current directory)"
        )
    return directory


def plan_shipment(directory: str | os.PathLike[str], include: Sequence[str] = ()) -> Shipment:
    """Decide what a job uploads from `directory`, and why anything else is left out.

    Candidates are the git-tracked files under `directory` and the files `include`
    matches (a pattern matching a directory takes the files below it). Left out:
    - secrets, by path (`SECRET_PATTERNS`) or by content (`SECRET_CONTENT`), tracked,
      included or reached through a symlink;
    - files git ignores (`git check-ignore`, with the user's global excludes) that no
      include names: found under an included directory rather than matched by the
      pattern itself, so `--include runs/x.parquet` ships it but `--include runs` does
      not ship what `.gitignore` hides below runs/;
    - symlinks whose target is not a file inside the repository (its content is never
      read), and broken ones;
    - `.gitignore` / `.rayignore`, which Ray's packager would apply to the upload.

    Arguments:
        directory: the working directory (a git checkout, or any directory when
            `include` is given).
        include: glob patterns relative to `directory` (`**` spans directories).

    Returns:
        A `Shipment`.

    Raises:
        TfnasError: `directory` is not inside a git checkout and `include` is empty;
            an include pattern leaves `directory` or matches nothing.

    Example:
        >>> plan = plan_shipment(".", ["runs/archs.parquet"])   # doctest: +SKIP
        >>> "runs/archs.parquet" in plan.files, ".env" in plan.files   # doctest: +SKIP
        (True, False)
    """
    root = Path(directory)
    tracked: set[str] = set()
    repository = _git_toplevel(root)
    if repository is not None:
        listing = _git(root, "ls-files", "-z", "--cached", "--", ".")
        tracked = {p for p in listing.decode("utf-8", "surrogateescape").split("\0") if p}
    elif not include:
        raise TfnasError(
            f"working_dir={str(root)!r} is not a git checkout: a job ships git-tracked files only; "
            "name the files to ship with --include PATTERN"
        )
    named, found_below = _expand_includes(root, include)
    left_out: dict[str, str] = {}
    kept: list[str] = []
    for path in sorted(tracked | named | found_below):
        why = _why_left_out(root, repository or root.resolve(), path)
        if why is not None:
            left_out[path] = why
        elif (root / path).is_file():  # a tracked file deleted since is simply not there
            kept.append(path)
    if repository is not None:
        # git refuses paths beyond a symlink: ask about a linked file by its target.
        asked = {_git_path(root, p): p for p in kept if p not in tracked and p not in named}
        for query, rule in _git_ignored(root, sorted(asked)).items():
            left_out[asked[query]] = f"ignored by git ({rule}); name it in --include to ship it"
    files = [p for p in kept if p not in left_out]
    return Shipment(root=root, files=tuple(files), left_out=tuple(sorted(left_out.items())))


def shipped_files(directory: str | os.PathLike[str], include: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(shipped files, secrets left out) of `plan_shipment(directory, include)`."""
    shipment = plan_shipment(directory, include)
    return list(shipment.files), shipment.secrets


def stage(shipment: Shipment, staging: str | os.PathLike[str]) -> None:
    """Copy the shipped files into the empty directory `staging`.

    A symlink is copied as its target's content (checked by `plan_shipment` to be a
    file inside the repository); ignore files are not copied, so Ray's packager, which
    honours `.gitignore` and `.rayignore` in the directory it zips, drops nothing.
    """
    for relative in shipment.files:
        target = Path(staging, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipment.root / relative, target)
        shutil.copystat(shipment.root / relative, target)


def _git(cwd: Path, *args: str, stdin: bytes | None = None, ok: tuple[int, ...] = (0,)) -> bytes:
    done = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, timeout=120)
    if done.returncode not in ok:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise TfnasError(f"`git {args[0]}` in {cwd} failed: {message[0] if message else done.returncode}")
    return done.stdout


def _git_toplevel(directory: Path) -> Path | None:
    """The repository's root, resolved, or None when `directory` is not in a checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=directory, capture_output=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return Path(done.stdout.decode("utf-8", "surrogateescape").strip()).resolve()


def _git_path(root: Path, relative: str) -> str:
    """`relative` as git may be asked about it: through a symlink, its target's path."""
    full = root / relative
    if not any(p.is_symlink() for p in [full, *(root / q for q in Path(relative).parents if q != Path("."))]):
        return relative
    return os.path.relpath(full.resolve(), root.resolve())


def _git_ignored(root: Path, paths: Sequence[str]) -> dict[str, str]:
    """{path: "SOURCE:LINE:PATTERN"} for the paths git ignores (none outside a checkout)."""
    if not paths:
        return {}
    out = _git(root, "check-ignore", "-v", "-z", "--stdin", stdin=b"\0".join(p.encode("utf-8", "surrogateescape") for p in paths) + b"\0", ok=(0, 1))
    fields = out.decode("utf-8", "surrogateescape").split("\0")
    ignored = {}
    for source, line, pattern, path in zip(fields[0::4], fields[1::4], fields[2::4], fields[3::4]):
        if pattern and not pattern.startswith("!"):
            ignored[path] = f"{source}:{line}:{pattern}"
    return ignored


def _expand_includes(root: Path, include: Sequence[str]) -> tuple[set[str], set[str]]:
    """(paths the patterns match themselves, paths found below matched directories),
    relative to `root`; symlinked directories are listed, never entered."""
    named: set[str] = set()
    below: set[str] = set()
    base = os.path.abspath(root)
    for pattern in include:
        relative = pattern
        if os.path.isabs(pattern):
            relative = os.path.relpath(pattern, base)
        normal = os.path.normpath(relative)
        if normal == ".." or normal.startswith(".." + os.sep):
            raise InputError(f"--include {pattern!r} leaves the working directory {str(root)!r}: give paths inside it")
        matches = glob.glob(relative, root_dir=root, recursive=True, include_hidden=True)
        if not matches:
            raise InputError(f"--include {pattern!r} matches no file under {str(root)!r}")
        for match in matches:
            path = os.path.normpath(match)
            if path == ".." or path.startswith(".." + os.sep):
                raise InputError(f"--include {pattern!r} leaves the working directory {str(root)!r}: give paths inside it")
            full = root / path
            if full.is_dir() and not full.is_symlink():
                for folder, dirs, files in os.walk(full):  # followlinks=False
                    for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                        below.add(Path(os.path.relpath(os.path.join(folder, name), root)).as_posix())
            elif path != ".":
                named.add(Path(path).as_posix())
    return named, below - named


def _why_left_out(root: Path, repository: Path, relative: str) -> str | None:
    """Why `relative` must not ship (secret, symlink out of the repository, ignore
    file), or None. Content is read only from files inside the repository."""
    secret = _secret_by_path(relative)
    if secret:
        return f"secret: {secret}"
    full = root / relative
    through_link = full.is_symlink() or any((root / parent).is_symlink() for parent in Path(relative).parents if parent != Path("."))
    if through_link:
        target = full.resolve()
        if not target.is_relative_to(repository):
            return f"symlink to {target}, outside the repository {repository}"
        if not target.exists():
            return f"broken symlink (to {target})"
        if not target.is_file():
            return f"symlink to a directory ({target}): include the directory itself"
        secret = _secret_by_path(target.relative_to(repository).as_posix())
        if secret:
            return f"secret: symlink to {target.relative_to(repository).as_posix()}, {secret}"
    if full.name in PACKAGER_IGNORE_FILES:
        return f"{_IGNORE_FILE}: Ray's packager would apply it to the upload"
    if full.is_file():
        try:
            secret = _secret_in_content(full)
        except OSError as err:  # what cannot be checked does not ship
            return f"cannot be read to check it for secrets ({type(err).__name__}: {err.strerror})"
        if secret:
            return f"secret: holds {secret}"
    return None


def _secret_by_path(relative: str) -> str | None:
    parts = relative.lower().split("/")
    for part in parts:
        for pattern in SECRET_PATTERNS:
            if fnmatch.fnmatchcase(part, pattern):
                return f"path matches {pattern!r}"
    if "gcloud" in parts and ".config" in parts:
        return "path in a gcloud configuration directory"
    return None


def _secret_in_content(path: Path) -> str | None:
    """The first `SECRET_CONTENT` rule whose patterns all occur in the file, or None."""
    seen: dict[str, set[int]] = {}
    tail = b""
    with path.open("rb") as stream:
        while True:
            chunk = stream.read(_SCAN_CHUNK)
            if not chunk:
                return None
            window = tail + chunk
            for why, patterns in SECRET_CONTENT:
                found = seen.setdefault(why, set())
                found.update(i for i, pattern in enumerate(patterns) if pattern.search(window))
                if len(found) == len(patterns):
                    return why
            tail = window[-_SCAN_OVERLAP:]


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
