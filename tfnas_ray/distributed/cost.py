"""What a scoring run will cost, said before most of it is spent.

After the first architectures are in, the run's wall time is projected from what they
took and said when it is over a minute; when it is long (over `LONG_RUN_S`) the cheaper settings that exist for the
run's spaces are printed with their projected cost. Pure functions of measured numbers;
`progress.Progress` calls them and prints the lines.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

WORTH_SAYING_S = 60.0  # a run projected to end sooner than this gets no projection line
LONG_RUN_S = 600.0  # a projection above this also lists the cheaper settings
NB_BERT_SEQ_LEN = 512  # the paper's protocol, nb-bert's default `--seq-len`
CHEAP_SEQ_LEN = 128


@dataclass(frozen=True)
class Cheaper:
    """A cheaper setting: its flags, the fraction of the per-architecture cost it is
    expected to take, and how that fraction was estimated (printed with it)."""

    flags: str
    factor: float
    basis: str


def project(*, total: int, done: int, elapsed_s: float, arch_seconds: Sequence[float], scorers: int) -> float:
    """Projected wall seconds of the whole run.

    The architectures not done yet take the median of `arch_seconds` (what each finished
    one took on its scorer: robust to one odd architecture), `scorers` at a time; the
    time already spent (`elapsed_s`, start-up included) is added as it was.

    Example:
        >>> project(total=100, done=4, elapsed_s=30.0, arch_seconds=[9.0, 10.0, 11.0, 10.0], scorers=2)
        510.0
    """
    if not arch_seconds:
        raise ValueError("project needs the seconds of at least one finished architecture")
    if scorers < 1:
        raise ValueError(f"scorers must be >= 1, got {scorers}")
    remaining = max(0, total - done)
    return elapsed_s + remaining * statistics.median(arch_seconds) / scorers


def cheaper_settings(spaces: Sequence[str], batch_options: Mapping) -> list[Cheaper]:
    """The cheaper settings of a run that scores `spaces` with `batch_options`.

    nb-bert at more than 128 tokens per sequence: `--seq-len 128 --mode eval`. Its cost
    is scaled by tokens per sequence (128 / seq_len): every matmul of the pass is linear
    in the tokens, attention's score matrices grow with their square, so the true cost
    is at most that (an estimate, not a measurement; `--mode eval` turns dropout off and
    masks padding, which costs about the same).

    Example:
        >>> cheaper_settings(["nb-bert"], {})
        [Cheaper(flags='--seq-len 128 --mode eval', factor=0.25, basis='scaled by tokens per sequence, 128/512; attention grows faster, so likely less')]
    """
    found = []
    if "nb-bert" in spaces:
        seq_len = int(batch_options.get("seq_len", NB_BERT_SEQ_LEN))
        if seq_len > CHEAP_SEQ_LEN:
            found.append(
                Cheaper(
                    flags=f"--seq-len {CHEAP_SEQ_LEN} --mode eval",
                    factor=CHEAP_SEQ_LEN / seq_len,
                    basis=f"scaled by tokens per sequence, {CHEAP_SEQ_LEN}/{seq_len}; attention grows faster, so likely less",
                )
            )
    return found


def projection_lines(projected_s: float, *, done: int, total: int, arch_seconds: Sequence[float], scorers: int, cheaper: Sequence[Cheaper]) -> list[str]:
    """The lines that tell the user what the run will cost.

    Example:
        >>> projection_lines(1200.0, done=2, total=40, arch_seconds=[60.0, 50.0], scorers=2,
        ...                  cheaper=[Cheaper("--seq-len 128 --mode eval", 0.25, "scaled by tokens")])
        ['projected: 20 min for 40 archs (from the first 2: median 55.0 s per arch, 2 scorers at a time)', '  cheaper: --seq-len 128 --mode eval ≈ 5 min (scaled by tokens)', '  (a rerun with other settings is a new plan: it does not reuse these scores)']
    """
    median = statistics.median(arch_seconds)
    lines = [
        f"projected: {duration(projected_s)} for {total} archs (from the first {done}: median {median:.1f} s per arch, "
        f"{scorers} scorer{'s' if scorers != 1 else ''} at a time)"
    ]
    if projected_s > LONG_RUN_S and cheaper:
        for option in cheaper:
            whole = total * median * option.factor / scorers  # every arch again, at that setting
            lines.append(f"  cheaper: {option.flags} ≈ {duration(whole)} ({option.basis})")
        lines.append("  (a rerun with other settings is a new plan: it does not reuse these scores)")
    return lines


def duration(seconds: float) -> str:
    """Seconds in words a person reads at a glance: '45 s', '12 min', '3.2 h'.

    Example:
        >>> duration(45.2), duration(754), duration(11520)
        ('45 s', '13 min', '3.2 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
