"""The training loop's guarantees on every path: one seed, and two seeds stepped together
('vmap', 'map'). Each seed's workdir is a standalone run's: keep-best, init_from and freeze, a
lowered learning rate on resume, a refused changed resume, the workdir lock, NaN, a signal or a
kill -9 and the rerun, a rerun in another mode."""

import json
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoints
from alexnet_jax import errors
from alexnet_jax import evaluation
from alexnet_jax import seeds as seeds_lib
from alexnet_jax import train
from alexnet_jax.tools import grid
from alexnet_jax.tools import sweep
from alexnet_jax import workdirs
from configs import ablations
from tests.helpers import (MODES, TINY, assert_trees_close, device_config, in_mode, launch,
                           saved_state, seed_dirs, tiny_config)


def _records(workdir, split):
    return [r for r in map(json.loads, (workdir / 'metrics.jsonl').read_text().splitlines())
            if r['split'] == split]


def _scripted_evaluate(monkeypatch, top1_at_step):
    """evaluation.evaluate_seeds (as the loop calls it) returning, for every seed, the given
    validation top-1 at the state's step (else 0)."""
    def evaluate_seeds(p_eval_step, state, config, split):
        steps = np.asarray(jax.device_get(state.step))[0]  # [seeds], device 0's copy.
        return [{'loss': 1.0 - top1_at_step.get(int(s), 0.0), 'top1': top1_at_step.get(int(s), 0.0),
                 'top5': 1.0} for s in steps]
    monkeypatch.setattr(evaluation, 'evaluate_seeds', evaluate_seeds)


@pytest.mark.parametrize('mode', MODES)
def test_best_checkpoint_on_disk_is_the_validation_peak(tmp_path, monkeypatch, mode):
    _scripted_evaluate(monkeypatch, {2: 0.3, 4: 0.7, 6: 0.4, 8: 0.2})
    config = in_mode(tiny_config(num_steps=8, eval_every_steps=2, checkpoint_every_steps=8,
                                 keep_checkpoints=1), mode)
    train.train_and_evaluate(config, str(tmp_path))
    for workdir in seed_dirs(tmp_path, mode):
        with checkpoints.Checkpointer(str(workdir), config_fingerprint=checkpoints
                                      .config_fingerprint(config)) as ckpt:
            assert ckpt.best_step() == 4 and sorted(ckpt.all_steps()) == [4, 8]


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('schedule, top1, scale', [
    ('constant', {}, 1.0),
    ('plateau', {2: 0.5, 4: 0.5}, 0.1),   # No improvement at step 4: one reduction (x0.1).
])
def test_resume_uses_the_configured_learning_rate(tmp_path, monkeypatch, mode, schedule, top1,
                                                  scale):
    _scripted_evaluate(monkeypatch, top1)
    config = in_mode(tiny_config(num_steps=4, checkpoint_every_steps=4, eval_every_steps=2,
                                 log_every_steps=1), mode)
    config.optim.update(schedule=schedule, learning_rate=0.02, plateau_patience=1)
    train.train_and_evaluate(config, str(tmp_path))
    config.train.num_steps, config.optim.learning_rate = 6, 0.001
    train.train_and_evaluate(config, str(tmp_path))
    for workdir in seed_dirs(tmp_path, mode):
        lrs = {r['step']: r['lr'] for r in _records(workdir, 'train')}
        assert lrs[4] == pytest.approx(0.02)  # (The plateau reduction comes after step 4's log.)
        assert lrs[5] == lrs[6] == pytest.approx(0.001 * scale)


@pytest.mark.parametrize('mode', MODES)
def test_resume_refuses_a_changed_stream_or_model_and_writes_nothing(tmp_path, mode):
    config = in_mode(tiny_config(num_steps=2, checkpoint_every_steps=2, eval_every_steps=0), mode)
    train.train_and_evaluate(config, str(tmp_path))
    before = sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob('*'))
    config.train.update(batch_size=16, num_steps=4)
    with pytest.raises(checkpoints.ConfigMismatchError, match=r'config\.train\.batch_size=16'):
        train.train_and_evaluate(config, str(tmp_path))
    config.train.batch_size = 8
    config.model.width = 0.1  # A different model: refused, and no new TensorBoard file either.
    with pytest.raises(checkpoints.ConfigMismatchError, match='width'):
        train.train_and_evaluate(config, str(tmp_path))
    assert sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob('*')) == before


@pytest.mark.parametrize('mode', MODES)
def test_a_second_run_on_a_workdir_in_use_is_refused(tmp_path, mode):
    config = in_mode(tiny_config(num_steps=1), mode)
    for held in [tmp_path] + seed_dirs(tmp_path, mode)[1:]:  # The run's, or one seed's.
        lock = workdirs.lock(str(held))  # As a running launch.py holds it.
        try:
            with pytest.raises(workdirs.WorkdirError, match='in use by another run'):
                train.train_and_evaluate(config, str(tmp_path))
        finally:
            lock.release()
        assert not [p for p in tmp_path.rglob('*') if p.is_file()]
    train.train_and_evaluate(config, str(tmp_path))  # Free again.


def _poison_seed(monkeypatch, *bad_seeds):
    """`bad_seeds` start from NaN weights: their loss is NaN from the first step."""
    real = train.initial_state

    def initial_state(config, *args):
        state, key = real(config, *args)
        if config.seed in bad_seeds:
            state = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
        return state, key
    monkeypatch.setattr(train, 'initial_state', initial_state)


@pytest.mark.parametrize('mode', MODES)
def test_a_non_finite_loss_fails_that_seed_only(tmp_path, monkeypatch, caplog, mode):
    config = in_mode(tiny_config(num_steps=4, log_every_steps=2, eval_every_steps=2), mode)
    _poison_seed(monkeypatch, 0 if mode == 'one' else 1)
    if mode == 'one':  # A plain run stops on it, one line, no failed.json.
        with pytest.raises(train.NonFiniteLossError, match='No checkpoint was saved yet'):
            train.train_and_evaluate(config, str(tmp_path))
        assert not (tmp_path / 'failed.json').exists()
        return
    with caplog.at_level('INFO', logger='absl'):  # absl's, whatever an earlier test left
        out = train.train_and_evaluate(config, str(tmp_path))
    assert out[0]['steps'] == 4 and 'NonFiniteLossError' in out[1]['failed']
    assert any(r.getMessage().startswith(f'{tmp_path.name} seed 0: step 4/4')
               for r in caplog.records)
    good, bad = seed_dirs(tmp_path, mode)
    assert (good / 'results.json').exists() and not (good / 'failed.json').exists()
    assert json.loads((bad / 'failed.json').read_text())['reason'].startswith('NonFiniteLossError')
    assert not (bad / 'results.json').exists()
    assert not (bad / 'metrics.jsonl').exists() or not _records(bad, 'val')  # Not evaluated.
    assert not list((bad / 'checkpoints').glob('[0-9]*'))


@pytest.mark.parametrize('mode', ['vmap', 'map'])
def test_every_seed_failing_records_each_and_says_which_seed_logged_what(tmp_path, monkeypatch,
                                                                         caplog, mode):
    config = in_mode(tiny_config(num_steps=4, log_every_steps=2, eval_every_steps=0), mode)
    _poison_seed(monkeypatch, 0, 1)
    with caplog.at_level('WARNING'):
        out = train.train_and_evaluate(config, str(tmp_path))  # No exception: a sweep goes on.
    assert all('NonFiniteLossError' in out[s]['failed'] for s in (0, 1))
    for workdir in seed_dirs(tmp_path, mode):
        assert (workdir / 'failed.json').exists() and not (workdir / 'results.json').exists()
    assert [r.getMessage()[:7] for r in caplog.records if 'failed, the others go on' in
            r.getMessage()] == ['Seed 0 ', 'Seed 1 ']


@pytest.mark.parametrize('mode', MODES)
def test_the_data_checks_run_on_every_path(tmp_path, mode):
    config = in_mode(tiny_config(batch_size=128), mode)  # The fake train split has 64.
    with pytest.raises(errors.ConfigError, match='128 is larger than the 64 examples'):
        train.train_and_evaluate(config, str(tmp_path / 'run'))
    config = in_mode(tiny_config(), mode)
    config.model.num_classes = 5  # The data has 10.
    with pytest.raises(errors.ConfigError, match='model.num_classes: 5 != 10'):
        train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('mode', ['vmap', 'map'])
def test_a_sweep_point_records_a_failed_seed_and_goes_on(tmp_path, monkeypatch, mode):
    config = ablations.get_config('dropout')
    config.base = 'configs/alexnet.py:fake'
    config.base_overrides = tuple(sorted({
        'model.width': 0.05, 'model.num_classes': 10, 'data.fake_shape': (70, 70, 3),
        'data.fake_num_classes': 10, 'data.fake_train_examples': 64, 'data.image_size': 67,
        'data.resize_size': 70, 'data.fake_eval_examples': 20, 'data.train_augment': 'small',
        'data.device_resident': 'always', 'train.batch_size': 8, 'train.eval_batch_size': 8,
        'train.num_steps': 2, 'train.plot': False, 'seeds_mode': mode}.items()))
    config.axes = (config.axes[0][:1],)
    config.num_seeds = 2
    _poison_seed(monkeypatch, 1)
    rows = sweep.run_grid(config, grid.expand(config), tmp_path)
    assert [r['status'] for r in rows] == ['done', 'failed']
    assert rows[1]['reason'].startswith('NonFiniteLossError')


@pytest.mark.slow  # A fine-tuning source run, then a run per mode.
@pytest.mark.parametrize('mode', MODES)
def test_init_from_and_freeze_on_every_path(tmp_path, monkeypatch, mode):
    source = tmp_path / 'source'
    train.train_and_evaluate(tiny_config(num_steps=2), str(source))
    _, before = checkpoints.load_variables(source)
    config = in_mode(tiny_config(num_steps=2), mode)
    config.update(init_from=str(source), freeze=('conv1,conv2', 'conv3', 'conv4', 'conv5'))
    config.model.dropout_rate = 0.0
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    for workdir in seed_dirs(tmp_path / 'run', mode):
        _, after = checkpoints.load_variables(workdir)  # Every tool reads a seed's workdir.
        for layer in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
            jax.tree.map(np.testing.assert_array_equal, after['params'][layer],
                         before['params'][layer])
        assert not np.array_equal(after['params']['fc6']['kernel'],
                                  before['params']['fc6']['kernel'])


@pytest.mark.slow  # Whole runs: together, standalone, interrupted and resumed, in other modes.
@pytest.mark.parametrize('mode', ['vmap', 'map'])
def test_seed_k_together_equals_standalone_and_a_rerun_resumes_in_any_mode(tmp_path, mode):
    config = in_mode(device_config(num_steps=6, checkpoint_every_steps=3), mode)
    out = train.train_and_evaluate(config, str(tmp_path / 'run'))
    solo = train.train_and_evaluate(seeds_lib.seed_config(config, 1), str(tmp_path / 'solo'))
    assert out[1]['test_loss'] == pytest.approx(solo['test_loss'], rel=1e-4)
    c1 = seeds_lib.seed_config(config, 1)
    assert_trees_close(saved_state(c1, str(tmp_path / 'run' / 'seed1'))[0].params,
                       saved_state(c1, str(tmp_path / 'solo'))[0].params, atol=2e-5)
    # As if killed after step 3's save; seed 1 rerun alone first, then both in the other modes:
    # each seed resumes where it stopped (seed 0 at step 3, seed 1 finished).
    for s in (0, 1):
        shutil.rmtree(tmp_path / 'run' / f'seed{s}' / 'checkpoints' / '6')
    train.train_and_evaluate(seeds_lib.seed_config(config, 1), str(tmp_path / 'run' / 'seed1'))
    for other in ('sequential', 'vmap' if mode == 'map' else 'map'):
        config.seeds_mode = other
        again = train.train_and_evaluate(config, str(tmp_path / 'run'))
        for s in (0, 1):
            assert again[s]['test_loss'] == pytest.approx(out[s]['test_loss'], rel=1e-4), other
            assert max(r['step'] for r in _records(tmp_path / 'run' / f'seed{s}', 'train')) == 6


def _wait_for(path_glob, proc, timeout=300):
    start = time.time()
    while not list(path_glob()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - start < timeout
        time.sleep(0.1)


@pytest.mark.slow  # Two launch.py runs per case (the -O0 compiles of test_launch's kill tests).
@pytest.mark.parametrize('mode, how', [('vmap', 'SIGTERM'), ('map', 'SIGKILL')])
def test_a_stopped_run_resumes_to_the_uninterrupted_result(tmp_path, mode, how):
    """launch.py stopped by a signal, or killed, then rerun, ends where an uninterrupted run
    does (one seed: tests/test_launch.py)."""
    flags = [*TINY, '--config.train.num_steps=40', '--config.train.checkpoint_every_steps=10',
             '--config.train.log_every_steps=10', '--config.train.eval_every_steps=0',
             '--config.data.train_augment=small', '--config.data.device_resident=always',
             '--config.data.pad=4', '--config.num_seeds=2', f'--config.seeds_mode={mode}']
    clean = in_mode(tiny_config(num_steps=40, checkpoint_every_steps=10, log_every_steps=10,
                                eval_every_steps=0), mode)
    want = train.train_and_evaluate(clean, str(tmp_path / 'clean'))
    proc = launch(*flags, f'--workdir={tmp_path / "run"}', wait=False)
    _wait_for(lambda: (tmp_path / 'run' / 'seed1' / 'checkpoints').glob('[0-9]*'), proc)
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == (0 if how == 'SIGTERM' else -9), err[-3000:]
    assert not (tmp_path / 'run' / 'seed0' / 'results.json').exists()
    rc, _, err = launch(*flags, f'--workdir={tmp_path / "run"}')
    assert rc == 0, err[-3000:]
    for s in (0, 1):
        got = json.loads((tmp_path / 'run' / f'seed{s}' / 'results.json').read_text())
        assert got['test_loss'] == pytest.approx(want[s]['test_loss'], abs=1e-5), s
