"""Many seeds: seed k stepped together is standalone seed k; the mode rule; seeds side by side
in worker processes (the loop's guarantees on every path: test_loop.py)."""

import multiprocessing
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import errors
from alexnet_jax.data import device_data
from alexnet_jax.data import input_pipeline
from alexnet_jax import parallel
from alexnet_jax import seeds as seeds_lib
from alexnet_jax import train
from alexnet_jax import validation
from alexnet_jax import seed_workers
from tests.helpers import assert_trees_close, device_config, saved_state



def _steps(config, info, seeds, mode, n=3):
    """(state, metrics) after n steps of `seeds` stepped together in `mode` (the loop's step)."""
    states, keys = zip(*[train.initial_state(seeds_lib.seed_config(config, s), info, 5, 5)
                         for s in seeds])
    keys = {'dropout': jnp.stack(keys), 'data': jnp.stack([device_data.data_key(s) for s in seeds])}
    state = parallel.replicate(train.stack_seeds(states))
    step = train.step_runner(config, input_pipeline.facts(config), keys, 0, mode)
    for _ in range(n):
        state, m = step(state)
    return parallel.unreplicate(state), parallel.unreplicate(m)


@pytest.mark.slow  # Compiles a vectorised and a standalone train step per mode.
@pytest.mark.parametrize('mode', ['vmap', 'map'])
def test_seed_k_of_a_vectorised_step_equals_standalone_seed_k(mode):
    config = device_config(batch_size=8)  # Dropout on: the keys must follow the seed too.
    info = input_pipeline.get_info(config)
    runs = {s: _steps(config, info, [s], 'single') for s in (0, 1)}
    state, m = _steps(config, info, [0, 1], mode)
    for i in (0, 1):
        assert_trees_close(jax.tree.map(lambda x: x[i], state.params),
                           jax.tree.map(lambda x: x[0], runs[i][0].params), atol=2e-5)
        np.testing.assert_allclose(m['loss'][i], runs[i][1]['loss'][0], rtol=1e-5)
    assert not np.allclose(m['loss'][0], m['loss'][1])  # The seeds really differ.


def test_the_mode_is_resolved_once_with_one_rule():
    config = device_config()
    config.seeds_mode = 'vmap'
    assert seeds_lib.resolve_mode(config, 1, on_device=False) == 'single'
    assert seeds_lib.resolve_mode(config, 2, on_device=True) == 'vmap'
    with pytest.raises(errors.ConfigError, match="config.seeds_mode: 'vmap' needs device-resident"):
        seeds_lib.resolve_mode(config, 2, on_device=False)
    config.data.device_resident = 'never'  # Known from the config alone: refused up front.
    config.num_seeds = 2
    with pytest.raises(errors.ConfigError, match="'vmap' needs device-resident"):
        validation.validate_config(config)
    config.seeds_mode = 'auto'  # On a multi-core CPU: side by side in processes.
    several_cores = len(os.sched_getaffinity(0)) > 1
    assert seeds_lib.resolve_mode(config, 2, on_device=True) == (
        'processes' if several_cores else 'sequential')


@pytest.mark.slow  # Spawns two worker processes (each imports jax and TensorFlow), twice.
def test_seeds_in_processes_equal_standalone_and_a_signal_stops_them_resumably(tmp_path):
    config = device_config(num_steps=6, checkpoint_every_steps=3)
    config.update(num_seeds=2, seeds_mode='processes', seed_workers=2)
    with seed_workers.shared_workers():  # As the sweep runs points: the workers serve both calls.
        out = train.train_and_evaluate(config, str(tmp_path / 'par'))
        workers = {p.pid for p in multiprocessing.active_children()}
        more = train.train_and_evaluate(config, str(tmp_path / 'par'), seeds=[2, 3])
        assert {p.pid for p in multiprocessing.active_children()} == workers
        assert len(workers) == 2
    assert not multiprocessing.active_children()  # Closed with the block.
    assert more[2]['test_loss'] != more[3]['test_loss']
    for s in (0, 1):  # Each seed is the ordinary run of that seed (here: 2 cores, there: 1).
        c = seeds_lib.seed_config(config, s)
        solo = train.train_and_evaluate(c, str(tmp_path / f'solo{s}'))
        assert out[s]['test_loss'] == pytest.approx(solo['test_loss'], rel=1e-4)
        assert_trees_close(saved_state(c, str(tmp_path / 'par' / f'seed{s}'))[0].params,
                           saved_state(c, str(tmp_path / f'solo{s}'))[0].params, atol=1e-5)
    assert out[0]['test_loss'] != out[1]['test_loss']

    # SIGTERM to this process reaches the workers: each saves where it is and stops; seed 2,
    # queued behind them, is not started (it stays for the rerun).
    config.train.update(num_steps=100_000, checkpoint_every_steps=20, log_every_steps=20)
    config.num_seeds = 3
    workdir = tmp_path / 'long'

    def signal_once_both_saved():
        while not all(list((workdir / f'seed{s}' / 'checkpoints').glob('[0-9]*'))
                      for s in (0, 1)):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=signal_once_both_saved, daemon=True).start()
    out = train.train_and_evaluate(config, str(workdir))
    assert set(out) == {0, 1, 2} and all('preempted_at_step' in r for r in out.values()), out
    assert out[2]['preempted_at_step'] is None  # Never started: the rerun trains it.
    for s in (0, 1):
        state, _ = saved_state(seeds_lib.seed_config(config, s), str(workdir / f'seed{s}'))
        assert int(state.step) == out[s]['preempted_at_step'] < 100_000
        assert not (workdir / f'seed{s}' / 'results.json').exists()
    assert not (workdir / 'seed2').exists()


def test_a_seed_config_of_a_locked_config_without_num_seeds():
    """launch.py locks its config; a config file need not have num_seeds (a plain run)."""
    config = device_config()
    del config['num_seeds']
    config.lock()
    one = seeds_lib.seed_config(config, 3)
    assert (one.seed, one.num_seeds) == (3, 1) and 'num_seeds' not in config
