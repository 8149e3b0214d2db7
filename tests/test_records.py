"""A workdir's JSON records: written whole or not at all, and a damaged one is a one-line error
that names the file, never a JSONDecodeError traceback."""

import json

import pytest

from alexnet_jax import errors
from alexnet_jax import records
from alexnet_jax.tools import grid as grid_lib
from alexnet_jax import workdirs
from configs import ablations


def test_a_failed_write_leaves_the_old_record(tmp_path):
    path = tmp_path / 'results.json'
    records.write(path, {'test_top1': 0.9})
    with pytest.raises(TypeError):
        records.write(path, {'test_top1': object()})  # Fails half-way through serialising.
    assert json.loads(path.read_text()) == {'test_top1': 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ['results.json']


@pytest.mark.parametrize('name', ['results.json', 'failed.json'])
def test_a_truncated_record_is_a_one_line_user_error(tmp_path, name):
    sweep = ablations.get_config('pool')
    point = grid_lib.expand(sweep)[1]
    workdir = tmp_path / point.dirname
    workdir.mkdir(parents=True)
    records.write(workdir / 'config.json', {'train': {'log_every_steps': 2}})
    (workdir / name).write_text('{"test_top1": 0.9')  # Cut short, as before writes were atomic.
    with pytest.raises(records.RecordError) as e:
        grid_lib.result_row(sweep, point, workdir)
    assert isinstance(e.value, errors.UserError)
    message = str(e.value)
    assert '\n' not in message and str(workdir / name) in message and 'delete it' in message


def test_a_garbage_config_is_a_one_line_error_for_the_tools(tmp_path):
    (tmp_path / 'config.json').write_text('not json')
    with pytest.raises(records.RecordError, match='config.json is not valid JSON'):
        workdirs.read_config(tmp_path)


@pytest.mark.parametrize('error, machine', [
    (OSError(28, 'No space left on device'), True), (MemoryError(), True),
    (RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate'), True),
    (TypeError('unsupported operand'), False)])
def test_what_counts_as_the_machine_failing(error, machine):
    failure = errors.environment_failure(error, 'relu')
    assert (failure is not None) == machine
    if machine:
        assert str(failure).startswith(f'relu: {type(error).__name__}') and 'rerun' in str(failure)
