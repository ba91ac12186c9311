"""Progress of a scoring run on stderr: a bar on a terminal, plain lines in logs.

On a terminal one status line is redrawn in place (carriage returns). Anywhere else
(k8s logs, CI, a file) carriage returns would pile up into one endless line, so a plain
line is written every `interval` seconds or every 10 % of the work, whichever comes
first, and one when the work is done.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

LOG_INTERVAL_S = 30.0  # seconds between plain lines when stderr is not a terminal
LOG_STEP = 0.10  # …or this fraction of the work, whichever comes first


class Progress:
    """Archs done, archs/s and ETA of one scoring run.

    Args:
        total: architectures to score.
        enabled: False writes nothing.
        stream: where to write (default: stderr); a terminal gets a bar.
        clock: seconds, monotonic (tests pass a fake one).

    Example:
        >>> import io
        >>> log = io.StringIO()
        >>> progress = Progress(4, enabled=True, stream=log, clock=iter([0.0, 1.0, 2.0]).__next__)
        >>> progress.advance(4); progress.close()
        >>> log.getvalue()
        'scored 4/4 archs  4.00 archs/s  ETA 00:00:00\\n'
    """

    def __init__(self, total: int, *, enabled: bool, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.done = total, 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled and total > 0
        self._clock = clock
        self._started = clock()
        self._terminal = self._enabled and _is_terminal(self._stream)
        self._last_line_at = self._started  # plain lines: when the last one was written
        self._last_line_done = 0  # …and how many archs it reported

    def advance(self, n: int) -> None:
        self.done += n
        if not self._enabled:
            return
        now = self._clock()
        if self._terminal:
            self._stream.write(f"\r{self._status(now)}   ")
            self._stream.flush()
            return
        step = max(1, int(self.total * LOG_STEP))
        if now - self._last_line_at >= LOG_INTERVAL_S or self.done - self._last_line_done >= step or self.done >= self.total:
            if self.done == self._last_line_done:
                return
            self._stream.write(self._status(now) + "\n")
            self._stream.flush()
            self._last_line_at, self._last_line_done = now, self.done

    def close(self) -> None:
        if not self._enabled:
            return
        if self._terminal:
            self._stream.write("\n")
        elif self.done != self._last_line_done:
            self._stream.write(self._status(self._clock()) + "\n")
        self._stream.flush()

    def _status(self, now: float) -> str:
        elapsed = now - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "--:--:--"
        return f"scored {self.done}/{self.total} archs  {rate:.2f} archs/s  ETA {eta_text}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
