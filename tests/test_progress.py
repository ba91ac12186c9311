"""Progress on stderr: a bar on a terminal, plain lines in logs."""

from __future__ import annotations

import io

from tfnas_ray.distributed.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _clock(times):
    it = iter(times)
    return lambda: next(it)


def test_logs_get_a_plain_line_every_tenth_of_the_work_and_every_30_seconds():
    log = io.StringIO()
    # Start at 0 s; 100 archs: one at a time every second, then a slow stretch.
    times = [0.0] + [float(t) for t in range(1, 26)] + [60.0, 61.0]
    progress = Progress(100, enabled=True, stream=log, clock=_clock(times))
    for _ in range(25):
        progress.advance(1)
    progress.advance(1)  # 26 done at 60 s: 35 s after the last line, under 10 % since it
    progress.advance(74)  # the rest
    progress.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [line.split()[1] for line in lines] == ["10/100", "20/100", "26/100", "100/100"]
    assert lines[0] == "scored 10/100 archs  1.00 archs/s  ETA 00:01:30"


def test_a_terminal_gets_one_line_redrawn_in_place():
    term = _Terminal()
    progress = Progress(2, enabled=True, stream=term, clock=_clock([0.0, 1.0, 2.0]))
    progress.advance(1)
    progress.advance(1)
    progress.close()
    assert term.getvalue() == "\rscored 1/2 archs  1.00 archs/s  ETA 00:00:01   \rscored 2/2 archs  1.00 archs/s  ETA 00:00:00   \n"


def test_disabled_or_empty_progress_writes_nothing():
    for total, enabled in ((5, False), (0, True)):
        log = io.StringIO()
        progress = Progress(total, enabled=enabled, stream=log, clock=_clock([0.0]))
        progress.advance(total)
        progress.close()
        assert log.getvalue() == ""
