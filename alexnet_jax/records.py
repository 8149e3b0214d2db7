"""A workdir's JSON records (results, failed, point, config, lr_search): each written whole or not
at all (a temp file renamed over it, so a kill leaves the old record or the new one, never half
of one), and read with a one-line error that names the file and the fix."""

import json

from etils import epath

from alexnet_jax import errors


class RecordError(errors.UserError):
    """A record on disk is not valid JSON (cut short by a crash before this module, or edited)."""


def write(path, value, **dumps) -> None:
    path = epath.Path(path)
    text = json.dumps(value, **dumps) + '\n'  # A value that cannot be written fails here.
    tmp = path.parent / f'.{path.name}.tmp'
    tmp.write_text(text)  # (A full disk fails here: the record itself stays whole.)
    tmp.replace(path)


def read(path):
    path = epath.Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f'{path} is not valid JSON ({e.msg}, line {e.lineno}): it was cut '
                          f'short or edited; delete it (a rerun writes it again) or restore '
                          f'it.') from None
