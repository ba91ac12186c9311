"""SIGTERM stops a command the way Ctrl-C does.

Kubernetes (a deleted pod, a drained node), `docker stop` and batch schedulers end a
process with SIGTERM and, after a grace period (Kubernetes: 30 s), SIGKILL. Ray's own
driver handler ends the process with `sys.exit` (exit 15, a C++ stack dump on stderr),
wherever it is. Here SIGTERM instead raises `Terminated`, a `KeyboardInterrupt`, in
the main thread: a scoring run stops dispatching, keeps its finished shards, prints
how to resume and gives its lease back, exactly as on Ctrl-C; the CLI then exits with
`EXIT_CODE` (143 = 128 + 15, the shell's convention for "ended by SIGTERM").

`ray.init` replaces the process's SIGTERM handler; `keep_handler` around it puts this
one back (`distributed.cluster.connect` does that).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_CODE = 128 + signal.SIGTERM  # 143

_received = threading.Event()


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM; unwinds like Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    if _received.is_set():
        return  # a second SIGTERM while the first still unwinds: let it finish
    _received.set()
    raise Terminated("SIGTERM")


def install() -> None:
    """Handle SIGTERM as an interrupt from now on (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def received() -> bool:
    """Whether this process has received SIGTERM since `install`."""
    return _received.is_set()


@contextlib.contextmanager
def keep_handler() -> Iterator[None]:
    """Run the block (e.g. `ray.init`) and put this module's SIGTERM handler back if the
    block replaced it; any other handler (a library user's, Python's default) is left
    to whatever the block set."""
    main = threading.current_thread() is threading.main_thread()
    ours = main and signal.getsignal(signal.SIGTERM) is _on_sigterm
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGTERM, _on_sigterm)
