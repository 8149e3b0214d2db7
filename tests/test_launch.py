"""launch.py end to end, in subprocesses: clear errors, kill -9 and resume, SIGTERM."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_train import assert_trees_close, saved_state, tiny_config
from alexnet_jax import train

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ['--config=configs/alexnet.py:fake', '--config.model.width=0.05',
        '--config.model.num_classes=10', '--config.data.fake_shape=(70,70,3)',
        '--config.data.fake_num_classes=10', '--config.data.fake_train_examples=64',
        '--config.data.fake_eval_examples=20', '--config.data.resize_size=70',
        '--config.data.image_size=67', '--config.train.batch_size=8',
        '--config.train.eval_batch_size=8', '--config.train.plot=False']


def launch(*args, devices=2, wait=True):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
               JAX_PLATFORMS='cpu')
    p = subprocess.Popen([sys.executable, 'launch.py', *args], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return p
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


@pytest.mark.parametrize('flag, expected', [
    ('--config.model.activaton=tanh', 'activaton'),
    ('--config.train.batch_size=7', 'batch_size=7 does not divide'),
    ('--config.optim.schedule=cos', 'config.optim.schedule'),
])
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


def test_kill9_and_resume_equals_uninterrupted(tmp_path):
    steps = ['--config.train.num_steps=400', '--config.train.checkpoint_every_steps=20',
             '--config.train.log_every_steps=20', '--config.train.eval_every_steps=100']
    workdir = tmp_path / 'killed'
    proc = launch(*TINY, *steps, f'--workdir={workdir}', wait=False)
    _wait_for_checkpoint(workdir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (workdir / 'results.json').exists(), 'the run ended before the kill'
    rc, _, err = launch(*TINY, *steps, f'--workdir={workdir}')
    assert rc == 0, err[-3000:]
    config = tiny_config(num_steps=400, checkpoint_every_steps=20, log_every_steps=20,
                         eval_every_steps=100)
    train.train_and_evaluate(config, str(tmp_path / 'clean'))
    resumed, _ = saved_state(config, str(workdir))
    clean, _ = saved_state(config, str(tmp_path / 'clean'))
    assert int(resumed.step) == int(clean.step) == 400
    assert_trees_close(resumed.params, clean.params, atol=1e-6)


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
