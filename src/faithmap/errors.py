"""The one exception type that faithmap raises for bad input.

Public functions check their inputs at the boundary and raise :class:`FaithmapError` with a single
line that names the problem; the command line prints that line and exits with status 2.
"""


class FaithmapError(ValueError):
    """Bad input to a public faithmap function or command (one clear line, no traceback)."""
