"""Progress of a scoring run on stderr: a bar on a terminal, plain lines in logs.

On a terminal one status line is redrawn in place (carriage returns). Anywhere else
(k8s logs, CI, a file) carriage returns would pile up into one endless line, so a plain
line is written every `interval` seconds or every 10 % of the work, whichever comes
first, and one when the work is done; and while nothing finishes (a shard of slow
architectures), a heartbeat line at least every `heartbeat` seconds (default 60, the
environment variable `TFNAS_HEARTBEAT_S` sets another), so a log is never silent longer.

Scorers report each architecture as it finishes (`ArchReports`, an actor the scorers
call), not only whole shards: a shard of 8 nb-bert architectures at the paper's protocol
takes ~14 min, and its progress shows architecture by architecture. After the first
architectures (one per scorer) the run's projected wall time is logged once when it is
over a minute, with the cheaper settings when it is long (`cost`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Sequence, TextIO

from tfnas_ray.distributed import cost
from tfnas_ray.errors import TfnasError

LOG_INTERVAL_S = 30.0  # seconds between plain lines when stderr is not a terminal
LOG_STEP = 0.10  # …or this fraction of the work, whichever comes first
HEARTBEAT_S = 60.0  # longest silence of a plain log while work goes on
HEARTBEAT_ENV = "TFNAS_HEARTBEAT_S"
REPORT_POLL_S = 2.0  # how often the driver collects the scorers' per-architecture reports


def heartbeat_seconds() -> float:
    """`HEARTBEAT_S`, or the value of `TFNAS_HEARTBEAT_S` (seconds > 0).

    Raises:
        TfnasError: the variable is set to something else.
    """
    text = os.environ.get(HEARTBEAT_ENV)
    if not text:
        return HEARTBEAT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise TfnasError(f"{HEARTBEAT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


class Progress:
    """Archs done, archs/s and ETA of one scoring run.

    Args:
        total: architectures to score.
        enabled: False writes nothing to `stream` (the projection still goes to `note`).
        stream: where to write (default: stderr); a terminal gets a bar.
        clock: seconds, monotonic (tests pass a fake one).
        heartbeat: longest silence of a plain log (default `heartbeat_seconds()`).
        note: where the cost projection goes (the run's log); None: nowhere.
        cheaper: the run's cheaper settings, printed with a long projection.

    Example:
        >>> import io
        >>> log = io.StringIO()
        >>> progress = Progress(4, enabled=True, stream=log, clock=iter([0.0, 1.0, 2.0]).__next__)
        >>> progress.advance(4); progress.close()
        >>> log.getvalue()
        'scored 4/4 archs  4.00 archs/s  ETA 00:00:00\\n'
    """

    def __init__(
        self,
        total: int,
        *,
        enabled: bool,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: float | None = None,
        note: Callable[[str], None] | None = None,
        cheaper: Sequence[cost.Cheaper] = (),
    ):
        self.total, self.done = total, 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled and total > 0
        self._clock = clock
        self._started = clock()
        self._terminal = self._enabled and _is_terminal(self._stream)
        self._last_line_at = self._started  # plain lines: when the last one was written
        self._last_line_done = 0  # …and how many archs it reported
        self._heartbeat = heartbeat_seconds() if heartbeat is None else heartbeat
        self._note, self._cheaper = note, tuple(cheaper)
        self._finished: set[str] = set()  # arch ids counted (reported, or recorded with their shard)
        self._arch_seconds: list[float] = []  # what the first architectures took, for the projection
        self._last_done_at = self._started  # when an architecture last finished
        self._scorers = 1
        self._projected = False
        self._reports = None  # ArchReports actor handle, while attached

    # ---- counting --------------------------------------------------------------------

    def advance(self, n: int) -> None:
        """`n` more architectures are done."""
        self.done += n
        if not self._enabled:
            return
        now = self._clock()
        if n:
            self._last_done_at = now
        if self._terminal:
            self._stream.write(f"\r{self._status(now)}   ")
            self._stream.flush()
            return
        step = max(1, int(self.total * LOG_STEP))
        if now - self._last_line_at >= LOG_INTERVAL_S or self.done - self._last_line_done >= step or self.done >= self.total:
            if self.done == self._last_line_done:
                return
            self._line(self._status(now), now)

    def finished(self, arch_id: str, seconds: float | None = None) -> None:
        """One architecture is done (a scorer's report, or its shard recorded), having
        taken `seconds` on its scorer; each arch id counts once."""
        if arch_id in self._finished:
            return
        self._finished.add(arch_id)
        if seconds is not None and seconds == seconds and len(self._arch_seconds) < max(self._scorers, 1) * 4:
            self._arch_seconds.append(float(seconds))
        self.advance(1)
        self._maybe_project()

    # ---- the run's loop ----------------------------------------------------------------

    def attach(self, reports, *, scorers: int) -> None:
        """Collect per-architecture reports from `reports` (an `ArchReports` actor handle,
        or None) for a run of `scorers` scorers."""
        self._reports, self._scorers = reports, max(1, scorers)

    def seconds_to_tick(self) -> float | None:
        """How long the run's loop may wait before it calls `tick` (None: for ever)."""
        waits = []
        if self._reports is not None:
            waits.append(REPORT_POLL_S)
        if self._enabled and not self._terminal:
            waits.append(max(0.0, self._last_line_at + self._heartbeat - self._clock()))
        return min(waits) if waits else None

    def tick(self) -> None:
        """Collect reports; in a plain log, write a heartbeat if it has been silent for
        `heartbeat` seconds."""
        if self._reports is not None:
            self._collect()
        if not self._enabled or self._terminal:
            return
        now = self._clock()
        if now - self._last_line_at >= self._heartbeat:
            if self.done:
                why = f"working; last architecture finished {now - self._last_done_at:.0f} s ago"
            else:
                why = f"working; no architecture finished yet, {now - self._started:.0f} s in"
            self._line(f"{self._status(now)}  ({why})", now)

    def close(self) -> None:
        if not self._enabled:
            return
        if self._terminal:
            self._stream.write("\n")
        elif self.done != self._last_line_done:
            self._stream.write(self._status(self._clock()) + "\n")
        self._stream.flush()

    # ---- inside ------------------------------------------------------------------------

    def _collect(self) -> None:
        import ray

        try:
            reports = ray.get(self._reports.drain.remote(), timeout=10)
        except Exception:  # noqa: BLE001 — the reporter is a courtesy: shards still count when it is gone
            self._reports = None
            return
        for arch_id, seconds in reports:
            self.finished(arch_id, seconds)

    def _maybe_project(self) -> None:
        """Log the projected cost once, when every scorer has finished an architecture
        (or all the work is done)."""
        if self._projected or self._note is None or not self._arch_seconds:
            return
        if len(self._arch_seconds) < min(self._scorers, self.total):
            return
        self._projected = True
        if self.done >= self.total:
            return  # nothing left to project
        elapsed = self._clock() - self._started
        projected = cost.project(total=self.total, done=self.done, elapsed_s=elapsed, arch_seconds=self._arch_seconds, scorers=self._scorers)
        if projected < cost.WORTH_SAYING_S:
            return
        for line in cost.projection_lines(
            projected, done=len(self._arch_seconds), total=self.total, arch_seconds=self._arch_seconds, scorers=self._scorers, cheaper=self._cheaper
        ):
            self._note(line)

    def _line(self, text: str, now: float) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()
        self._last_line_at, self._last_line_done = now, self.done

    def _status(self, now: float) -> str:
        elapsed = now - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "--:--:--"
        return f"scored {self.done}/{self.total} archs  {rate:.2f} archs/s  ETA {eta_text}"


def start_reports():
    """An `ArchReports` actor on the driver's node (it holds no CPU), or None when one
    cannot be started: the scorers call `done(arch_id, seconds)` on it after each
    architecture, and `Progress.tick` drains it."""
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class ArchReports:
        def __init__(self):
            self._done: list[tuple[str, float]] = []

        def done(self, arch_id: str, seconds: float) -> None:
            self._done.append((arch_id, seconds))

        def drain(self) -> list[tuple[str, float]]:
            done, self._done = self._done, []
            return done

    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the driver's node: a scorer's node may be lost, the driver's is not.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        return ArchReports.options(scheduling_strategy=here).remote()
    except Exception:  # noqa: BLE001 — progress by shards still works without it
        return None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
