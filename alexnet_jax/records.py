"""Files written whole or not at all, and JSON records read with one error for any damage.

`replacing(path)`: a temp file beside `path`, renamed over it once complete, so a kill or a full
disk leaves the old file or the new one, never half of one (records, tables, figures, features).
`read(path, shape)`: a record (results, failed, point, config, lr_search) that is not UTF-8, not
JSON, or not of its `shape` is a one-line RecordError that names the file and the fix.
"""

import contextlib
import json
import numbers

from etils import epath

from alexnet_jax import errors

FIX = 'it was cut short or edited; delete it (a rerun writes it again) or restore it.'


class RecordError(errors.UserError):
    """A record on disk is damaged: not UTF-8, not JSON, or not the shape its reader needs."""


@contextlib.contextmanager
def replacing(path):
    """Yields the temp path to write instead of `path`; it replaces `path` when the block ends.
    On any error the temp file goes and `path` is left as it was; an OSError without a file
    name (a write that hit a full disk) gets `path`'s, so the one-line error names it."""
    path = epath.Path(path)
    tmp = path.parent / f'.{path.name}.tmp'
    try:
        yield tmp
        tmp.replace(path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno and not e.filename:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def write(path, value, **dumps) -> None:
    text = json.dumps(value, **dumps) + '\n'  # A value that cannot be written fails here.
    with replacing(path) as tmp:
        tmp.write_text(text)


# A record's shape: {key: type}, each key required; NUMBER: an int or a float, never a bool.
NUMBER, NUMBER_OR_NULL = 'a number', 'a number or null'


def read(path, shape: dict | None = None):
    """The JSON value at `path`, a dict with `shape`'s keys and types if given."""
    path = epath.Path(path)
    try:
        value = json.loads(path.read_bytes().decode('utf-8'))
    except UnicodeDecodeError:
        raise damaged(path, 'is not UTF-8 text') from None
    except json.JSONDecodeError as e:
        raise damaged(path, f'is not valid JSON ({e.msg}, line {e.lineno})') from None
    if shape is not None:
        check(value, shape, path)
    return value


def check(value, shape: dict, path, where: str = '') -> None:
    """Raises RecordError unless `value` is a dict with `shape`'s keys of `shape`'s types."""
    at = f' at {where}' if where else ''
    if not isinstance(value, dict):
        raise damaged(path, f'holds a {type(value).__name__}{at}, not a JSON object')
    for key, kind in shape.items():
        if key not in value:
            raise damaged(path, f'has no {key!r}{at}')
        if not _is(value[key], kind):
            raise damaged(path, f'has {key!r}={value[key]!r:.40}{at}, not {_name(kind)}')


def damaged(path, what: str) -> RecordError:
    return RecordError(f'{path} {what}: {FIX}')


def _is(value, kind) -> bool:
    if kind in (NUMBER, NUMBER_OR_NULL):
        return (isinstance(value, numbers.Real) and not isinstance(value, bool)
                or kind == NUMBER_OR_NULL and value is None)
    return isinstance(value, kind)


def _name(kind) -> str:
    return {dict: 'an object', str: 'a string'}.get(kind, kind)
