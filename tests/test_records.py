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
    records.write(workdir / 'config.json', {'model': {}, 'data': {},
                                            'train': {'log_every_steps': 2}})
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


# --- every damage of every record, in every reader ----------------------------------------------

SWEEP = ablations.get_config('pool')
POINT = grid_lib.expand(SWEEP)[1]


def _readers():  # name: (records it reads, read(root, run)); imported here: they load TF.
    from alexnet_jax import resume  # pylint: disable=import-outside-toplevel
    from alexnet_jax import evaluation  # pylint: disable=import-outside-toplevel
    from alexnet_jax.tools import lr_search  # pylint: disable=import-outside-toplevel
    from alexnet_jax.tools import report  # pylint: disable=import-outside-toplevel
    from alexnet_jax import train  # pylint: disable=import-outside-toplevel
    from tests.helpers import tiny_config  # pylint: disable=import-outside-toplevel
    return {
        'launch': (('config.json', 'metrics.jsonl'),
                   lambda root, run: train.train_and_evaluate(tiny_config(), str(run))),
        'launch-first-check': (('config.json',),
                               lambda root, run: resume.check_resume(tiny_config(), str(run))),
        'sweep-row': (('config.json', 'metrics.jsonl', 'results.json', 'failed.json'),
                      lambda root, run: grid_lib.result_row(SWEEP, POINT, run)),
        'sweep-definition': (('config.json', 'point.json'),
                             lambda root, run: grid_lib.check_definition(SWEEP, POINT,
                                                                         root / POINT.name)),
        'sweep-lr-search': (('lr_search.json',),
                            lambda root, run: lr_search.check_recorded(SWEEP, root, [POINT])),
        'report': (('metrics.jsonl',), lambda root, run: report.write_curves(
            [{'point': POINT.name, 'seed': POINT.seed}], root)),
        'evaluate': (('config.json',), lambda root, run: evaluation.evaluate_checkpoint(
            run, output=root / 'eval.json')),
        'features-figures': (('config.json',), lambda root, run: evaluation.load(run)),
    }


_SHAPES = {  # record: its damages of shape (a JSON Lines record gets them as one more line).
    'config.json': ('[]', '{}', '{"model": 3, "data": {}, "train": {}}'),
    'results.json': ('[]', '{}', '{"test_top1": "0.9", "test_top5": 1, "test_loss": 1}'),
    'failed.json': ('[]', '{}', '{"reason": 3}'),
    'point.json': ('[]', '{}', '{"config": []}'),
    'lr_search.json': ('[]', '{"relu": {}}', '{"relu": {"chosen": {"rate": "0.01", "why": ""}}}'),
    'metrics.jsonl': ('42', '{"foo": 1}',
                      '{"step": "6", "epoch": 1, "split": "train", "loss": 1, "top1": 1}'),
}
_DAMAGES = ('not-utf8', 'not-json', 'not-object', 'missing-keys', 'wrong-types')
_CASES = [(reader, name, damage) for reader, (names, _) in _readers().items() for name in names
          for damage in _DAMAGES]


def _damage(path, damage: str) -> None:
    text = {'not-utf8': b'\xff\xfe{\x9c}', 'not-json': b'{"cut'}.get(damage) or \
        _SHAPES[path.name][_DAMAGES.index(damage) - 2].encode()
    if path.suffix == '.jsonl':  # Appended to the run's lines.
        path.write_bytes(path.read_bytes() + text + b'\n' * (damage != 'not-json'))
    else:
        path.write_bytes(text)


@pytest.mark.parametrize('reader, name, damage', _CASES,
                         ids=[f'{r}-{n}-{d}' for r, n, d in _CASES])
def test_a_damaged_record_is_one_line_naming_it_in_every_reader(tiny_run, tmp_path, reader, name,
                                                                damage):
    """Once: UnicodeDecodeError, AttributeError, TypeError or KeyError tracebacks."""
    import shutil  # pylint: disable=import-outside-toplevel
    run = tmp_path / POINT.dirname  # A sweep's point and seed, a run as launch.py trains it.
    shutil.copytree(tiny_run[0], run)
    path = {'point.json': tmp_path / POINT.name, 'lr_search.json': tmp_path}.get(name, run) / name
    if not path.exists():  # Where the run has none, one to damage.
        records.write(path, {'reason': 'x'})
    _damage(path, damage)
    read = _readers()[reader][1]
    if name == 'metrics.jsonl' and damage == 'not-json':  # A line cut by a kill: skipped.
        read(tmp_path, run)
        return
    with pytest.raises(records.RecordError) as e:
        read(tmp_path, run)
    assert isinstance(e.value, errors.UserError)
    message = str(e.value)
    assert '\n' not in message and message.startswith(str(path)) and 'delete it' in message


# --- outputs: whole or not at all -----------------------------------------------------------------

def _writers():  # file: write it into `root`; imported here: they load TF and matplotlib.
    import numpy as np  # pylint: disable=import-outside-toplevel
    from alexnet_jax import plots  # pylint: disable=import-outside-toplevel
    from alexnet_jax.tools import features  # pylint: disable=import-outside-toplevel
    from alexnet_jax.tools import figures  # pylint: disable=import-outside-toplevel
    from alexnet_jax.tools import report  # pylint: disable=import-outside-toplevel
    n = 4
    return {
        'results.csv': lambda root: report.write(SWEEP, [], root),  # The sweep's tables,
        'curves.csv': lambda root: report.write(SWEEP, [], root),
        'results.md': lambda root: report.write(SWEEP, [], root),
        'pool_training_error.png': lambda root: report.plot_figures(SWEEP, [], root),  # figures,
        'feats.npz': lambda root: features.save(root / 'feats.npz', 'fc7', {  # features,
            'features': np.ones((n, 9), np.float32), 'labels': np.arange(n), 'ids': np.arange(n)}),
        'conv1_kernels.png': lambda root: figures.plot_conv1(  # a checkpoint's figures,
            np.ones((11, 11, 3, 8), np.float32), root / 'conv1_kernels.png'),
        'learning_curves.png': lambda root: plots.learning_curves(  # a run's curves,
            [{'split': 'train', 'epoch': 1.0, 'loss': 1.0, 'top1': 0.5}],
            root / 'learning_curves.png'),
        'eval.json': lambda root: records.write(root / 'eval.json', {'top1': 0.5}),  # evaluate's.
    }


@pytest.mark.parametrize('name', list(_writers()))
def test_a_full_disk_names_the_output_and_leaves_the_old_one_whole(tmp_path, name):
    """Once `tools.features` on a full disk: "no space left on the device" without the path,
    and a .npz cut short that np.load could not read."""
    from alexnet_jax import cli  # pylint: disable=import-outside-toplevel
    path = tmp_path / name
    path.write_bytes(b'the earlier output')
    (tmp_path / f'.{name}.tmp').symlink_to('/dev/full')  # Its writes: ENOSPC, as a full disk.
    with pytest.raises(OSError) as e:
        _writers()[name](tmp_path)
    assert cli.user_message(e.value) == (f'no space left on the device: {path}; free some space '
                                         f'or use another directory; then rerun.')
    assert path.read_bytes() == b'the earlier output'
    assert not (tmp_path / f'.{name}.tmp').is_symlink()
    _writers()[name](tmp_path)  # Space again: the whole new output.
    assert path.read_bytes() != b'the earlier output' and path.stat().st_size > 0
