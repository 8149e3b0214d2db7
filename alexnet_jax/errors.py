"""`UserError`: the base of every error the user fixes (a bad flag, config, path or data set).

Every CLI prints such an error as one line `error: ...` and exits 1 (`cli.one_line_errors`);
any other exception is a bug and keeps its traceback. Here, not in cli.py, so that the core
(checkpoints, train, data) can raise them without importing the command-line tools.
"""


class UserError(Exception):
    """An error whose message names the thing to fix and how; never a bug in this code."""


class InputError(UserError, ValueError):
    """A bad value the user gave (a flag, a file's contents); a ValueError for old callers."""
