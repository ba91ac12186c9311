"""The error types the product raises for bad input.

Every message names the input, its value, and what was allowed, so the CLI can print it
as a single line. Exit codes (README, "Exit codes"): input that is malformed or out of
range, found by the checks that run before any work starts (`InputError`), exits 2 —
like a usage error; a domain error met while working (`TfnasError`: an unreachable
store, a run already holding the output, a job that failed) exits 1.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class TfnasError(ValueError):
    """Bad input to tfnas-ray: a malformed recipe, an unknown name, a missing file, …"""


class InputError(TfnasError):
    """Input rejected by the up-front checks, before Ray starts or a file is written."""


@contextlib.contextmanager
def checking_input() -> Iterator[None]:
    """Turn every `TfnasError` raised in the block into an `InputError` (exit code 2):
    the block is the part of a command that checks its input before any work."""
    try:
        yield
    except InputError:
        raise
    except TfnasError as err:
        raise InputError(str(err)) from None
