"""`UserError`: the base of every error the user fixes (a bad flag, config, path or data set).

Every CLI prints such an error as one line `error: ...` and exits 1 (`cli.one_line_errors`);
any other exception is a bug and keeps its traceback. Here, not in cli.py, so that the core
(checkpoints, train, data) can raise them without importing the command-line tools.
"""


class UserError(Exception):
    """An error whose message names the thing to fix and how; never a bug in this code."""


class InputError(UserError, ValueError):
    """A bad value the user gave (a flag, a file's contents); a ValueError for old callers."""


class ConfigError(UserError, ValueError):
    """A config field has an impossible value; the message names the field and the fix."""


class EnvironmentFailure(UserError):
    """The machine, not the run: a full disk, memory, a killed worker. Nothing is recorded as a
    result; the message says what to free, and a plain rerun resumes."""


def environment_failure(error: BaseException, where: str) -> EnvironmentFailure | None:
    """`error` as an EnvironmentFailure if it is one (an OSError, an out-of-memory), else None:
    any other exception is a bug and keeps its traceback."""
    text = str(error).splitlines()[0] if str(error) else ''
    if isinstance(error, (OSError, MemoryError)) or 'RESOURCE_EXHAUSTED' in text \
            or type(error).__name__ == 'ResourceExhaustedError':
        return EnvironmentFailure(
            f'{where}: {type(error).__name__}: {text[:300]}. The machine stopped it, not the '
            f'run: free what it names (disk space, memory), then rerun to resume.')
    return None


def check(condition: bool, field: str, message: str) -> None:
    """Raises `ConfigError('config.<field>: <message>')` unless `condition`; whoever reads the
    field checks it (the model its layers' fields, the optimizer its names, ...)."""
    if not condition:
        raise ConfigError(f'config.{field}: {message}')
