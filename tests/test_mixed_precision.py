"""bf16 / fp16 train steps against fp32, and fp16 dynamic loss scaling (2 simulated devices)."""

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoints
from alexnet_jax.data import input_pipeline
from alexnet_jax import parallel
from alexnet_jax import train
from tests.helpers import tiny_config

STEPS = 3


def _config(dtype, loss_scale=None, batch_norm=False):
    c = tiny_config(num_steps=STEPS)
    # (Batch norm over 4 examples per device is too ill-conditioned to compare trajectories.)
    c.model.update(dtype=dtype, dropout_rate=0.0, init_scheme='he', batch_norm=batch_norm)
    c.optim.learning_rate = 1e-3  # Small steps: fp32's own trajectory stays smooth.
    c.optim.loss_scale = loss_scale
    return c


def _batches(n=STEPS, seed=0):
    rng = np.random.RandomState(seed)
    return [{'image': rng.randn(2, 4, 67, 67, 3).astype(np.float32),
             'label': rng.randint(0, 10, (2, 4)).astype(np.int32)} for _ in range(n)]


_CACHE = {}  # (initial state, compiled step) per dtype: initialising and compiling dominate.


def _setup(config):
    name = (config.model.dtype, config.optim.loss_scale, config.model.batch_norm)
    if name not in _CACHE:
        info = input_pipeline.get_info(config)
        state0, key = train.initial_state(config, info, 10, 10)
        _CACHE[name] = state0, train.make_train_step(key, mean=0.0, std=1.0)  # Float batches.
    return _CACHE[name]


def _train(config, batches, scale=None):
    """(initial host state, final host state, per-step metrics) of the real pmapped step."""
    state0, step = _setup(config)
    if scale is not None:
        state0 = state0.replace(dynamic_scale=state0.dynamic_scale.replace(
            scale=np.float32(scale)))
    state, history = parallel.replicate(state0), []
    for batch in batches:
        state, metrics = step(state, batch)
        history.append(parallel.unreplicate(metrics))
    return state0, parallel.unreplicate(state), history


def _rel_diff(a, b):
    a, b = np.concatenate([np.ravel(x) for x in a]), np.concatenate([np.ravel(x) for x in b])
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope='module')
def fp32_run():
    return _train(_config('float32'), _batches())


@pytest.mark.slow  # Compiles the fp32, bf16 and fp16 train steps (~10 s each on 2 cores).
@pytest.mark.parametrize('dtype,loss_scale,tol', [
    ('bfloat16', None, 0.1),     # 8 mantissa bits: ~6% off fp32's update here.
    ('float16', 'dynamic', 0.02),  # 11 bits: ~0.7%.
])
def test_low_precision_steps_finite_and_close_to_fp32(fp32_run, dtype, loss_scale, tol):
    start, ref, ref_metrics = fp32_run
    _, state, metrics = _train(_config(dtype, loss_scale), _batches())
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        assert np.asarray(leaf).dtype in (np.float32, np.int32), np.asarray(leaf).dtype
    losses = np.array([m['loss'] for m in metrics])
    assert np.all(np.isfinite(losses))
    np.testing.assert_allclose(losses, [m['loss'] for m in ref_metrics], rtol=tol)
    # The total update over the steps, against fp32's.
    delta = jax.tree.leaves(jax.tree.map(np.subtract, state.params, start.params))
    ref_delta = jax.tree.leaves(jax.tree.map(np.subtract, ref.params, start.params))
    assert _rel_diff(delta, ref_delta) < tol
    if loss_scale:
        assert not any(m['skipped'] for m in metrics)
        assert float(state.dynamic_scale.scale) == 2.0 ** 15


@pytest.mark.slow  # Compiles the fp16 + batch-norm train step.
def test_overflow_skips_update_and_halves_scale():
    """2**40 * loss overflows fp16 in the backward pass: both steps skipped, nothing updated
    (batch statistics included)."""
    traces = []
    real_step = train.train_step

    def counting(*args, **kwargs):
        traces.append(1)
        return real_step(*args, **kwargs)
    train.train_step, saved = counting, train.train_step
    try:
        start, state, metrics = _train(_config('float16', 'dynamic', batch_norm=True), _batches(2),
                                       scale=2.0 ** 40)
    finally:
        train.train_step = saved
    assert len(traces) == 1, 'an overflow step compiled again'
    first, second = metrics
    assert first['skipped'] == second['skipped'] == 1.0
    assert (first['loss_scale'], second['loss_scale']) == (2.0 ** 40, 2.0 ** 39)
    assert np.isfinite(first['loss'])  # The forward pass was fine; its gradient overflowed.
    for name in ('params', 'opt_state', 'batch_stats'):
        for a, b in zip(jax.tree.leaves(getattr(state, name)),
                        jax.tree.leaves(getattr(start, name))):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert float(state.dynamic_scale.scale) == 2.0 ** 38
    assert int(state.dynamic_scale.fin_steps) == 0
    assert int(state.step) == 2  # Steps count on (data stream, dropout keys), updates do not.


class _Recorder:
    def __init__(self):
        self.records = []

    def write(self, step, split, scalars, num_steps_since=0):
        self.records.append((step, split, scalars))


def _pending(losses, skipped, scales):
    """One seed's metrics of the steps since the last log, as the loop hands them over."""
    n = len(losses)
    return {'loss': np.array(losses, np.float32), 'top1': np.zeros(n, np.float32),
            'top5': np.zeros(n, np.float32), 'lr': np.full(n, 0.01, np.float32),
            'skipped': np.array(skipped, np.float32), 'loss_scale': np.array(scales, np.float32)}


def test_nan_stop_ignores_skipped_overflow_steps():
    rec = _Recorder()
    train.log_train(rec, 3, _pending([2.0, np.inf, 3.0], [0, 1, 0], [2 ** 15, 2 ** 15, 2 ** 14]))
    (_, _, scalars), = rec.records
    assert scalars['loss'] == 2.5  # The skipped step's inf is left out of the average.
    assert scalars['skipped_steps'] == 1 and scalars['loss_scale'] == 2 ** 14
    # Overflow with the scale already at its floor: a real non-finite gradient, stop.
    with pytest.raises(train.NonFiniteLossError, match='step 5'):
        train.log_train(rec, 6, _pending([2.0, 2.0, 2.0], [0, 1, 0], [2.0, 1.0, 1.0]))
    with pytest.raises(train.NonFiniteLossError, match='step 4'):  # Not skipped, NaN loss.
        train.log_train(rec, 6, _pending([np.nan, 2.0, 2.0], [0, 1, 0], [4.0, 4.0, 2.0]))


def test_dynamic_scale_is_checkpointed(tmp_path):
    config = _config('float16', 'dynamic')
    state, _ = _setup(config)
    state = state.replace(dynamic_scale=state.dynamic_scale.replace(
        scale=np.float32(2.0 ** 9), fin_steps=np.int32(7)))
    fingerprint = checkpoints.config_fingerprint(config)
    ckpt = checkpoints.Checkpointer(str(tmp_path), config_fingerprint=fingerprint,
                                    async_save=False)
    try:
        ckpt.save(3, state, {})
        restored, _ = ckpt.restore(_setup(config)[0])
    finally:
        ckpt.close()
    assert float(restored.dynamic_scale.scale) == 2.0 ** 9
    assert int(restored.dynamic_scale.fin_steps) == 7
    assert restored.dynamic_scale.growth_interval == config.optim.loss_scale_growth_interval
