"""The train step compiles once (per device count) and the loop never waits for the devices
between logging intervals. (The whole-loop compile-once check over train/eval/checkpoint steps
is tests/test_train.py::test_step_compiles_once.)"""

import jax
from jax._src import array as jax_array
import numpy as np
import pytest

from alexnet_jax import diagnostics
from alexnet_jax import evaluation
from alexnet_jax.data import input_pipeline
from alexnet_jax import parallel
from alexnet_jax import train
from tests.helpers import shard, tiny_config


@pytest.fixture
def traces(monkeypatch):
    """A list that grows by one each time train_step is traced (= compiled), not per call."""
    seen = []
    real_step = train.train_step

    def counting_step(*args, **kwargs):
        seen.append(1)
        return real_step(*args, **kwargs)
    monkeypatch.setattr(train, 'train_step', counting_step)
    return seen


@pytest.fixture(scope='module')
def initial():
    config = tiny_config()
    return train.initial_state(config, input_pipeline.get_info(config), 10, 10)


@pytest.mark.slow  # Compiles the initial state and a train step per device count.
@pytest.mark.parametrize('num_devices', [1, 2])
def test_step_compiles_once_per_device_count(traces, initial, num_devices):
    state, key = initial
    devices = jax.local_devices()[:num_devices]
    step = train.make_train_step(key, devices=devices, mean=0.0, std=1.0)  # Float batches.
    state = parallel.replicate(state, devices)
    rng = np.random.RandomState(0)
    for _ in range(3):
        batch = {'image': rng.randn(8, 67, 67, 3).astype(np.float32),
                 'label': rng.randint(0, 10, 8).astype(np.int32)}
        state, _ = step(state, shard(batch, num_devices))
    assert len(traces) == 1


class _HostReads:
    """Counts device->host reads of jax arrays (np.asarray, float(), printing, ...) by the step
    the loop is at, except inside the loop's side jobs that are meant to read (log, eval, save).

    `jax.transfer_guard_device_to_host('disallow')` makes such a read an error on GPU/TPU; on
    CPU jax arrays already live in host memory and the guard never fires, so the reads are also
    counted directly (jax.Array's `_value`, which every host read goes through).
    """

    def __init__(self, monkeypatch):
        self.step, self.depth, self.outside, self.allowed_at = 0, 0, [], set()
        real_value = jax_array.ArrayImpl._value

        def value(arr):
            if self.depth == 0 and self.step > 0:  # Setup before the first step may read.
                self.outside.append(self.step)
            return real_value.fget(arr)
        monkeypatch.setattr(jax_array.ArrayImpl, '_value', property(value))
        real_make = train.make_seeds_step

        def make(*args, **kwargs):
            step = real_make(*args, **kwargs)

            def counted(*a):
                self.step += 1
                if self.step == 1:  # Compiling may read constants (the dropout key) once.
                    return self._allowed(step)(*a)
                if self.step == 2:  # From here on a host read is an error on GPU/TPU.
                    jax.config.update('jax_transfer_guard_device_to_host', 'disallow')
                return step(*a)
            return counted
        monkeypatch.setattr(train, 'make_seeds_step', make)
        # (diagnostics.measure: the weights at init and at the end, not inside the loop.)
        for module, name in ((train, 'log_train'), (evaluation, 'evaluate_seeds'),
                             (train, 'final_results'), (parallel, 'unreplicate'),
                             (diagnostics, 'measure')):
            monkeypatch.setattr(module, name, self._allowed(getattr(module, name)))

    def _allowed(self, fn):
        def wrapper(*args, **kwargs):
            self.allowed_at.add(self.step)
            self.depth += 1
            try:
                with jax.transfer_guard_device_to_host('allow'):
                    return fn(*args, **kwargs)
            finally:
                self.depth -= 1
        return wrapper


def test_loop_reads_device_values_only_at_logging_steps(tmp_path, monkeypatch):
    reads = _HostReads(monkeypatch)
    config = tiny_config(num_steps=12, log_every_steps=4, eval_every_steps=0,
                         checkpoint_every_steps=0)
    try:
        train.train_and_evaluate(config, str(tmp_path))
    finally:
        jax.config.update('jax_transfer_guard_device_to_host', 'allow')
    assert reads.step == 12
    assert reads.outside == [], f'host reads of device values at steps {sorted(set(reads.outside))}'
    # Side jobs (and so host syncs) only at the logging steps (eval + checkpoint at the end),
    # besides the first step's compilation and the diagnostics of the weights at init (step 0).
    assert reads.allowed_at == {0, 1, 4, 8, 12}


def test_start_and_save_compile_only_the_model_init(caplog):
    """A run's start (fresh state, replicate) and each save (unreplicate) compile nothing but the
    jitted init: eager stacking, indexing or zeros would compile a program per leaf shape,
    seconds of every short run. The shapes are new to this process, so nothing is cached."""
    config = tiny_config()
    config.model.width = 0.0625  # A net no other test in this process builds.
    with caplog.at_level('WARNING'), jax.log_compiles():
        state, _ = train.initial_state(config, input_pipeline.get_info(config), 10, 10)
        host = parallel.unreplicate(parallel.replicate(state))
    compiled = [r.getMessage().split()[1] for r in caplog.records
                if r.getMessage().startswith('Compiling ')]
    # The init, and deriving the seed's keys (the same programs for every run).
    keys = {'jit(stage)', 'jit(_threefry_seed)', 'jit(_threefry_split)', 'jit(unstack)'}
    assert 'jit(init)' in compiled and set(compiled) <= keys | {'jit(init)'}, compiled
    np.testing.assert_array_equal(host.params['conv1']['kernel'], state.params['conv1']['kernel'])
    assert jax.tree.structure(host) == jax.tree.structure(state)
