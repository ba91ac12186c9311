"""One writer per output directory: a lease file with its owner and a heartbeat.

A run that writes into a directory (`score`, `reproduce`, `train`) first takes the
directory's lease, `.tfnas-lease.json`: who holds it (user, host, pid, command), since
when, and a heartbeat its holder renews every `HEARTBEAT_S` seconds from a background
thread. A second run on the same directory stops at once with a one-line error naming
the holder, instead of duplicating the work and racing it for the same files. A lease
whose heartbeat is older than `STALE_AFTER_S` belongs to a run that died (killed, lost
its node); the next run takes it over and says so. A holder on the same host whose
process is gone (a driver killed with SIGKILL) frees its lease at once.

Taking a lease is exclusive on a local or shared file system (the file is created with
O_EXCL, a stale one renamed away first, which only one taker can do). On an object
store, which has no exclusive create here, a taker writes the lease, waits a moment and
reads it back: of two runs started within that moment, the later write wins and the
other stops.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import inspect
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterator

from tfnas_ray.errors import TfnasError
from tfnas_ray.storage import Location, locate

LEASE_NAME = ".tfnas-lease.json"
HEARTBEAT_S = 10.0  # how often the holder renews its heartbeat
STALE_AFTER_S = 90.0  # a heartbeat older than this: the holder is dead, the lease is free
_SETTLE_S = 0.5  # object stores: how long a taker waits before reading its lease back


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


class Lease:
    """The lease of `directory`, held between `acquire()` and `release()`.

    Example:
        >>> with hold(locate("runs/x"), log=print):   # doctest: +SKIP
        ...     ...  # write into runs/x; a second run stops with "runs/x is in use by …"
    """

    def __init__(self, directory: Location, *, log: Callable[[str], None] = print, stale_after: float | None = None, heartbeat: float | None = None):
        self.directory = directory
        self.file = directory.child(LEASE_NAME)
        self._log = log
        self._stale_after = STALE_AFTER_S if stale_after is None else stale_after
        self._heartbeat = HEARTBEAT_S if heartbeat is None else heartbeat
        self._token = uuid.uuid4().hex  # tells this holder's lease from any other
        self._record = {
            "token": self._token,
            "owner": _owner(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": " ".join(["tfnas", *sys.argv[1:]]) if sys.argv else "tfnas",
            "started": time.time(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False  # set when another run took the lease over while this one held it

    # -- reading -------------------------------------------------------------------------

    def current(self) -> dict[str, Any] | None:
        """The lease record in the directory now, or None without one (or an unreadable
        one: a torn write of a process killed mid-write counts as no lease)."""
        if not self.file.exists():
            return None
        try:
            record = json.loads(self.file.read_bytes())
        except (TfnasError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    @staticmethod
    def describe(record: dict[str, Any]) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(record.get("started", 0))))
        return f"{record.get('owner')}@{record.get('host')} pid {record.get('pid')} (`{record.get('command')}`, started {started})"

    # -- taking and giving back ------------------------------------------------------------

    def acquire(self) -> "Lease":
        """Take the lease, or raise TfnasError naming the run that holds it."""
        self.directory.make_dirs()
        held = self.current()
        if held is not None:
            age = time.time() - float(held.get("heartbeat", 0))
            if _holder_is_gone(held):
                self._log(f"taking over the lease of {self.directory.url} from a run on this host that no longer exists: {self.describe(held)}")
            elif age < self._stale_after:
                raise TfnasError(
                    f"{self.directory.url} is in use by another run: {self.describe(held)}, heartbeat {age:.0f} s ago; "
                    f"wait for it to finish (or stop it), or use another --out; a lease without a heartbeat for "
                    f"{self._stale_after:g} s is taken over"
                )
            else:
                self._log(f"taking over the lease of {self.directory.url} from a run that stopped renewing it {age:.0f} s ago: {self.describe(held)}")
        self._write(exclusive=True, replacing=held is not None)
        if not self.directory.is_local:
            time.sleep(_SETTLE_S)  # no exclusive create: let a concurrent taker's write land
        now = self.current()
        if now is None or now.get("token") != self._token:
            raise TfnasError(f"{self.directory.url} is in use by another run: {self.describe(now or {})}, which took its lease at the same moment")
        self._thread = threading.Thread(target=self._renew, name=f"lease {self.directory.url}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop renewing and delete the lease (if it is still this run's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        now = self.current()
        if now is not None and now.get("token") == self._token:
            self.directory.discard(self.file.path)

    def _write(self, *, exclusive: bool = False, replacing: bool = False) -> None:
        body = json.dumps({**self._record, "heartbeat": time.time()}, indent=1).encode()
        if self.directory.is_local and exclusive:
            if replacing:  # only one taker can rename the stale lease away
                aside = f"{self.file.path}.{self._token}.stale"
                try:
                    os.replace(self.file.path, aside)
                except FileNotFoundError:
                    raise TfnasError(f"{self.directory.url}: another run took over the stale lease first: {self.describe(self.current() or {})}") from None
                os.unlink(aside)
            try:
                with open(self.file.path, "xb") as handle:
                    handle.write(body)
                    handle.flush()
                    os.fsync(handle.fileno())
            except FileExistsError:
                raise TfnasError(f"{self.directory.url} is in use by another run: {self.describe(self.current() or {})}") from None
            return
        self.file.write_bytes(body)

    def _renew(self) -> None:
        while not self._stop.wait(self._heartbeat):
            now = self.current()
            if now is not None and now.get("token") != self._token:
                self.lost = True
                self._log(f"warning: {self.describe(now)} took over the lease of {self.directory.url}; this run's writes may race it")
                return
            try:
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
    key = (type(where.filesystem).__name__, where.path.rstrip("/"), threading.get_ident())
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


def leased(directory_arg: str) -> Callable:
    """Decorator: hold the lease of the function's argument `directory_arg` (a path or
    URL) while it runs; its `log` argument, if any, receives the lease's messages."""

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
