"""seeds_mode='processes': the worker processes stop with their parent, however it stops (kill -9,
a signal while they start), and print no more than a run does."""

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

from absl import logging
import pytest

import alexnet_jax
from alexnet_jax import train
from alexnet_jax import seed_workers
from tests.helpers import ROOT, TINY, device_config, subprocess_env

# helpers.device_config as flags (a tuple flag extends the tuple: fake_shape is replaced), its
# seeds in two worker processes.
FLAGS = [f for f in TINY if 'fake_shape' not in f] + [
    '--config.data.fake_shape=(67,67,3)', '--config.data.train_augment=small',
    '--config.data.device_resident=always', '--config.data.fake_train_examples=40',
    '--config.data.pad=4', '--config.seeds_mode=processes', '--config.seed_workers=2']


def _launch(workdir, log, *flags):
    """launch.py in a session of its own (its process group holds its workers, orphaned or not);
    stdout and stderr go to files: an orphaned worker must not keep a pipe open."""
    with open(f'{log}.out', 'w') as out, open(f'{log}.err', 'w') as err:
        return subprocess.Popen([sys.executable, 'launch.py', *FLAGS, f'--workdir={workdir}',
                                 *flags], cwd=ROOT, env=subprocess_env(), stdout=out, stderr=err,
                                text=True, start_new_session=True)


def _gone(pgid, within=5.0) -> bool:
    """Whether process group `pgid` empties within `within` s (multiprocessing's resource
    tracker, for one, leaves just after the parent)."""
    t0 = time.time()
    while _group(pgid) and time.time() - t0 < within:
        time.sleep(0.05)
    return not _group(pgid)


def _group(pgid) -> list:
    """The live (not zombie) processes of process group `pgid`."""
    pids = []
    for stat in pathlib.Path('/proc').glob('[0-9]*/stat'):
        with contextlib.suppress(OSError):
            state, _, group = stat.read_text().rsplit(')', 1)[1].split()[:3]
            if int(group) == pgid and state != 'Z':
                pids.append(int(stat.parent.name))
    return pids


@contextlib.contextmanager
def _killed_at_exit(p):
    """Whatever the test does, nothing of `p`'s group trains on after it."""
    try:
        yield p
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _wait(condition, p, what, timeout=300):
    t0 = time.time()
    while not condition():
        assert p.poll() is None, f'launch.py ended (rc {p.returncode}) before {what}'
        assert time.time() - t0 < timeout, f'no {what} in {timeout} s'
        time.sleep(0.05)


@pytest.mark.slow  # Two launch.py runs with two worker processes each.
def test_killed_parent_takes_its_workers_along_and_a_rerun_resumes(tmp_path):
    """kill -9 of the parent while its workers train: they die with it (orphaned, they trained
    on, ~1 GB each, and the rerun found their workdirs in use); a rerun at once resumes."""
    workdir = tmp_path / 'run'
    long = ['--config.num_seeds=3', '--config.train.checkpoint_every_steps=20',
            '--config.train.log_every_steps=20', '--config.train.eval_every_steps=20']
    with _killed_at_exit(_launch(workdir, tmp_path / 'first', *long,
                                 '--config.train.num_steps=100000')) as p:
        _wait(lambda: all(any(c.name.isdigit() for c in (workdir / f'seed{s}' / 'checkpoints')
                              .glob('[0-9]*')) for s in (0, 1)), p, 'checkpoint of seeds 0, 1')
        workers = set(_group(p.pid)) - {p.pid}
        assert len(workers) >= 2, workers  # The two workers (and multiprocessing's tracker).
        p.kill()  # kill -9: no handler runs, nothing is forwarded to the workers.
        p.wait()
        assert _gone(p.pid), 'workers outlived their killed parent'

    # At once on the same workdir: nothing holds it; seeds 0 and 1 resume, seed 2 starts.
    with _killed_at_exit(_launch(workdir, tmp_path / 'rerun', *long,
                                 '--config.train.num_steps=60')) as p:
        assert p.wait(timeout=300) == 0
    err = (tmp_path / 'rerun.err').read_text()
    assert 'in use' not in err and 'Traceback' not in err, err
    assert len(re.findall(r'Resumed from step \d+ of .*seed[01]\b', err)) == 2, err
    for s in (0, 1, 2):
        assert (workdir / f'seed{s}' / 'results.json').exists()


@pytest.mark.slow  # Three launch.py runs, each spawning two worker processes.
def test_a_signal_while_the_workers_start_stops_cleanly_and_a_rerun_finishes(tmp_path):
    """SIGTERM to the run as the workers spawn, then Ctrl-C (SIGINT to the whole process group,
    as a terminal sends it) while they import jax: each stops as a run does (exit 0, a line
    saying a rerun resumes, no traceback, no process left); then a rerun trains every seed."""
    workdir = tmp_path / 'run'
    steps = ['--config.num_seeds=2', '--config.train.num_steps=6']
    for i, (delay, stop) in enumerate([(0.0, lambda p: p.send_signal(signal.SIGTERM)),
                                       (2.0, lambda p: os.killpg(p.pid, signal.SIGINT))]):
        log = tmp_path / f'stop{i}'
        with _killed_at_exit(_launch(workdir, log, *steps)) as p:
            err = pathlib.Path(f'{log}.err')
            _wait(lambda: 'Training seeds' in err.read_text(), p, '"Training seeds" logged')
            time.sleep(delay)
            stop(p)
            assert p.wait(timeout=300) == 0, err.read_text()
            assert 'Traceback' not in err.read_text(), err.read_text()
            assert 'rerun to resume' in err.read_text()
            assert _gone(p.pid), 'a worker outlived its stopped parent'
    with _killed_at_exit(_launch(workdir, tmp_path / 'rerun', *steps)) as p:
        assert p.wait(timeout=300) == 0, (tmp_path / 'rerun.err').read_text()
    for s in (0, 1):
        assert (workdir / f'seed{s}' / 'results.json').exists()


def _library_files() -> set:
    """The file names that orbax's and TFDS's log lines carry, less those of our own modules."""
    import orbax.checkpoint  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets  # pylint: disable=import-outside-toplevel
    ours = {p.name for p in pathlib.Path(alexnet_jax.__file__).parent.rglob('*.py')}
    theirs = set()
    for package in (orbax.checkpoint, tensorflow_datasets):
        theirs |= {p.name for p in pathlib.Path(package.__file__).parent.rglob('*.py')}
    return theirs - ours


@pytest.mark.slow  # Spawns two worker processes (each imports jax and TensorFlow).
def test_workers_keep_the_console_as_quiet_as_the_parent(tmp_path, capfd):
    """The workers' stderr is this process's (captured here): their log lines, by file name,
    hold no INFO line of orbax or TFDS (`console.quiet`, as on the parent's console); a
    worker's whole log is a few lines a seed (it was hundreds)."""
    config = device_config(num_steps=4, checkpoint_every_steps=2)
    config.update(num_seeds=2, seeds_mode='processes', seed_workers=2)
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.INFO)  # As launch.py runs (the workers take the parent's).
    capfd.readouterr()
    try:
        out = train.train_and_evaluate(config, str(tmp_path / 'run'))
    finally:
        logging.set_verbosity(verbosity)
    assert set(out) == {0, 1} and all('test_loss' in r for r in out.values()), out
    lines = capfd.readouterr().err.splitlines()
    noisy = _library_files()
    info = [l for l in lines if re.match(r'I\d{4} ', l)]
    assert info, lines  # The workers log through absl: their INFO lines are here.
    loud = [l for l in info if re.match(r'I\S+ \S+ \S+ ([^:]+):', l).group(1) in noisy]
    assert not loud, '\n'.join(loud)
    assert len(lines) < 40, '\n'.join(lines)


def _die(config, workdir, seed):
    """A worker killed mid-run (kill -9, the kernel's OOM killer): its process ends at once."""
    del config, workdir, seed
    os._exit(137)  # pylint: disable=protected-access


@pytest.mark.slow  # Spawns a worker process (it imports jax).
def test_a_worker_that_dies_is_a_one_line_error_not_a_traceback(tmp_path):
    """Once a BrokenProcessPool traceback (exit 1) from launch.py and a 'failed' point in a
    sweep; now one line naming the seed, and a rerun resumes."""
    import ml_collections  # pylint: disable=import-outside-toplevel
    from alexnet_jax import errors  # pylint: disable=import-outside-toplevel
    with pytest.raises(errors.EnvironmentFailure) as e:
        seed_workers.run_in_processes(_die, ml_collections.ConfigDict({'seed_workers': 1}),
                                      str(tmp_path), [0, 1])
    message = str(e.value)
    assert message.startswith('a seed worker process died') and '\n' not in message
    assert 'seeds [0, 1] not finished' in message and 'rerun to resume' in message
    assert not list(tmp_path.rglob('failed.json'))
