"""Many seeds in one program: seed k of a vectorised run is standalone seed k; resume is exact."""

import multiprocessing
import os
import shutil
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import checkpoints
from alexnet_jax.data import device_data
from alexnet_jax.data import input_pipeline
from alexnet_jax import parallel
from alexnet_jax import seeds as seeds_lib
from alexnet_jax import train
from tests.helpers import assert_trees_close, device_config, saved_state



@pytest.mark.slow  # Compiles a vectorised and a standalone train step per mode.
@pytest.mark.parametrize('mode', ['vmap', 'map'])
def test_seed_k_of_a_vectorised_step_equals_standalone_seed_k(mode):
    config = device_config(batch_size=8)  # Dropout on: the keys must follow the seed too.
    info = input_pipeline.get_info(config)
    runs = {}
    for s in (0, 1):
        c = seeds_lib.seed_config(config, s)
        state, key = train.initial_state(c, info, 5, 5)
        keys = {'dropout': key, 'data': device_data.data_key(s)}
        step, keys, data = train.device_step_inputs(c, info, keys)
        state = parallel.replicate(state)
        for _ in range(3):
            state, m = step(state, keys, data)
        runs[s] = (parallel.unreplicate(state), parallel.unreplicate(m))
    together = seeds_lib.seed_config(config, 0)
    together.update(num_seeds=2, seeds_mode=mode)
    states, keys = zip(*[train.initial_state(seeds_lib.seed_config(config, s), info, 5, 5)
                         for s in (0, 1)])
    state = parallel.replicate(seeds_lib._stack(states))
    keys = {'dropout': jnp.stack(keys), 'data': jnp.stack([device_data.data_key(s)
                                                            for s in (0, 1)])}
    step, keys, data = train.device_step_inputs(together, info, keys)
    for _ in range(3):
        state, m = step(state, keys, data)
    state, m = parallel.unreplicate(state), parallel.unreplicate(m)
    for i in (0, 1):
        assert_trees_close(jax.tree.map(lambda x: x[i], state.params), runs[i][0].params,
                           atol=2e-5)
        np.testing.assert_allclose(m['loss'][i], runs[i][1]['loss'], rtol=1e-5)
    assert not np.allclose(m['loss'][0], m['loss'][1])  # The seeds really differ.


def _group_params(config, workdir, seeds):
    info = input_pipeline.get_info(config)
    num_steps, spe = train.num_train_steps(config)
    target = seeds_lib._stack([train.initial_state(seeds_lib.seed_config(config, s), info, spe,
                                                   num_steps)[0] for s in seeds])
    fingerprint = dict(checkpoints.config_fingerprint(config), seeds=seeds)
    with checkpoints.Checkpointer(str(workdir), config_fingerprint=fingerprint) as ckpt:
        return ckpt.restore(target)[0]


@pytest.mark.slow  # Whole runs: vectorised, standalone, interrupted and resumed.
def test_vectorised_run_equals_standalone_and_resumes_exactly(tmp_path):
    config = device_config(num_steps=6, checkpoint_every_steps=3)
    config.update(num_seeds=2, seeds_mode='vmap')
    out = seeds_lib.train_seeds(config, str(tmp_path / 'vec'))
    solo = train.train_and_evaluate(seeds_lib.seed_config(config, 1), str(tmp_path / 'solo'))
    assert out[1]['test_loss'] == pytest.approx(solo['test_loss'], rel=1e-4)
    assert (tmp_path / 'vec' / 'seed0' / 'results.json').exists()
    assert (tmp_path / 'vec' / 'seed1' / 'metrics.jsonl').exists()
    vec = _group_params(config, tmp_path / 'vec', [0, 1])
    shutil.rmtree(tmp_path / 'vec' / 'checkpoints' / '6')  # As if killed after step 3's save.
    again = seeds_lib.train_seeds(config, str(tmp_path / 'vec'))
    assert again[0]['test_loss'] == pytest.approx(out[0]['test_loss'], abs=1e-6)
    assert_trees_close(_group_params(config, tmp_path / 'vec', [0, 1]).params, vec.params)


@pytest.mark.slow  # A short vectorised run, and two that are refused.
def test_vectorised_run_holds_the_workdir_and_refuses_a_changed_resume(tmp_path):
    config = device_config(num_steps=4, checkpoint_every_steps=2)
    config.update(num_seeds=2, seeds_mode='vmap')
    workdir = tmp_path / 'vec'
    held = checkpoints.lock_workdir(str(workdir))  # As a running launch.py or sweep holds it.
    try:
        with pytest.raises(checkpoints.WorkdirError, match='in use'):
            seeds_lib.train_seeds(config, str(workdir))
    finally:
        held.release()
    assert not list(workdir.iterdir())

    seeds_lib.train_seeds(config, str(workdir))
    shutil.rmtree(workdir / 'checkpoints' / '4')  # As if killed after step 2's save.
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob('*') if p.is_file()}
    config.data.fake_train_examples += 8  # Another data stream: resuming would mix two.
    with pytest.raises(checkpoints.ConfigMismatchError, match='data.fake_train_examples'):
        seeds_lib.train_seeds(config, str(workdir))
    assert before == {p: p.stat().st_mtime_ns for p in workdir.rglob('*') if p.is_file()}


@pytest.mark.slow  # Spawns two worker processes (each imports jax and TensorFlow), twice.
def test_seeds_in_processes_equal_standalone_and_a_signal_stops_them_resumably(tmp_path):
    config = device_config(num_steps=6, checkpoint_every_steps=3)
    config.update(num_seeds=2, seeds_mode='processes', seed_workers=2)
    with seeds_lib.shared_workers():  # As the sweep runs points: the workers serve both calls.
        out = seeds_lib.train_seeds(config, str(tmp_path / 'par'))
        workers = {p.pid for p in multiprocessing.active_children()}
        more = seeds_lib.train_seeds(config, str(tmp_path / 'par'), seeds=[2, 3])
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
    out = seeds_lib.train_seeds(config, str(workdir))
    assert set(out) == {0, 1} and all('preempted_at_step' in r for r in out.values()), out
    for s in (0, 1):
        state, _ = saved_state(seeds_lib.seed_config(config, s), str(workdir / f'seed{s}'))
        assert int(state.step) == out[s]['preempted_at_step'] < 100_000
        assert not (workdir / f'seed{s}' / 'results.json').exists()
    assert not (workdir / 'seed2').exists()
