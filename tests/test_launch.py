"""launch.py end to end (subprocesses: clear errors, kill -9 and resume, SIGTERM) and the run's
safeguards in-process (relative paths, resume rules, keep-best, the workdir lock)."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from alexnet_jax.data import input_pipeline
from alexnet_jax import train
from alexnet_jax import validation
from tests.helpers import TINY, assert_trees_close, launch, saved_state, subprocess_env, tiny_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize('flag, expected', [
    ('--config.model.activaton=tanh', 'activaton'),
    ('--config.train.batch_size=7', 'batch_size=7 does not divide'),
    ('--config.optim.schedule=cos', 'config.optim.schedule'),
])
@pytest.mark.slow  # Three launch.py subprocesses.
def test_clear_one_line_errors(tmp_path, flag, expected):
    rc, _, err = launch(*TINY, flag, f'--workdir={tmp_path}')
    assert rc != 0
    assert expected in err and 'Traceback' not in err, err[-2000:]


def _wait_for_checkpoint(workdir, proc, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        steps = [p for p in (workdir / 'checkpoints').glob('[0-9]*') if p.name.isdigit()]
        if steps or proc.poll() is not None:
            return
        time.sleep(0.05)


@pytest.mark.slow  # kill -9 of a launch.py subprocess, then two runs.
def test_kill9_and_resume_equals_uninterrupted(tmp_path):
    # Killed once step 20 is saved: 100 steps (~2 s) before the end, still mid-run.
    steps = ['--config.train.num_steps=120', '--config.train.checkpoint_every_steps=20',
             '--config.train.log_every_steps=20', '--config.train.eval_every_steps=60']
    workdir = tmp_path / 'killed'
    proc = launch(*TINY, *steps, f'--workdir={workdir}', wait=False)
    _wait_for_checkpoint(workdir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (workdir / 'results.json').exists(), 'the run ended before the kill'
    rc, _, err = launch(*TINY, *steps, f'--workdir={workdir}')
    assert rc == 0, err[-3000:]
    config = tiny_config(num_steps=120, checkpoint_every_steps=20, log_every_steps=20,
                         eval_every_steps=60)
    train.train_and_evaluate(config, str(tmp_path / 'clean'))
    resumed, _ = saved_state(config, str(workdir))
    clean, _ = saved_state(config, str(tmp_path / 'clean'))
    assert int(resumed.step) == int(clean.step) == 120
    assert_trees_close(resumed.params, clean.params, atol=1e-6)


@pytest.mark.slow  # SIGTERM to a launch.py subprocess.
def test_sigterm_saves_a_restorable_checkpoint(tmp_path):
    steps = ['--config.train.num_steps=100000', '--config.train.checkpoint_every_steps=50',
             '--config.train.log_every_steps=50']
    proc = launch(*TINY, *steps, f'--workdir={tmp_path}', wait=False)
    _wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    config = tiny_config(num_steps=100000, checkpoint_every_steps=50, log_every_steps=50)
    state, meta = saved_state(config, str(tmp_path))
    assert int(state.step) > 0 and 'plateau' in meta
    assert all(np.isfinite(x).all() for x in __import__('jax').tree.leaves(state.params))


# --- issue 12: what a user types must not lose the run (in-process unless a CLI is needed) ------

def _records(workdir, split):
    return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()
            if json.loads(l)['split'] == split]


def test_keep_zero_checkpoints_is_refused_before_anything_is_written(tmp_path):
    config = tiny_config(keep_checkpoints=0)
    with pytest.raises(validation.ConfigError, match='config.train.keep_checkpoints: must keep'):
        train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()  # Refused before the workdir is even made.


def test_a_failed_first_save_stops_the_run_at_once(tmp_path, monkeypatch):
    # A relative workdir given to the library (the CLIs make it absolute): orbax refuses it.
    monkeypatch.chdir(tmp_path)
    config = tiny_config(num_steps=12, checkpoint_every_steps=3, eval_every_steps=0)
    with pytest.raises(ValueError, match='absolute'):
        train.train_and_evaluate(config, 'runs/rel')
    assert max(r['step'] for r in _records(tmp_path / 'runs/rel', 'train')) == 3


@pytest.mark.slow  # A launch.py subprocess on one device.
def test_a_resume_on_another_device_count_says_so(tmp_path):
    train.train_and_evaluate(tiny_config(num_steps=2, checkpoint_every_steps=2,
                                         eval_every_steps=0), str(tmp_path))  # On 2 devices.
    rc, _, err = launch(*TINY, '--config.train.num_steps=4', f'--workdir={tmp_path}', devices=1)
    assert rc == 0, err[-3000:]
    lines = [l for l in err.splitlines() if 'Resuming' in l]
    assert len(lines) == 1 and '1 process(es) / 1 device(s), trained on 1 / 2' in lines[0], err
    assert 'the same batches; dropout masks' in lines[0]
    assert json.loads((tmp_path / 'results.json').read_text())['steps'] == 4


def test_batch_larger_than_the_training_split_is_refused_up_front(tmp_path):
    config = tiny_config(batch_size=128)  # The fake train split has 64 examples.
    with pytest.raises(validation.ConfigError, match='128 is larger than the 64 examples'):
        train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()


def test_nan_on_a_fresh_workdir_does_not_claim_a_checkpoint(tmp_path, monkeypatch):
    real = input_pipeline.train_iterator

    def poisoned(config, *, start_step=0, **kw):
        for batch in real(config, start_step=start_step, **kw):
            # Batches are uint8 (no NaN): a float32 NaN image (normalize_batch takes it).
            yield dict(batch, image=np.full(batch['image'].shape, np.nan, np.float32))
    monkeypatch.setattr(input_pipeline, 'train_iterator', poisoned)
    with pytest.raises(train.NonFiniteLossError, match='No checkpoint was saved yet') as e:
        train.train_and_evaluate(tiny_config(num_steps=4, log_every_steps=2), str(tmp_path))
    assert 'intact' not in str(e.value)


@pytest.mark.slow
def test_relative_workdir_trains_and_saves(tmp_path):
    # From another directory, with a relative --workdir: the run ends with its checkpoint.
    args = [a.replace('configs/', f'{ROOT}/configs/') for a in TINY]
    env = subprocess_env()
    p = subprocess.run([sys.executable, str(ROOT / 'launch.py'), *args,
                        '--config.train.num_steps=2', '--workdir=runs/rel'], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / 'runs/rel/results.json').exists()
    assert (tmp_path / 'runs/rel/checkpoints/2').is_dir()
    # The console: the variant, the fields that differ from it, devices, workdir; no YAML dump.
    log = p.stderr
    assert f'Training {ROOT}/configs/alexnet.py:fake in {tmp_path}/runs/rel' in log, log[-3000:]
    for line in ('model.width: 1.0 -> 0.05', 'train.batch_size: 128 -> 8',
                 'train.num_steps: 200 -> 2', 'data.image_size: 227 -> 67'):
        assert f'\n  {line}' in log, line
    assert 'model.lrn_beta' not in log and '!!python' not in log  # Unchanged fields: not shown.
    assert '2 local / 2 global devices' in log
    assert 'step 2/2 (100%)' in log and 'steps/s' in log and 'ETA' in log  # The progress line.
    # config.eval_only: launch.py routes it to the evaluate tool; nothing is trained.
    p = subprocess.run([sys.executable, str(ROOT / 'launch.py'), *args,
                        '--config.train.num_steps=2', '--config.eval_only=True',
                        '--workdir=runs/rel'], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f'Evaluating {ROOT}/configs/alexnet.py:fake' in p.stderr
    evaluated = json.loads((tmp_path / 'runs/rel/eval/results.json').read_text())
    trained = json.loads((tmp_path / 'runs/rel/results.json').read_text())
    assert evaluated['center']['top1'] == pytest.approx(trained['test_top1'], abs=1e-9)
    assert sorted(p.name for p in (tmp_path / 'runs/rel/checkpoints').iterdir()
                  if p.name.isdigit()) == ['2']


def test_every_seed_failing_exits_non_zero(capsys):
    """A multi-seed launch whose seeds all diverged is not a finished run: exit 1, one line;
    one failed seed among finished ones is (its failed.json says so)."""
    import launch  # pylint: disable=import-outside-toplevel
    nan = 'NonFiniteLossError: Training loss is nan at step 3; stopping.'
    with pytest.raises(SystemExit) as e:
        launch.check_some_seed_trained({0: {'failed': nan}, 1: {'failed': nan}}, '/w')
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'every seed failed (NonFiniteLossError)' in err
    assert '/w/seed<k>/failed.json' in err
    launch.check_some_seed_trained({0: {'failed': nan}, 1: {'test_top1': 0.9}}, '/w')
    launch.check_some_seed_trained({'test_top1': 0.9, 'steps': 4}, '/w')  # A plain run.
    launch.check_some_seed_trained({0: {'preempted_at_step': 3}}, '/w')
    assert capsys.readouterr().err == ''


_EARLY = '''
import fcntl, os, sys
from alexnet_jax import errors, resume, workdirs
workdir, how = sys.argv[1:]
config = workdirs.read_config(workdir)
if how == 'wider':
    config.model.width *= 2
if how == 'locked':  # As another run holds it: flock conflicts across open() calls.
    fcntl.flock(os.open(workdir, os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB)
try:
    resume.check_resume(config, workdir)
    print('resumable')
except errors.UserError as e:
    print(type(e).__name__, e)
print('tensorflow imported:', 'tensorflow' in sys.modules)
'''


@pytest.mark.slow  # Subprocesses: what they import is the point.
@pytest.mark.parametrize('how, said', [
    ('same', 'resumable'),
    ('wider', 'ConfigMismatchError {w} does not fit this config: model.width'),
    ('locked', 'WorkdirError --workdir={w} is in use by another run'),
])
def test_a_rerun_that_cannot_resume_is_refused_before_tensorflow_loads(tiny_run, tmp_path, how,
                                                                       said):
    """A rerun that did not fit was refused only after TensorFlow, JAX and the data loaded
    (10-35 s), one on a workdir in use ~20 s in: config.json and the lock say so at once."""
    import shutil  # pylint: disable=import-outside-toplevel
    workdir = tmp_path / 'run'
    shutil.copytree(tiny_run[0], workdir)
    p = subprocess.run([sys.executable, '-c', _EARLY, str(workdir), how], cwd=ROOT,
                       env=subprocess_env(), capture_output=True, text=True, timeout=300)
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 0 and lines[0].startswith(said.format(w=workdir)), p.stderr[-2000:]
    assert lines[-1] == 'tensorflow imported: False'
    if how == 'wider':  # launch.py asks it first: the refusal names the workdir's record.
        rc, _, err = launch(*TINY, '--config.model.width=0.1', f'--workdir={workdir}')
        assert rc == 1 and f'error: {workdir} does not fit this config: model.width' in err, err
