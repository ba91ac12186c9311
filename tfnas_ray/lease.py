"""One writer per output directory: a lease file with its owner and a heartbeat.

A run that writes into a directory (`score`, `reproduce`, `train`) first takes the
directory's lease, `.tfnas-lease.json`: who holds it (user, host, pid, command), since
when, and a heartbeat counter its holder advances every `HEARTBEAT_S` seconds from a
background thread. A second run on the same directory stops at once with a one-line
error naming the holder, instead of duplicating the work and racing it for the same
files.

Staleness never compares the clocks of two hosts. A lease is stale when the storage
says it was last written more than `STALE_AFTER_S` ago: the age is the storage's own
modification time of a probe file written now minus that of the lease, both stamped by
the same clock (the local kernel, the NFS server, S3). Where the storage keeps no
modification times, the taker watches the heartbeat counter for `STALE_AFTER_S` on its
own monotonic clock. A holder on the same host whose process is gone (a driver killed
with SIGKILL) frees its lease at once. An empty or unreadable lease (a disk that filled
while an older version wrote it) is stale too: it is set aside under a hidden name,
saying so, never left to lock the directory.

Exactly one of several runs takes over a stale lease: a taker first creates
`.tfnas-lease.takeover-<digest of the stale bytes it read>` exclusively, checks that
the lease still holds those bytes, and only then replaces it; a second taker of the
same stale record finds the claim (or, once the claim is gone, a lease that changed)
and stops. A lease is published whole (written to a temporary file, then linked under
its name, which fails if the name exists), so a full disk leaves no empty lease and
gives a one-line error. A run whose lease was taken over notices at its next heartbeat
(`Lease.lost`) and stops before its next shard (`Lease.check`, read by the scoring
loop). On an object store, which has no exclusive create here, a taker writes the
lease, waits a moment and reads it back: of two runs started within that moment, the
later write wins and the other stops.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import inspect
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import pyarrow.fs as pafs

from tfnas_ray.errors import TfnasError
from tfnas_ray.storage import Location, locate

LEASE_NAME = ".tfnas-lease.json"
TAKEOVER_PREFIX = ".tfnas-lease.takeover-"  # + digest of the stale record being taken over
UNREADABLE_PREFIX = ".tfnas-lease.unreadable-"  # an empty or unreadable lease, set aside
HEARTBEAT_S = 10.0  # how often the holder renews its heartbeat
STALE_AFTER_S = 90.0  # no heartbeat for this long (by the storage's clock): the holder is dead
_SETTLE_S = 0.5  # object stores: how long a taker waits before reading its lease back


class LeaseLost(TfnasError):
    """Another run took over this run's lease; this run must stop writing."""


def _owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return f"uid {os.getuid()}"


def _holder_is_gone(record: dict[str, Any]) -> bool:
    """Whether the lease's holder ran on this host and its process is gone (a driver
    killed with SIGKILL): its lease is free at once, not after `STALE_AFTER_S`."""
    if record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record.get("pid")), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError, OverflowError):
        return False  # alive under another user, or no usable pid: trust the heartbeat
    return False


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:24]


def _parse(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Lease:
    """The lease of `directory`, held between `acquire()` and `release()`.

    Args:
        directory: the output directory.
        log: one-line messages (a takeover, a lost lease, a failed renewal).
        stale_after: seconds without a heartbeat after which the lease is free
            (default `STALE_AFTER_S`).
        heartbeat: seconds between heartbeats (default `HEARTBEAT_S`).

    Example:
        >>> with hold(locate("runs/x"), log=print) as lease:   # doctest: +SKIP
        ...     lease.check()  # before each shard: raises LeaseLost if another run took it
    """

    def __init__(self, directory: Location, *, log: Callable[[str], None] = print, stale_after: float | None = None, heartbeat: float | None = None):
        self.directory = directory
        self.file = directory.child(LEASE_NAME)
        self._log = log
        self._stale_after = STALE_AFTER_S if stale_after is None else stale_after
        self._heartbeat = HEARTBEAT_S if heartbeat is None else heartbeat
        self._token = uuid.uuid4().hex  # tells this holder's lease from any other
        self._beat = 0  # the heartbeat counter; a taker without modification times watches it
        self._record = {
            "token": self._token,
            "owner": _owner(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": " ".join(["tfnas", *sys.argv[1:]]) if sys.argv else "tfnas",
            "started": time.time(),  # for people reading the lease; staleness never uses it
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False  # set by the heartbeat when another run took the lease over
        self.taken_by: dict[str, Any] | None = None  # that run's record
        # Taken over from a run that stopped renewing but may still be alive (paused, cut
        # off from the storage): its writes in progress are left alone.
        self.predecessor_may_live = False

    @property
    def stale_after(self) -> float:
        return self._stale_after

    # -- reading -------------------------------------------------------------------------

    def _raw(self) -> bytes | None:
        """The lease file's bytes, or None without one. A read error (after the storage's
        retries) raises TfnasError: an unreachable lease is not a free one."""
        return self.file.read_bytes(missing_ok=True)

    def current(self) -> dict[str, Any] | None:
        """The lease record in the directory now; None without one or with an unreadable one."""
        return _parse(self._raw())

    @staticmethod
    def describe(record: dict[str, Any]) -> str:
        try:
            started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(record.get("started", 0))))
        except (TypeError, ValueError, OverflowError):
            started = "at an unknown time"
        return f"{record.get('owner')}@{record.get('host')} pid {record.get('pid')} (`{record.get('command')}`, started {started})"

    def _storage_age(self) -> float | None:
        """Seconds since the lease was last written, by the storage's own clock
        (`Location.storage_now` minus the lease's modification time). None when the
        storage keeps no modification times (or the lease is gone)."""
        try:
            written = self.file.filesystem.get_file_info(self.file.path)
        except OSError:
            return None
        if written.type == pafs.FileType.NotFound or written.mtime is None:
            return None
        now = self.directory.storage_now()  # after the lease's time was read: never earlier
        if now is None:
            return None
        return max(0.0, (now - written.mtime).total_seconds())

    def _watch(self, raw: bytes) -> float:
        """Without modification times: watch the lease for `stale_after` seconds of this
        host's monotonic clock; the age observed (0 as soon as it changes)."""
        self._log(f"{self.directory.url}: the storage keeps no modification times; watching the lease's heartbeat for {self._stale_after:g} s")
        start = time.monotonic()
        while time.monotonic() - start < self._stale_after:
            time.sleep(min(1.0, self._heartbeat))
            if self._raw() != raw:
                return 0.0
        return time.monotonic() - start

    # -- taking and giving back ------------------------------------------------------------

    def acquire(self) -> "Lease":
        """Take the lease, or raise TfnasError naming the run that holds it (or saying
        why the lease cannot be written)."""
        self.directory.make_dirs()
        raw = self._raw()
        if raw is None:
            self._create()
        else:
            self._take_over(raw)
        if not self.directory.is_local:
            time.sleep(_SETTLE_S)  # no exclusive create: let a concurrent taker's write land
            now = self.current()
            if now is None or now.get("token") != self._token:
                raise TfnasError(f"{self.directory.url} is in use by another run: {self.describe(now or {})}, which took its lease at the same moment")
        self._thread = threading.Thread(target=self._renew, name=f"lease {self.directory.url}", daemon=True)
        self._thread.start()
        return self

    def _take_over(self, raw: bytes) -> None:
        """Take the lease whose file holds `raw` if it is stale; otherwise raise."""
        held = _parse(raw)
        if held is None:
            why = f"an {'empty' if not raw.strip() else 'unreadable'} lease ({len(raw)} bytes)"
        elif _holder_is_gone(held):
            why = f"a run on this host that no longer exists: {self.describe(held)}"
        else:
            age = self._storage_age()
            if age is None:
                age = self._watch(raw)
            if age < self._stale_after:
                raise TfnasError(
                    f"{self.directory.url} is in use by another run: {self.describe(held)}, heartbeat {age:.0f} s ago; "
                    f"wait for it to finish (or stop it), or use another --out; a lease without a heartbeat for "
                    f"{self._stale_after:g} s is taken over"
                )
            why = f"a run that stopped renewing it {age:.0f} s ago: {self.describe(held)}"
            self.predecessor_may_live = True
        claim = self.directory.child(f"{TAKEOVER_PREFIX}{_digest(raw)}")
        if not self._claim(claim):
            raise TfnasError(f"{self.directory.url}: another run is taking over the same stale lease ({why}); it holds the directory now")
        try:
            if self._raw() != raw:  # taken (or released) since it was read: it is not stale any more
                raise TfnasError(f"{self.directory.url} is in use by another run: {self.describe(self.current() or {})}, which took over the stale lease first")
            if held is None:
                aside = self.file.move_aside_as(f"{UNREADABLE_PREFIX}{int(time.time())}-{self._token[:8]}")
                self._log(f"{self.directory.url}: set aside {why} as {aside.name}; taking the lease")
                self._create()
            else:
                self._log(f"taking over the lease of {self.directory.url} from {why}")
                self._write()
        finally:
            # Safe to drop: a later taker of `raw` finds a lease that differs from it.
            self.directory.discard(claim.path)

    def _claim(self, claim: Location) -> bool:
        """Create `claim`; False if it exists (exclusive only on a file system)."""
        if not claim.is_local:
            if claim.exists():
                return False
            claim.write_bytes(b"")
            return True
        try:
            os.close(os.open(claim.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        except OSError as err:
            raise TfnasError(f"cannot take over the lease of {self.directory.url}: cannot create {claim.url}: {_first_line(err)}") from None
        return True

    def _body(self) -> bytes:
        self._beat += 1
        return json.dumps({**self._record, "heartbeat": time.time(), "beat": self._beat}, indent=1).encode()

    def _create(self) -> None:
        """Publish a new lease where there is none; raise if another run's appears first."""
        if not self.directory.is_local:
            self._write()
            return
        temporary = f"{self.file.path}.{self._token}.tmp"
        try:
            with open(temporary, "xb") as handle:
                handle.write(self._body())
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, self.file.path)  # exclusive, and the lease appears whole
        except FileExistsError:
            raise TfnasError(f"{self.directory.url} is in use by another run: {self.describe(self.current() or {})}") from None
        except OSError as err:  # a full disk, a read-only directory
            raise TfnasError(f"cannot write the lease {self.file.url}: {err.strerror or _first_line(err)}; nothing was written") from None
        finally:
            self.directory.discard(temporary)

    def _write(self) -> None:
        """Replace the lease with this run's record, whole or not at all."""
        try:
            self.file.write_bytes(self._body())
        except TfnasError as err:
            raise TfnasError(f"cannot write the lease: {err}") from None

    def release(self) -> None:
        """Stop renewing and delete the lease (if it is still this run's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            now = self.current()
        except TfnasError as err:
            self._log(f"warning: cannot read the lease of {self.directory.url} to release it ({err}); it frees itself after {self._stale_after:g} s")
            return
        if now is not None and now.get("token") == self._token:
            self.directory.discard(self.file.path)

    def check(self) -> None:
        """Raise LeaseLost if another run took this lease over (seen at a heartbeat)."""
        if self.lost:
            raise LeaseLost(
                f"{self.directory.url}: {self.describe(self.taken_by or {})} took over this run's lease "
                f"(this run's heartbeat was not renewed for {self._stale_after:g} s: paused, or cut off from the storage); "
                "stopping before the next shard; the shards saved so far stay, and the other run goes on"
            )

    def _renew(self) -> None:
        while not self._stop.wait(self._heartbeat):
            try:
                raw = self._raw()
                now = _parse(raw)
                if now is None or now.get("token") != self._token:
                    self.taken_by = now or {}
                    self.lost = True
                    self._log(f"warning: {self.describe(now) if now else 'another run'} took over the lease of {self.directory.url}; this run stops before its next shard")
                    return
                self._write()
            except TfnasError as err:  # a storage hiccup: the next beat tries again
                self._log(f"warning: cannot renew the lease of {self.directory.url}: {err}")


# Leases this process holds, by (file system, directory, thread): a command that takes the lease
# before starting Ray and then calls a function that takes it again (score_table ->
# run_scoring) holds it once; another thread, like another process, is refused.
_HELD: dict[tuple[str, str, int], Lease] = {}


@contextlib.contextmanager
def hold(directory: str | os.PathLike | Location, *, log: Callable[[str], None] = print) -> Iterator[Lease]:
    """Hold the lease of `directory` for the block (see `Lease`); re-entrant within
    one thread."""
    where = locate(directory)
    key = _key(where)
    if key in _HELD:
        yield _HELD[key]
        return
    lease = Lease(where, log=log).acquire()
    _HELD[key] = lease
    try:
        yield lease
    finally:
        del _HELD[key]
        lease.release()


def lease_held(directory: Location) -> Lease | None:
    """The lease of `directory` this thread holds, if any."""
    return _HELD.get(_key(directory))


def _key(where: Location) -> tuple[str, str, int]:
    return (type(where.filesystem).__name__, where.path.rstrip("/"), threading.get_ident())


def check_held() -> None:
    """Raise LeaseLost if another run took over any lease this thread holds (a
    `reproduce` holds its output's and its scores directory's)."""
    me = threading.get_ident()
    for (_, _, thread), lease in list(_HELD.items()):
        if thread == me:
            lease.check()


def leased(directory_arg: str) -> Callable:
    """Decorator: hold the lease of the function's argument `directory_arg` (a path,
    URL or Location) while it runs; its `log` argument, if any, receives the lease's
    messages."""

    def decorator(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with hold(bound.arguments[directory_arg], log=bound.arguments.get("log") or print):
                return fn(*args, **kwargs)

        return wrapper

    return decorator
