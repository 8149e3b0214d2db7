"""The CLI error policy (cli.one_line_errors): a user's error is one line `error: ...` and a
non-zero exit with nothing written; a bug keeps its traceback."""

import errno
import os
import pathlib
import subprocess
import sys
import types

import pytest

from configs import ablations
from alexnet_jax import cli
from alexnet_jax.tools import sweep
from alexnet_jax import train
from tests.helpers import TINY, subprocess_env, tiny_config, write_folder

ROOT = pathlib.Path(__file__).resolve().parent.parent


# --- the policy, in-process ---------------------------------------------------------------------

@pytest.mark.parametrize('code, advice, not_advice', [
    (errno.ENOSPC, 'free some space', 'permissions'),
    (errno.EDQUOT, 'free some space', 'permissions'),
    (errno.EACCES, 'fix the permissions', 'space'),
    (errno.EROFS, 'writable file system', 'space'),  # Once "free some space" on a read-only mount.
])
def test_the_advice_fits_the_refusal(code, advice, not_advice):
    message = cli.user_message(OSError(code, os.strerror(code), '/w/config.json'))
    assert '/w/config.json' in message and advice in message and not_advice not in message


def _chained(outer, inner):
    try:
        try:
            raise inner
        except Exception as e:  # pylint: disable=broad-except
            raise outer from e
    except Exception as e:  # pylint: disable=broad-except
        return e


@pytest.mark.parametrize('error, line', [
    (cli.UserError('bad thing;\n  fix it'), 'bad thing; fix it'),
    (train.NonFiniteLossError('loss is nan'), 'loss is nan'),
    (OSError(errno.ENOSPC, 'No space left on device', '/w/config.json'),
     'no space left on the device: /w/config.json'),
    (PermissionError(errno.EACCES, 'Permission denied', '/w'), 'permission denied: /w'),
    (_chained(RuntimeError('save failed'), OSError(errno.ENOSPC, 'full')), 'no space left'),
    (ValueError('tensorstore: [errno 28] No space left on device'), 'no space left'),
    (ValueError('RESOURCE_EXHAUSTED: Error writing "x/0" in OCDBT database at local file '
                '"/w/checkpoints/19.orbax-checkpoint-tmp/state/": No space left on device'),
     'no space left on the device: /w/checkpoints/19 (ValueError)'),
    (ValueError('a bug'), None),
    (KeyError('a bug'), None),
    (FileNotFoundError(errno.ENOENT, 'No such file', '/x'), None),
])
def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys, error, line):
    def main(argv):
        raise error
    wrapped = cli.one_line_errors(main)
    if line is None:
        with pytest.raises(type(error)):
            wrapped([])
        return
    with pytest.raises(SystemExit) as exit_:
        wrapped([])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and line in err, err


@pytest.mark.parametrize('value, expected', [
    ('runs/x', os.path.join(os.getcwd(), 'runs/x')),
    ('/abs/x', '/abs/x'),
    ('gs://bucket/run', 'gs://bucket/run'),
    (None, None),
])
def test_local_paths_are_made_absolute_once(value, expected):
    assert cli.local_path(value, '--workdir') == expected


@pytest.mark.parametrize('value', ['', '  '])
def test_an_empty_path_flag_is_an_error(value):
    with pytest.raises(cli.InputError, match='--workdir is empty'):
        cli.local_path(value, '--workdir')


def test_a_preempted_sweep_exits_cleanly(tmp_path, monkeypatch, capsys):
    config = ablations.get_config('pool')
    config.num_seeds = 1
    calls = []

    def preempted(config, workdir, seeds):  # As train_and_evaluate returns after SIGTERM.
        calls.append(workdir)
        return {'preempted_at_step': 3}
    monkeypatch.setattr(train, 'train_and_evaluate', preempted)
    monkeypatch.setattr(sweep, 'FLAGS', types.SimpleNamespace(
        config=config, workdir=str(tmp_path), print_commands=False, collect=False,
        retry_failed=False))
    assert sweep.main(['sweep']) is None  # Returns (exit 0); no KeyboardInterrupt.
    assert len(calls) == 1 and 'preempted' in capsys.readouterr().out
    assert not list(tmp_path.rglob('failed.json')) and not (tmp_path / 'results.csv').exists()


# --- the policy, end to end: input -> exit code, one line, nothing written ----------------------

def _trained_then_corrupted(tmp_path):
    workdir = tmp_path / 'corrupt'
    config = tiny_config(num_steps=2, checkpoint_every_steps=2, eval_every_steps=0)
    train.train_and_evaluate(config, str(workdir))
    for f in (workdir / 'checkpoints').rglob('*'):
        if f.is_file() and f.parent.name != 'checkpoints' and f.stat().st_size > 64:
            f.write_bytes(b'\0' * f.stat().st_size)
    (workdir / 'results.json').unlink()
    return workdir


def _strict_folder(tmp_path):
    root = tmp_path / 'imgs'
    write_folder(str(root), {'train': {'class0': 2, 'class1': 2}})
    next((root / 'train').rglob('*.jpg')).write_bytes(b'not a jpeg')
    return root


def _full_disk(tmp_path):
    workdir = tmp_path / 'full'
    workdir.mkdir()
    # Every write there: ENOSPC. config.json is written through this temp file (records.py).
    (workdir / '.config.json.tmp').symlink_to('/dev/full')
    return workdir


LAUNCH = [sys.executable, 'launch.py', *TINY]
SWEEP = [sys.executable, '-m', 'alexnet_jax.tools.sweep', '--config=configs/ablations.py:pool']
FOLDER = ['--config.data.name=folder', '--config.data.train_split=train',
          '--config.data.eval_split=train', '--config.data.test_split=train']

# (id, setup(tmp_path) -> workdir or None, argv with {w} = the workdir, in the message,
#  files the command may leave in the workdir)
CASES = [
    ('empty-workdir', None, LAUNCH + ['--workdir='], '--workdir is empty', None),
    ('batch-over-split', None, LAUNCH + ['--config.train.batch_size=128', '--workdir={w}'],
     '128 is larger than the 64 examples', None),
    ('tfds-not-prepared', None, [sys.executable, 'launch.py', '--config=configs/alexnet.py:cifar10',
                                 '--workdir={w}'], 'cifar10 is not prepared in {tfds}', None),
    ('folder-missing', None, LAUNCH + FOLDER + ['--config.data.folder_root=/nonexistent',
                                                '--workdir={w}'], 'is not a directory', None),
    ('folder-strict', _strict_folder, LAUNCH + FOLDER + [
        '--config.data.folder_root={w}', '--config.data.strict=True',
        '--workdir={w}/../run'], 'Unreadable image', None),
    ('unknown-split', None, [sys.executable, 'launch.py', '--config=configs/alexnet.py:digits',
                             '--config.data.eval_split=bogus', '--workdir={w}'],
     "has no split 'bogus'", None),
    ('every-checkpoint-corrupt', _trained_then_corrupted, LAUNCH + ['--workdir={w}'],
     'None of the 1 checkpoint(s)', None),
    ('unwritable-workdir', None, LAUNCH + ['--workdir=/sys/alexnet_jax_test/run'],
     'cannot be created', None),
    ('workdir-is-a-file', lambda t: (t / 'f').write_text('x') and t / 'f',
     LAUNCH + ['--workdir={w}'], 'is not a directory', None),
    ('full-disk', _full_disk, LAUNCH + ['--workdir={w}'],
     'no space left on the device: {w}/config.json',
     {'checkpoints', '.config.json.tmp'}),  # The write's temp file (the full disk) is removed.
    ('sweep-bad-base-file', None, SWEEP + ['--config.base=configs/nope.py', '--workdir={w}'],
     'no such config file', None),
    ('sweep-bad-base-variant', None, SWEEP + ['--config.base=configs/alexnet.py:bogus',
                                              '--workdir={w}'], 'does not load', None),
    ('evaluate-missing-checkpoint', None, [sys.executable, '-m', 'alexnet_jax.tools.evaluate',
                                           '--checkpoint=no/such/dir', '--output={w}'],
     f'{ROOT}/no/such/dir does not exist', None),
    ('evaluate-damaged-config', lambda t: (t / 'config.json').write_text('[]') and t,
     [sys.executable, '-m', 'alexnet_jax.tools.evaluate', '--checkpoint={w}'],
     '{w}/config.json holds a list, not a JSON object', None),
    ('features-bad-output', None, [sys.executable, '-m', 'alexnet_jax.tools.features',
                                   '--checkpoint=/x', '--output={w}/f.txt'],
     'must end in .npz', None),
]


def _snapshot(path):
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return sorted((str(p.relative_to(path)), p.lstat().st_mtime_ns) for p in path.rglob('*'))


@pytest.mark.slow
@pytest.mark.parametrize('setup, argv, message, may_leave', [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_cli_error_policy(tmp_path, setup, argv, message, may_leave):
    if '/sys/alexnet_jax_test' in ' '.join(argv) and os.path.isdir('/sys/alexnet_jax_test'):
        pytest.skip('/sys is writable here')
    workdir = setup(tmp_path) if setup else tmp_path / 'run'
    tfds_dir = tmp_path / 'tfds'
    before = _snapshot(workdir)
    env = subprocess_env(TFDS_DATA_DIR=str(tfds_dir), PYTHONWARNINGS='ignore')
    if 'digits' in ' '.join(argv):  # Built once in the default data dir; no download.
        env.pop('TFDS_DATA_DIR')
    argv = [a.replace('{w}', str(workdir)) for a in argv] + ['--verbosity=-3']
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = p.stderr.strip().splitlines()
    assert p.returncode not in (0, None) and 'Traceback' not in p.stderr, p.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith('error: '), p.stderr[-3000:]
    assert message.format(tfds=tfds_dir, w=workdir) in lines[0], lines[0]
    after = _snapshot(workdir)
    if may_leave and isinstance(after, list) and isinstance(before, list):
        before, after = ([e for e in x if e[0] not in may_leave] for x in (before, after))
    assert after == before, f'{workdir} changed: {before} -> {after}'


@pytest.mark.slow  # A launch.py subprocess.
def test_a_disk_that_fills_during_training_is_one_line_naming_the_checkpoint(tmp_path):
    """orbax's save threads each log the failure with a traceback, and tensorstore's late
    callbacks raise 'Event loop is closed' dozens of times: the user sees one line."""
    disk = tmp_path / 'disk'
    disk.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(disk)],
                      capture_output=True).returncode:
        pytest.skip('cannot mount a small tmpfs here (needs root)')
    try:  # 1 MB: config.json and the metrics fit, a checkpoint (~480 KB) and the next do not.
        (disk / 'filler').write_bytes(b'\0' * 400_000)
        p = subprocess.run([*LAUNCH, '--config.train.num_steps=6', f'--workdir={disk}/run',
                            '--config.train.checkpoint_every_steps=3', '--verbosity=-3'], cwd=ROOT,
                           env=subprocess_env(), capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(['umount', '-l', str(disk)], check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and 'Traceback' not in p.stderr, p.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(
        f'error: no space left on the device: {disk}/run/checkpoints/'), p.stderr[-3000:]


@pytest.mark.slow  # launch.py subprocesses.
@pytest.mark.parametrize('directory, spec', [
    ('c:g', '{tmp}/c:g'),  # config_flags split at the first colon: the file was not found.
    ('configs', '~/configs')])  # config_flags did not expand ~ (every other path flag does).
def test_a_config_path_loads_as_the_shell_would_find_it(tmp_path, directory, spec):
    import shutil  # pylint: disable=import-outside-toplevel
    (tmp_path / directory).mkdir()
    shutil.copy(ROOT / 'configs' / 'alexnet.py', tmp_path / directory)
    spec = spec.format(tmp=tmp_path)
    for file, message in (('alexnet.py:digits', 'config.model.width: must be > 0'),
                          ('alexnet.py', 'config.model.width: must be > 0'),
                          ('nope.py:digits', f'{tmp_path / directory}/nope.py: no such config '
                                             f'file')):
        p = subprocess.run([sys.executable, 'launch.py', f'--config={spec}/{file}',
                            '--config.model.width=-1', f'--workdir={tmp_path / "run"}'],
                           cwd=ROOT, env=subprocess_env(HOME=str(tmp_path)),
                           capture_output=True, text=True, timeout=300)
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and message in lines[0], p.stderr[-2000:]
        assert 'config_config' not in lines[0] and 'Relative path' not in lines[0]
