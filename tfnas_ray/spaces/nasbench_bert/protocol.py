"""NAS-Bench-BERT scoring options shared by `score`, `reproduce`, `train` (and `search`):
which reading of a config is built and how the metric batch is made.

One module, so every command resolves the options the same way. The float64 check that
flags the paper's degenerate gradient columns reads metrics, so it lives above the
spaces, in analysis/nb_bert_checks.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tfnas_ray.errors import TfnasError

NB_BERT = "nb-bert"
READINGS = ("described", "as-scored", "as-trained")  # the order `reproduce --reading all` runs them
MODES = ("train", "eval")


@dataclass(frozen=True)
class NbBertOptions:
    """How nb-bert architectures are built and scored.

    Attributes:
        reading: "described" (the config as written), "as-scored" (what the authors'
            metric script built: hidden 256, FFN 1024 — the published table's models) or
            "as-trained" (what their pretraining built: all SDP attention).
        seq_len: tokens per batch sequence (None: the protocol's 512).
        mode: "train" (the authors': dropout on, padding mask ignored) or "eval"
            (None: the protocol's "train").
        micro_batch: rows per forward of the gradient passes (None: the whole batch at
            once). The values are the whole batch's to round-off (≤ 1e-6 relative, the
            same dropout masks); memory falls with the rows (bench/RESULTS_nb_bert_memory.md).
    """

    reading: str = "described"
    seq_len: int | None = None
    mode: str | None = None
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        if self.reading not in READINGS:
            raise TfnasError(f"--reading {self.reading!r} is not one of {', '.join(READINGS)}")
        if self.seq_len is not None and not 3 <= self.seq_len <= 512:
            raise TfnasError(f"--seq-len must be in [3, 512] (ELECTRA's position table), got {self.seq_len}")
        if self.mode is not None and self.mode not in MODES:
            raise TfnasError(f"--mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.micro_batch is not None and (isinstance(self.micro_batch, bool) or not isinstance(self.micro_batch, int) or self.micro_batch < 1):
            raise TfnasError(f"--micro-batch must be a positive number of rows, got {self.micro_batch!r}")

    @property
    def model_options(self) -> dict:
        return {"reading": self.reading}

    @property
    def batch_options(self) -> dict:
        options = {}
        if self.seq_len is not None:
            options["seq_len"] = self.seq_len
        if self.mode is not None:
            options["mode"] = self.mode
        if self.micro_batch is not None:
            options["micro_batch"] = self.micro_batch
        return options


def check_applies(spaces: Sequence[str], *, given: Sequence[str]) -> None:
    """nb-bert options given for a table with other spaces are a user error.

    Raises:
        TfnasError: naming the options and the spaces.
    """
    others = sorted(set(spaces) - {NB_BERT})
    if given and others:
        raise TfnasError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to nb-bert only; the table has {', '.join(others)}")
