"""The one error type the product raises for bad input.

Every message names the input, its value, and what was allowed, so the CLI can print it
as a single line and exit with code 1.
"""


class TfnasError(ValueError):
    """Bad input to tfnas-ray: a malformed recipe, an unknown name, a missing file, …"""
