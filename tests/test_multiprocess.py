"""Two real processes on localhost (jax.distributed, gloo CPU collectives) train like one.

Each process runs launch.py with one CPU device and reads its own half of the data; the
reference is this (single) process with two devices fed the same two halves, one per device,
so both see the same global batches. Final parameters must agree.
"""

import functools
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax.data import input_pipeline
from alexnet_jax import parallel
from alexnet_jax.data import preprocess
from alexnet_jax import train
from tests.helpers import (TINY, assert_trees_close, launch, saved_state, subprocess_env,
                           tiny_config)

STEPS = 6
FLAGS = [f'--config.train.num_steps={STEPS}', '--config.train.log_every_steps=3',
         '--config.train.eval_every_steps=0', f'--config.train.checkpoint_every_steps={STEPS}',
         '--config.model.dropout_rate=0.0', '--config.train.async_checkpoints=False']
ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_validation_leaves_jax_uninitialized_for_jax_distributed():
    """launch.py validates the config, then calls jax.distributed.initialize, which refuses to
    run once a backend has started: validating a multi-seed config in any mode must not."""
    code = ('import sys; from configs import alexnet; from alexnet_jax import parallel, '
            "validation; c = alexnet.get_config('digits'); c.num_seeds = 2\n"
            "for c.seeds_mode in ('auto', 'processes', 'vmap', 'sequential'):\n"
            '    validation.validate_config(c)\n'
            "parallel.initialize_distributed(f'localhost:{sys.argv[1]}', 1, 0)")
    subprocess.run([sys.executable, '-c', code, str(free_port())], check=True, cwd=ROOT,
                   env=subprocess_env(), timeout=120)


def reference_params(config):
    """One process, two devices; device d gets the batch process d would read."""
    info = input_pipeline.get_info(config)
    state, key = train.initial_state(config, info, *train.num_train_steps(config)[::-1])
    devices = jax.devices()[:2]
    state = parallel.replicate(state, devices)
    mean, std = preprocess.mean_std(config.data, info.image_shape[-1])
    step = jax.pmap(functools.partial(train.train_step, dropout_key=key, mean=mean, std=std),
                    axis_name=parallel.AXIS, devices=devices)
    hosts = [input_pipeline.train_iterator(config, process_index=p, process_count=2,
                                           local_devices=1) for p in range(2)]
    for _ in range(STEPS):
        halves = [next(h) for h in hosts]
        batch = jax.tree.map(lambda *x: np.concatenate(x), *halves)
        state, _ = step(state, batch)
    return parallel.unreplicate(state).params


@pytest.mark.slow  # Two launch.py processes (jax.distributed).
def test_two_processes_equal_one_process_with_same_global_batch(tmp_path):
    address = f'127.0.0.1:{free_port()}'
    procs = [launch(*TINY, *FLAGS, f'--workdir={tmp_path}', f'--coordinator_address={address}',
                    '--num_processes=2', f'--process_id={i}', devices=1, wait=False)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert (tmp_path / 'results.json').exists()  # Written by process 0 only.

    config = tiny_config(num_steps=STEPS, eval_every_steps=0, log_every_steps=3)
    config.model.dropout_rate = 0.0
    state, _ = saved_state(config, str(tmp_path))
    assert int(state.step) == STEPS
    assert_trees_close(state.params, reference_params(config), atol=1e-5)


@pytest.mark.slow  # Two launch.py processes (jax.distributed), two devices each.
def test_two_processes_model_parallel_equal_one_process_data_parallel(tmp_path):
    """model_parallel=2 across hosts: each process one model pair (a 2 x 2 data x model mesh),
    each reading its half of the batch; the groups=2 net ends where data parallelism does."""
    address = f'127.0.0.1:{free_port()}'
    columns = ['--config.model.width=0.0625', '--config.model.groups=2',
               '--config.model_parallel=2']
    flags_ = [f for f in TINY if not f.startswith('--config.model.width')] + FLAGS + columns
    procs = [launch(*flags_, f'--workdir={tmp_path}', f'--coordinator_address={address}',
                    '--num_processes=2', f'--process_id={i}', devices=2, wait=False)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]

    config = tiny_config(num_steps=STEPS, eval_every_steps=0, log_every_steps=3)
    config.model.update(dropout_rate=0.0, width=0.0625, groups=2)
    state, _ = saved_state(config, str(tmp_path))
    assert int(state.step) == STEPS
    assert_trees_close(state.params, reference_params(config), atol=1e-5)
